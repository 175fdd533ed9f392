"""Checked downloads of the public datasets into the layout gr2st's readers expect.

Two datasets are known (see :func:`dataset_names`):

``her2st``
    HER2-positive breast tumours (Andersson et al., Nat Commun 2021), taken from the raw
    files of the public GitHub repository ``almaan/her2st`` at commit
    :data:`HER2ST_COMMIT`, path ``data/``. The files land under the same sub-paths:
    ``ST-cnts/<S>.tsv.gz`` and ``ST-spotfiles/<S>_selection.tsv`` for the 36 sections
    A1..H3, ``ST-imgs/<P>/<S>/<name>.jpg`` (one H&E image per section) and
    ``ST-pat/lbl/*`` (pathologist labels of 9 sections). Counts, spot files, labels and
    the images of B4 and C2-C6 are pinned by size and sha256 in this module. The image
    names of the other 30 sections are not pinned here; they are read from GitHub's
    tree listing of that commit (one request to ``api.github.com``) and each image is
    checked against the size and git blob id the listing gives. If that listing cannot
    be read (no access to ``api.github.com``, or its hourly rate limit reached), the one
    manual step is to clone the repository at that commit and copy its
    ``data/ST-imgs`` folder into ``DEST/ST-imgs``. The authors' Zenodo copy is
    password-encrypted 7z and is not used.

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
    token in ``$HF_TOKEN`` or log in with ``huggingface-cli login``). Per id the files
    ``st/<id>.h5ad``, ``wsis/<id>.tif``, ``metadata/<id>.json`` (and, on request,
    ``patches/<id>.h5``) land under the same sub-paths, the layout
    :func:`gr2st.io.read_hest` reads. Sizes and hashes (sha256 of large files, git blob
    id of small ones) come from the hub's ``paths-info`` API for the chosen revision
    (one request); see :func:`hest_manifest`. The token is sent to the hub only, not
    to the storage host its downloads redirect to.

Every transfer goes to ``<file>.part`` first, resumes an interrupted ``.part`` with an
HTTP ``Range`` request, and is renamed to its final name only after its size and hashes
match; a file with the wrong content is removed and reported. Files already present
with the right size and hash are skipped. ``mirror`` replaces the base URL of the data
files (a mirror holds the same files under the same relative paths); this is also how
the tests serve fixtures from a local HTTP server.

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

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from tqdm import tqdm

from gr2st import __version__
from gr2st._registry import Registry
from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError, GR2STError

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
    "Manifest",
    "RemoteFile",
    "TarArchive",
    "dataset_names",
    "download_file",
    "extract_members",
    "fetch",
    "get_manifest",
    "hest_manifest",
    "hf_token",
]

_CHUNK: Final = 1 << 20
_USER_AGENT: Final = f"gr2st/{__version__} (+https://pypi.org/project/gr2st/)"
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_RE: Final = re.compile(r"[0-9a-f]{40}")


class DownloadError(GR2STError):
    """A file could not be downloaded, or what arrived is not the expected file.

    The message is one line naming the URL (or file) and what went wrong.
    """


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it goes and what it must be.

    Parameters
    ----------
    path
        POSIX path relative to both the destination folder and the base URL.
    size
        Expected size in bytes, or None when unknown.
    sha256
        Expected hex sha256 of the content, or None when unknown.
    git_sha1
        Expected git blob id (sha1 of ``b"blob <size>\\0" + content``), or None.
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None

    def __post_init__(self) -> None:
        _check_relative(self.path)
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            raise GR2STConfigError(f"manifest entry {self.path}: sha256 must be 64 lowercase hex")
        if self.git_sha1 is not None and not _GIT_SHA1_RE.fullmatch(self.git_sha1):
            raise GR2STConfigError(f"manifest entry {self.path}: git_sha1 must be 40 lowercase hex")


@dataclass(frozen=True)
class ArchiveMember:
    """A file wanted from an archive, matched by its name.

    Parameters
    ----------
    label
        Human-readable name used in error messages, e.g. ``"P2_ST_rep1 counts"``.
    pattern
        Regular expression that the output file name must match in full. Only flat
        member names can match (the pattern is expected to exclude ``/``).
    decompress
        Also accept ``<name>.gz`` members and write them gunzipped as ``<name>``.
    """

    label: str
    pattern: str
    decompress: bool = False

    def output_name(self, member_name: str) -> str | None:
        """Return the output file name for ``member_name``, or None if it is not wanted."""
        if re.fullmatch(self.pattern, member_name):
            return member_name
        if self.decompress and member_name.endswith(".gz"):
            stem = member_name[: -len(".gz")]
            if re.fullmatch(self.pattern, stem):
                return stem
        return None


@dataclass(frozen=True)
class TarArchive:
    """A tar file whose selected members are extracted flat into the destination.

    Parameters
    ----------
    path
        POSIX path of the archive relative to the base URL; it is downloaded next to
        the extracted files and removed after a successful extraction.
    members
        Every member wanted; each must be found exactly once.
    size, sha256
        Expected size and sha256 of the archive, or None when unknown.
    """

    path: str
    members: tuple[ArchiveMember, ...]
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        _check_relative(self.path)


@dataclass(frozen=True)
class GitTreeListing:
    """Files of a GitHub repository found from its recursive tree listing at fetch time.

    Parameters
    ----------
    url
        GitHub API URL of ``git/trees/<commit>?recursive=1``.
    prefix
        Repository folder that the base URL points at (stripped from listed paths).
    pattern
        Regular expression that a path relative to ``prefix`` must match in full.
    """

    url: str
    prefix: str
    pattern: str


@dataclass(frozen=True)
class Manifest:
    """What a dataset consists of and where it comes from.

    Parameters
    ----------
    name
        Dataset name as given to :func:`fetch`.
    base_url
        URL that every relative path of ``files`` and ``archives`` is appended to.
    files
        Files downloaded one by one.
    archives
        Archives downloaded and then partly extracted.
    listing
        Further files discovered from a GitHub tree listing (files already in
        ``files`` take precedence).
    """

    name: str
    base_url: str
    files: tuple[RemoteFile, ...] = ()
    archives: tuple[TarArchive, ...] = ()
    listing: GitTreeListing | None = None

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise GR2STConfigError(f"manifest {self.name}: duplicate file paths")


def _check_relative(path: str) -> None:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise GR2STConfigError(
            f"manifest path {path!r} must be relative and stay inside the folder"
        )


# ----------------------------------------------------------------------------- HER2ST

HER2ST_COMMIT: Final = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_SECTIONS: Final = tuple(
    f"{patient}{i}"
    for patient, n in zip("ABCDEFGH", (6, 6, 6, 6, 3, 3, 3, 3), strict=True)
    for i in range(1, n + 1)
)
_HER2ST_BASE: Final = f"https://raw.githubusercontent.com/almaan/her2st/{HER2ST_COMMIT}/data/"
_HER2ST_TREE: Final = (
    f"https://api.github.com/repos/almaan/her2st/git/trees/{HER2ST_COMMIT}?recursive=1"
)

# (size, sha256) of the files at HER2ST_COMMIT, computed on a copy taken unchanged from it.
_HER2ST_COUNTS: Final = {
    "A1": (1033376, "d91035e5d8a9c4ce7865e4c61446deec1a7318602d41b3220e9fcb3ce7e41fe3"),
    "A2": (1340590, "1c84f44bfc0bce6d5647b78e4598e2456f769e29f72ca52911d5bc4be81e410c"),
    "A3": (1358980, "dd0107ff76b643d7b72330c7bfe282e2b27eb7dd58b77680b0e6bcbeae95852f"),
    "A4": (1297246, "3283ba1bf1550b26119966fe06a844d815e7fc73c493943b936dd3d933c4c331"),
    "A5": (1247949, "ff40c29d552391b3a4c4f37bb8c5cefce82e4dc64a277d4b80e2425405c59722"),
    "A6": (1314417, "65b4f4d25b1afab5b6556c7a6aab2b8910562d03b173cebcf568ab7190695aec"),
    "B1": (657516, "97b3abf2676c596ac7dd53829780005724cab62a6f676697516006481a443f74"),
    "B2": (596436, "b43cef41e3164ffe4a3b43b6ed396f664d971451d3dc151dea4d91a09e84d95c"),
    "B3": (613993, "bd1fd03f33bdc14ca68a271525587d27b1e78323ea695413d274d6c388becf7a"),
    "B4": (563881, "e38231c2a38c9bc7e6d550eec0e527c1869ee0e525fc913e708d1323c34f5ebb"),
    "B5": (688429, "05bdd1ea4234f62d5223f94a96d37f2f87b48e95062251560cdd676f5514948a"),
    "B6": (625356, "bfb2b4e5d99b6021c43f546a3e773c32f4f13a4b461cdd1684d364f9fe550e2b"),
    "C1": (752999, "8383130eebf0f9f8186f006ed6b704149ba62303605a312a9080fa9901be9c20"),
    "C2": (821408, "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d"),
    "C3": (847901, "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a"),
    "C4": (886246, "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da"),
    "C5": (845308, "c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338"),
    "C6": (892853, "60478b0d2411501866685f41312c65c6591e499d64d5b719be8ee9bab25c9bc8"),
    "D1": (1251370, "8fe13d29763b3f6a9e85322dae97e05c4ca42b57cef4b1077c88b9b7b6a980ac"),
    "D2": (990376, "e63818ad8717b47ca949e082c1f28b9c807475b8d722a6f5c1acda7b618b5495"),
    "D3": (1061872, "0bdfa82f3a2f4c659757cbd9f9b5734f9faabc44c4ee72094bf2b8609c86e01f"),
    "D4": (1023224, "4da2a65ffdd6ce52993e4f68b3730326c00ce9304cf8aebaf125efe9997fb898"),
    "D5": (1073620, "a1592e1742913cd37f2534153467752ded6eade730d5acdc227daad55c9e551f"),
    "D6": (1011895, "3b9ab37e0cacf7956da1354c8c0ee2a7fc5e12be78ccb4d10578df36a6bf7271"),
    "E1": (1017499, "b2f572ea0a95d256cb172a9284e96b6d2ff236398d4934a992df85c96d11c4cc"),
    "E2": (1256268, "a725a87e1a74ef0c096d421664dd9100bf973e5768c28acfa9c17abb63677a95"),
    "E3": (1237843, "8030d33e51c2831f7c758ed0374baa9f121d2e2dce6decd47228ff070c7f0ac4"),
    "F1": (1778749, "187aa13f204d514851d3674dfa09b4a8d7f2676f1d40d2ef63e9e368c7cf672a"),
    "F2": (1880241, "7de4ca7c3ccb923f4d636b21a4639284c66da9d97a93e1ab6712b3c453229c04"),
    "F3": (1900113, "6b7eb2d7ff8c6a8826cfba304de2d3b87bb8e30f68d050b83007de9888546743"),
    "G1": (852454, "396153436dfc39e199bdc01447b3f8929aef598d7064c0c24a33da00f54570ea"),
    "G2": (954118, "9d51a5ed85bdf60069dcf51beeffba4e90e35e8630ec3b707a2453ffdd608e3b"),
    "G3": (837354, "9fd3c8efb94239b567157860224a33417d798a65d3a28fb9982651795cb2259e"),
    "H1": (972770, "90b391782535f38c9ab20fe8b38f44ebbfdad2201075a677a198cbef12c29b07"),
    "H2": (1023577, "e839f271f2cde0ccf8f43f4358133f066be5d75d982839eba75abd7967486a34"),
    "H3": (733852, "5771d4793f4e1377ed066f27cdbc703d3317c81b7dd5323a175d2227c7e3ae1d"),
}
_HER2ST_SPOTS: Final = {
    "A1": (12879, "e5f79223be2ea2aebb082c4759059ab7079b0132052d0944209048ac57788c5d"),
    "A2": (11958, "b21f48c8492ff1d71c0d0d396dbde64735ff8fa5419bcc6f5cffe60f68d7cb09"),
    "A3": (13441, "09a5434745c4ce3c6859f3af00ea414a4b947685977e97f24595e77d1a0ff78e"),
    "A4": (12712, "d1e41fb1d50ea04b55743f3c67104bdde46e1aea6a086e6cfdaf5109da0d2e02"),
    "A5": (12398, "1237571fecfa2809292eeb7c7ee6b7da220a516121b94a71802cbbc971dc0daa"),
    "A6": (11860, "d771bdc9dcb386cce0e628339c9ff94e5392fff191790b31aba4d73ff44b7554"),
    "B1": (10794, "7ea9963677db80199db928d763b0b34ea1015fb7452e85ac7b21d42ee15c3875"),
    "B2": (9838, "963e3f0b0e6eb17586788f2228dbd829ca7d13eb0211bf8b1a5685d3a33b8153"),
    "B3": (10924, "23b07cc9e5142802915cefedb7a8259766b58544fa7a2ac3eda21feaa267b9c9"),
    "B4": (10560, "192b46f3ca414c85753a01a4fb5760a697ca6c0a1aadb949c4687cc6efa9faa0"),
    "B5": (10631, "dc206c6e6448e81ba55d01f16fa862d07f5f7087fe16772eab919355e43cd1a7"),
    "B6": (10247, "63b90d6283071d2db43d5486eeba0e76091998e64fa8c4a95b4501086c8aff33"),
    "C1": (6631, "9a5187c98d2c312064057d3bad192d4a19105b5135ff2b68f5e4547cade0954d"),
    "C2": (7053, "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c"),
    "C3": (6728, "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755"),
    "C4": (6960, "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c"),
    "C5": (6802, "2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c"),
    "C6": (6655, "efdbbc6759c6af43baa966505c31705f09c087c1dccf1ea3e0d1db7b55717117"),
    "D1": (11444, "7ba7843b52ddc2b147ee968fe9466a5d1fa0d884b51def292ce340d88da034eb"),
    "D2": (11223, "5e0cadc230094060d071124cfb5ab6223d3dbb56b6aa6c3e4f8f9c8f1e329fb5"),
    "D3": (11120, "e820564d7720c1fbc9910f5440368a43a2b862d617a9c107582ddb706af61a3b"),
    "D4": (11260, "82e12ff5f14a9564fd0aa9755243e4412e6786fdb559210cef9c3c6ff35a05b0"),
    "D5": (11517, "f19eebb34f6a031fe766715d7f97a7682e201f30097fd0fa15ebf8f34ff95853"),
    "D6": (11921, "82d80015e0e789bbbfe2d6ea033da43207a1803666a0ec5b162db380b3cc1cb7"),
    "E1": (21672, "a979c36f6310fff965c96f05ad290ca322d88e400b5aed2a1139fdd6f0e2da92"),
    "E2": (21116, "1beeac4b7a45e432eb4d9c34460e7a2a3342f77e0bb6dcffae66ae31b1584444"),
    "E3": (21146, "f0fe37cfb98e3757587d0d43d45fc734b3627d336ccab4da179548b86c5c1d9c"),
    "F1": (25344, "cf479a5812c317541c7f7d6a4ebf1bfd93b0a1ab3eef35a8da15b9e76164f2f4"),
    "F2": (25504, "3a9149a67b05971dfb27edb2261d9ffd2443543021356b0d46f26d8237c1a20d"),
    "F3": (26018, "106ba9b275b29fd745116b8961a1a0bb39ec41d9d0433932d6b129f98a46c093"),
    "G1": (16203, "0e2f630e09a7c0e1869918c0c9afebcff36b86006a6809533fb09405c831a01d"),
    "G2": (17128, "abae30bb6f434cb2aae34b8ef56da6b613c840d48c49279d55f4600ad496245c"),
    "G3": (17139, "6f258aa6b4d432d29f0b7ba4a9be64ac7e58fbc430523a41e4eb5bdf13127272"),
    "H1": (22695, "fc9cc5bad3a1e26e48f435696259df38b500042a9565486c15fd37ab7d8f9ed6"),
    "H2": (22331, "c38d3ade8b5674633097b23a66a554831193cee48ba54a7d7418291a9f5533f9"),
    "H3": (18964, "430da6f95105eb660f4e8b9b688d44d0d28b3ff66fee3e201cc160ee5739a28c"),
}
_HER2ST_LABELS: Final = {
    "A1": (22117, "23a0a68dccd54a8397ea4066994edb7110e88373d5b3bc6e35254dda9253fa5f"),
    "B1": (18510, "f7050caa71c47a4c95fcca2a7f29560d387310877b1c9e4a54f841059db837ee"),
    "C1": (11396, "41b6e1bbb1031480d969e725e739971cb39dbdb6e2b6d662d585bebacf093040"),
    "D1": (19707, "c8bf26103d1aac42611d9c85ba3db9c596b9a80ec045ca9b246b8d14d8b3c20f"),
    "E1": (37579, "29db60fe5b306bb982fbd2bbdd1f9c60eedf90c6ac1d56bedd3c18ed5a369829"),
    "F1": (43854, "3b59970f0c6ba09d8e0fc9286ace2a295bf06d36c59684162b7a8aca0e021ec5"),
    "G2": (29799, "8466275647ad125569ee94d099cc7b78c15028968ba1dd267a85a81c001a16ff"),
    "H1": (38594, "b65cbc99ed7a01281bc2eb87be87b902312e47ca91bc1f00ff351489b78434c3"),
    "J1": (16280, "36fa0cdccfd07ca4f77940481f893a6a8b92762bc27abd891cc246fdf2beece1"),
}
_HER2ST_LABELS_README: Final = (
    187,
    "b3aa3b3dde153b91de314794489cbc9a64d9f34bddd09ce3a41884ebd577dd7b",
)
# Image file names differ per section and cannot be derived from the section name.
_HER2ST_IMAGES: Final = {
    "B4": (
        "BT10737_D2_HE.jpg",
        4076552,
        "3cb165614ce2a13426381e450220dccac980cc9bda6a90fb041c28ca0e2c753d",
    ),
    "C2": (
        "5714_HE_BT_C2.jpg",
        3990230,
        "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    ),
    "C3": (
        "5714_HE_BT_D1.jpg",
        3915842,
        "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    ),
    "C4": (
        "5714_HE_BT_D2.jpg",
        3806070,
        "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    ),
    "C5": (
        "5714_HE_BT_E1.jpg",
        3719130,
        "34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65",
    ),
    "C6": (
        "5714_HE_BT_E2.jpg",
        3941039,
        "dddd87232589648861a9b6776dc1749be8306213f6589aeef0e805fb2b1ee263",
    ),
}


#: The sections whose images are pinned here: the HER2ST-6 benchmark's sections.
HER2ST_IMAGED: Final = tuple(_HER2ST_IMAGES)


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


def _her2st_manifest(sections: Sequence[str] | None = None) -> Manifest:
    chosen = _select("her2st", HER2ST_SECTIONS, sections)
    files = [RemoteFile(f"ST-cnts/{s}.tsv.gz", *_HER2ST_COUNTS[s]) for s in chosen]
    files += [RemoteFile(f"ST-spotfiles/{s}_selection.tsv", *_HER2ST_SPOTS[s]) for s in chosen]
    files += [
        RemoteFile(f"ST-imgs/{s[0]}/{s}/{name}", size, sha)
        for s, (name, size, sha) in _HER2ST_IMAGES.items()
        if s in chosen
    ]
    # J1 is labelled but not among the 36 count sections: it comes with the whole set only.
    labels = [s for s in _HER2ST_LABELS if sections is None or s in chosen]
    files += [
        RemoteFile(f"ST-pat/lbl/{s}_labeled_coordinates.tsv", *_HER2ST_LABELS[s]) for s in labels
    ]
    if labels:
        files.append(RemoteFile("ST-pat/lbl/README", *_HER2ST_LABELS_README))
    unpinned = [s for s in chosen if s not in _HER2ST_IMAGES]
    listing = None
    if unpinned:
        names = "[A-Z][0-9]+" if sections is None else "(?:" + "|".join(unpinned) + ")"
        listing = GitTreeListing(
            url=_HER2ST_TREE, prefix="data/", pattern=rf"ST-imgs/[A-Z]/{names}/[^/]+\.jpg"
        )
    return Manifest(name="her2st", base_url=_HER2ST_BASE, files=tuple(files), listing=listing)


# ------------------------------------------------------------------------------- cSCC

CSCC_SECTIONS: Final = tuple(
    f"{patient}_ST_rep{rep}" for patient in ("P2", "P5", "P9", "P10") for rep in (1, 2, 3)
)
_CSCC_BASE: Final = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE144nnn/GSE144240/suppl/"


def _cscc_manifest(sections: Sequence[str] | None = None) -> Manifest:
    members: list[ArchiveMember] = []
    for s in _select("cscc", CSCC_SECTIONS, sections):
        e = re.escape(s)
        members += [
            ArchiveMember(f"{s} counts", rf"GSM[0-9]+_{e}_stdata\.tsv\.gz"),
            ArchiveMember(f"{s} spot file", rf"GSM[0-9]+_spot_data-selection-{e}\.tsv\.gz"),
            ArchiveMember(f"{s} image", rf"GSM[0-9]+_{e}\.jpg", decompress=True),
        ]
    return Manifest(
        name="cscc",
        base_url=_CSCC_BASE,
        archives=(TarArchive("GSE144240_RAW.tar", tuple(members)),),
    )


# ------------------------------------------------------------------------------- HEST

HEST_REPO: Final = "MahmoodLab/hest"
#: Hugging Face hub used unless ``endpoint`` or ``$HF_ENDPOINT`` says otherwise.
HF_ENDPOINT: Final = "https://huggingface.co"
#: Folders fetched per HEST sample (``patches`` on request) and their file suffixes.
HEST_KINDS: Final = {"st": ".h5ad", "wsis": ".tif", "metadata": ".json"}
_HEST_PATCHES: Final = ("patches", ".h5")
_HEST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def hf_token() -> str | None:
    """The Hugging Face token: ``$HF_TOKEN``, else huggingface_hub's login, else None.

    Examples
    --------
    >>> hf_token()  # doctest: +SKIP
    'hf_…'
    """
    if token := os.environ.get("HF_TOKEN", "").strip():
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


def hest_manifest(
    ids: Sequence[str],
    *,
    patches: bool = False,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> Manifest:
    """The files of HEST-1k samples ``ids`` with their sizes and hashes, from the hub.

    One POST to ``<endpoint>/api/datasets/MahmoodLab/hest/paths-info/<revision>``
    gives, per file, its size and either the sha256 of its content (files stored with
    git LFS / Xet, ``lfs.oid``) or its git blob id (small files, ``oid``). Downloads
    then come from ``<endpoint>/datasets/MahmoodLab/hest/resolve/<revision>/<path>``.

    Parameters
    ----------
    ids
        Sample ids, e.g. ``["TENX95", "NCBI783"]`` (the ``id`` column of the hub's
        ``HEST_v1_1_0.csv``).
    patches
        Also fetch ``patches/<id>.h5`` (HEST's own patches; gr2st does not need them).
    revision
        Branch, tag or commit of the dataset.
    endpoint
        Hub URL (default ``$HF_ENDPOINT``, else https://huggingface.co); a mirror of the
        hub, or a local server in tests.
    token
        Hugging Face token (default :func:`hf_token`).
    timeout_s
        Socket timeout of the request.

    Raises
    ------
    GR2STConfigError
        No ids, or an id that cannot be a HEST id.
    DownloadError
        The hub refuses (gated dataset without a token), fails, or lacks a file.

    Examples
    --------
    >>> m = hest_manifest(["TENX95"])  # doctest: +SKIP
    >>> [f.path for f in m.files]  # doctest: +SKIP
    ['st/TENX95.h5ad', 'wsis/TENX95.tif', 'metadata/TENX95.json']
    """
    ids = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not ids:
        raise GR2STConfigError("hest: give the sample ids to fetch (--ids TENX95,…)")
    bad = [i for i in ids if not _HEST_ID.fullmatch(i)]
    if bad:
        raise GR2STConfigError(f"hest: {bad} are not HEST sample ids (e.g. TENX95)")
    base = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    kinds = [*HEST_KINDS.items(), *([_HEST_PATCHES] if patches else [])]
    paths = [f"{kind}/{i}{suffix}" for i in ids for kind, suffix in kinds]
    rev = urllib.parse.quote(revision, safe="")
    url = f"{base}/api/datasets/{HEST_REPO}/paths-info/{rev}"
    headers = _auth(token if token is not None else hf_token())
    entries = _paths_info(url, paths, headers=headers, timeout_s=timeout_s)
    missing = [p for p in paths if p not in entries]
    if missing:
        raise DownloadError(
            f"{HEST_REPO}@{revision} has no {', '.join(missing[:6])}"
            f"{' …' if len(missing) > 6 else ''}; check the ids against the hub's "
            "HEST_v1_1_0.csv"
        )
    return Manifest(
        name="hest",
        base_url=f"{base}/datasets/{HEST_REPO}/resolve/{rev}/",
        files=tuple(_hub_file(entries[p], p, url=url) for p in paths),
    )


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _paths_info(
    url: str, paths: Sequence[str], *, headers: dict[str, str], timeout_s: float
) -> dict[str, dict[str, Any]]:
    body = urllib.parse.urlencode([("paths", p) for p in paths]).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={
            "User-Agent": _USER_AGENT,
            "Content-Type": "application/x-www-form-urlencoded",
            **headers,
        },
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            listing = json.load(response)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise DownloadError(
                f"{url} refused access (HTTP {err.code}): {HEST_REPO} is gated; accept its "
                f"terms at https://huggingface.co/datasets/{HEST_REPO} and set HF_TOKEN to a "
                "read token (or run `huggingface-cli login`)"
            ) from None
        raise DownloadError(f"{url} failed: HTTP {err.code} {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"network failure fetching {url}: {err}") from None
    except ValueError as err:
        raise DownloadError(f"{url} did not return JSON ({err})") from None
    if not isinstance(listing, list):
        raise DownloadError(f"{url} did not return a list of paths")
    return {
        e["path"]: e
        for e in listing
        if isinstance(e, dict) and e.get("type") == "file" and isinstance(e.get("path"), str)
    }


def _hub_file(entry: dict[str, Any], path: str, *, url: str) -> RemoteFile:
    """A hub file entry as a :class:`RemoteFile` (content sha256 for LFS files)."""
    lfs = entry.get("lfs")
    try:
        if isinstance(lfs, dict):
            return RemoteFile(path, size=int(lfs["size"]), sha256=str(lfs["oid"]))
        return RemoteFile(path, size=int(entry["size"]), git_sha1=str(entry["oid"]))
    except (KeyError, TypeError, ValueError, GR2STConfigError):
        raise DownloadError(f"{url}: entry {path} lacks a size or a valid hash") from None


_DATASETS: Final[Registry[Callable[[Sequence[str] | None], Manifest]]] = Registry("dataset")
_DATASETS.register("her2st")(_her2st_manifest)
_DATASETS.register("cscc")(_cscc_manifest)


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_manifest` and :func:`fetch`.

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
        images are all pinned here (e.g. :data:`HER2ST_IMAGED`) needs no tree listing.

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


# ----------------------------------------------------------------------------- transfer


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


class _CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but drop the ``Authorization`` header when they change host.

    A hub answers a download with a redirect to its storage host (a CDN with signed
    URLs); the hub's token must not travel there.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _host(newurl) != _host(req.full_url):
            new.remove_header("Authorization")
        return new


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


_OPENER: Final = urllib.request.build_opener(_CredentialsStayHome)


def _transfer(
    url: str,
    part: Path,
    *,
    offset: int,
    progress: bool,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> int:
    """Stream ``url`` into ``part`` from byte ``offset``; return the bytes received."""
    headers = {"User-Agent": _USER_AGENT, **(headers or {})}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with _OPENER.open(request, timeout=timeout_s) as response:
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise ConnectionError(f"server answered range start {start}, asked {offset}")
        else:
            offset = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = 0
        with (
            open(part, "ab" if offset else "wb") as fh,
            tqdm(
                total=total,
                initial=offset,
                desc=part.name[: -len(".part")],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and offset + received < total:
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")
    return received


def _hashes(path: Path) -> tuple[str, str]:
    """Hex sha256 and git blob sha1 of a file, in one pass."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            sha256.update(block)
            git.update(block)
    return sha256.hexdigest(), git.hexdigest()


def _mismatch(
    path: Path, *, size: int | None, sha256: str | None, git_sha1: str | None
) -> str | None:
    """Describe how ``path`` differs from the expectations, or None if it matches."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if sha256 is None and git_sha1 is None:
        return None
    got_sha256, got_git = _hashes(path)
    if sha256 is not None and got_sha256 != sha256:
        return f"sha256 {got_sha256}, expected {sha256}"
    if git_sha1 is not None and got_git != git_sha1:
        return f"git blob id {got_git}, expected {git_sha1}"
    return None


def download_file(
    url: str,
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    sha256: str | None = None,
    git_sha1: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> int:
    """Download ``url`` to ``path`` through ``<path>.part``, resuming and checking it.

    An existing ``.part`` is continued with an HTTP ``Range`` request (a server that
    ignores it sends the whole file, which then replaces the partial one). Network
    failures are retried ``retries`` times, each retry resuming where the last one
    stopped. The file gets its final name only once size and hashes match.

    Parameters
    ----------
    url
        Where to download from.
    path
        Final location; its folder is created.
    size, sha256, git_sha1
        Expectations checked on the complete file (None: not checked).
    progress
        Show a byte progress bar.
    retries
        Extra attempts after a network failure or a server error (HTTP 5xx).
    retry_wait_s
        Wait before retry ``k`` is ``k * retry_wait_s`` seconds.
    timeout_s
        Socket timeout of one request.
    headers
        Extra request headers (e.g. ``Authorization``; dropped on a redirect to
        another host).

    Returns
    -------
    int
        Bytes received over the network (excluding a resumed prefix).

    Raises
    ------
    DownloadError
        On HTTP 404 or another client error, when retries are exhausted, or when the
        content does not match (the bad file is then removed).

    Examples
    --------
    >>> download_file(  # doctest: +SKIP
    ...     "https://example.org/a.tsv", "data/a.tsv", size=12, sha256="…"
    ... )
    12
    """
    final = Path(path)
    part = _part_path(final)
    part.parent.mkdir(parents=True, exist_ok=True)
    received = 0
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is not None and offset == size:
            break  # complete from an earlier run that stopped before the rename
        try:
            received += _transfer(
                url, part, offset=offset, progress=progress, timeout_s=timeout_s, headers=headers
            )
            break
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise DownloadError(f"{url} was not found (HTTP 404)") from None
            if err.code in (401, 403):
                raise DownloadError(
                    f"{url} refused access (HTTP {err.code}); for a gated dataset accept its "
                    "terms and give a token"
                ) from None
            if err.code == 416 and offset > 0 and attempt < retries:
                part.unlink()  # the partial file does not fit this resource: start over
            elif err.code < 500 or attempt >= retries:
                raise DownloadError(f"{url} failed: HTTP {err.code} {err.reason}") from None
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or str(err) or type(err).__name__
            # An unknown host name (offline, no DNS) does not come back within seconds.
            if attempt >= retries or isinstance(reason, socket.gaierror):
                kept = part.stat().st_size if part.exists() else 0
                resume = f"; {kept} bytes kept in {part}, run again to resume" if kept else ""
                raise DownloadError(f"network failure fetching {url}: {reason}{resume}") from None
        attempt += 1
        time.sleep(retry_wait_s * attempt)
    problem = _mismatch(part, size=size, sha256=sha256, git_sha1=git_sha1)
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: {problem}; the bad download was removed, "
            "run again to fetch it anew"
        )
    os.replace(part, final)
    return received


# ------------------------------------------------------------------------------ archives


def _check_member_name(name: str, archive: Path) -> None:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise DownloadError(f"{archive}: unsafe member name {name!r} (leaves the folder)")


def extract_members(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], members: Sequence[ArchiveMember]
) -> list[str]:
    """Extract the wanted members of a tar file flat into ``dest``.

    Only regular-file members whose whole name matches a wanted pattern are written,
    under a name taken from that pattern match (never a path from the archive), each
    through an atomic rename. Links, folders and other members are ignored; an
    absolute member name or one with ``..`` is refused.

    Returns
    -------
    list[str]
        The written file names, in the order of ``members``.

    Raises
    ------
    DownloadError
        If the archive is unreadable (it is then removed), unsafe, holds a wanted
        member twice, or lacks one.

    Examples
    --------
    >>> extract_members(  # doctest: +SKIP
    ...     "GSE144240_RAW.tar", "data/cscc", get_manifest("cscc").archives[0].members
    ... )[:1]
    ['GSM4284316_P2_ST_rep1_stdata.tsv.gz']
    """
    archive = Path(archive)
    dest = Path(dest)
    found: dict[int, str] = {}
    try:
        with tarfile.open(archive) as tar:
            for info in tar:
                _check_member_name(info.name, archive)
                if not info.isfile():
                    continue
                for index, member in enumerate(members):
                    out = member.output_name(info.name)
                    if out is None:
                        continue
                    if index in found:
                        raise DownloadError(f"{archive}: more than one {member.label} member")
                    _extract_one(tar, info, dest / out, gunzip=out != info.name, archive=archive)
                    found[index] = out
                    break
    except tarfile.TarError as err:
        archive.unlink()
        raise DownloadError(
            f"{archive} is not a readable tar ({' '.join(str(err).split())}); it was removed, "
            "run again to fetch it"
        ) from None
    missing = [m.label for i, m in enumerate(members) if i not in found]
    if missing:
        raise DownloadError(f"{archive} lacks: {', '.join(missing)}")
    return [found[i] for i in sorted(found)]


def _extract_one(
    tar: tarfile.TarFile, info: tarfile.TarInfo, out: Path, *, gunzip: bool, archive: Path
) -> None:
    source = tar.extractfile(info)
    if source is None:
        raise DownloadError(f"{archive}: member {info.name} has no content")
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            shutil.copyfileobj(gzip.GzipFile(fileobj=source) if gunzip else source, fh, _CHUNK)
    except (gzip.BadGzipFile, EOFError) as err:
        raise DownloadError(f"{archive}: member {info.name} is not valid gzip ({err})") from None


def _has_output(dest: Path, member: ArchiveMember) -> bool:
    return dest.is_dir() and any(
        p.is_file() and re.fullmatch(member.pattern, p.name) for p in dest.iterdir()
    )


# -------------------------------------------------------------------------------- fetch


@dataclass
class FetchReport:
    """What :func:`fetch` did.

    Attributes
    ----------
    dataset
        Name of the manifest fetched.
    dest
        Absolute destination folder (the ``--data`` argument of ``gr2st benchmark``).
    downloaded
        Relative paths downloaded now (archives included).
    skipped
        Relative paths (or archive paths) already present and correct.
    extracted
        File names written from archives.
    bytes_downloaded
        Bytes received over the network.
    """

    dataset: str
    dest: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def _get_json(url: str, *, timeout_s: float) -> Any:
    request = urllib.request.Request(
        url, headers={"User-Agent": _USER_AGENT, "Accept": "application/vnd.github+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url} failed: HTTP {err.code} {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"network failure fetching {url}: {err}") from None
    except ValueError as err:
        raise DownloadError(f"{url} did not return JSON ({err})") from None


def _listed_files(
    listing: GitTreeListing, *, url: str, known: Iterable[str], timeout_s: float
) -> list[RemoteFile]:
    """Files of a GitHub tree listing that match the listing's pattern and are not known."""
    manual = (
        f"manual step: clone the repository at that commit and copy the files under "
        f"{listing.prefix} (pattern {listing.pattern}) into the destination"
    )
    try:
        tree = _get_json(url, timeout_s=timeout_s)
        if not isinstance(tree, dict) or not isinstance(tree.get("tree"), list):
            raise DownloadError(f"{url} is not a git tree listing")
        if tree.get("truncated"):
            raise DownloadError(f"{url} returned a truncated listing")
    except DownloadError as err:
        raise DownloadError(f"{err}; {manual}") from None
    known = set(known)
    files = []
    matched = 0
    for entry in tree["tree"]:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or entry.get("type") != "blob":
            continue
        relative = path.removeprefix(listing.prefix)
        if relative == path or not re.fullmatch(listing.pattern, relative):
            continue
        matched += 1
        if relative in known:
            continue
        size, sha = entry.get("size"), entry.get("sha")
        if not isinstance(size, int) or not isinstance(sha, str) or not _GIT_SHA1_RE.fullmatch(sha):
            raise DownloadError(f"{url}: entry {path} lacks an integer size or a git blob id")
        files.append(RemoteFile(relative, size=size, git_sha1=sha))
    if not matched:
        raise DownloadError(f"{url} lists no file matching {listing.pattern}; {manual}")
    return files


def _plan(name: str, todo: Sequence[RemoteFile], base: str, root: Path) -> str:
    """One line: what :func:`fetch` is about to download, from where, into where."""
    if not todo:
        return f"{name}: every file is already in {root}"
    size = f"{sum(f.size or 0 for f in todo) / 2**20:.1f} MiB"
    if any(f.size is None for f in todo):
        size = "size unknown" if all(f.size is None for f in todo) else f"at least {size}"
    plural = "s" if len(todo) > 1 else ""
    return f"{name}: downloading {len(todo)} file{plural} ({size}) from {base} into {root}"


def _is_current(path: Path, f: RemoteFile) -> bool:
    return (
        path.is_file()
        and _mismatch(path, size=f.size, sha256=f.sha256, git_sha1=f.git_sha1) is None
    )


def fetch(
    dataset: str | Manifest,
    dest: str | os.PathLike[str],
    *,
    sections: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    mirror: str | None = None,
    listing_url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
    keep_archives: bool = False,
    headers: dict[str, str] | None = None,
) -> FetchReport:
    """Download a dataset into ``dest`` in the layout its reader expects.

    Parameters
    ----------
    dataset
        A name from :func:`dataset_names`, or a :class:`Manifest`.
    dest
        Destination folder; created if missing. Files already there with the right
        size and hash are kept; a wrong one is downloaded again.
    sections
        Fetch only these sections of a named dataset (see :func:`get_manifest`).
    log
        Called once, before any transfer, with a line saying how many files (and
        bytes) will be downloaded from where into where.
    mirror
        Base URL to use instead of the manifest's (same relative paths).
    listing_url
        URL of the GitHub tree listing to use instead of the manifest's.
    progress
        Show progress bars (files, then bytes of the current file).
    retries, retry_wait_s, timeout_s
        Network retry policy, see :func:`download_file`.
    keep_archives
        Keep downloaded archives after extracting them.
    headers
        Extra request headers of every download (see :func:`download_file`).

    Returns
    -------
    FetchReport
        What was downloaded, skipped and extracted.

    Raises
    ------
    DownloadError
        A file is missing on the server, the network failed, or content does not
        match (see :func:`download_file` and :func:`extract_members`).
    GR2STConfigError
        ``dataset`` is not a known name.

    Examples
    --------
    >>> report = fetch("cscc", "data/cscc", progress=False)  # doctest: +SKIP
    >>> report.extracted[0]  # doctest: +SKIP
    'GSM4284316_P2_ST_rep1_stdata.tsv.gz'
    """
    if isinstance(dataset, str):
        manifest = get_manifest(dataset, sections=sections)
    elif sections is not None:
        raise GR2STConfigError("fetch: sections applies to a dataset name, not a Manifest")
    else:
        manifest = dataset
    root = Path(dest).expanduser().resolve()
    base = (mirror or manifest.base_url).rstrip("/") + "/"
    files = list(manifest.files)
    if manifest.listing is not None:
        files += _listed_files(
            manifest.listing,
            url=listing_url or manifest.listing.url,
            known=(f.path for f in files),
            timeout_s=timeout_s,
        )
    report = FetchReport(dataset=manifest.name, dest=root)
    options: dict[str, Any] = {
        "progress": progress,
        "retries": retries,
        "retry_wait_s": retry_wait_s,
        "timeout_s": timeout_s,
        "headers": headers,
    }
    todo = [f for f in files if not _is_current(root / f.path, f)]
    report.skipped += [f.path for f in files if f not in todo]
    pending = [a for a in manifest.archives if not all(_has_output(root, m) for m in a.members)]
    if log is not None:
        log(
            _plan(
                manifest.name, [*todo, *(RemoteFile(a.path, a.size) for a in pending)], base, root
            )
        )
    for f in tqdm(todo, desc=manifest.name, unit="file", disable=not progress or not todo):
        target = root / f.path
        report.bytes_downloaded += download_file(
            base + urllib.parse.quote(f.path),
            target,
            size=f.size,
            sha256=f.sha256,
            git_sha1=f.git_sha1,
            **options,
        )
        report.downloaded.append(f.path)
    for archive in manifest.archives:
        if archive not in pending:
            report.skipped.append(archive.path)
            continue
        local = root / PurePosixPath(archive.path).name
        entry = RemoteFile(archive.path, size=archive.size, sha256=archive.sha256)
        if not _is_current(local, entry):
            report.bytes_downloaded += download_file(
                base + urllib.parse.quote(archive.path),
                local,
                size=archive.size,
                sha256=archive.sha256,
                **options,
            )
            report.downloaded.append(archive.path)
        report.extracted += extract_members(local, root, archive.members)
        if not keep_archives:
            local.unlink()
    return report
