"""Pearson correlation of absLRP variants with tests/reference_abslrp.py (the released code) on a timm ResNet-50,
float64: the numbers in README.md, section "absLRP".

``python tests/reference_abslrp_correlation.py 224 [plain]``: 224 = ``chelsea`` (another size: a seeded noise
image); ``plain`` = timm's own init with ``zero_init_last=False`` instead of seeded BN statistics (untrained timm
ResNets zero the last BN of each block, which silences every main branch).  Takes minutes: the reference runs
one autograd step per leaf module.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from skimage import data

from explainers import load_model
from explainers.methods.abslrp import AbsLRPRules, ReleasedCodeRules
from explainers.methods.abslrp.released import unit_mass
from explainers.methods.abslrp.rules import affine_two_step
from explainers.propagation import propagate
from explainers.propagation.graph import batch_norm_stats
from explainers.propagation.ruleset import RuleSet

sys.path.insert(0, str(Path(__file__).parent))
import reference_abslrp as ref  # noqa: E402
from test_abslrp_released import seeded_bn  # noqa: E402


class TwoStepBN(ReleasedCodeRules):
    """The released code, but the paper's two-step BatchNorm."""

    def rule_bn(self, op, R):
        mean, var, w, b, e = batch_norm_stats(op.graph, op.node, op.env)
        s = (1, -1, 1, 1)
        return [affine_two_step(op.x, mean.view(s), (var + e).sqrt().view(s), w.view(s), b.view(s), self.eps) * R]


class JointAdd(ReleasedCodeRules):
    """The released code, but residual shares kept (one unit mass over both inputs of an add)."""

    def backward(self, op, R):
        outs = RuleSet.backward(self, op, R)
        if op.kind == "add":
            tot = sum(o.flatten(1).abs().sum(1) for o in outs if o is not None)
            return [o / tot.view(-1, 1, 1, 1) for o in outs]
        return [unit_mass(o) if o is not None else None for o in outs]


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main() -> None:
    size, plain = int(sys.argv[1]), len(sys.argv) > 2
    torch.manual_seed(0)
    bundle = load_model("timm_resnet50", device="cpu", weights="untrained")
    if plain:
        torch.manual_seed(0)
        net = timm.create_model("resnet50", zero_init_last=False).double().eval()
    else:
        net = seeded_bn(copy.deepcopy(bundle.model)).double().eval()
    if size == 224:
        x = bundle.preprocess(Image.fromarray(data.chelsea())).double()
    else:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = time.time()
    r = ref.released_map(net, x)
    print("reference s", round(time.time() - t, 1), flush=True)
    y = net(x).argmax(-1)

    def two_pass(rules):
        rel = propagate(net, torch.cat([x, x]), torch.cat([y, y]), rules).relevance
        rel = rel / rel.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
        m = (rel[:1] - rel[1:]).sum(1)
        return m / m.abs().max()

    def report(name, m):
        diff = float((m / m.abs().max() - r).abs().max())
        print(f"{name:55s} signed {corr(m, r):.4f}  positive {corr(m.clamp(min=0), r.clamp(min=0)):.4f}  "
              f"max|diff|/max {diff:.2e}", flush=True)

    report("paper default (contrast=abslrp, renormalise=sign)", propagate(net, x, y, AbsLRPRules()).relevance.sum(1))
    report("paper rules, two-pass start (contrast=clrp)", two_pass(AbsLRPRules(contrast="clrp")))
    report("released, but two-step BN", two_pass(TwoStepBN()))
    report("released, but residual shares kept", two_pass(JointAdd()))
    report("released-code preset", two_pass(ReleasedCodeRules()))


if __name__ == "__main__":
    main()
