"""Nearest-embedding retrieval used by GR2ST's prediction."""

from __future__ import annotations

from gr2st.retrieval.knn import RetrievalResult, mixture, neighbour_weights, retrieve

__all__ = ["RetrievalResult", "mixture", "neighbour_weights", "retrieve"]
