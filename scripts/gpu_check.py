"""The GPU check of issue 16: CUDA vs CPU maps, host syncs inside the engine, throughput; a table and a JSON.

    python scripts/gpu_check.py                      # on a CUDA machine: the default run (a few minutes on one H200)
    python scripts/gpu_check.py --device cpu --models efficientnet_lite0 --parts equality --size 64
                                                     # no GPU: cpu vs cpu, says CUDA is absent

Same as ``python -m explainers bench gpu``; everything lives in ``explainers/gpu_check.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from explainers.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
