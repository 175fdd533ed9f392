"""The built-in datasets: manifests built from ``datasets.toml`` shipped with the package."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

from gr2st._registry import Registry
from gr2st.errors import GR2STConfigError
from gr2st.io.download._manifest import (
    ArchiveMember,
    GitTreeListing,
    Manifest,
    RemoteFile,
    TarArchive,
)

__all__ = [
    "CSCC_SECTIONS",
    "HER2ST_COMMIT",
    "HER2ST_IMAGED",
    "HER2ST_SECTIONS",
    "HEST_FILES",
    "HEST_PATCHES",
    "HEST_REPO",
    "dataset_names",
    "get_manifest",
]


def _load() -> dict[str, Any]:
    with resources.files("gr2st.io.download").joinpath("datasets.toml").open("rb") as fh:
        return tomllib.load(fh)


_TABLE: Final = _load()
_HER2ST: Final[dict[str, Any]] = _TABLE["her2st"]
_CSCC: Final[dict[str, Any]] = _TABLE["cscc"]

#: Commit of github.com/almaan/her2st whose ``data/`` folder is fetched.
HER2ST_COMMIT: Final[str] = _HER2ST["commit"]
#: The 36 HER2ST sections with counts, A1..H3.
HER2ST_SECTIONS: Final[tuple[str, ...]] = tuple(_HER2ST["sections"])
#: Pinned files of HER2ST: path -> (size, sha256).
_HER2ST_FILES: Final[dict[str, tuple[int, str]]] = {
    path: (int(size), str(sha)) for path, (size, sha) in _HER2ST["files"].items()
}
#: The sections whose images are pinned here: the HER2ST-6 benchmark's sections.
HER2ST_IMAGED: Final[tuple[str, ...]] = tuple(
    p.split("/")[2] for p in _HER2ST_FILES if p.startswith("ST-imgs/")
)
#: The 12 cSCC ST sections of GEO GSE144240.
CSCC_SECTIONS: Final[tuple[str, ...]] = tuple(_CSCC["sections"])
#: Hugging Face dataset of HEST-1k.
HEST_REPO: Final[str] = _TABLE["hest"]["repo"]
#: Folders fetched per HEST sample and their file suffixes (``patches`` on request).
HEST_FILES: Final[dict[str, str]] = dict(_TABLE["hest"]["files"])
HEST_PATCHES: Final[dict[str, str]] = dict(_TABLE["hest"]["patches"])

# A file's section: counts, spot file, image folder or pathologist labels (README: none).
_HER2ST_SECTION: Final = re.compile(
    r"ST-(?:cnts/(?P<c>\w+)\.tsv\.gz|spotfiles/(?P<s>\w+)_selection\.tsv"
    r"|imgs/[A-Z]/(?P<i>\w+)/[^/]+|pat/lbl/(?P<l>\w+)_labeled_coordinates\.tsv)"
)


def _select(dataset: str, known: Sequence[str], sections: Sequence[str] | None) -> list[str]:
    """``sections`` checked against ``known``, in the dataset's order (all when None)."""
    if sections is None:
        return list(known)
    unknown = sorted(set(sections) - set(known))
    if unknown:
        raise GR2STConfigError(
            f"{dataset} has no section(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    if not sections:
        raise GR2STConfigError(f"{dataset}: no section chosen")
    return [s for s in known if s in set(sections)]


def _her2st_section(path: str) -> str | None:
    match = _HER2ST_SECTION.fullmatch(path)
    return None if match is None else next(g for g in match.groups() if g is not None)


def _her2st_manifest(sections: Sequence[str] | None = None) -> Manifest:
    chosen = _select("her2st", HER2ST_SECTIONS, sections)
    # The whole set keeps every pinned file (J1's labels too: J1 has no counts).
    keep = [p for p in _HER2ST_FILES if sections is None or _her2st_section(p) in set(chosen)]
    if sections is not None and any(p.startswith("ST-pat/lbl/") for p in keep):
        keep += [
            p for p in _HER2ST_FILES if p.startswith("ST-pat/lbl/") and _her2st_section(p) is None
        ]
    files = tuple(RemoteFile(p, *_HER2ST_FILES[p]) for p in keep)
    unpinned = [s for s in chosen if s not in HER2ST_IMAGED]
    listing = None
    if unpinned:
        names = r"[A-Z][0-9]+" if sections is None else "(?:" + "|".join(unpinned) + ")"
        listing = GitTreeListing(
            url=_HER2ST["tree_url"].replace("{commit}", HER2ST_COMMIT),
            prefix=_HER2ST["tree_prefix"],
            pattern=rf"ST-imgs/[A-Z]/{names}/[^/]+\.jpg",
        )
    return Manifest(
        name="her2st",
        base_url=_HER2ST["base_url"].replace("{commit}", HER2ST_COMMIT),
        files=files,
        listing=listing,
    )


def _cscc_manifest(sections: Sequence[str] | None = None) -> Manifest:
    members = tuple(
        ArchiveMember(
            f"{s} {m['label']}",
            m["pattern"].replace("{section}", re.escape(s)),
            decompress=bool(m.get("decompress", False)),
        )
        for s in _select("cscc", CSCC_SECTIONS, sections)
        for m in _CSCC["members"]
    )
    return Manifest(
        name="cscc", base_url=_CSCC["base_url"], archives=(TarArchive(_CSCC["archive"], members),)
    )


_DATASETS: Final[Registry[Callable[[Sequence[str] | None], Manifest]]] = Registry("dataset")
_DATASETS.register("her2st")(_her2st_manifest)
_DATASETS.register("cscc")(_cscc_manifest)


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_manifest` and :func:`~gr2st.io.download.fetch`.

    Examples
    --------
    >>> dataset_names()
    ['cscc', 'her2st']
    """
    return _DATASETS.names()


def get_manifest(name: str, *, sections: Sequence[str] | None = None) -> Manifest:
    """Return the built-in manifest of dataset ``name``, or of some of its sections.

    Parameters
    ----------
    name
        One of :func:`dataset_names`.
    sections
        Section names to keep (None: the whole dataset). For HER2ST a subset whose
        images are all pinned (e.g. :data:`HER2ST_IMAGED`) needs no tree listing.

    Raises
    ------
    GR2STConfigError
        If ``name`` is not one of :func:`dataset_names`, or a section is unknown.

    Examples
    --------
    >>> m = get_manifest("cscc")
    >>> m.archives[0].path, len(m.archives[0].members)
    ('GSE144240_RAW.tar', 36)
    >>> six = get_manifest("her2st", sections=HER2ST_IMAGED)
    >>> len(six.files), six.listing is None
    (18, True)
    """
    return _DATASETS.get(name)(sections)
