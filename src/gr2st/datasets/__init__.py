"""Datasets: the seeded synthetic generator used by fast tests and examples."""

from __future__ import annotations

from gr2st.datasets.synthetic import synthetic, write_her2st_layout, write_hest_layout

__all__ = ["synthetic", "write_her2st_layout", "write_hest_layout"]
