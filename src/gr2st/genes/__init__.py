"""Gene panels, panel selection and the reference log-normalisation.

Every benchmark method consumes sections made by :func:`prepare_section`: the panel's
genes in panel order, ``X = log10(1 + 1e4 · counts / panel library size)`` as dense
float32, raw counts in ``layers["counts"]``, and zero-library spots dropped.
"""

from __future__ import annotations

from gr2st.genes.hvg import hvg_panel
from gr2st.genes.normalize import (
    SCALE,
    SECTION_ALIGNMENTS,
    align_sections,
    log_normalize,
    prepare_section,
    prepare_sections,
)
from gr2st.genes.panels import check_genes, common_genes, get_panel, list_panels

__all__ = [
    "SCALE",
    "SECTION_ALIGNMENTS",
    "align_sections",
    "check_genes",
    "common_genes",
    "get_panel",
    "hvg_panel",
    "list_panels",
    "log_normalize",
    "prepare_section",
    "prepare_sections",
]
