"""Relevance Explorer: Streamlit entry point.

Navigation only.  The sidebar every page shares (device, model, image, target)
is drawn by ``views.common.require_context()``, which each page calls first:
elements drawn by the entry script outside ``navigation.run()`` are not re-sent
on reruns under Streamlit's AppTest (1.67), so the tests could not drive them.
Each page's URL path is its file name (``/srd_explorer``; Compare, the default, is ``/``); ``views/link.py`` keeps
the rest of the view (model, image, target, methods) in the query string, so a link reopens page and view.
Run with ``streamlit run app.py``.
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so pages can `import views.common`

ROOT = Path(__file__).resolve().parent
# A local icon: a ":material/...:" page icon makes the browser fetch the favicon from a font CDN, which fails offline.
st.set_page_config(page_title="Relevance Explorer", page_icon=str(ROOT / "assets" / "icon.png"), layout="wide")

PAGES = [
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", default=True),
    st.Page("views/metrics.py", title="Metrics", icon=":material/analytics:"),
    st.Page("views/mosaics.py", title="Mosaics", icon=":material/grid_view:"),
    st.Page("views/conservation.py", title="Conservation", icon=":material/balance:"),
    st.Page("views/failure_review.py", title="Failure review", icon=":material/rule:"),
    st.Page("views/dataset.py", title="Dataset", icon=":material/dataset:"),
    st.Page("views/srd_explorer.py", title="SRD Explorer", icon=":material/hub:"),
]

st.navigation(PAGES).run()
