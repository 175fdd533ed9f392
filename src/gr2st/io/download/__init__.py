"""Checked downloads of the public datasets into the layout gr2st's readers expect.

Sources, sizes and sha256 of the pinned files are data, not code: ``datasets.toml``
in this package (read by ``_registry.py``). Transfers go through the field's libraries:
:mod:`pooch` (HER2ST, cSCC) and :mod:`huggingface_hub` (HEST-1k, extra ``hest``).

``her2st``
    HER2-positive breast tumours (Andersson et al., Nat Commun 2021), taken from the raw
    files of the public GitHub repository ``almaan/her2st`` at commit
    :data:`HER2ST_COMMIT`, path ``data/``. The files land under the same sub-paths:
    ``ST-cnts/<S>.tsv.gz`` and ``ST-spotfiles/<S>_selection.tsv`` for the 36 sections
    A1..H3, ``ST-imgs/<P>/<S>/<name>.jpg`` (one H&E image per section) and
    ``ST-pat/lbl/*`` (pathologist labels of 9 sections). Counts, spot files, labels and
    the images of B4 and C2-C6 are pinned by size and sha256. The image names of the
    other 30 sections are not pinned; they are read from GitHub's tree listing of that
    commit (one request to ``api.github.com``) and each image is checked against the
    size and git blob id the listing gives. If that listing cannot be read (no access
    to ``api.github.com``, or its hourly rate limit reached), the one manual step is to
    clone the repository at that commit and copy its ``data/ST-imgs`` folder into
    ``DEST/ST-imgs``. The authors' Zenodo copy is password-encrypted 7z and is not used.

``cscc``
    Cutaneous squamous cell carcinoma, 12 ST sections ``P2_ST_rep1`` ... ``P10_ST_rep3``
    (Ji et al., Cell 2020), from GEO series GSE144240: its ``GSE144240_RAW.tar`` is
    downloaded from NCBI and only the per-section files are extracted, flat, into
    ``DEST``: ``GSM*_<S>_stdata.tsv.gz``, ``GSM*_spot_data-selection-<S>.tsv.gz`` and
    ``GSM*_<S>.jpg`` (an image stored gzip-compressed in the tar is decompressed). GEO
    publishes no checksum for the tar, so only the presence of all 36 files is checked;
    the tar is removed after a successful extraction.

``hest``
    HEST-1k samples (Jaume et al., NeurIPS 2024) chosen by id, from the Hugging Face
    dataset ``MahmoodLab/hest`` (gated: accept its terms on the hub, then give a read
    token in ``$HF_TOKEN`` or log in with ``hf auth login``). Per id the files
    ``st/<id>.h5ad``, ``wsis/<id>.tif``, ``metadata/<id>.json`` (and, on request,
    ``patches/<id>.h5``) land under the same sub-paths, the layout
    :func:`gr2st.io.read_hest` reads; see :func:`hest_manifest` and :func:`fetch_hest`.

HER2ST and cSCC files are fetched by :func:`pooch.retrieve` with a
:class:`ResumingDownloader`: every transfer goes to ``<file>.part`` first, an
interrupted ``.part`` is continued with an HTTP ``Range`` request (in the same run or
the next), and the file is renamed to its final name only after its size and hashes
match; a file with the wrong content is removed and reported. Files already present
with the right size and hash are skipped without a request. ``mirror`` replaces the
base URL of the data files (a mirror holds the same files under the same relative
paths); this is also how the tests serve fixtures from a local HTTP server.

``sections`` fetches part of a dataset: ``fetch("her2st", dest, sections=HER2ST_IMAGED)``
downloads the counts, spot files and images of the six imaged sections (27 MiB, no
request to ``api.github.com``) instead of all 36 sections.

Examples
--------
>>> from gr2st.io.download import fetch, get_manifest
>>> len(get_manifest("her2st").files)
88
>>> report = fetch("her2st", "data/her2st")  # doctest: +SKIP
>>> report.dest  # doctest: +SKIP
PosixPath('.../data/her2st')
"""

from __future__ import annotations

from gr2st.io.download._archive import extract_members
from gr2st.io.download._fetch import FetchReport, fetch
from gr2st.io.download._hest import HubManifest, fetch_hest, hest_manifest
from gr2st.io.download._manifest import (
    ArchiveMember,
    DownloadError,
    GitTreeListing,
    Manifest,
    RemoteFile,
    TarArchive,
)
from gr2st.io.download._registry import (
    CSCC_SECTIONS,
    HER2ST_COMMIT,
    HER2ST_IMAGED,
    HER2ST_SECTIONS,
    HEST_REPO,
    dataset_names,
    get_manifest,
)
from gr2st.io.download._transfer import ResumingDownloader, download_file

__all__ = [
    "CSCC_SECTIONS",
    "HER2ST_COMMIT",
    "HER2ST_IMAGED",
    "HER2ST_SECTIONS",
    "HEST_REPO",
    "ArchiveMember",
    "DownloadError",
    "FetchReport",
    "GitTreeListing",
    "HubManifest",
    "Manifest",
    "RemoteFile",
    "ResumingDownloader",
    "TarArchive",
    "dataset_names",
    "download_file",
    "extract_members",
    "fetch",
    "fetch_hest",
    "get_manifest",
    "hest_manifest",
]
