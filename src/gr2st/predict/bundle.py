"""Self-contained trained-model bundles: everything needed to predict a new slide.

A bundle is one folder, written atomically (built next to its final name, then renamed):

``bundle.json``
    Schema version, package version, method, profile and full configuration, the
    encoder (name, dim, weights hash), patch size (pixels, and microns when the training
    resolution is known), stain normaliser (name, key and, for a fitted Reinhard
    reference, its LAB statistics), nuclei source, training sections, the panel and
    all-genes names, the sha256 of every data file, a fingerprint, creation time and
    command line.
``weights.safetensors``
    The network's state dict.
``bank.safetensors``
    The reference bank: the training spots' embeddings (``keys``, float32), their
    log-normalised panel expression (``panel``, dense float32), their training section
    index (``groups``, int64) and their log-normalised expression of every gene
    measured in all training sections, normalised with the panel library size, as a
    CSR matrix (``all_data`` float32, ``all_indices`` int32, ``all_indptr`` int64).
    The CSR form is exact; on HER2ST-6 (1,187 spots × 13,891 genes, 25 % non-zero) it
    takes 33 MB, as much as a dense float16 matrix without float16's rounding, and
    sparser data (Visium, 5-10 % non-zero) gain a factor 2-4 over float16.

:func:`load_bundle` checks every file against ``bundle.json`` before anything is used.

Examples
--------
>>> bundle = load_bundle("models/her2st")  # doctest: +SKIP
>>> bundle.encoder.name, len(bundle.panel_genes)  # doctest: +SKIP
('efficientnet-lite0', 785)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gr2st import __version__
from gr2st._constants import MICRONS_PER_PIXEL, UNS, feature_key
from gr2st._utils.files import sha256_bytes, sha256_file
from gr2st._utils.seed import resolve_device
from gr2st.encoders import Encoder, get_encoder
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.stain import ReinhardNormalizer, StainNormalizer, get_stain_normalizer
from gr2st.models import GR2ST, GR2STConfig, GR2STModule
from gr2st.retrieval import RetrievalResult, retrieve

#: Version of the bundle layout; bumped on any incompatible change.
SCHEMA_VERSION = 1
BUNDLE_FORMAT = "gr2st-bundle"
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
BANK_FILE = "bank.safetensors"
#: Methods a bundle can hold.
BUNDLE_METHODS = ("gr2st",)

# Bytes of one retrieval chunk's gathered neighbour values (chunk · top_k · genes · 4).
_RETRIEVAL_CHUNK_BYTES = 256 << 20
_EMBED_CHUNK = 8192
_BANK_TENSORS = ("keys", "panel", "groups", "all_data", "all_indices", "all_indptr")


@dataclass(frozen=True)
class BundleSettings:
    """How the training inputs were made; stored in ``bundle.json``.

    Attributes
    ----------
    encoder
        The frozen patch encoder the features came from.
    size_px
        Patch side in full-resolution pixels.
    stain
        The stain normaliser applied to patches, or None.
    nuclei
        Nuclei source (``classical``, ``hovernet:…`` or ``none``).
    profile
        GR2ST profile name the configuration started from.
    """

    encoder: Encoder
    size_px: int
    stain: StainNormalizer | None
    nuclei: str
    profile: str


class Bundle:
    """A loaded bundle: network, reference bank, encoder and preprocessing settings.

    Build one with :func:`load_bundle`; see the module docstring for the layout.

    Attributes
    ----------
    path
        The bundle folder.
    meta
        The parsed ``bundle.json``.
    module
        The network (eval mode), on :attr:`device`.
    encoder
        The encoder named in the bundle (None when loaded with ``check_encoder=False``).
    """

    def __init__(
        self,
        *,
        path: Path,
        meta: dict[str, Any],
        module: GR2STModule,
        bank: dict[str, torch.Tensor],
        encoder: Encoder | None,
        device: torch.device,
    ) -> None:
        self.path = path
        self.meta = meta
        self.module = module
        self.encoder = encoder
        self.device = device
        self._keys = bank["keys"]
        self._panel = bank["panel"]
        self._groups = bank["groups"]
        n_all = len(meta["genes"]["all"])
        self._all = sp.csr_matrix(
            (bank["all_data"].numpy(), bank["all_indices"].numpy(), bank["all_indptr"].numpy()),
            shape=(self.n_bank_spots, n_all),
        )

    # ------------------------------------------------------------------ metadata
    @property
    def panel_genes(self) -> list[str]:
        """Genes of the model's panel (the training expression)."""
        return list(self.meta["genes"]["panel"])

    @property
    def all_genes(self) -> list[str]:
        """Every gene measured in all training sections (panel library size)."""
        return list(self.meta["genes"]["all"])

    @property
    def train_sections(self) -> list[str]:
        """Training section names; the bank's ``groups`` index this list."""
        return [s["name"] for s in self.meta["train_sections"]]

    @property
    def n_bank_spots(self) -> int:
        """Training spots in the reference bank."""
        return int(self._keys.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 identifying the bundle's settings and data files."""
        return str(self.meta["fingerprint"])

    @property
    def config(self) -> GR2STConfig:
        """The model configuration."""
        return GR2STConfig.from_dict(self.meta["config"])

    @property
    def size_px(self) -> int:
        """Training patch side in full-resolution pixels."""
        return int(self.meta["patch"]["size_px"])

    @property
    def size_um(self) -> float | None:
        """Training patch side in microns, when the training resolution was known."""
        value = self.meta["patch"]["size_um"]
        return None if value is None else float(value)

    def patch_px(self, mpp: float | None) -> int:
        """Patch side for a slide of ``mpp`` µm/pixel covering the training patch's area.

        Without the slide's or the training resolution, the training side in pixels.

        Examples
        --------
        >>> bundle.patch_px(0.25)  # doctest: +SKIP
        448
        """
        if mpp is None or self.size_um is None:
            return self.size_px
        return max(1, round(self.size_um / mpp))

    def stain_normalizer(self) -> StainNormalizer | None:
        """The training stain normaliser, rebuilt and checked against its stored key."""
        stain = self.meta["stain"]
        if stain["name"] == "none":
            return None
        reference = stain.get("reference")
        if reference is not None:
            normalizer: StainNormalizer = ReinhardNormalizer(
                mean=np.asarray(reference["mean"]), std=np.asarray(reference["std"])
            )
        else:
            normalizer = get_stain_normalizer(stain["name"])
        if normalizer.key != stain["key"]:
            raise GR2STConfigError(
                f"{self.path / META_FILE}: stain.key {stain['key']!r} differs from this "
                f"installation's {stain['name']!r} normaliser ({normalizer.key!r}); the shipped "
                "reference changed since the bundle was trained"
            )
        return normalizer

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise unless ``encoder`` is the bundle's encoder with the same weights."""
        info = self.meta["encoder"]
        where = self.path / META_FILE
        if encoder.name != info["name"] or encoder.dim != info["dim"]:
            raise GR2STConfigError(
                f"{where}: encoder is {info['name']!r} ({info['dim']} features), got "
                f"{encoder.name!r} ({encoder.dim})"
            )
        if encoder.weights_hash != info["weights_hash"]:
            raise GR2STConfigError(
                f"{where}: encoder.weights_hash {info['weights_hash'][:12]}… differs from the "
                f"installed {encoder.name!r} weights ({encoder.weights_hash[:12]}…); features "
                "would not match the training ones"
            )

    # ------------------------------------------------------------------ prediction
    def resolve_genes(self, genes: str | Sequence[str]) -> list[str]:
        """``"panel"``, ``"all"`` or a list of gene names (checked) → gene names.

        Examples
        --------
        >>> bundle.resolve_genes("ERBB2,GAPDH")  # doctest: +SKIP
        ['ERBB2', 'GAPDH']
        """
        if isinstance(genes, str):
            if genes == "panel":
                return self.panel_genes
            if genes == "all":
                return self.all_genes
            genes = [g.strip() for g in genes.split(",") if g.strip()]
        chosen = list(genes)
        if not chosen:
            raise GR2STConfigError("genes: expected 'panel', 'all' or gene names")
        known = set(self.all_genes) | set(self.panel_genes)
        unknown = [g for g in chosen if g not in known]
        if unknown:
            raise GR2STConfigError(
                f"genes: {unknown[:5]} are not in the bundle (neither panel nor measured in every "
                f"training section; {len(self.all_genes)} genes available)"
            )
        if len(set(chosen)) != len(chosen):
            raise GR2STConfigError(f"genes: repeated names in {chosen}")
        return chosen

    def bank_values(self, genes: Sequence[str]) -> torch.Tensor:
        """Dense float32 ``(n_bank_spots, len(genes))`` log-normalised bank expression."""
        if list(genes) == self.panel_genes:
            return self._panel
        panel_pos = {g: i for i, g in enumerate(self.panel_genes)}
        all_pos = {g: i for i, g in enumerate(self.all_genes)}
        out = np.empty((self.n_bank_spots, len(genes)), np.float32)
        from_all = [i for i, g in enumerate(genes) if g in all_pos]
        if from_all:
            cols = [all_pos[genes[i]] for i in from_all]
            out[:, from_all] = self._all[:, cols].toarray()
        for i, g in enumerate(genes):
            if g not in all_pos:
                out[:, i] = self._panel[:, panel_pos[g]].numpy()
        return torch.from_numpy(out)

    @torch.no_grad()
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Image features ``(N, encoder dim)`` → image embeddings ``(N, P)`` (float32)."""
        features = np.asarray(features, dtype=np.float32)
        dim = int(self.meta["encoder"]["dim"])
        if features.ndim != 2 or features.shape[1] != dim:
            raise GR2STDataError(f"features: expected shape (N, {dim}), got {features.shape}")
        self.module.eval()
        out = [
            self.module.embed_images(torch.from_numpy(chunk).to(self.device)).cpu().numpy()
            for chunk in np.array_split(features, max(1, -(-len(features) // _EMBED_CHUNK)))
        ]
        return np.concatenate(out) if out else np.zeros((0, self._keys.shape[1]), np.float32)

    def retrieve(
        self, embeddings: np.ndarray, *, genes: Sequence[str], top_k: int | None = None
    ) -> RetrievalResult:
        """Predict ``genes`` for image embeddings from the bank (chunked, memory ∝ spots).

        Returns the weighted mean, weighted standard deviation and per-section
        provenance of the ``top_k`` retrieved training spots.
        """
        values = self.bank_values(genes)
        k = min(self.config.predict.top_k if top_k is None else top_k, self.n_bank_spots)
        chunk = max(1, min(1024, _RETRIEVAL_CHUNK_BYTES // (4 * k * max(1, len(genes)))))
        return retrieve(
            embeddings,
            self._keys,
            values,
            top_k=k,
            chunk_size=chunk,
            key_groups=self._groups,
            n_groups=len(self.train_sections),
            device=self.device,
        )

    def predict_features(
        self, features: np.ndarray, *, genes: str | Sequence[str] = "panel"
    ) -> RetrievalResult:
        """Predict from image features ``(N, encoder dim)`` (features already extracted).

        Examples
        --------
        >>> res = bundle.predict_features(adata.obsm["X_efficientnet-lite0"])  # doctest: +SKIP
        >>> res.mean.shape, res.provenance.sum(1)  # doctest: +SKIP
        """
        return self.retrieve(self.embed(features), genes=self.resolve_genes(genes))

    def __repr__(self) -> str:
        return (
            f"Bundle({str(self.path)!r}, method={self.meta['method']!r}, "
            f"encoder={self.meta['encoder']['name']!r}, sections={self.train_sections})"
        )


# ---------------------------------------------------------------------- writing


def _stain_meta(stain: StainNormalizer | None) -> dict[str, Any]:
    if stain is None:
        return {"name": "none", "key": "none", "reference": None}
    default = get_stain_normalizer(stain.name)
    if stain.key == default.key:
        return {"name": stain.name, "key": stain.key, "reference": None}
    if isinstance(stain, ReinhardNormalizer):
        reference = {"mean": stain.mean.tolist(), "std": stain.std.tolist()}
        rebuilt = ReinhardNormalizer(mean=stain.mean, std=stain.std)
        if rebuilt.key == stain.key:
            return {"name": stain.name, "key": stain.key, "reference": reference}
    raise GR2STConfigError(
        f"stain: a bundle can store the default {stain.name!r} normaliser or a Reinhard "
        "normaliser fitted on a reference image (with default tissue settings), not this one"
    )


def _training_mpp(sections: Sequence[AnnData]) -> float | None:
    values = [a.uns.get(UNS, {}).get(MICRONS_PER_PIXEL) for a in sections]
    if any(v is None for v in values):
        return None
    return float(np.median(np.asarray(values, dtype=np.float64)))


def save_bundle(
    model: GR2ST,
    path: str | Path,
    *,
    sections: Sequence[AnnData],
    all_genes: Sequence[AnnData],
    settings: BundleSettings,
    command: Sequence[str] | None = None,
) -> Path:
    """Write a trained GR2ST model and its reference bank as a bundle folder.

    Parameters
    ----------
    model
        A trained :class:`~gr2st.models.GR2ST`.
    path
        The bundle folder to create; an existing one is replaced only once the new one
        is complete.
    sections
        The model's training sections (prepared: log-normalised panel ``X``, image
        features), in training order.
    all_genes
        The same sections (same spots, in order) log-normalised over every gene
        measured in all of them with the panel library size (``prepare_section(…,
        genes=common_genes(…), library_genes=panel)``).
    settings
        How the image inputs were made.
    command
        Command line recorded in ``bundle.json`` (default ``sys.argv``).

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Examples
    --------
    >>> save_bundle(model, "models/demo", sections=train, all_genes=train_all,
    ...             settings=settings)  # doctest: +SKIP
    """
    if not model.is_trained:
        raise GR2STConfigError("save_bundle: the model is not trained; call .train() first")
    names = model.train_section_names
    if len(sections) != len(names) or len(all_genes) != len(names):
        raise GR2STDataError(
            f"save_bundle: expected {len(names)} training sections and as many all-genes "
            f"sections, got {len(sections)} and {len(all_genes)}"
        )
    keys, panel, groups, blocks = [], [], [], []
    all_names = [str(g) for g in all_genes[0].var_names]
    for i, (name, prep, full) in enumerate(zip(names, sections, all_genes, strict=True)):
        if list(prep.obs_names) != list(full.obs_names):
            raise GR2STDataError(f"section {name!r}: all-genes spots differ from the panel ones")
        if [str(g) for g in full.var_names] != all_names:
            raise GR2STDataError(f"section {name!r}: all-genes var_names differ between sections")
        keys.append(model.embed_spots(prep))
        x = prep.X
        panel.append(np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32))
        groups.append(np.full(prep.n_obs, i, dtype=np.int64))
        blocks.append(sp.csr_matrix(full.X, dtype=np.float32))
    bank_all = sp.vstack(blocks, format="csr")
    bank_all.eliminate_zeros()
    bank = {
        "keys": torch.from_numpy(np.concatenate(keys).astype(np.float32)),
        "panel": torch.from_numpy(np.concatenate(panel)),
        "groups": torch.from_numpy(np.concatenate(groups)),
        "all_data": torch.from_numpy(bank_all.data.astype(np.float32)),
        "all_indices": torch.from_numpy(bank_all.indices.astype(np.int32)),
        "all_indptr": torch.from_numpy(bank_all.indptr.astype(np.int64)),
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    mpp = _training_mpp(sections)
    enc = settings.encoder
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "gr2st_version": __version__,
        "method": "gr2st",
        "profile": settings.profile,
        "config": model.config.to_dict(),
        "seed": model.seed,
        "history": model.history,
        "encoder": {"name": enc.name, "dim": enc.dim, "weights_hash": enc.weights_hash},
        "feature_key": feature_key(enc.name),
        "patch": {
            "size_px": settings.size_px,
            "size_um": None if mpp is None else settings.size_px * mpp,
            "training_mpp": mpp,
        },
        "stain": _stain_meta(settings.stain),
        "nuclei": settings.nuclei,
        "train_sections": [
            {"name": n, "n_spots": int(a.n_obs)} for n, a in zip(names, sections, strict=True)
        ],
        "genes": {
            "panel": list(model.var_names),
            "all": all_names,
            "library": "panel",
        },
        "bank": {
            "n_spots": int(bank["keys"].shape[0]),
            "embedding_dim": int(bank["keys"].shape[1]),
            "panel_values": "dense float32",
            "all_values": "CSR float32",
            "all_nnz": int(bank_all.nnz),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(sys.argv if command is None else command),
    }
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        save_file(bank, str(tmp / BANK_FILE))
        meta["files"] = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, BANK_FILE)}
        meta["fingerprint"] = _fingerprint(meta)
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


def _fingerprint(meta: dict[str, Any]) -> str:
    """sha256 of what determines predictions (not the creation time or command)."""
    keep = {k: v for k, v in meta.items() if k not in ("created", "command", "fingerprint")}
    return sha256_bytes(json.dumps(keep, sort_keys=True).encode())


# ---------------------------------------------------------------------- loading


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
    if version != SCHEMA_VERSION:
        raise GR2STConfigError(
            f"{meta_path}: schema_version {version!r} is not supported by gr2st {__version__} "
            f"(expects {SCHEMA_VERSION}); retrain the bundle with this version"
        )
    required = (
        "method", "config", "encoder", "patch", "stain", "nuclei", "train_sections",
        "genes", "files", "fingerprint",
    )  # fmt: skip
    missing = [k for k in required if k not in meta]
    if missing:
        raise GR2STConfigError(f"{meta_path}: missing field(s) {missing}")
    if meta["method"] not in BUNDLE_METHODS:
        raise GR2STConfigError(
            f"{meta_path}: method {meta['method']!r} is not supported; bundles hold "
            f"{', '.join(BUNDLE_METHODS)}"
        )
    if _fingerprint(meta) != meta["fingerprint"]:
        raise GR2STConfigError(
            f"{meta_path}: fingerprint does not match the file's content (edited by hand?)"
        )
    return meta


def _check_files(folder: Path, meta: dict[str, Any]) -> None:
    for name in (WEIGHTS_FILE, BANK_FILE):
        file = folder / name
        if not file.is_file():
            raise GR2STDataError(f"{file}: missing from the bundle")
        expected = meta["files"].get(name)
        if sha256_file(file) != expected:
            raise GR2STDataError(
                f"{file}: sha256 differs from {META_FILE}'s files.{name}; the file is corrupted "
                "or was replaced"
            )


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GR2STDataError(f"{file}: cannot read safetensors ({exc})") from None


def load_bundle(path: str | Path, *, device: str = "auto", check_encoder: bool = True) -> Bundle:
    """Read and validate a bundle written by :func:`save_bundle` / ``gr2st train``.

    Checks, each failing with a one-line error naming the file or field: the folder and
    ``bundle.json`` exist, the format, schema version and method are supported, the
    metadata matches its fingerprint, every data file exists and matches its sha256,
    the tensors have the shapes the metadata describes, the weights fit the network
    and (``check_encoder``) the installed encoder has the bundle's weights hash.

    Parameters
    ----------
    path
        The bundle folder.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` for the network and the retrieval.
    check_encoder
        Build the bundle's encoder and compare its weights hash (``Bundle.encoder``
        stays None otherwise, e.g. for ``gr2st info``).

    Raises
    ------
    GR2STConfigError
        Not a bundle, unsupported schema or method, edited metadata, encoder mismatch.
    GR2STDataError
        Missing or corrupted weights or bank.

    Examples
    --------
    >>> bundle = load_bundle("models/her2st", device="cpu")  # doctest: +SKIP
    """
    folder = Path(path)
    meta = _read_meta(folder)
    _check_files(folder, meta)
    dev = resolve_device(device)
    bank = _load_tensors(folder / BANK_FILE)
    missing = [k for k in _BANK_TENSORS if k not in bank]
    if missing:
        raise GR2STDataError(f"{folder / BANK_FILE}: missing tensor(s) {missing}")
    n_spots = sum(int(s["n_spots"]) for s in meta["train_sections"])
    expected = {
        "keys": (n_spots, int(meta["bank"]["embedding_dim"])),
        "panel": (n_spots, len(meta["genes"]["panel"])),
        "groups": (n_spots,),
        "all_indptr": (n_spots + 1,),
    }
    for name, shape in expected.items():
        if tuple(bank[name].shape) != shape:
            raise GR2STDataError(
                f"{folder / BANK_FILE}: tensor {name!r} has shape {tuple(bank[name].shape)}, "
                f"expected {shape} from {META_FILE}"
            )
    config = GR2STConfig.from_dict(meta["config"])
    module = GR2STModule(
        n_genes=len(meta["genes"]["panel"]),
        image_dim=int(meta["encoder"]["dim"]),
        config=config.model,
    )
    weights = _load_tensors(folder / WEIGHTS_FILE)
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise GR2STDataError(
            f"{folder / WEIGHTS_FILE}: weights do not fit the network in {META_FILE} "
            f"({' '.join(line.strip() for line in first)})"
        ) from None
    module = module.to(dev).eval()
    bundle = Bundle(path=folder, meta=meta, module=module, bank=bank, encoder=None, device=dev)
    if check_encoder:
        encoder = get_encoder(meta["encoder"]["name"], device=str(dev))
        bundle.check_encoder(encoder)
        bundle.encoder = encoder
    return bundle
