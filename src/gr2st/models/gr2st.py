"""The user-facing GR2ST model: train on prepared sections, embed, predict by retrieval.

Over 600 lines because one class holds training, embedding, retrieval and persistence,
which share the model's private state; its task, early stopping and bundle schema live
in :mod:`~gr2st.models.task`, :mod:`~gr2st.models.early_stopping` and
:mod:`~gr2st.models.bundle`.

Typical use (``train_sections``/``test_section`` prepared AnnData with image features)::

    model = GR2ST(train_sections, feature_key="X_phikon-v2", profile="default")
    model.train(checkpoint_dir="runs/fold0")     # resumable checkpoints
    model.save("models/gr2st")                   # a bundle: weights + retrieval bank + config
    pred = GR2ST.load("models/gr2st").predict(test_section)
    pred.mean, pred.std, pred.provenance         # expression, spread, sources
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor, nn

from gr2st._constants import SECTION
from gr2st._utils.device import resolve_device
from gr2st.config import apply_overrides, config_from_dict
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.models.bundle import (
    ALL_GENES_BANK,
    IMAGE_KEYS,
    META_FILE,
    WEIGHTS_FILE,
    BundleMeta,
    ImageSettings,
    read_bundle,
    write_bundle,
)
from gr2st.models.config import GR2STConfig, get_profile
from gr2st.models.early_stopping import Validation, validate_epochs
from gr2st.models.module import GR2STModule
from gr2st.models.task import ContrastiveTask, private_rng
from gr2st.retrieval import mixture, retrieve
from gr2st.sections import SectionArrays, dense, features, section_arrays, section_name
from gr2st.training import (
    DEFAULT_CHECKPOINT_SECONDS,
    TrainingStats,
    fingerprint,
    train_network,
)

_IMAGE_CHUNK = 8192
# Bytes of one retrieval chunk's gathered neighbour values (chunk · top_k · genes · 4).
_RETRIEVAL_CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class Prediction:
    """Retrieval prediction for a set of spots.

    Attributes
    ----------
    mean
        ``(n_spots, n_genes)`` predicted log-normalised expression (float32).
    std
        ``(n_spots, n_genes)`` weighted standard deviation of the retrieved neighbours'
        expression: how much the evidence behind each prediction disagrees.
    provenance
        ``(n_spots, n_train_sections)`` share of each training section in the weights.
    var_names
        Gene names of the columns.
    obs_names
        Spot names of the rows.
    train_sections
        Names of the training sections (columns of ``provenance``).
    """

    mean: np.ndarray
    std: np.ndarray
    provenance: np.ndarray
    var_names: list[str]
    obs_names: list[str]
    train_sections: list[str]


@dataclass(frozen=True)
class _Bank:
    """Retrieval keys: the training spots' embeddings and expression."""

    keys: Tensor
    panel: Tensor
    groups: Tensor
    all_genes: list[str]
    all_values: sp.csr_matrix | None
    #: The training spots' image embeddings (``predict.bank`` ``images``/``both``); None
    #: in bundles written before they were saved.
    image_keys: Tensor | None = None


class GR2ST:
    """GR2ST: contrastive image/spot embeddings with graph attention, predicting by retrieval.

    Parameters
    ----------
    sections
        Prepared training sections: ``X`` log-normalised expression of the panel genes
        (same genes in the same order everywhere), ``obs`` array coordinates and nuclear
        type (``cell_type``; missing → type 0 with a warning), ``obsm[feature_key]`` the
        frozen image features.
    feature_key
        ``obsm`` key of the image features.
    config
        Full configuration; when ``None`` the named ``profile`` is used.
    profile
        ``"default"`` (ours) or ``"paper"`` (the published recipe; alias ``"reference"``).
    overrides
        Dotted overrides on top, e.g. ``["model.fusion=concat", "train.epochs=50"]``.
    seed
        Seed of the initial weights, the shuffles, dropout and noise.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> from gr2st.genes import prepare_section
    >>> secs = [prepare_section(s, genes=list(s.var_names))
    ...         for s in synthetic(n_sections=2, n_genes=8, grid=(4, 4))]
    >>> for s in secs:
    ...     s.obsm["X_demo"] = np.eye(5)[s.obs["latent_state"]].astype("float32")
    >>> model = GR2ST(secs[:1], feature_key="X_demo", device="cpu", overrides=[
    ...     "model.proj_dim=8", "model.heads=2", "model.n_positions=64", "train.epochs=2"])
    >>> _ = model.train(progress=False)
    >>> model.predict(secs[1]).mean.shape
    (16, 8)
    """

    def __init__(
        self,
        sections: Sequence[AnnData],
        *,
        feature_key: str,
        config: GR2STConfig | None = None,
        profile: str = "default",
        overrides: Sequence[str] = (),
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if len(sections) == 0:
            raise GR2STDataError("sections: expected at least one training section")
        cfg = config if config is not None else get_profile(profile)
        cfg = apply_overrides(cfg, list(overrides), owner="gr2st")
        var_names = [str(v) for v in sections[0].var_names]
        names = [section_name(a, default=f"section{i}") for i, a in enumerate(sections)]
        if len(set(names)) != len(names):
            raise GR2STDataError(f"sections: section names must be unique, got {names}")
        arrays = []
        for name, adata in zip(names, sections, strict=True):
            if list(adata.var_names) != var_names:
                raise GR2STDataError(
                    f"section {name!r}: var_names differ from section {names[0]!r}; "
                    "expected the same genes in the same order"
                )
            arrays.append(self._arrays(adata, cfg, name=name, feature_key=feature_key))
        dims = {a.features.shape[1] for a in arrays}
        if len(dims) != 1:
            raise GR2STDataError(
                f"obsm[{feature_key!r}]: feature widths differ between sections: {dims}"
            )
        self._train_data: list[SectionArrays] = arrays
        self._setup(
            config=cfg,
            profile="custom" if config is not None else profile,
            var_names=var_names,
            image_dim=dims.pop(),
            feature_key=feature_key,
            seed=seed,
            device=device,
            train_sections=[(a.name, a.obs_names) for a in arrays],
        )

    @staticmethod
    def _arrays(adata: AnnData, cfg: GR2STConfig, *, name: str, feature_key: str) -> SectionArrays:
        """One section's arrays, its coordinates inside the position tables."""
        if adata.n_obs == 0:
            raise GR2STDataError(f"section {name!r}: no spots")
        arrays = section_arrays(
            _named(adata, name), feature_key=feature_key, n_types=cfg.model.n_cell_types
        )
        # Rounded up as well as down, so both rounding modes stay inside the embedding.
        if (arrays.coords < 0).any() or (arrays.coords + 0.5 >= cfg.model.n_positions).any():
            raise GR2STDataError(
                f"section {name!r}: obs['array_x']/obs['array_y'] must be in "
                f"[0, {cfg.model.n_positions}) (model.n_positions)"
            )
        return arrays

    def _setup(
        self,
        *,
        config: GR2STConfig,
        profile: str,
        var_names: list[str],
        image_dim: int,
        feature_key: str,
        seed: int,
        device: str,
        train_sections: list[tuple[str, list[str]]],
    ) -> None:
        self.config = config
        self.profile = profile
        self.var_names = var_names
        self.image_dim = image_dim
        self.feature_key = feature_key
        self.seed = seed
        self.device = resolve_device(device)
        self._train_sections = train_sections
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = GR2STModule(n_genes=len(var_names), image_dim=image_dim, config=config.model)
        self.module = module.to(self.device).eval()
        self.history: list[float] = []
        #: Epochs chosen on a validation section (``train.early_stopping``), once trained.
        self.validation: Validation | None = None
        self.image_settings: ImageSettings | None = None
        self.training_stats: TrainingStats | None = None
        #: The bundle's metadata and folder, for a model read by :meth:`load`.
        self.meta: dict[str, Any] | None = None
        self.path: Path | None = None
        self._bank: _Bank | None = None

    # ------------------------------------------------------------------ properties
    @property
    def train_section_names(self) -> list[str]:
        """Names of the training sections, in training order."""
        return [name for name, _ in self._train_sections]

    @property
    def is_trained(self) -> bool:
        """Whether the retrieval bank exists (after :meth:`train` or a trained :meth:`load`)."""
        return self._bank is not None

    @property
    def all_genes(self) -> list[str]:
        """Genes of the all-genes bank (empty unless saved with ``all_genes``)."""
        return [] if self._bank is None else list(self._bank.all_genes)

    # ------------------------------------------------------------------ training
    def _fingerprint(self) -> str:
        """Identify a training run: config, seed, feature key and the training data."""
        arrays: list[np.ndarray] = []
        for a in self._train_data:
            arrays += [a.features, a.expression, a.coords, a.types]
        settings = {
            "config": self.config.to_dict(),
            "seed": self.seed,
            "feature_key": self.feature_key,
            "sections": self.train_section_names,
            "validation": None if self.validation is None else self.validation.best_epochs,
        }
        return fingerprint(settings, arrays)

    def train(
        self,
        *,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
        on_epoch_end: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train for ``config.train.epochs`` epochs, then build the retrieval bank.

        Each epoch visits the training sections in a random order; a section's spots are
        shuffled and cut into batches of at most ``train.batch_size`` (so a batch never
        mixes sections, and normally is one whole section). Training starts from the
        current weights; the caller's random state is left untouched.

        Parameters
        ----------
        progress
            Show a progress bar with the epoch and its loss.
        checkpoint_dir
            Folder for a checkpoint (weights, optimizer, RNG states, epoch), written
            atomically every ``checkpoint_every`` seconds, at the end and on Ctrl-C. A
            checkpoint left there by an interrupted run with the same config, seed and
            data is resumed, giving the same final weights as an uninterrupted run; one
            of another run is overwritten.
        checkpoint_every
            Seconds between checkpoints (``0``: after every epoch).
        on_epoch_end
            Called as ``on_epoch_end(epochs_done, epoch_loss)`` after each epoch.

        Returns
        -------
        list of float
            Mean training loss (weighted by spots) of every epoch.
        """
        if not self._train_data:
            raise GR2STConfigError(
                "GR2ST.train: this model was loaded from disk without its training sections"
            )
        if self.config.train.early_stopping and self.validation is None:
            self.validation = validate_epochs(
                self,
                progress=progress,
                checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / "val",
                checkpoint_every=checkpoint_every,
            )
        epochs = (
            self.config.train.epochs if self.validation is None else self.validation.best_epochs
        )
        cfg = self.config.train
        dev = self.device
        data = [
            {
                "features": torch.from_numpy(a.features).to(dev),
                "expression": torch.from_numpy(a.expression).to(dev),
                "positions": torch.from_numpy(a.coords).to(dev),
                "types": torch.from_numpy(a.types).to(dev),
            }
            for a in self._train_data
        ]
        with private_rng(dev):
            torch.manual_seed(self.seed)
            history, self.training_stats = train_network(
                self.module,
                ContrastiveTask(self, data),
                epochs=epochs,
                seed=self.seed,
                desc="GR2ST",
                workdir=checkpoint_dir,
                run_fingerprint=self._fingerprint() if checkpoint_dir is not None else "",
                checkpoint_every=checkpoint_every,
                average_last=cfg.average_last,
                precision=cfg.precision,
                progress=progress,
                on_epoch_end=on_epoch_end,
            )
        self.module.eval()
        self.history = history
        self._bank = self._build_bank()
        return list(history)

    # ------------------------------------------------------------------ embeddings
    def _features(self, adata: AnnData) -> Tensor:
        """A section's image features, checked against the model's feature width."""
        feats = features(adata, self.feature_key)
        return torch.from_numpy(
            self._check_width(feats, where=section_name(adata, default="query"))
        )

    def _check_width(self, feats: np.ndarray, *, where: str) -> np.ndarray:
        if feats.ndim != 2 or feats.shape[1] != self.image_dim:
            raise GR2STDataError(
                f"{where}: image features have shape {feats.shape}; the model expects "
                f"(n, {self.image_dim}) from obsm[{self.feature_key!r}]"
            )
        return feats

    @torch.no_grad()
    def _image_embeddings(self, feats: Tensor) -> Tensor:
        self.module.eval()
        chunks = [
            self.module.embed_images(chunk.to(self.device)) for chunk in feats.split(_IMAGE_CHUNK)
        ]
        if not chunks:
            return torch.zeros((0, self.config.model.proj_dim), device=self.device)
        return torch.cat(chunks)

    @torch.no_grad()
    def _spot_embeddings(self, arrays: SectionArrays) -> Tensor:
        self.module.eval()
        dev = self.device
        return self.module.embed_spots(
            torch.from_numpy(arrays.expression).to(dev),
            torch.from_numpy(arrays.coords).to(dev),
            torch.from_numpy(arrays.types).to(dev),
        )

    def embed_images(self, adata: AnnData) -> np.ndarray:
        """Image embeddings ``(n_spots, P)`` of a section's features (eval mode)."""
        return self._image_embeddings(self._features(adata)).cpu().numpy()

    def embed_features(self, feats: np.ndarray) -> np.ndarray:
        """Image embeddings ``(N, P)`` of an ``(N, image_dim)`` feature array."""
        array = self._check_width(np.asarray(feats, dtype=np.float32), where="features")
        return self._image_embeddings(torch.from_numpy(array)).cpu().numpy()

    def embed_spots(self, adata: AnnData) -> np.ndarray:
        """Spot embeddings ``(n_spots, P)``: the whole section as one batch with its own graphs.

        Needs the section's expression (panel genes), array coordinates and nuclear types.
        """
        name = section_name(adata, default="query")
        if list(adata.var_names) != self.var_names:
            missing = set(self.var_names) - set(adata.var_names)
            if missing:
                raise GR2STDataError(
                    f"section {name!r}: {len(missing)} model genes are missing from var_names "
                    f"(e.g. {sorted(missing)[:3]})"
                )
            adata = adata[:, self.var_names]
        arrays = self._arrays(adata, self.config, name=name, feature_key=self.feature_key)
        self._check_width(arrays.features, where=f"section {name!r}")
        return self._spot_embeddings(arrays).cpu().numpy()

    def _build_bank(self) -> _Bank:
        keys = [self._spot_embeddings(a).cpu() for a in self._train_data]
        groups = [
            torch.full((a.n_spots,), i, dtype=torch.long) for i, a in enumerate(self._train_data)
        ]
        images = [
            self._image_embeddings(torch.from_numpy(a.features)).cpu() for a in self._train_data
        ]
        return _Bank(
            keys=torch.cat(keys),
            panel=torch.from_numpy(np.concatenate([a.expression for a in self._train_data])),
            groups=torch.cat(groups),
            all_genes=[],
            all_values=None,
            image_keys=torch.cat(images),
        )

    # ------------------------------------------------------------------ prediction
    def resolve_genes(self, genes: str | Sequence[str] | None) -> list[str]:
        """``None``/``"panel"``, ``"all"`` or gene names (checked against the banks).

        Examples
        --------
        >>> model.resolve_genes("ERBB2,GAPDH")  # doctest: +SKIP
        ['ERBB2', 'GAPDH']
        """
        if genes is None:
            return list(self.var_names)
        if isinstance(genes, str):
            if genes == "panel":
                return list(self.var_names)
            if genes == "all":
                if not self.all_genes:
                    raise GR2STConfigError(
                        "genes: 'all' needs an all-genes bank (save with all_genes=...)"
                    )
                return self.all_genes
            genes = [g.strip() for g in genes.split(",") if g.strip()]
        chosen = list(genes)
        if not chosen:
            raise GR2STConfigError("genes: expected 'panel', 'all' or gene names")
        known = set(self.all_genes) | set(self.var_names)
        unknown = [g for g in chosen if g not in known]
        if unknown:
            raise GR2STConfigError(
                f"genes: {unknown[:5]} are not in the model (neither panel nor measured in every "
                f"training section; {len(known)} genes available)"
            )
        if len(set(chosen)) != len(chosen):
            raise GR2STConfigError(f"genes: repeated names in {chosen}")
        return chosen

    def bank_values(self, genes: Sequence[str]) -> Tensor:
        """Dense float32 ``(n_bank_spots, len(genes))`` log-normalised bank expression."""
        bank = self._require_bank("bank_values")
        if list(genes) == self.var_names:
            return bank.panel
        panel_pos = {g: i for i, g in enumerate(self.var_names)}
        all_pos = {g: i for i, g in enumerate(bank.all_genes)}
        out = np.empty((bank.panel.shape[0], len(genes)), np.float32)
        from_all = [i for i, g in enumerate(genes) if g in all_pos]
        if from_all and bank.all_values is not None:
            cols = [all_pos[genes[i]] for i in from_all]
            out[:, from_all] = bank.all_values[:, cols].toarray()
        for i, g in enumerate(genes):
            if g not in all_pos:
                out[:, i] = bank.panel[:, panel_pos[g]].numpy()
        return torch.from_numpy(out)

    def _require_bank(self, what: str) -> _Bank:
        if self._bank is None:
            raise GR2STConfigError(f"GR2ST.{what}: the model is not trained; call .train() first")
        return self._bank

    def retrieve_embeddings(
        self,
        embeddings: np.ndarray | Tensor,
        *,
        values: Tensor,
        genes: list[str],
        obs_names: Sequence[str],
        top_k: int | None = None,
    ) -> Prediction:
        """Predict ``values`` (one row per bank spot) for image embeddings.

        The ``top_k`` training spots most cosine-similar to each embedding, weighted
        ``∝ 1/L1²``, give the weighted mean, weighted spread and provenance; chunked so
        memory stays proportional to the number of spots.
        """
        bank = self._require_bank("predict")
        k = min(self.config.predict.top_k if top_k is None else top_k, int(bank.keys.shape[0]))
        chunk = max(1, min(128, _RETRIEVAL_CHUNK_BYTES // (4 * k * max(1, len(genes)))))
        mode = self.config.predict.bank
        key_sets = [bank.keys] if mode in ("spots", "both") else []
        if mode in ("images", "both"):
            if bank.image_keys is None:
                raise GR2STConfigError(
                    f"predict.bank={mode!r} needs the training spots' image embeddings, which "
                    f"{self.path or 'this model'} does not hold (a bundle written by an older "
                    "gr2st); use predict.bank='spots'"
                )
            key_sets.append(bank.image_keys)
        results = [
            retrieve(
                embeddings,
                keys,
                values,
                top_k=k,
                chunk_size=chunk,
                key_groups=bank.groups,
                n_groups=len(self._train_sections),
                device=self.device,
                distance=self.config.predict.distance,
            )
            for keys in key_sets
        ]
        provenances = [r.provenance for r in results if r.provenance is not None]
        assert len(provenances) == len(results)  # retrieve() was given the key groups
        mean, std, provenance = mixture(
            [r.mean for r in results], [r.std for r in results], provenances
        )
        return Prediction(
            mean=mean,
            std=std,
            provenance=provenance,
            var_names=list(genes),
            obs_names=[str(o) for o in obs_names],
            train_sections=self.train_section_names,
        )

    def predict(
        self,
        adata: AnnData,
        *,
        values: Sequence[AnnData] | None = None,
        genes: str | Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> Prediction:
        """Predict expression of a section from its image features by retrieval.

        Parameters
        ----------
        adata
            Section with ``obsm[feature_key]``; nothing else is needed (no expression,
            coordinates or nuclear types).
        values
            What to predict instead of the bank's expression: one AnnData per training
            section (same spots, in order) with any genes, e.g. the whole transcriptome.
        genes
            Genes to predict from the banks: ``"panel"`` (default), ``"all"`` (needs the
            all-genes bank of a saved bundle) or names.
        top_k
            Neighbours per spot (default ``config.predict.top_k``).
        """
        self._require_bank("predict")
        query = self._image_embeddings(self._features(adata))
        if values is not None:
            vals, chosen = self._values(values)
        else:
            chosen = self.resolve_genes(genes)
            vals = self.bank_values(chosen)
        return self.retrieve_embeddings(
            query, values=vals, genes=chosen, obs_names=adata.obs_names, top_k=top_k
        )

    def predict_features(
        self,
        feats: np.ndarray,
        *,
        genes: str | Sequence[str] | None = None,
        obs_names: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> Prediction:
        """Predict from an ``(N, image_dim)`` feature array (features already extracted)."""
        chosen = self.resolve_genes(genes)
        query = self.embed_features(feats)
        names = [str(i) for i in range(len(query))] if obs_names is None else obs_names
        return self.retrieve_embeddings(
            query, values=self.bank_values(chosen), genes=chosen, obs_names=names, top_k=top_k
        )

    def _aligned(self, sections: Sequence[AnnData], *, what: str) -> list[str]:
        """Check one AnnData per training section, with its spots and common genes.

        Returns the gene names.
        """
        if len(sections) != len(self._train_sections):
            raise GR2STDataError(
                f"{what}: expected one AnnData per training section "
                f"({len(self._train_sections)}), got {len(sections)}"
            )
        genes = [str(v) for v in sections[0].var_names]
        for (name, obs_names), adata in zip(self._train_sections, sections, strict=True):
            where = f"{what} for section {name!r}"
            if [str(o) for o in adata.obs_names] != obs_names:
                raise GR2STDataError(f"{where}: obs_names must equal the training section's spots")
            if [str(v) for v in adata.var_names] != genes:
                raise GR2STDataError(f"{where}: var_names differ from the first section's")
        return genes

    def _values(self, values: Sequence[AnnData]) -> tuple[Tensor, list[str]]:
        """Stack alternative retrieval values, one AnnData per training section."""
        genes = self._aligned(values, what="values")
        blocks = [
            torch.from_numpy(dense(a.X, where=f"values for section {name!r}"))
            for (name, _), a in zip(self._train_sections, values, strict=True)
        ]
        return torch.cat(blocks), genes

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        path: str | Path,
        *,
        all_genes: Sequence[AnnData] | None = None,
        image: ImageSettings | None = None,
        command: Sequence[str] | None = None,
    ) -> Path:
        """Write the trained model as a bundle folder (see :mod:`gr2st.models.bundle`).

        Parameters
        ----------
        path
            The bundle folder; an existing one is replaced only once the new one is
            complete.
        all_genes
            The training sections (same spots, in order) log-normalised over every gene
            measured in all of them with the panel library size
            (``prepare_section(…, genes=common_genes(…), library_genes=panel)``): lets
            the bundle predict any of those genes.
        image
            How the image features were made (encoder, patch size, stain, nuclei); a
            bundle without them predicts from features only (``gr2st train`` records
            them).
        command
            Command line recorded in the bundle (default ``sys.argv``).

        Returns
        -------
        pathlib.Path
            The bundle folder.
        """
        bank = self._require_bank("save")
        tensors = {"keys": bank.keys, "panel": bank.panel, "groups": bank.groups}
        if bank.image_keys is not None:
            tensors[IMAGE_KEYS] = bank.image_keys
        all_names: list[str] = []
        nnz = 0
        matrix: sp.csr_matrix | None = bank.all_values
        if all_genes is not None:
            all_names, matrix = self._all_genes_matrix(all_genes)
        elif matrix is not None:
            all_names = bank.all_genes
        if matrix is not None:
            nnz = int(matrix.nnz)
            tensors |= _csr_tensors(matrix)
        meta = BundleMeta(
            method="gr2st",
            profile=self.profile,
            config=self.config.to_dict(),
            seed=self.seed,
            history=self.history,
            feature_key=self.feature_key,
            image_dim=self.image_dim,
            image=image,
            train_sections=self._train_sections,
            panel=list(self.var_names),
            all_genes=all_names,
            n_spots=int(bank.keys.shape[0]),
            embedding_dim=int(bank.keys.shape[1]),
            has_image_keys=bank.image_keys is not None,
            all_nnz=nnz,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            command=list(sys.argv if command is None else command),
        )
        weights = {k: v for k, v in self.module.state_dict().items()}
        return write_bundle(path, meta=meta.to_dict(), weights=weights, bank=tensors)

    def _all_genes_matrix(self, sections: Sequence[AnnData]) -> tuple[list[str], sp.csr_matrix]:
        names = self._aligned(sections, what="all_genes")
        blocks = [sp.csr_matrix(a.X, dtype=np.float32) for a in sections]
        matrix = sp.vstack(blocks, format="csr")
        matrix.eliminate_zeros()
        return names, matrix

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> GR2ST:
        """Read a bundle written by :meth:`save` (ready to embed and predict, not to train).

        Every file is checked first (see :func:`gr2st.models.bundle.read_bundle`).
        """
        folder = Path(path)
        raw, weights, bank = read_bundle(folder)
        meta = BundleMeta.from_dict(raw)
        config = config_from_dict(GR2STConfig, meta.config, owner=f"{folder}/{META_FILE}")
        model = cls.__new__(cls)
        model._train_data = []
        model._setup(
            config=config,
            profile=meta.profile,
            var_names=meta.panel,
            image_dim=meta.image_dim,
            feature_key=meta.feature_key,
            seed=meta.seed,
            device=device,
            train_sections=meta.train_sections,
        )
        _check_weights(model.module, weights, where=folder / WEIGHTS_FILE)
        model.module.load_state_dict(weights)
        model.module.to(model.device).eval()
        model.history = meta.history
        model.image_settings = meta.image
        all_genes = meta.all_genes
        all_values = None
        if all_genes:
            all_values = sp.csr_matrix(
                tuple(bank[k].numpy() for k in ALL_GENES_BANK),
                shape=(int(bank["keys"].shape[0]), len(all_genes)),
            )
        model._bank = _Bank(
            keys=bank["keys"],
            panel=bank["panel"],
            groups=bank["groups"],
            all_genes=all_genes,
            all_values=all_values,
            image_keys=bank.get(IMAGE_KEYS),
        )
        model.meta = raw
        model.path = folder
        return model


def _check_weights(module: nn.Module, weights: dict[str, Tensor], *, where: Path) -> None:
    """One-line error unless ``weights`` are exactly the tensors ``module`` holds."""
    expected = module.state_dict()
    projection = "image_projection.projection.weight"
    if projection in weights and projection in expected:
        got, want = weights[projection].shape[-1], expected[projection].shape[-1]
        if got != want:
            raise GR2STDataError(
                f"{where}: the network takes {got} image features, {META_FILE} says "
                f"image_dim={want} (the bundle's encoder and weights disagree)"
            )
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(weights[k].shape)} instead of {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & weights.keys())
        if weights[k].shape != expected[k].shape
    ]
    problems = [
        *([f"missing {', '.join(missing[:3])}"] if missing else []),
        *([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []),
        *shapes[:3],
    ]
    if problems:
        raise GR2STDataError(
            f"{where}: weights do not fit the network in {META_FILE} ({'; '.join(problems)})"
        )


def _named(adata: AnnData, name: str) -> AnnData:
    """``adata`` with ``obs[SECTION]`` set to ``name`` when it has none."""
    if SECTION in adata.obs:
        return adata
    named = adata.copy()
    named.obs[SECTION] = name
    return named


def _csr_tensors(matrix: sp.csr_matrix) -> dict[str, Tensor]:
    return {
        "all_data": torch.from_numpy(matrix.data.astype(np.float32)),
        "all_indices": torch.from_numpy(matrix.indices.astype(np.int32)),
        "all_indptr": torch.from_numpy(matrix.indptr.astype(np.int64)),
    }
