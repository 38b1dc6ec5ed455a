"""SRD, Sharing Ratio Decomposition (Han, Kim, Kwak, ICLR 2024): the whole method family in one package.

- :mod:`.rules`: SRD's rule set for the one walker (a sibling of LRP's and absLRP's) and its local steps;
- :mod:`.stencils`: receptive-field geometry and sharing-ratio stencils (many ERFs at once);
- :mod:`.explore`: maps at any layer, one kept forward pass, ERFs, sub-concepts, ERF crops;
- :mod:`.index`: the nearest-PFV index over the gallery, uploads or a dataset;
- :mod:`.method`: registers the ``srd`` method (importing this package registers it).
"""

from . import method as _method  # noqa: F401  (registers the method)
from .explore import (
    RESOLUTIONS,
    LayerInfo,
    NeighbourView,
    Pass,
    SRDMaps,
    SubConcept,
    box_crop,
    check_supported,
    click_to_cell,
    erf,
    erf_box,
    erf_crop,
    erf_view,
    erf_weighted,
    forward_pass,
    grid_centres,
    grid_click,
    layers,
    neighbour_views,
    resolve_layer,
    srd_maps,
    subconcepts,
)
from .index import (
    CACHE_ENV,
    Neighbour,
    PFVIndex,
    build_dataset_index,
    build_index,
    cache_dir,
    dataset_images,
    dataset_index_path,
    file_list_key,
    gallery_items,
    model_fingerprint,
)
from .rules import BIAS_SHARES, STARTS, SRDRules, srd_graph

__all__ = [
    "BIAS_SHARES", "CACHE_ENV", "RESOLUTIONS", "STARTS", "LayerInfo", "Neighbour", "NeighbourView",
    "PFVIndex", "Pass", "SRDMaps", "SRDRules", "SubConcept", "box_crop", "build_dataset_index", "build_index",
    "cache_dir", "check_supported", "click_to_cell", "dataset_images", "dataset_index_path", "erf", "erf_box",
    "erf_crop", "erf_view", "erf_weighted", "file_list_key", "forward_pass", "gallery_items", "grid_centres",
    "grid_click", "layers", "model_fingerprint",
    "neighbour_views", "resolve_layer", "srd_graph", "srd_maps", "subconcepts",
]
