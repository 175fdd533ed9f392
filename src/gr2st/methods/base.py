"""The interface every benchmarked method implements.

A method is fitted on training sections and predicts log-normalised expression for a
held-out section. The benchmark's single fold loop (``gr2st.benchmark``) owns splits,
seeds, caching, resume and metrics; a method owns only what it learns. The contract is
explicit here, never discovered by inspection:

- class attributes :attr:`Method.name`, :attr:`~Method.input` (``"features"`` or
  ``"pixels"``), :attr:`~Method.patch_px`, :attr:`~Method.is_ceiling`,
  :attr:`~Method.has_profiles`, :attr:`~Method.supports_values` and the profile table
  :attr:`~Method.profiles`;
- the constructor's keyword options (:class:`Method`), ``progress`` included;
- :meth:`~Method.fit`, :meth:`~Method.predict`, and :meth:`~Method.predict_values` when
  ``supports_values`` (predicting genes outside the training panel, for ``--genes all``).

Sections handed to a method are prepared AnnData objects (see :mod:`gr2st.sections`).

A method that trains a network subclasses :class:`NetworkMethod`, whose :meth:`~NetworkMethod.fit`
is one template (check the sections, seed, pick the device, :meth:`~NetworkMethod.build`
the network and its :class:`~gr2st.training.TrainingTask`, train with
:func:`gr2st.training.train_network`); the loss is a method of the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, NamedTuple, Protocol, TypeVar, cast

import numpy as np
import torch
from anndata import AnnData
from torch import nn

from gr2st._registry import Registry
from gr2st._utils.device import resolve_device
from gr2st._utils.seed import seed_everything
from gr2st.config import Config, apply_overrides, config_to_dict, resolve_profile
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.training import (
    DEFAULT_CHECKPOINT_SECONDS,
    TrainingStats,
    TrainingTask,
    fingerprint,
    train_network,
)

C = TypeVar("C", bound=Config)
M = TypeVar("M", bound="type[Method[Any]]")
T = TypeVar("T")


class Method(ABC, Generic[C]):
    """Base class of benchmark methods.

    Parameters
    ----------
    feature_key
        ``obsm`` key of the frozen image features (``X_<encoder>``).
    profile
        Name of the hyperparameter profile: ``"default"`` (ours) or ``"paper"`` (as
        published) for the learned methods; ``None`` is ``"default"``.
    overrides
        ``key=value`` overrides applied on top of the profile.
    seed
        Seed of every random choice the method makes.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress
        Show a progress bar while training.
    checkpoint_every
        Seconds between training checkpoints in the fit's ``workdir`` (``0``: every
        epoch); the end of training and an interrupted fit are always saved.
    """

    #: Registry name (also the owner in error messages).
    name: ClassVar[str]
    #: "features" methods read ``obsm[feature_key]``; "pixels" methods read
    #: ``obsm[PATCHES]`` (uint8 patches, see :func:`gr2st.encoders.extract_patches`).
    input: ClassVar[Literal["features", "pixels"]] = "features"
    #: Side of the patches a "pixels" method wants in ``obsm[PATCHES]``.
    patch_px: ClassVar[int | None] = None
    #: A ceiling (like the oracle) is reported but never ranked as a method.
    is_ceiling: ClassVar[bool] = False
    #: Offers the ``default`` and ``paper`` profiles (and a dataset's ``paper`` variant).
    has_profiles: ClassVar[bool] = False
    #: Implements :meth:`predict_values`.
    supports_values: ClassVar[bool] = False
    #: Profile name → settings.
    profiles: ClassVar[Mapping[str, Any]]
    #: Other accepted profile names → profile.
    profile_aliases: ClassVar[Mapping[str, str]] = {}
    #: Dataset → the variant of the ``paper`` profile its published evaluation used.
    dataset_profiles: ClassVar[Mapping[str, str]] = {}
    #: Top-level config fields that change only what a fitted method predicts: inner
    #: selection fits once per setting of the others and :meth:`adopt`\ s these.
    prediction_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def profile_for(cls, profile: str | None, dataset: str) -> str | None:
        """The profile to run on ``dataset`` when ``profile`` is asked for: ``paper``
        becomes the dataset's variant where the published code evaluated it differently.

        Examples
        --------
        >>> from gr2st.methods import METHODS
        >>> METHODS.get("gr2st").profile_for("paper", "cscc")
        'paper-cscc'
        >>> METHODS.get("gr2st").profile_for("default", "cscc")
        'default'
        """
        resolved = cls.profile_aliases.get(profile, profile) if profile is not None else None
        if resolved == "paper":
            return cls.dataset_profiles.get(dataset.lower(), profile)
        return profile

    def __init__(
        self,
        *,
        feature_key: str,
        profile: str | None = None,
        overrides: Sequence[str] = (),
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
    ) -> None:
        self.feature_key = feature_key
        self.profile, base = resolve_profile(
            self.profiles, profile, owner=self.name, aliases=self.profile_aliases
        )
        self.overrides = list(overrides)
        self.config: C = apply_overrides(base, self.overrides, owner=self.name)
        self.seed = seed
        self.device = device
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        #: Where the last fit's time went (learned methods).
        self.training_stats: TrainingStats | None = None

    @abstractmethod
    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Learn from the training sections.

        ``workdir``, when given, is a fold-private folder where the method may keep
        checkpoints so that an interrupted fit resumes.
        """

    @abstractmethod
    def predict(self, test: AnnData) -> np.ndarray:
        """Return predictions of shape ``(test.n_obs, test.n_vars)`` (float32)."""

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Predict the genes of ``values`` (one AnnData per training section, same spots).

        Only methods with ``supports_values`` implement it.
        """
        raise GR2STConfigError(panel_only_message(self.name))

    def describe(self) -> dict[str, Any]:
        """Settings to record in ``results.json`` (profile and resolved config)."""
        return {"profile": self.profile, **config_to_dict(self.config)}

    def fit_settings(self) -> dict[str, Any]:
        """The resolved settings a fit depends on: the config less :attr:`prediction_fields`.

        Examples
        --------
        >>> m = METHODS.get("gr2st")(feature_key="X_f", overrides=["predict.top_k=50"])
        >>> "predict" in m.fit_settings(), m.fit_settings()["train"]["epochs"] > 0
        (False, True)
        """
        settings = config_to_dict(self.config)
        for name in self.prediction_fields:
            settings.pop(name, None)
        return settings

    def adopt(self, other: Method[C]) -> None:
        """Take over ``other``'s settings on this fitted method, doing only the work they
        add; they may differ only in what :meth:`fit_settings` leaves out (else a one-line
        error)."""
        if type(other) is not type(self):
            raise GR2STConfigError(f"{self.name}: cannot adopt the settings of {other.name!r}")
        mine, theirs = self.fit_settings(), other.fit_settings()
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if changed:
            raise GR2STConfigError(
                f"{self.name}: {', '.join(changed)} differ from the fitted settings; a fitted "
                "method adopts only prediction settings, refit for the others"
            )
        self.config = other.config

    def require_fit(self, state: T | None, *, what: str = "predict") -> T:
        """``state`` set by :meth:`fit`; a one-line error when the method is not fitted.

        Examples
        --------
        >>> METHODS.get("knn")(feature_key="X_f").require_fit(None)
        Traceback (most recent call last):
        ...
        gr2st.errors.GR2STConfigError: knn: predict() called before fit()
        """
        if state is None:
            raise GR2STConfigError(f"{self.name}: {what}() called before fit()")
        return state


class Built(NamedTuple):
    """What :meth:`NetworkMethod.build` returns."""

    #: The network, on the training device; its ``loss`` is what the task minimises.
    network: nn.Module
    #: Batches, optimizer and schedule of the training loop.
    task: TrainingTask
    #: The training arrays that, with the settings, identify the run (a checkpoint is
    #: resumed only by the same request).
    data: Sequence[np.ndarray]


class _TrainingConfig(Protocol):
    epochs: int
    precision: str


class NetworkMethod(Method[C]):
    """A method that trains a network on the shared loop: :meth:`fit` is a template.

    Subclasses implement :meth:`build` (and :meth:`predict`); :meth:`fitted` runs after
    training. Their config has ``epochs`` and ``precision``.
    """

    has_profiles = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Mean training loss of every epoch of the last fit.
        self.history_: list[float] = []
        #: The trained network (eval mode), once fitted.
        self.network_: nn.Module | None = None

    @abstractmethod
    def build(self, train: Sequence[AnnData], device: torch.device) -> Built:
        """The network for ``train`` (seeded: torch's generator is set before), its task
        and the arrays identifying the run."""

    def fitted(self) -> None:
        """Called after training, with :attr:`network_` set (e.g. to embed a bank)."""

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Seed, :meth:`build`, train on the shared loop, then :meth:`fitted`.

        ``workdir`` holds checkpoints (an interrupted fit resumes) and the progress log.
        """
        if not train:
            raise GR2STDataError(f"{self.name}: fit() needs at least one training section")
        seed_everything(self.seed)
        network, task, data = self.build(train, resolve_device(self.device))
        cfg = cast(_TrainingConfig, self.config)
        settings = {"method": self.name, "seed": self.seed, **config_to_dict(self.config)}
        self.history_, self.training_stats = train_network(
            network,
            task,
            epochs=cfg.epochs,
            seed=self.seed,
            desc=self.name,
            workdir=workdir,
            run_fingerprint=fingerprint(settings, data),
            checkpoint_every=self.checkpoint_every,
            precision=cfg.precision,
            progress=self.progress,
        )
        self.network_ = network.eval()
        self.fitted()


def panel_only_message(name: str) -> str:
    """Why a method without ``supports_values`` cannot predict other genes."""
    return (
        f"method {name!r} predicts only its input panel; it cannot be scored on genes "
        "outside it (use the panel genes, or drop the method)"
    )


METHODS: Registry[type[Method[Any]]] = Registry("method")


def register_method(cls: M) -> M:
    """Class decorator: add a :class:`Method` subclass to :data:`METHODS` under its name."""
    METHODS.register(cls.name)(cls)
    return cls
