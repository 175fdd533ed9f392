"""The user-facing GR2ST model: train on prepared sections, embed, predict by retrieval.

Typical use (``train_sections``/``test_section`` prepared AnnData with image features)::

    model = GR2ST(train_sections, feature_key="X_phikon-v2", profile="default")
    model.train(checkpoint_dir="runs/fold0")     # resumable per-epoch checkpoints
    model.save("models/gr2st")                   # weights + retrieval bank + config
    pred = GR2ST.load("models/gr2st").predict(test_section)
    pred.mean, pred.std, pred.provenance         # expression, spread, sources
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from gr2st._utils.files import atomic_path
from gr2st._utils.seed import resolve_device
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.models._data import (
    SectionTensors,
    dense_expression,
    image_features,
    section_name,
    section_tensors,
)
from gr2st.models.config import GR2STConfig, apply_overrides, get_profile
from gr2st.models.layers import EpochCheckpoint, fingerprint
from gr2st.models.module import GR2STModule
from gr2st.retrieval import retrieve

_FORMAT = "gr2st-model"
_FORMAT_VERSION = 1
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_BANK_FILE = "bank.safetensors"
_IMAGE_CHUNK = 8192


@dataclass(frozen=True)
class Prediction:
    """Retrieval prediction for one section.

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
    values: Tensor
    groups: Tensor


@contextmanager
def _private_rng(device: torch.device) -> Iterator[None]:
    """Run with forked torch RNGs, leaving the caller's random state untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Enable torch's deterministic algorithms (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


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
        ``"default"`` (ours) or ``"reference"`` (the published recipe).
    overrides
        Dotted overrides on top, e.g. ``["model.fusion=concat", "train.epochs=50"]``.
    seed
        Seed of the initial weights, the shuffles, dropout and noise.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> import numpy as np
    >>> secs = synthetic(n_sections=2, n_genes=8, grid=(4, 4))
    >>> for s in secs:
    ...     s.X = np.log10(1 + 1e4 * s.X.toarray() / s.X.sum(1).A).astype("float32")
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
        cfg = apply_overrides(
            config if config is not None else get_profile(profile), list(overrides)
        )
        var_names = [str(v) for v in sections[0].var_names]
        names = [section_name(a, f"section{i}") for i, a in enumerate(sections)]
        if len(set(names)) != len(names):
            raise GR2STDataError(f"sections: section names must be unique, got {names}")
        tensors = []
        for name, adata in zip(names, sections, strict=True):
            if list(adata.var_names) != var_names:
                raise GR2STDataError(
                    f"section {name!r}: var_names differ from section {names[0]!r}; "
                    "expected the same genes in the same order"
                )
            tensors.append(
                section_tensors(
                    adata,
                    feature_key=feature_key,
                    name=name,
                    n_positions=cfg.model.n_positions,
                    n_cell_types=cfg.model.n_cell_types,
                )
            )
        dims = {t.features.shape[1] for t in tensors}
        if len(dims) != 1:
            raise GR2STDataError(
                f"obsm[{feature_key!r}]: feature widths differ between sections: {dims}"
            )
        self._train_data: list[SectionTensors] = tensors
        self._setup(
            config=cfg,
            var_names=var_names,
            image_dim=dims.pop(),
            feature_key=feature_key,
            seed=seed,
            device=device,
            train_sections=[(t.name, t.obs_names) for t in tensors],
        )

    def _setup(
        self,
        *,
        config: GR2STConfig,
        var_names: list[str],
        image_dim: int,
        feature_key: str,
        seed: int,
        device: str,
        train_sections: list[tuple[str, list[str]]],
    ) -> None:
        self.config = config
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

    # ------------------------------------------------------------------ training
    def _fingerprint(self) -> str:
        """Identify a training run: config, seed, feature key and the training data."""
        arrays: list[np.ndarray] = []
        for t in self._train_data:
            arrays += [
                t.features.numpy(),
                t.expression.numpy(),
                t.positions.numpy(),
                t.types.numpy(),
            ]
        settings = {
            "config": self.config.to_dict(),
            "seed": self.seed,
            "feature_key": self.feature_key,
            "sections": self.train_section_names,
        }
        return fingerprint(settings, arrays)

    def _optimiser(self) -> torch.optim.Optimizer:
        cfg = self.config.train
        return torch.optim.Adam(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def train(
        self,
        *,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        on_epoch_end: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train for ``config.train.epochs`` epochs, then build the retrieval bank.

        Each epoch visits the training sections in a random order; a section's spots are
        shuffled and cut into batches of at most ``train.batch_size`` (so a batch never
        mixes sections, and normally is one whole section). Training starts from the
        current weights.

        Parameters
        ----------
        progress
            Show a progress bar with the epoch and its loss.
        checkpoint_dir
            Folder for a per-epoch checkpoint (weights, optimiser, RNG states, epoch),
            written atomically. A checkpoint left there by an interrupted run with the
            same config, seed and data is resumed, giving the same final weights as an
            uninterrupted run; one of another run is overwritten.
        on_epoch_end
            Called as ``on_epoch_end(epochs_done, epoch_loss)`` after each epoch (and its
            checkpoint).

        Returns
        -------
        list of float
            Mean training loss (weighted by spots) of every epoch.
        """
        if not self._train_data:
            raise GR2STConfigError(
                "GR2ST.train: this model was loaded from disk without its training sections"
            )
        cfg = self.config.train
        dev = self.device
        data = [t.to(dev) for t in self._train_data]
        noise_scale: Tensor | None = None
        if cfg.feature_noise > 0:
            all_features = torch.cat([t.features for t in data])
            noise_scale = cfg.feature_noise * all_features.std(dim=0, keepdim=True)
        # What the checkpoint holds: the network and, when averaging, the running mean.
        state = nn.ModuleDict({"net": self.module})
        averaged: AveragedModel | None = None
        if cfg.average_last > 1:
            averaged = AveragedModel(self.module)
            state["average"] = averaged
        checkpoint = EpochCheckpoint(
            None if checkpoint_dir is None else Path(checkpoint_dir),
            run_fingerprint=self._fingerprint() if checkpoint_dir is not None else "",
        )
        with _private_rng(dev), _deterministic(dev.type == "cpu"):
            torch.manual_seed(self.seed)
            shuffle = np.random.default_rng(self.seed)
            optimiser = self._optimiser()
            start, history = checkpoint.load(model=state, optimizer=optimiser, rng=shuffle)
            self.module.train()
            bar = tqdm(
                range(start, cfg.epochs),
                initial=start,
                total=cfg.epochs,
                disable=not progress,
                desc="GR2ST",
                unit="epoch",
                leave=False,
            )
            for epoch in bar:
                if cfg.optimiser_per_epoch:
                    optimiser = self._optimiser()
                loss = self._epoch(data, optimiser, shuffle, noise_scale)
                history.append(loss)
                if averaged is not None and epoch >= cfg.epochs - cfg.average_last:
                    averaged.update_parameters(self.module)
                checkpoint.save(
                    model=state, optimizer=optimiser, epoch=epoch + 1, history=history, rng=shuffle
                )
                bar.set_postfix(loss=f"{loss:.4f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, loss)
            if averaged is not None:
                self.module.load_state_dict(averaged.module.state_dict())
        self.module.eval()
        self.history = list(history)
        self._bank = self._build_bank()
        return list(history)

    def _epoch(
        self,
        data: list[SectionTensors],
        optimiser: torch.optim.Optimizer,
        shuffle: np.random.Generator,
        noise_scale: Tensor | None,
    ) -> float:
        """One pass over the sections; returns the spot-weighted mean loss."""
        total, count = torch.zeros((), device=self.device), 0
        for si in shuffle.permutation(len(data)):
            sec = data[si]
            order = torch.from_numpy(shuffle.permutation(sec.n_spots)).to(self.device)
            for batch in order.split(self.config.train.batch_size):
                features = sec.features[batch]
                if noise_scale is not None:
                    features = features + noise_scale * torch.randn_like(features)
                loss = self.module(
                    features, sec.expression[batch], sec.positions[batch], sec.types[batch]
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach() * batch.numel()
                count += batch.numel()
        return float(total) / count

    # ------------------------------------------------------------------ embeddings
    def _features(self, adata: AnnData) -> tuple[Tensor, str]:
        """A section's image features, checked against the model's feature width."""
        name = section_name(adata, "query")
        features = image_features(adata, feature_key=self.feature_key, name=name)
        if features.shape[1] != self.image_dim:
            raise GR2STDataError(
                f"section {name!r}: obsm[{self.feature_key!r}] has {features.shape[1]} "
                f"columns; the model expects {self.image_dim}"
            )
        return features, name

    def _section(self, adata: AnnData) -> SectionTensors:
        """A section with expression, its genes aligned to the model's."""
        name = section_name(adata, "query")
        if list(adata.var_names) != self.var_names:
            missing = set(self.var_names) - set(adata.var_names)
            if missing:
                raise GR2STDataError(
                    f"section {name!r}: {len(missing)} model genes are missing from var_names "
                    f"(e.g. {sorted(missing)[:3]})"
                )
            adata = adata[:, self.var_names]
        self._features(adata)
        return section_tensors(
            adata,
            feature_key=self.feature_key,
            name=name,
            n_positions=self.config.model.n_positions,
            n_cell_types=self.config.model.n_cell_types,
        )

    @torch.no_grad()
    def _image_embeddings(self, features: Tensor) -> Tensor:
        self.module.eval()
        chunks = [
            self.module.embed_images(chunk.to(self.device))
            for chunk in features.split(_IMAGE_CHUNK)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def _spot_embeddings(self, sec: SectionTensors) -> Tensor:
        self.module.eval()
        s = sec.to(self.device)
        return self.module.embed_spots(s.expression, s.positions, s.types)

    def embed_images(self, adata: AnnData) -> np.ndarray:
        """Image embeddings ``(n_spots, P)`` of a section's features (eval mode)."""
        return self._image_embeddings(self._features(adata)[0]).cpu().numpy()

    def embed_spots(self, adata: AnnData) -> np.ndarray:
        """Spot embeddings ``(n_spots, P)``: the whole section as one batch with its own graphs.

        Needs the section's expression (panel genes), array coordinates and nuclear types.
        """
        return self._spot_embeddings(self._section(adata)).cpu().numpy()

    def _build_bank(self) -> _Bank:
        keys = [self._spot_embeddings(t).cpu() for t in self._train_data]
        values = [t.expression for t in self._train_data]
        groups = [
            torch.full((t.n_spots,), i, dtype=torch.long) for i, t in enumerate(self._train_data)
        ]
        return _Bank(keys=torch.cat(keys), values=torch.cat(values), groups=torch.cat(groups))

    # ------------------------------------------------------------------ prediction
    def _values(self, values: Sequence[AnnData]) -> tuple[Tensor, list[str]]:
        """Stack alternative retrieval values, one AnnData per training section."""
        if len(values) != len(self._train_sections):
            raise GR2STDataError(
                f"values: expected one AnnData per training section ({len(self._train_sections)}), "
                f"got {len(values)}"
            )
        genes = [str(v) for v in values[0].var_names]
        blocks = []
        for (name, obs_names), adata in zip(self._train_sections, values, strict=True):
            where = f"values for section {name!r}"
            if [str(o) for o in adata.obs_names] != obs_names:
                raise GR2STDataError(f"{where}: obs_names must equal the training section's spots")
            if [str(v) for v in adata.var_names] != genes:
                raise GR2STDataError(f"{where}: var_names differ from the first values section")
            blocks.append(torch.from_numpy(dense_expression(adata, where=where)))
        return torch.cat(blocks), genes

    def predict(
        self,
        adata: AnnData,
        *,
        values: Sequence[AnnData] | None = None,
        top_k: int | None = None,
    ) -> Prediction:
        """Predict expression of a section from its image features by retrieval.

        The section's image embeddings query the training spots' embeddings: the
        ``top_k`` most cosine-similar, weighted ``∝ 1/L1²``, give the prediction.

        Parameters
        ----------
        adata
            Section with ``obsm[feature_key]``; nothing else is needed (no expression,
            coordinates or nuclear types).
        values
            What to predict: by default the training sections' panel expression; or one
            AnnData per training section (same spots, in order) with any genes, e.g. the
            whole transcriptome.
        top_k
            Neighbours per spot (default ``config.predict.top_k``).
        """
        if self._bank is None:
            raise GR2STConfigError("GR2ST.predict: the model is not trained; call .train() first")
        features, _ = self._features(adata)
        query = self._image_embeddings(features)
        vals, genes = (
            (self._bank.values, self.var_names) if values is None else self._values(values)
        )
        res = retrieve(
            query,
            self._bank.keys,
            vals,
            top_k=self.config.predict.top_k if top_k is None else top_k,
            key_groups=self._bank.groups,
            n_groups=len(self._train_sections),
            device=self.device,
        )
        assert res.provenance is not None
        return Prediction(
            mean=res.mean,
            std=res.std,
            provenance=res.provenance,
            var_names=genes,
            obs_names=[str(o) for o in adata.obs_names],
            train_sections=self.train_section_names,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the model to folder ``path``: weights, retrieval bank and config.

        ``model.safetensors`` and ``bank.safetensors`` hold the tensors and
        ``config.json`` the configuration, genes and training-section spots; each file is
        written atomically and ``config.json`` last.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        with atomic_path(folder / _WEIGHTS_FILE) as tmp:
            save_file(weights, str(tmp))
        if self._bank is not None:
            bank = {
                "keys": self._bank.keys,
                "values": self._bank.values.contiguous(),
                "groups": self._bank.groups,
            }
            with atomic_path(folder / _BANK_FILE) as tmp:
                save_file(bank, str(tmp))
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "config": self.config.to_dict(),
            "var_names": self.var_names,
            "image_dim": self.image_dim,
            "feature_key": self.feature_key,
            "seed": self.seed,
            "history": self.history,
            "trained": self._bank is not None,
            "train_sections": [{"name": n, "obs_names": o} for n, o in self._train_sections],
        }
        with atomic_path(folder / _CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> GR2ST:
        """Read a model written by :meth:`save` (ready to embed and predict, not to train)."""
        folder = Path(path)
        meta_path = folder / _CONFIG_FILE
        if not meta_path.is_file():
            raise GR2STConfigError(f"{meta_path}: missing; not a saved GR2ST model")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise GR2STConfigError(f"{meta_path}: invalid JSON ({exc.msg})") from None
        if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
            raise GR2STConfigError(
                f"{meta_path}: expected format {_FORMAT!r} version {_FORMAT_VERSION}, got "
                f"{meta.get('format')!r} version {meta.get('format_version')!r}"
            )
        model = cls.__new__(cls)
        model._train_data = []
        model._setup(
            config=GR2STConfig.from_dict(meta["config"]),
            var_names=list(meta["var_names"]),
            image_dim=int(meta["image_dim"]),
            feature_key=str(meta["feature_key"]),
            seed=int(meta["seed"]),
            device=device,
            train_sections=[(s["name"], list(s["obs_names"])) for s in meta["train_sections"]],
        )
        model.module.load_state_dict(
            load_file(str(folder / _WEIGHTS_FILE), device=str(model.device))
        )
        model.history = [float(v) for v in meta["history"]]
        if meta["trained"]:
            bank = load_file(str(folder / _BANK_FILE))
            model._bank = _Bank(keys=bank["keys"], values=bank["values"], groups=bank["groups"])
        return model
