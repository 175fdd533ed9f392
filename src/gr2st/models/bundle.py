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

:class:`BundleMeta` owns the ``bundle.json`` schema: :meth:`gr2st.models.GR2ST.save`
writes one, :func:`read_bundle` validates every field of it (one-line errors naming the
field) and checks every file against it before anything is used, and
:meth:`gr2st.models.GR2ST.load` reads the model from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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


def _field(meta: dict[str, Any], name: str, check: Callable[[Any], object], expected: str) -> Any:
    """``meta[name]`` (``a.b``/``a.0`` for nested) when ``check`` accepts it, else a
    one-line error."""
    value: Any = meta
    for part in name.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = value.get(part) if isinstance(value, dict) else None
    if not check(value):
        raise GR2STConfigError(f"{META_FILE}: {name} is {value!r}; expected {expected}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _spot_names(v: Any, *, n: int) -> bool:
    # Schema 1 bundles hold no spot names.
    return v is None or v == [] or (_names(v) and len(v) == n)


@dataclass(frozen=True)
class BundleMeta:
    """The model described by ``bundle.json`` (the format fields, file hashes and
    fingerprint are added by :func:`write_bundle`).

    Attributes
    ----------
    method, profile, config, seed, history
        What was trained and how: the method, profile name, full configuration (as
        ``GR2STConfig.to_dict()``), seed and loss of every epoch.
    feature_key, image_dim
        ``obsm`` key and width of the image features the network takes.
    image
        How those features are made from an image (None: features only).
    train_sections
        ``(name, spot names)`` of every training section, in bank order.
    panel, all_genes
        Panel genes (the bank's ``panel`` columns) and the all-genes bank's genes.
    n_spots, embedding_dim, has_image_keys, all_nnz
        Spots in the bank (all training sections'), width of its embeddings, whether
        it holds image embeddings, and the non-zeros of the all-genes matrix.
    created, command
        When and by which command line the bundle was written.
    """

    method: str
    profile: str
    config: dict[str, Any]
    seed: int
    history: list[float]
    feature_key: str
    image_dim: int
    image: ImageSettings | None
    train_sections: list[tuple[str, list[str]]]
    panel: list[str]
    all_genes: list[str]
    n_spots: int
    embedding_dim: int
    has_image_keys: bool
    all_nnz: int
    created: str
    command: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The ``bundle.json`` fields."""
        return {
            "method": self.method,
            "profile": self.profile,
            "config": self.config,
            "seed": self.seed,
            "history": self.history,
            "feature_key": self.feature_key,
            "image_dim": self.image_dim,
            **(self.image.to_meta() if self.image is not None else {"encoder": None}),
            "train_sections": [
                {"name": n, "n_spots": len(o), "obs_names": o} for n, o in self.train_sections
            ],
            "genes": {"panel": self.panel, "all": self.all_genes, "library": "panel"},
            "bank": {
                "n_spots": self.n_spots,
                "embedding_dim": self.embedding_dim,
                IMAGE_KEYS: self.has_image_keys,
                "panel_values": "dense float32",
                "all_values": "CSR float32" if self.all_genes else None,
                "all_nnz": self.all_nnz,
            },
            "created": self.created,
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> BundleMeta:
        """Validate every field of a (current-schema) ``bundle.json``.

        Raises
        ------
        GR2STConfigError
            A field missing, of the wrong type, out of range, or inconsistent with
            another (one line naming the field and what was expected).

        Examples
        --------
        >>> BundleMeta.from_dict({"method": "gr2st"})
        Traceback (most recent call last):
        ...
        gr2st.errors.GR2STConfigError: bundle.json: config is None; expected an object
        """
        method = _field(meta, "method", lambda v: v in BUNDLE_METHODS, f"one of {BUNDLE_METHODS}")
        # profile, seed and history may be absent (older writers): "custom", 0, [].
        meta = {"profile": "custom", "seed": 0, "history": [], **meta}
        profile = _field(meta, "profile", lambda v: isinstance(v, str), "a string")
        config = _field(meta, "config", lambda v: isinstance(v, dict), "an object")
        seed = _field(meta, "seed", _is_int, "an integer")
        history = _field(
            meta,
            "history",
            lambda v: isinstance(v, list) and all(isinstance(x, int | float) for x in v),
            "a list of numbers",
        )
        feature_key = _field(meta, "feature_key", lambda v: isinstance(v, str) and v, "a name")
        image_dim = _field(meta, "image_dim", _positive_int, "a positive integer")
        sections = _field(
            meta,
            "train_sections",
            lambda v: isinstance(v, list) and v and all(isinstance(x, dict) for x in v),
            "a non-empty list of sections",
        )
        train_sections = []
        n_spots = 0
        for i in range(len(sections)):
            where = f"train_sections.{i}"
            name = _field(meta, f"{where}.name", lambda v: isinstance(v, str), "a name")
            n = _field(meta, f"{where}.n_spots", _positive_int, "a positive integer")
            obs = _field(
                meta,
                f"{where}.obs_names",
                partial(_spot_names, n=n),
                f"{n} spot names",
            )
            train_sections.append((name, list(obs or [])))
            n_spots += n
        panel = _field(
            meta,
            "genes.panel",
            lambda v: _names(v) and v and len(set(v)) == len(v),
            "a non-empty list of distinct gene names",
        )
        all_genes = _field(meta, "genes.all", _names, "a list of gene names")
        _field(meta, "bank.n_spots", lambda v: v == n_spots, f"{n_spots} (the sections' spots)")
        embedding_dim = _field(meta, "bank.embedding_dim", _positive_int, "a positive integer")
        has_image_keys = _field(meta, f"bank.{IMAGE_KEYS}", lambda v: isinstance(v, bool), "a bool")
        all_nnz = _field(meta, "bank.all_nnz", lambda v: _is_int(v) and v >= 0, "an integer ≥ 0")
        if meta.get("encoder") is not None:
            _field(meta, "encoder.name", lambda v: isinstance(v, str) and v, "an encoder name")
            _field(
                meta, "encoder.dim", lambda v: v == image_dim, f"{image_dim} (image_dim, the width "
                "of the features the network takes)"
            )  # fmt: skip
            _field(meta, "encoder.weights_hash", lambda v: isinstance(v, str) and v, "a sha256")
            _field(meta, "patch.size_px", _positive_int, "a positive integer")
            _field(
                meta,
                "patch.training_mpp",
                lambda v: v is None or (isinstance(v, int | float) and math.isfinite(v) and v > 0),
                "a positive number of microns per pixel or null",
            )
            _field(
                meta,
                "stain",
                lambda v: isinstance(v, dict) and isinstance(v.get("name"), str) and "key" in v,
                "an object with the normaliser's name and key",
            )
            _field(meta, "nuclei", lambda v: isinstance(v, str) and v, "a nuclei source")
        image = ImageSettings.from_meta(meta)
        return cls(
            method=method,
            profile=profile,
            config=config,
            seed=seed,
            history=[float(v) for v in history],
            feature_key=feature_key,
            image_dim=image_dim,
            image=image,
            train_sections=train_sections,
            panel=list(panel),
            all_genes=list(all_genes),
            n_spots=n_spots,
            embedding_dim=embedding_dim,
            has_image_keys=has_image_keys,
            all_nnz=all_nnz,
            created=str(meta.get("created", "")),
            command=[str(c) for c in meta.get("command") or []],
        )


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
    try:
        BundleMeta.from_dict(meta)
    except GR2STConfigError as exc:
        raise GR2STConfigError(f"{folder}/{exc}") from None
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
