"""The user-facing GR2ST model: train on prepared sections, embed, predict by retrieval.

Typical use (``train_sections``/``test_section`` prepared AnnData with image features)::

    model = GR2ST(train_sections, feature_key="X_phikon-v2", profile="default")
    model.train(checkpoint_dir="runs/fold0")     # resumable checkpoints
    model.save("models/gr2st")                   # a bundle: weights + retrieval bank + config
    pred = GR2ST.load("models/gr2st").predict(test_section)
    pred.mean, pred.std, pred.provenance         # expression, spread, sources
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
from gr2st._utils.files import atomic_path
from gr2st.config import apply_overrides, config_from_dict
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.models.bundle import (
    ALL_GENES_BANK,
    IMAGE_KEYS,
    ImageSettings,
    read_bundle,
    write_bundle,
)
from gr2st.models.config import GR2STConfig, get_profile
from gr2st.models.module import GR2STModule
from gr2st.retrieval import mixture, retrieve
from gr2st.sections import SectionArrays, dense, features, section_arrays, section_name
from gr2st.training import (
    DEFAULT_CHECKPOINT_SECONDS,
    Batch,
    Trainer,
    TrainingStats,
    TrainingTask,
    fingerprint,
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


@dataclass
class Validation:
    """Epochs chosen by ``train.early_stopping``.

    Attributes
    ----------
    section
        The training section held out to validate (never a test section).
    best_epochs
        Epochs of the best validation score (the earliest on ties).
    scores
        Mean per-gene Pearson r of the retrieval on ``section``, by epochs trained.
    """

    section: str
    best_epochs: int
    scores: dict[int, float]


_SCORES_FILE = "validation.json"


def _read_scores(folder: Path, validation: Validation) -> Validation:
    """Scores saved by an interrupted validation run of the same section."""
    path = folder / _SCORES_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("section") == validation.section:
            validation.scores.update({int(k): float(v) for k, v in saved["scores"].items()})
    return validation


def _write_scores(folder: Path, validation: Validation) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"section": validation.section, "scores": validation.scores}
    with atomic_path(folder / _SCORES_FILE) as tmp:
        tmp.write_text(json.dumps(payload))


@contextmanager
def _private_rng(device: torch.device) -> Iterator[None]:
    """Run with forked torch RNGs, leaving the caller's random state untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _ContrastiveTask(TrainingTask):
    """GR2ST's batches (spots of one section, shuffled) and contrastive loss."""

    def __init__(self, model: GR2ST, data: list[dict[str, Tensor]]) -> None:
        cfg = model.config.train
        self.model = model
        self.data = data
        self.new_optimizer_each_epoch = cfg.optimizer_per_epoch
        self.noise_scale: Tensor | None = None
        self.mixing: torch.distributions.Beta | None = None
        if cfg.mixup > 0:
            self.mixing = torch.distributions.Beta(cfg.mixup, cfg.mixup)
        if cfg.feature_noise > 0:
            all_features = torch.cat([d["features"] for d in data])
            self.noise_scale = cfg.feature_noise * all_features.std(dim=0, keepdim=True)

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.model.config.train
        params = list(net.parameters())
        # One fused pass over each parameter instead of one per operation: with the
        # reference profile's 65,536-row coordinate tables a 300-spot CPU step took 1.4 s
        # instead of 3.3 s (benchmarks/bench_train_step.py, "+fused"). Equal to the
        # unfused update to float rounding and deterministic (resume stays bit-exact).
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        return torch.optim.Adam(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
        )

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        # Sections in a random order; a section's spots shuffled and cut into batches,
        # so a batch never mixes sections (and normally is one whole section).
        size = self.model.config.train.batch_size
        for si in rng.permutation(len(self.data)):
            sec = self.data[si]
            n = int(sec["positions"].shape[0])
            order = torch.from_numpy(rng.permutation(n)).to(sec["positions"].device)
            for batch in order.split(size):
                yield Batch((sec, batch), weight=float(batch.numel()))

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        sec, index = batch
        feats = sec["features"][index]
        expression = sec["expression"][index]
        if self.mixing is not None:
            feats, expression = self._mix(feats, expression)
        if self.noise_scale is not None:
            feats = feats + self.noise_scale * torch.randn_like(feats)
        loss: Tensor = net(feats, expression, sec["positions"][index], sec["types"][index])
        return loss

    def _mix(self, feats: Tensor, expression: Tensor) -> tuple[Tensor, Tensor]:
        """Spot mixup (``train.mixup``): both sides of each spot mixed with one partner."""
        assert self.mixing is not None
        n = feats.shape[0]
        draw = self.mixing.sample((n, 1)).to(device=feats.device, dtype=feats.dtype)
        lam = torch.maximum(draw, 1 - draw)
        partner = torch.randperm(n).to(feats.device)
        return (
            lam * feats + (1 - lam) * feats[partner],
            lam * expression + (1 - lam) * expression[partner],
        )


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

    def _validate_epochs(
        self, *, progress: bool, checkpoint_dir: Path | None, checkpoint_every: float
    ) -> Validation:
        """Train on all training sections but one and score retrieval on that one."""
        if len(self._train_data) < 2:
            raise GR2STConfigError(
                "train.early_stopping needs at least two training sections (one validates)"
            )
        cfg = self.config.train
        held = int(np.random.default_rng(self.seed).integers(len(self._train_data)))
        val = self._train_data[held]
        inner = GR2ST.__new__(GR2ST)
        inner._setup(
            config=self.config,
            profile=self.profile,
            var_names=self.var_names,
            image_dim=self.image_dim,
            feature_key=self.feature_key,
            seed=self.seed,
            device=str(self.device),
            train_sections=[s for i, s in enumerate(self._train_sections) if i != held],
        )
        inner._train_data = [a for i, a in enumerate(self._train_data) if i != held]
        progress_so_far = Validation(section=val.name, best_epochs=cfg.epochs, scores={})
        if checkpoint_dir is not None:
            progress_so_far = _read_scores(checkpoint_dir, progress_so_far)
        # Set, so that the inner model does not validate in turn.
        inner.validation = progress_so_far
        truth = torch.from_numpy(val.expression)
        query = torch.from_numpy(val.features)

        def score(epoch: int, loss: float) -> None:
            if epoch % cfg.validate_every and epoch != cfg.epochs:
                return
            inner._bank = inner._build_bank()
            pred = inner.retrieve_embeddings(
                inner._image_embeddings(query),
                values=inner._bank.panel,
                genes=inner.var_names,
                obs_names=val.obs_names,
            )
            r = pearson_per_gene(pred.mean, truth.numpy())
            progress_so_far.scores[epoch] = float(np.nanmean(r)) if np.isfinite(r).any() else 0.0
            if checkpoint_dir is not None:
                _write_scores(checkpoint_dir, progress_so_far)

        inner.train(
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            on_epoch_end=score,
        )
        scores = progress_so_far.scores
        # The earliest of the best scores: fewer epochs when it makes no difference.
        best = max(sorted(scores), key=lambda e: scores[e])
        return Validation(section=val.name, best_epochs=best, scores=dict(sorted(scores.items())))

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
            self.validation = self._validate_epochs(
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
        trainer = Trainer(
            epochs=epochs,
            seed=self.seed,
            workdir=checkpoint_dir,
            run_fingerprint=self._fingerprint() if checkpoint_dir is not None else "",
            checkpoint_every=checkpoint_every,
            average_last=cfg.average_last,
            precision=cfg.precision,
            progress=progress,
            desc="GR2ST",
            on_epoch_end=on_epoch_end,
            log_path=None if checkpoint_dir is None else Path(checkpoint_dir) / "progress.jsonl",
        )
        with _private_rng(dev):
            torch.manual_seed(self.seed)
            history = trainer.fit(self.module, _ContrastiveTask(self, data))
        self.module.eval()
        self.history = history
        self.training_stats = trainer.stats
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
        meta: dict[str, Any] = {
            "method": "gr2st",
            "profile": self.profile,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "history": self.history,
            "feature_key": self.feature_key,
            "image_dim": self.image_dim,
            **(image.to_meta() if image is not None else {"encoder": None}),
            "train_sections": [
                {"name": n, "n_spots": len(o), "obs_names": o} for n, o in self._train_sections
            ],
            "genes": {"panel": list(self.var_names), "all": all_names, "library": "panel"},
            "bank": {
                "n_spots": int(bank.keys.shape[0]),
                "embedding_dim": int(bank.keys.shape[1]),
                IMAGE_KEYS: bank.image_keys is not None,
                "panel_values": "dense float32",
                "all_values": "CSR float32" if all_names else None,
                "all_nnz": nnz,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": list(sys.argv if command is None else command),
        }
        weights = {k: v for k, v in self.module.state_dict().items()}
        return write_bundle(path, meta=meta, weights=weights, bank=tensors)

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
        meta, weights, bank = read_bundle(folder)
        config = config_from_dict(GR2STConfig, meta["config"], owner=f"{folder}/bundle.json")
        model = cls.__new__(cls)
        model._train_data = []
        sections = [
            (str(s["name"]), [str(o) for o in s.get("obs_names") or []])
            for s in meta["train_sections"]
        ]
        model._setup(
            config=config,
            profile=str(meta.get("profile", "custom")),
            var_names=list(meta["genes"]["panel"]),
            image_dim=int(meta["image_dim"]),
            feature_key=str(meta["feature_key"]),
            seed=int(meta.get("seed", 0)),
            device=device,
            train_sections=sections,
        )
        try:
            model.module.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:2]
            raise GR2STDataError(
                f"{folder}/weights.safetensors: weights do not fit the network in bundle.json "
                f"({' '.join(line.strip() for line in first)})"
            ) from None
        model.module.to(model.device).eval()
        model.history = [float(v) for v in meta.get("history", [])]
        model.image_settings = ImageSettings.from_meta(meta)
        all_genes = list(meta["genes"]["all"] or [])
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
        model.meta = meta
        model.path = folder
        return model


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
