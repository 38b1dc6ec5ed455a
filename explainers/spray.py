"""Strategy clustering of attribution maps, in the manner of SpRAy (Lapuschkin et al. 2019, "Unmasking Clever
Hans predictors and assessing what machines really learn"; ViRelAy is the tool people use for it).

Per class: downsample each map, normalise it so that only its *shape* counts, cluster the maps with spectral
clustering on a k-nearest-neighbour affinity, and embed them in 2-D with t-SNE for display.  A cluster of maps
that all sit on a watermark, a border or the background is the "Clever Hans" strategy a user looks for.
scikit-learn does the clustering and the embedding; only the map preparation and the choice of the number of
clusters (the eigengap of the affinity's normalised Laplacian, as in SpRAy) are ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Strategies:
    """Clusters of one set of maps."""

    labels: np.ndarray  # [N] cluster index per map
    embedding: np.ndarray  # [N, 2] t-SNE coordinates (for display only)
    eigengaps: np.ndarray  # the Laplacian's sorted eigenvalue gaps the number of clusters was chosen from
    features: np.ndarray  # [N, size*size] the prepared maps

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.labels == cluster)

    def mean_maps(self, size: int) -> np.ndarray:
        """[K, size, size] mean prepared map of each cluster."""
        return np.stack([self.features[self.members(k)].mean(0).reshape(size, size) for k in range(self.n_clusters)])


def prepare(maps: Sequence[torch.Tensor] | torch.Tensor, size: int = 32, positive: bool = True) -> np.ndarray:
    """[N, H, W] maps (any resolution each) -> [N, size*size]: area-downsampled, the positive part by default
    (what a strategy attends to), each scaled to unit sum so that only its shape counts."""
    rows = []
    for m in maps:
        m = torch.as_tensor(m, dtype=torch.float64)
        if m.dim() == 3:
            m = m.sum(0)
        if not torch.isfinite(m).all():
            raise ValueError("a map holds NaN/Inf values")
        a = m.clamp(min=0) if positive else m.abs()
        small = F.adaptive_avg_pool2d(a[None, None], size)[0, 0].flatten()
        total = small.sum()
        rows.append((small / total if total > 0 else small).numpy())
    return np.stack(rows) if rows else np.zeros((0, size * size))


def _affinity(features: np.ndarray, neighbours: int) -> np.ndarray:
    """Symmetric k-nearest-neighbour connectivity (what SpectralClustering builds for affinity='nearest_neighbors')."""
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(features, n_neighbors=neighbours, include_self=True).toarray()
    return 0.5 * (graph + graph.T)


def eigengaps(affinity: np.ndarray, max_clusters: int) -> np.ndarray:
    """Gaps between consecutive smallest eigenvalues of the symmetric normalised Laplacian L = I - D^-1/2 A D^-1/2.
    The number of clusters is where the first large gap is (SpRAy's eigengap heuristic)."""
    d = affinity.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    lap = np.eye(len(d)) - inv[:, None] * affinity * inv[None, :]
    values = np.sort(np.linalg.eigvalsh(lap))[: max_clusters + 1]
    return np.diff(values)


def cluster(maps: Sequence[torch.Tensor] | torch.Tensor | np.ndarray, n_clusters: int | None = None,
            max_clusters: int = 8, size: int = 32, seed: int = 0, prepared: bool = False) -> Strategies:
    """Cluster maps into strategies.  ``n_clusters`` None: chosen by the eigengap (2..max_clusters)."""
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import TSNE

    features = np.asarray(maps, dtype=np.float64) if prepared else prepare(maps, size)
    n = len(features)
    if n < 3 or np.ptp(features, axis=0).max() <= 1e-12:
        # fewer than 3 maps, or all maps alike (e.g. all-zero Grad-CAMs of an untrained net): one strategy.
        # t-SNE's PCA init divides by a zero variance there, and the Barnes-Hut step then crashes the process.
        return Strategies(np.zeros(n, dtype=int), np.zeros((n, 2)), np.zeros(0), features)
    neighbours = max(2, min(10, n - 1))
    affinity = _affinity(features, neighbours)
    gaps = eigengaps(affinity, min(max_clusters, n - 1))
    if n_clusters is None:
        n_clusters = int(np.argmax(gaps[1:]) + 2) if len(gaps) > 1 else 1  # at least 2 when there is a choice
    n_clusters = max(1, min(n_clusters, n - 1))
    if n_clusters == 1:
        labels = np.zeros(n, dtype=int)
    else:
        labels = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                                    assign_labels="cluster_qr").fit_predict(affinity)
    # Relabel by size (largest cluster 0) so that the order is stable for a user and for tests.
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    labels = np.argsort(order)[labels]
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3)))
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    return Strategies(labels, embedding, gaps, features)
