"""Mosaics: build a 2x2 mosaic (pick four images or randomise), see each quadrant's prediction, explain one
quadrant's class with the selected methods side by side, and score the maps with Focus (abslrp-gae Sec. 2.3)
and Contrastiveness (Sec. 3.2).  Mosaic building and scoring live in ``explainers.mosaic``.
"""

import json
import random

import streamlit as st
import torch

from explainers import METHODS, explain, render
from explainers.classes import short_name
from explainers.images import GALLERY, image_hash
from explainers.mosaic import QUADRANTS, build_mosaic, gae_score, load_folder, random_selection
from views import common, sources

ctx = common.require_context()
bundle = ctx.bundle

st.title("Mosaics")
st.caption("Four images in a 2x2 grid. A contrastive method puts the explained class's relevance in its own "
           "quadrant: Focus = share of positive relevance in the quadrants of that class; Contrastiveness "
           "weighs each quadrant by the scoring map (1 for the positive, 2 s_p[c_n]/s_p[c_p] - 1 for the others).")
st.caption("This page makes its own images (the four quadrants below) and explains each quadrant's class; the "
           "sidebar's image and target class are not used here.")

kinds = ["Gallery", "Uploads", "Dataset"] + (["Folder"] if sources.server_paths_allowed() else [])
source = st.radio("Images from", kinds, horizontal=True, key="mosaic_source",
                  help="Dataset: quadrants drawn from distinct true classes of a registered dataset.")
pool: dict[str, object] = {}
keys: dict[str, str] = {}  # image name -> stable cache key
true_classes: dict[str, int] = {}  # image name -> true class index (dataset source)
if source == "Dataset":
    dataset = sources.choose_dataset("mosaic_dataset")
    if dataset is not None and dataset.labelled:
        try:
            targets = dataset.targets(bundle.class_names)
            per_class = int(st.number_input("Images per true class", 1, 8, 2, key="mosaic_per_class"))
            chosen = [s for c in dataset.classes[:24] for s in dataset.filter(c).page(0, per_class)]
            for batch in dataset.batches(16, chosen):
                for s, img in zip(batch.samples, batch.images):
                    pool[s.name], keys[s.name] = img, f"dataset:{dataset.name}/{s.name}"
                    true_classes[s.name] = targets[s.label]
                for _name, why in batch.failures:
                    st.warning(f"Skipped {why}", icon=":material/warning:")
        except Exception as exc:  # noqa: BLE001 - a dataset problem is shown, the page stays usable
            common.show_error(exc)
    elif dataset is not None:
        st.info(f"{dataset.name} has no true labels: use it from the sidebar, or pick a labelled dataset.")
elif source == "Gallery":
    for k, g in GALLERY.items():
        pool[k], keys[k] = g.image(), f"gallery:{k}"
elif source == "Uploads":
    files = st.file_uploader("Upload four or more images", accept_multiple_files=True, key="mosaic_uploads")
    for f in files or []:
        data = f.getvalue()
        try:
            pool[f.name] = common.decode(data, f.name)
            keys[f.name] = f"upload:{image_hash(data)}"
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the others stay usable
            common.show_error(exc)
elif source == "Folder":  # only offered with --allow-server-paths
    folder = st.text_input("Folder on the server", key="mosaic_folder", placeholder="/path/to/images")
    if folder.strip():
        try:
            for name, img in load_folder(folder.strip()).items():
                pool[name], keys[name] = img, f"folder:{folder.strip()}/{name}"
        except Exception as exc:  # noqa: BLE001
            common.show_error(exc)

if len(pool) < 4:
    st.info("A mosaic needs at least four images.")
    st.stop()


@st.cache_data(max_entries=16, show_spinner="Classifying the images ...")
def pool_classes(model_key: str, image_keys: tuple[str, ...], _bundle, _images: tuple) -> dict[str, int]:
    x = torch.cat([_bundle.preprocess(im) for im in _images])
    return dict(zip(image_keys, _bundle.predict(x).argmax(1).tolist()))


names = list(pool)
classes_by_key = pool_classes(ctx.model_key, tuple(keys[n] for n in names), _bundle=bundle,
                              _images=tuple(pool[n] for n in names))
classes = {n: classes_by_key[keys[n]] for n in names}
if true_classes:  # a labelled dataset: quadrants of distinct *true* classes
    classes = dict(true_classes)

label = "Randomise (distinct true classes)" if true_classes else "Randomise (distinct predicted classes)"
if st.button(label, key="mosaic_random", icon=":material/casino:"):
    try:
        picked = random_selection(classes, 4, seed=random.randrange(1 << 30))
        for q, n in enumerate(picked):
            st.session_state[f"mosaic_pick_{q}"] = n
    except Exception as exc:  # noqa: BLE001
        common.show_error(exc)

try:
    default_pick = random_selection(classes, 4, seed=0)
except Exception:  # noqa: BLE001 - fewer than four distinct classes: allow repeats
    default_pick = names[:4]
cols = st.columns(4)
picks = []
for q, col in enumerate(cols):
    key = f"mosaic_pick_{q}"
    if st.session_state.get(key) not in pool:
        st.session_state[key] = default_pick[q]
    picks.append(col.selectbox(QUADRANTS[q], names, key=key,
                               format_func=lambda n: f"{n} ({short_name(bundle.class_names[classes[n]])})"))

mosaic = build_mosaic(bundle, [pool[n] for n in picks], names=picks)
mosaic_key = "|".join(keys[n] for n in picks)

left, right = st.columns([1, 1])
with left:
    st.image(mosaic.image(), caption="Mosaic (each image at half the input size)", width="stretch")
with right:
    st.markdown("**Quadrants** (each image on its own)")
    for label in mosaic.quadrant_labels(bundle.class_names):
        st.markdown(f"- {label}")
    st.markdown("**Mosaic prediction:** " + " · ".join(f"{short_name(n)} {p:.1%}" for _, n, p in mosaic.mosaic_top5))

quadrant = st.radio("Explain the class of", range(4), horizontal=True, key="mosaic_quadrant",
                    format_func=lambda q: f"{QUADRANTS[q]} ({short_name(bundle.class_names[mosaic.classes[q]])})")
target = mosaic.classes[quadrant]

chosen, options = common.method_picker(bundle, "mosaic_methods")
if not chosen:
    st.info("Pick one or more methods above.")
    st.stop()


@st.cache_data(max_entries=64, show_spinner=False)
def mosaic_explanation(mosaic_key_: str, model_key: str, method: str, target_: int, options_json: str,
                       _bundle, _x: torch.Tensor):
    return explain(_bundle, _x, method, target=target_, **json.loads(options_json))


opacity = st.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="mosaic_opacity")
scores: dict[str, dict] = {}
tiles = st.columns(len(chosen) + 1)
with tiles[0]:
    s = mosaic.scoring(quadrant)
    st.image(render.colorize(s, signed=True, cmap="RdBu_r"), caption="Contrastiveness scoring map S",
             width="stretch")
for col, method in zip(tiles[1:], chosen):
    spec = METHODS[method]
    with col:
        try:
            compute, _ = spec.split_options(spec.resolve_options(options.get(method, {})))
            res = mosaic_explanation(mosaic_key, ctx.model_key, method, target, json.dumps(compute, sort_keys=True),
                                     _bundle=bundle, _x=mosaic.x)
            shown = spec.display_map(res.attribution, options.get(method, {}))
            f = mosaic.focus(shown, target)
            c = mosaic.contrastiveness(shown, quadrant)
            scores[method] = {"method": spec.name, "Focus ↑": f, "Contrastiveness ↑": c}
            st.image(render.overlay(mosaic.image(), shown, opacity=opacity,
                                     signed=spec.shown_signed(options.get(method, {}))), width="stretch",
                     caption=f"{spec.name}: Focus {f:.3f} · Contrastiveness {c:.3f}")
        except Exception as exc:  # noqa: BLE001 - one failing method does not hide the others
            st.markdown(f"**{spec.name}**")
            common.show_error(exc)

with_gae = st.checkbox("Local consistency and GAE = LC x C (slower: 10 masking steps and 20 maps per method)",
                       key="mosaic_gae")


@st.cache_data(max_entries=64, show_spinner="Computing local consistency ...")
def cached_gae(mosaic_key_: str, model_key: str, method: str, positive: int, options_json: str,
               _bundle, _mosaic, _images: tuple) -> dict:
    g = gae_score(_bundle, _mosaic, list(_images), positive, method, json.loads(options_json))
    return {"LC ↑": g.local_consistency, "LC robustness": g.robustness, "LC faithfulness": g.faithfulness,
            "GAE ↑": g.gae}


if with_gae:
    for method, row in scores.items():
        try:
            row.update(cached_gae(mosaic_key, ctx.model_key, method, quadrant,
                                  json.dumps(options.get(method, {}), sort_keys=True, default=str),
                                  _bundle=bundle, _mosaic=mosaic, _images=tuple(pool[n] for n in picks)))
        except Exception as exc:  # noqa: BLE001
            common.show_error(exc)

if scores:
    st.subheader("Scores")
    st.dataframe(list(scores.values()), hide_index=True)
