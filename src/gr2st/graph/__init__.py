"""Vectorised spot graphs used by GR2ST."""

from __future__ import annotations

from gr2st.graph.knn import functional_topk_graph, spatial_knn_graph

__all__ = ["functional_topk_graph", "spatial_knn_graph"]
