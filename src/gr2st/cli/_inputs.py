"""The input checks' command-line options, shared by every command that reads sections.

``--allow-off-tissue`` and ``--allow-grey`` relax the spot-on-image check of
:func:`gr2st.image.tissue.check_section_image`; ``--duplicate-genes sum`` adds up the
count columns of a gene named twice (default: an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from anndata import AnnData

if TYPE_CHECKING:
    from gr2st.predict.spots import QuerySpots


@dataclass(frozen=True)
class InputChecks:
    """How strict the input checks are (the three options' values).

    Examples
    --------
    >>> InputChecks().duplicate_genes
    'error'
    """

    allow_off_tissue: bool = False
    allow_grey: bool = False
    duplicate_genes: str = "error"

    def check_images(self, adatas: Sequence[AnnData]) -> None:
        """The spot-on-image check of every section that has an image (recorded in
        its ``uns["gr2st"]["image_check"]``)."""
        from gr2st.image.tissue import check_section_image

        for adata in adatas:
            check_section_image(
                adata, allow_off_tissue=self.allow_off_tissue, allow_grey=self.allow_grey
            )

    def check_query(self, query: QuerySpots, image: Path) -> None:
        """The spot-on-image check of ``predict``'s and ``patches``' spots (a grid is
        made on the tissue: nothing to check but the colour)."""
        from gr2st.image.tissue import check_image_colour, check_spots_on_image

        if query.source == "grid" or not query.n_spots:
            check_image_colour(image, allow_grey=self.allow_grey)
            return
        check_spots_on_image(
            query.centers,
            image=image,
            spot_diameter_px=query.spot_diameter_px or _half_spacing(query.centers),
            section=query.name or str(query.source),
            allow_off_tissue=self.allow_off_tissue,
            allow_grey=self.allow_grey,
        )


def _half_spacing(centers: np.ndarray) -> float:
    """Half the median nearest-neighbour distance: a spot diameter when none is given."""
    from scipy.spatial import cKDTree

    if len(centers) < 2:
        return 1.0
    dist, _ = cKDTree(centers).query(centers, k=2)
    return max(1.0, 0.5 * float(np.median(dist[:, 1])))


def allow_off_tissue_option() -> Any:
    """The ``--allow-off-tissue`` flag."""
    return typer.Option(
        False,
        "--allow-off-tissue",
        help="Use sections whose spots lie largely off the image's tissue (or fit it "
        "better swapped, flipped or rotated), with a warning instead of an error.",
    )


def allow_grey_option() -> Any:
    """The ``--allow-grey`` flag."""
    return typer.Option(
        False,
        "--allow-grey",
        help="Accept greyscale images (default: an error; features expect H&E colour).",
    )


def duplicate_genes_option() -> Any:
    """The ``--duplicate-genes`` option."""
    return typer.Option(
        "error",
        "--duplicate-genes",
        metavar="error|sum",
        help="A gene named in two count-table columns: error (default) or sum the columns.",
    )
