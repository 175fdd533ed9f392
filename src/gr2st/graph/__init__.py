"""Vectorised spot graphs: GR2ST's spatial kNN and functional top-k graphs, and the
4-/8-neighbour array-grid graphs of the pixel baselines."""

from __future__ import annotations

from gr2st.graph.grid import grid_adjacency, grid_graph
from gr2st.graph.knn import functional_topk_graph, pruned_knn_graph, spatial_knn_graph

__all__ = [
    "functional_topk_graph",
    "grid_adjacency",
    "grid_graph",
    "pruned_knn_graph",
    "spatial_knn_graph",
]
