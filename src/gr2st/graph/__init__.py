"""Vectorised spot graphs: GR2ST's spatial kNN and functional top-k graphs, the
4-/8-neighbour array-grid graphs of the pixel baselines, and spatial smoothing of
predictions over a section's spots."""

from __future__ import annotations

from gr2st.graph.grid import grid_adjacency, grid_graph
from gr2st.graph.knn import (
    cdist_topk_graph,
    functional_topk_graph,
    pruned_knn_graph,
    spatial_knn_graph,
)
from gr2st.graph.smooth import SmoothConfig, neighbour_table, smooth_predictions

__all__ = [
    "SmoothConfig",
    "cdist_topk_graph",
    "functional_topk_graph",
    "grid_adjacency",
    "grid_graph",
    "neighbour_table",
    "pruned_knn_graph",
    "smooth_predictions",
    "spatial_knn_graph",
]
