"""GR2ST hyperparameters: a typed config, named profiles and dotted overrides.

``reference`` reproduces the published recipe and its quirks; ``default`` is ours
(initially the same recipe: every difference is a field here, so each change can be
measured on its own). Overrides are ``"section.field=value"`` strings, e.g.
``["model.fusion=concat", "train.epochs=50"]``; a field name alone (``"epochs=50"``)
works too, as names are unique across sections.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from gr2st._constants import NUCLEAR_TYPES
from gr2st.errors import GR2STConfigError

Fusion = Literal["sum", "concat", "max", "mean"]
Rounding = Literal["floor", "round"]
GATImplName = Literal["auto", "dense", "sparse", "pyg"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`~gr2st.models.GR2STModule`.

    Attributes
    ----------
    proj_dim
        Projection width ``P`` of both embeddings and of each GAT head.
    heads
        GAT heads ``H``; the heads are concatenated (``H · P`` columns).
    dropout
        Dropout of the projection heads, the type embedding, the fusion block and the
        attention coefficients.
    temperature
        ``τ`` dividing the contrastive logits and the functional-graph affinities.
    learnable_temperature
        Learn ``log τ`` of the contrastive logits (the graph keeps the fixed ``τ``).
    normalise_logits
        L2-normalise both embeddings before the contrastive dot product (cosine logits);
        the reference uses raw dot products.
    k_dynamic, k_spatial
        Neighbours per spot in the functional and the spatial graph.
    same_type_bonus
        Affinity bonus of two spots of the same nuclear type in the functional graph.
    fusion
        How the two branches are combined: ``sum``, ``concat``, ``max`` or ``mean``.
    use_dynamic, use_spatial
        Keep the functional / spatial GAT branch (at least one is required).
    use_cell_type
        Add the nuclear-type embedding and the same-type bonus.
    use_position
        Add the learned embeddings of the array coordinates.
    n_positions
        Rows of each coordinate embedding; coordinates must be below it. Rows are
        independent under Adam, so any value above the largest coordinate trains the
        same model (only the initialisation's random stream differs). The reference's
        65,536 also reproduces the published code's initial weights for a given seed.
    position_rounding
        How float array coordinates become embedding rows: ``floor`` (the reference's
        ``.long()`` truncation) or ``round``. Identical on integer coordinates (HER2ST).
    gat_impl
        How the GAT layers compute (all the same function, see :mod:`gr2st.models.gat`):
        ``auto`` (dense attention on small graphs, the edge-list kernel on larger ones,
        whichever is faster), ``dense`` (``O(N²)``), ``sparse`` (edge-list, ``O(edges)``)
        or ``pyg`` (``torch_geometric.nn.GATConv``).
    n_cell_types
        Number of nuclear type ids (PanNuke's six).
    """

    proj_dim: int = 256
    heads: int = 8
    dropout: float = 0.1
    temperature: float = 1.0
    learnable_temperature: bool = False
    normalise_logits: bool = False
    k_dynamic: int = 20
    k_spatial: int = 20
    same_type_bonus: float = 0.3
    fusion: Fusion = "sum"
    use_dynamic: bool = True
    use_spatial: bool = True
    use_cell_type: bool = True
    use_position: bool = True
    n_positions: int = 65536
    position_rounding: Rounding = "floor"
    gat_impl: GATImplName = "auto"
    n_cell_types: int = len(NUCLEAR_TYPES)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of :meth:`gr2st.models.GR2ST.train`.

    Attributes
    ----------
    epochs
        Passes over the training sections; the model after the last one is kept.
    batch_size
        Most spots per step; each step holds spots of one section only.
    lr, weight_decay
        Adam's learning rate and (L2) weight decay.
    optimiser_per_epoch
        Re-create Adam at the start of every epoch (the reference's quirk: moments reset).
    feature_noise
        Standard deviation, in units of each feature's training-set standard deviation,
        of Gaussian noise added to the image features at every step (0 = none).
    average_last
        Keep the mean of the weights at the end of the last ``average_last`` epochs
        (1 = the last epoch's weights, as the reference).
    """

    epochs: int = 100
    batch_size: int = 2048
    lr: float = 1e-4
    weight_decay: float = 1e-3
    optimiser_per_epoch: bool = True
    feature_noise: float = 0.0
    average_last: int = 1


@dataclass(frozen=True)
class PredictConfig:
    """Retrieval settings of :meth:`gr2st.models.GR2ST.predict`.

    Attributes
    ----------
    top_k
        Training spots whose expression is averaged per predicted spot.
    """

    top_k: int = 200


_SECTIONS = ("model", "train", "predict")


@dataclass(frozen=True)
class GR2STConfig:
    """The full GR2ST configuration: ``model``, ``train`` and ``predict`` sections.

    Examples
    --------
    >>> cfg = apply_overrides(get_profile("reference"), ["model.fusion=concat"])
    >>> cfg.model.fusion, cfg.train.epochs
    ('concat', 100)
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GR2STConfig:
        """Rebuild and validate a config written by :meth:`to_dict`."""
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise GR2STConfigError(f"config: unknown section(s) {sorted(unknown)}")
        overrides = [
            f"{section}.{key}={value}"
            for section in _SECTIONS
            for key, value in dict(data.get(section, {})).items()
        ]
        return apply_overrides(cls(), overrides)


PROFILES: dict[str, GR2STConfig] = {
    # The published recipe: τ = 1 on unnormalised logits, Adam re-created every epoch,
    # 100 epochs, one section per batch, the last epoch's weights.
    "reference": GR2STConfig(),
    # Ours. Starts as the reference recipe; each change is adopted only with a measured
    # gain on real data. 1,024 coordinate rows train the same function as 65,536 (rows
    # are independent under Adam) at a quarter of the CPU step time and 1.6 GB less
    # memory (benchmarks/bench_train_step.py); array coordinates stay far below it.
    # Dropout 0.3: HER2ST-6 leave-one-section-out mean PCC 0.1905 vs 0.1851 for the
    # reference (better on 5 of 6 sections); see docs/results.md for every change tried.
    "default": GR2STConfig(
        model=ModelConfig(position_rounding="round", n_positions=1024, dropout=0.3)
    ),
}


def get_profile(name: str) -> GR2STConfig:
    """Return the named profile (``reference`` or ``default``).

    Examples
    --------
    >>> get_profile("reference").train.optimiser_per_epoch
    True
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise GR2STConfigError(
            f"profile: unknown GR2ST profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, raw: object, kind: Any) -> Any:
    """Convert ``raw`` (an override string or a JSON value) to the field type ``kind``."""
    text = str(raw).strip()
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        if text not in choices:
            raise GR2STConfigError(f"{key}: expected one of {list(choices)}, got {text!r}")
        return text
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise GR2STConfigError(f"{key}: expected a boolean (true/false), got {text!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise GR2STConfigError(f"{key}: expected an integer, got {raw!r}")
        try:
            value = float(text)
        except ValueError:
            raise GR2STConfigError(f"{key}: expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise GR2STConfigError(f"{key}: expected an integer, got {text!r}")
        return int(value)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise GR2STConfigError(f"{key}: expected a number, got {text!r}") from None
    raise GR2STConfigError(f"{key}: unsupported field type {kind!r}")


def _field_types(section: str) -> dict[str, Any]:
    kinds = {"model": ModelConfig, "train": TrainConfig, "predict": PredictConfig}
    return get_type_hints(kinds[section])


def _resolve_key(item: str, key: str) -> tuple[str, str]:
    """``"section.field"`` or a bare ``"field"`` (unique across sections) → (section, field)."""
    section, dot, name = key.partition(".")
    if not dot:
        owners = [sec for sec in _SECTIONS if key in _field_types(sec)]
        if len(owners) != 1:
            raise GR2STConfigError(
                f"override {item!r}: unknown field {key!r}; use section.field with a section "
                f"in {', '.join(_SECTIONS)}"
            )
        return owners[0], key
    if section not in _SECTIONS:
        raise GR2STConfigError(
            f"override {item!r}: unknown section {section!r}; known: {', '.join(_SECTIONS)}"
        )
    hints = _field_types(section)
    if name not in hints:
        raise GR2STConfigError(
            f"override {item!r}: unknown field {key!r}; known: {', '.join(sorted(hints))}"
        )
    return section, name


def apply_overrides(config: GR2STConfig, overrides: Sequence[str]) -> GR2STConfig:
    """Return ``config`` with ``section.field=value`` overrides applied and validated.

    Parameters
    ----------
    config
        Starting configuration (left unchanged).
    overrides
        Strings such as ``"model.fusion=concat"`` or ``"train.lr=3e-4"``; the section
        may be left out (``"epochs=5"``) since field names are unique across sections.
        Values are converted to the field's type (booleans accept
        true/false/1/0/yes/no).

    Raises
    ------
    GR2STConfigError
        Unknown section or field, malformed override, or a value of the wrong type or
        outside its range.

    Examples
    --------
    >>> apply_overrides(get_profile("default"), ["train.epochs=5", "top_k=50"]).train.epochs
    5
    """
    changes: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GR2STConfigError(f"override {item!r}: expected 'section.field=value'")
        section, name = _resolve_key(item, key.strip())
        changes[section][name] = _coerce(f"{section}.{name}", raw, _field_types(section)[name])
    new = GR2STConfig(
        model=dataclasses.replace(config.model, **changes["model"]),
        train=dataclasses.replace(config.train, **changes["train"]),
        predict=dataclasses.replace(config.predict, **changes["predict"]),
    )
    validate(new)
    return new


def validate(config: GR2STConfig) -> None:
    """Raise :class:`GR2STConfigError` naming the first out-of-range field."""
    m, t = config.model, config.train
    positive = {
        "model.proj_dim": m.proj_dim,
        "model.heads": m.heads,
        "model.k_dynamic": m.k_dynamic,
        "model.k_spatial": m.k_spatial,
        "model.n_positions": m.n_positions,
        "model.n_cell_types": m.n_cell_types,
        "model.temperature": m.temperature,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.lr": t.lr,
        "train.average_last": t.average_last,
        "predict.top_k": config.predict.top_k,
    }
    for key, value in positive.items():
        if not value > 0:
            raise GR2STConfigError(f"{key}: expected a positive value, got {value}")
    if not 0.0 <= m.dropout < 1.0:
        raise GR2STConfigError(f"model.dropout: expected a value in [0, 1), got {m.dropout}")
    if t.weight_decay < 0 or t.feature_noise < 0:
        raise GR2STConfigError(
            "train.weight_decay/train.feature_noise: expected non-negative values, got "
            f"{t.weight_decay}/{t.feature_noise}"
        )
    if not (m.use_dynamic or m.use_spatial):
        raise GR2STConfigError("model.use_dynamic/model.use_spatial: at least one branch is needed")
    if t.average_last > t.epochs:
        raise GR2STConfigError(
            f"train.average_last: expected at most train.epochs ({t.epochs}), got {t.average_last}"
        )
