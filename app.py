"""Relevance Explorer: Streamlit entry point.

Navigation plus the sidebar every page shares (device, model, image, target).
Run with ``streamlit run app.py``.
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so pages can `import pages.common`

from pages import common  # noqa: E402

st.set_page_config(page_title="Relevance Explorer", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", default=True),
]

navigation = st.navigation(PAGES)
common.sidebar()
navigation.run()
