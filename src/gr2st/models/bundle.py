"""The one saved-model format: a self-contained bundle folder.

A bundle is one folder, written atomically (built next to its final name, then renamed):

``bundle.json``
    Schema version, package version, method, profile and full configuration, the
    training sections (names and spot names), the panel and all-genes names, the bank's
    layout, the image settings when known (encoder name, width and weights hash, patch
    size in pixels and microns, stain normaliser, nuclei source), the sha256 of every
    data file, a fingerprint, creation time and command line.
``weights.safetensors``
    The network's state dict.
``bank.safetensors``
    The reference bank: the training spots' embeddings (``keys``, float32), their image
    embeddings (``image_keys``, float32; older bundles lack them), their
    log-normalised panel expression (``panel``, dense float32), their training section
    index (``groups``, int64) and, when saved, their log-normalised expression of every
    gene measured in all training sections (normalised with the panel library size) as
    a CSR matrix (``all_data`` float32, ``all_indices`` int32, ``all_indptr`` int64).
    The CSR form is exact; on HER2ST-6 (1,187 spots × 13,891 genes, 25 % non-zero) it
    takes 33 MB, as much as a dense float16 matrix without float16's rounding.

:meth:`gr2st.models.GR2ST.save` writes it and :meth:`gr2st.models.GR2ST.load` reads it;
:func:`read_bundle` checks every file against ``bundle.json`` before anything is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gr2st import __version__
from gr2st._utils.files import sha256_bytes, sha256_file
from gr2st.errors import GR2STConfigError, GR2STDataError

log = logging.getLogger(__name__)

#: Version of the bundle layout; bumped on any incompatible change.
SCHEMA_VERSION = 2
BUNDLE_FORMAT = "gr2st-bundle"
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
BANK_FILE = "bank.safetensors"
#: Methods a bundle can hold.
BUNDLE_METHODS = ("gr2st",)
PANEL_BANK = ("keys", "panel", "groups")
ALL_GENES_BANK = ("all_data", "all_indices", "all_indptr")
#: The training spots' image embeddings (``predict.bank`` ``images``/``both``).
IMAGE_KEYS = "image_keys"
_REQUIRED = (
    "method", "config", "image_dim", "feature_key", "train_sections", "genes", "bank",
    "files", "fingerprint",
)  # fmt: skip


@dataclass(frozen=True)
class ImageSettings:
    """How the training features were made: what predicting from a new image needs.

    Attributes
    ----------
    encoder, encoder_dim, encoder_weights_hash
        The frozen patch encoder (registry name, feature width, sha256 of its weights).
    size_px
        Patch side in full-resolution pixels of the training images.
    training_mpp
        Median microns per pixel of the training images (None when unknown).
    stain
        ``{"name", "key", "reference"}`` of the stain normaliser (``name`` ``"none"``
        for none; ``reference`` holds a fitted Reinhard's LAB statistics).
    nuclei
        Nuclei source (``classical``, ``hovernet:…`` or ``none``).
    """

    encoder: str
    encoder_dim: int
    encoder_weights_hash: str
    size_px: int
    training_mpp: float | None
    stain: dict[str, Any]
    nuclei: str

    @property
    def size_um(self) -> float | None:
        """Training patch side in microns, when the training resolution is known."""
        return None if self.training_mpp is None else self.size_px * self.training_mpp

    def to_meta(self) -> dict[str, Any]:
        """The ``bundle.json`` fields of these settings."""
        return {
            "encoder": {
                "name": self.encoder,
                "dim": self.encoder_dim,
                "weights_hash": self.encoder_weights_hash,
            },
            "patch": {
                "size_px": self.size_px,
                "size_um": self.size_um,
                "training_mpp": self.training_mpp,
            },
            "stain": self.stain,
            "nuclei": self.nuclei,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ImageSettings | None:
        """The settings stored in ``meta`` (None for a bundle saved without them)."""
        if meta.get("encoder") is None:
            return None
        try:
            enc, patch = meta["encoder"], meta["patch"]
            mpp = patch.get("training_mpp")
            return cls(
                encoder=str(enc["name"]),
                encoder_dim=int(enc["dim"]),
                encoder_weights_hash=str(enc["weights_hash"]),
                size_px=int(patch["size_px"]),
                training_mpp=None if mpp is None else float(mpp),
                stain=dict(meta["stain"]),
                nuclei=str(meta["nuclei"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GR2STConfigError(f"{META_FILE}: malformed image settings ({exc})") from None


def meta_fingerprint(meta: dict[str, Any]) -> str:
    """sha256 of what determines predictions (not the creation time or command)."""
    keep = {k: v for k, v in meta.items() if k not in ("created", "command", "fingerprint")}
    return sha256_bytes(json.dumps(keep, sort_keys=True).encode())


def write_bundle(
    path: str | Path,
    *,
    meta: dict[str, Any],
    weights: dict[str, torch.Tensor],
    bank: dict[str, torch.Tensor],
) -> Path:
    """Write a bundle folder atomically; an existing one is replaced only once complete.

    ``meta`` gets the format fields, the files' sha256 and the fingerprint added.
    """
    meta = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "gr2st_version": __version__,
        **meta,
    }
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / WEIGHTS_FILE
        )
        save_file({k: v.detach().cpu().contiguous() for k, v in bank.items()}, tmp / BANK_FILE)
        meta["files"] = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, BANK_FILE)}
        meta["fingerprint"] = meta_fingerprint(meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o755)
        if final.exists():
            # Swap in the new folder first, then drop the old one: never a half bundle.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def read_bundle(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read and check a bundle folder: ``(meta, weights, bank)``.

    Checks, each failing with a one-line error naming the file or field: the folder and
    ``bundle.json`` exist, the format, schema version and method are supported, the
    metadata matches its fingerprint, every data file exists and matches its sha256,
    and the bank's tensors have the shapes the metadata describes. A bundle of an
    older schema is converted in memory with a warning.

    Raises
    ------
    GR2STConfigError
        Not a bundle, unsupported schema or method, edited metadata.
    GR2STDataError
        Missing or corrupted weights or bank.
    """
    folder = Path(path)
    meta = _read_meta(folder)
    for name in (WEIGHTS_FILE, BANK_FILE):
        file = folder / name
        if not file.is_file():
            raise GR2STDataError(f"{file}: missing from the bundle")
        if sha256_file(file) != meta["files"].get(name):
            raise GR2STDataError(
                f"{file}: sha256 differs from {META_FILE}'s files.{name}; the file is corrupted "
                "or was replaced"
            )
    bank = _load_tensors(folder / BANK_FILE)
    has_image_keys = bool(meta["bank"].get(IMAGE_KEYS))
    expected_tensors = PANEL_BANK + (ALL_GENES_BANK if meta["genes"]["all"] else ())
    if has_image_keys:
        expected_tensors += (IMAGE_KEYS,)
    missing = [k for k in expected_tensors if k not in bank]
    if missing:
        raise GR2STDataError(f"{folder / BANK_FILE}: missing tensor(s) {missing}")
    n_spots = sum(int(s["n_spots"]) for s in meta["train_sections"])
    shapes = {
        "keys": (n_spots, int(meta["bank"]["embedding_dim"])),
        "panel": (n_spots, len(meta["genes"]["panel"])),
        "groups": (n_spots,),
    }
    if has_image_keys:
        shapes[IMAGE_KEYS] = shapes["keys"]
    if meta["genes"]["all"]:
        shapes["all_indptr"] = (n_spots + 1,)
    for name, shape in shapes.items():
        if tuple(bank[name].shape) != shape:
            raise GR2STDataError(
                f"{folder / BANK_FILE}: tensor {name!r} has shape {tuple(bank[name].shape)}, "
                f"expected {shape} from {META_FILE}"
            )
    return meta, _load_tensors(folder / WEIGHTS_FILE), bank


def _read_meta(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise GR2STConfigError(f"{folder}: no such bundle folder")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise GR2STConfigError(f"{meta_path}: missing; not a gr2st bundle (run `gr2st train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GR2STConfigError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise GR2STConfigError(f"{meta_path}: format is not {BUNDLE_FORMAT!r}")
    version = meta.get("schema_version")
    if version not in (1, SCHEMA_VERSION):
        raise GR2STConfigError(
            f"{meta_path}: schema_version {version!r} is not supported by gr2st {__version__} "
            f"(reads 1 and {SCHEMA_VERSION}); retrain the bundle with this version"
        )
    if "fingerprint" not in meta or meta_fingerprint(meta) != meta["fingerprint"]:
        raise GR2STConfigError(
            f"{meta_path}: fingerprint does not match the file's content (edited by hand?)"
        )
    _check_writer_version(meta.get("gr2st_version"), meta_path)
    if version == 1:
        meta = _upgrade_v1(meta, meta_path)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise GR2STConfigError(f"{meta_path}: missing field(s) {missing}")
    if meta["method"] not in BUNDLE_METHODS:
        raise GR2STConfigError(
            f"{meta_path}: method {meta['method']!r} is not supported; bundles hold "
            f"{', '.join(BUNDLE_METHODS)}"
        )
    return meta


def _release(version: object) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string, or None when it is not a release number."""
    match = re.match(r"^(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_writer_version(written_by: object, where: Path) -> None:
    """Refuse a bundle from a newer major gr2st; warn for one from an older release.

    Examples
    --------
    >>> _check_writer_version("99.0.0", Path("meta.json"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: meta.json: written by gr2st 99.0.0, a newer major version ...
    """
    theirs, ours = _release(written_by), _release(__version__)
    if theirs is None or ours is None:
        return  # a development build on either side: nothing to compare
    if theirs[0] > ours[0]:
        raise GR2STConfigError(
            f"{where}: written by gr2st {written_by}, a newer major version than this gr2st "
            f"{__version__}; upgrade gr2st (pip install -U gr2st) to read it"
        )
    if theirs < ours:
        log.warning(
            "%s: written by gr2st %s, older than this gr2st %s; it is read as is, but "
            "retraining with this version is recommended",
            where,
            written_by,
            __version__,
        )


def _upgrade_v1(meta: dict[str, Any], where: Path) -> dict[str, Any]:
    """Schema 1 (gr2st 0.1): image settings always present, no spot names, old spellings."""
    log.warning("%s: schema_version 1 bundle; reading it with compatibility conversions", where)
    meta = dict(meta)
    train = dict(meta.get("config", {}).get("train", {}))
    if "optimiser_per_epoch" in train:
        train["optimizer_per_epoch"] = train.pop("optimiser_per_epoch")
    meta["config"] = {**meta.get("config", {}), "train": train}
    meta["profile"] = {"reference": "paper"}.get(meta.get("profile", ""), meta.get("profile"))
    meta["image_dim"] = meta.get("encoder", {}).get("dim")
    return meta


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GR2STDataError(f"{file}: cannot read safetensors ({exc})") from None
