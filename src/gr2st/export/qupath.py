"""QuPath GeoJSON: every spot a detection carrying one measurement per gene.

QuPath's measurement maps colour *detections* by their measurements, so each spot is
written as a GeoJSON ``Feature`` whose ``properties.objectType`` is ``"detection"``
and whose ``properties.measurements`` maps names to numbers: ``<gene>`` (the predicted
value), ``<gene> uncertainty``, ``<gene> measured`` (where the input had counts) and
``in_tissue`` (1 or 0). The geometry is a circle (a polygon of ``vertices`` points on
the circle) of the spot's diameter, in the full-resolution pixels of the slide the
prediction was made on, which is the pixel space QuPath opens that slide in. Each
feature's ``id`` is a UUID derived from the section and spot names, so exporting the
same prediction again gives the same ids.

Import in QuPath (0.4 or later): open the slide, drag the ``.geojson`` file onto the
viewer (or File → Import objects from file), then Measure → Show measurement maps and
pick a gene.

The file is written a block of spots at a time to a temporary file renamed at the end:
memory is bounded by the block whatever the slide's size, and an interrupted export
leaves no file under the final name.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st._constants import MEASURED_LAYER, UNCERTAINTY_LAYER
from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError
from gr2st.export._prediction import PREDICTED, Prediction, read_prediction

#: Points on each spot's circle.
DEFAULT_VERTICES = 32
#: Namespace of the spots' UUIDs (uuid5 of ``"<section>/<spot>"``).
SPOT_NAMESPACE = uuid.UUID("6f1c5a0e-3b7d-4c59-9a51-2d1f0c9e7b42")
#: Suffixes of the measurement names of the uncertainty and the measured value.
SUFFIXES = {UNCERTAINTY_LAYER: " uncertainty", MEASURED_LAYER: " measured"}
#: Measurement holding whether the spot lies on the tissue detected on the slide.
IN_TISSUE_MEASUREMENT = "in_tissue"


def write_qupath(
    prediction: AnnData | str | Path,
    out: str | Path,
    *,
    genes: str | Sequence[str] = "all",
    vertices: int = DEFAULT_VERTICES,
) -> Path:
    """Write a prediction's spots as QuPath detections (GeoJSON ``FeatureCollection``).

    Parameters
    ----------
    prediction
        A prediction (:func:`gr2st.predict.predict_spots`) or any section in gr2st's
        shape, in memory or as an ``.h5ad`` file (read a block of spots at a time).
    out
        The ``.geojson`` file.
    genes
        ``"all"``, ``"top:N"`` (the N genes whose prediction varies most across the
        spots) or gene names (a list or ``"G1,G2"``).
    vertices
        Points on each spot's circle (at least 8).

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    GR2STConfigError
        Unknown genes, a bad ``genes`` or ``vertices``, or ``out`` is a folder.
    GR2STDataError
        The prediction has no spot centres or spot diameter.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> import json, tempfile, pathlib
    >>> sec = synthetic(n_sections=1, n_genes=3, grid=(2, 2))[0]
    >>> path = write_qupath(sec, pathlib.Path(tempfile.mkdtemp()) / "s.geojson", genes="GENE000")
    >>> first = json.loads(path.read_text())["features"][0]
    >>> first["properties"]["objectType"], sorted(first["properties"]["measurements"])
    ('detection', ['GENE000'])
    """
    if vertices < 8:
        raise GR2STConfigError(f"vertices: expected at least 8, got {vertices}")
    final = Path(out)
    if final.is_dir():
        raise GR2STConfigError(f"--out {final}: is a folder; expected a .geojson file name")
    with read_prediction(prediction) as pred:
        chosen = pred.resolve_genes(genes)
        with atomic_path(final) as tmp, tmp.open("w", encoding="utf-8") as fh:
            _write(pred, chosen, fh, vertices=vertices)
    return final


def _write(pred: Prediction, genes: list[str], fh: Any, *, vertices: int) -> None:
    columns = pred.genes.get_indexer(genes)
    names = [n for n in (PREDICTED, UNCERTAINTY_LAYER, MEASURED_LAYER) if n in pred.matrices]
    angle = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    unit = np.column_stack([np.cos(angle), np.sin(angle)]) * (pred.diameter_px / 2.0)
    fh.write('{"type": "FeatureCollection", "features": [\n')
    first = True
    for rows, block in pred.blocks(names, columns):
        for k, i in enumerate(range(rows.start, rows.stop)):
            measurements: dict[str, float] = {}
            for name in names:
                suffix = SUFFIXES.get(name, "")
                for gene, value in zip(genes, block[name][k], strict=True):
                    if math.isfinite(value):  # JSON has no NaN; an unmeasured gene is left out
                        measurements[f"{gene}{suffix}"] = float(f"{value:.6g}")
            if pred.in_tissue is not None:
                measurements[IN_TISSUE_MEASUREMENT] = float(pred.in_tissue[i])
            ring = np.round(pred.centres[i] + unit, 2).tolist()
            feature = {
                "type": "Feature",
                "id": str(uuid.uuid5(SPOT_NAMESPACE, f"{pred.section}/{pred.spot_ids[i]}")),
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                "properties": {
                    "objectType": "detection",
                    "name": str(pred.spot_ids[i]),
                    "measurements": measurements,
                },
            }
            fh.write(("" if first else ",\n") + json.dumps(feature, allow_nan=False))
            first = False
    fh.write("\n]}\n")
