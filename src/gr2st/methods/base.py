"""The interface every benchmarked method implements.

A method is fitted on training sections and predicts log-normalised expression for a
held-out section. The benchmark's single fold loop (``gr2st.benchmark``) owns splits,
seeds, caching, resume and metrics; a method owns only what it learns.

Sections handed to a method are "prepared" AnnData objects (see
``gr2st.genes.prepare_section``): ``X`` holds log-normalised expression of the
benchmark genes (float32, dense), ``obs`` carries ``section``, ``patient``,
``array_x``, ``array_y`` and ``cell_type``; ``obsm`` carries ``spatial`` and the
features ``X_<encoder>``; ``uns["gr2st"]`` keeps the image path.

Optional hooks the fold loop uses when present: a ``progress: bool`` constructor
argument (quiet trainers inside the benchmark's own progress bar) and
``predict_values(test, values) -> ndarray`` to predict genes outside the training
panel (``values`` = one AnnData per training section holding those genes), which is
what ``--genes all`` needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from anndata import AnnData

from gr2st._registry import Registry
from gr2st.benchmark.overrides import apply_overrides
from gr2st.errors import GR2STConfigError

C = TypeVar("C")


class Method(ABC):
    """Base class of benchmark methods.

    Parameters
    ----------
    feature_key
        ``obsm`` key of the frozen image features (``X_<encoder>``).
    profile
        Name of the hyperparameter profile (e.g. ``"reference"``, ``"default"``,
        ``"paper"``, ``"cpu"``).
    overrides
        Dotted ``key=value`` overrides applied on top of the profile.
    seed
        Seed of every random choice the method makes.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    #: "features" methods read ``obsm[feature_key]``; "pixels" methods read
    #: ``obsm[PATCHES]`` (uint8 patches, see :func:`gr2st.encoders.extract_patches`).
    input: ClassVar[str] = "features"
    #: Side of the patches a "pixels" method wants in ``obsm[PATCHES]``.
    patch_px: ClassVar[int | None] = None
    #: A ceiling (like the oracle) is reported but never ranked as a method.
    is_ceiling: ClassVar[bool] = False
    profiles: ClassVar[tuple[str, ...]] = ("default",)

    def __init__(
        self,
        *,
        feature_key: str,
        profile: str | None = None,
        overrides: Sequence[str] = (),
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.feature_key = feature_key
        self.profile = profile or self.profiles[0]
        self.overrides = list(overrides)
        self.seed = seed
        self.device = device

    @abstractmethod
    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Learn from the training sections.

        ``workdir``, when given, is a fold-private folder where the method may keep
        per-epoch checkpoints so that an interrupted fit resumes.
        """

    @abstractmethod
    def predict(self, test: AnnData) -> np.ndarray:
        """Return predictions of shape ``(test.n_obs, test.n_vars)`` (float32)."""

    def _profile_config(self, owner: str, table: Mapping[str, C]) -> C:
        """The chosen profile's config from ``table`` with the overrides applied."""
        if self.profile not in table:
            raise GR2STConfigError(
                f"{owner}: unknown profile {self.profile!r}; known: {', '.join(self.profiles)}"
            )
        return apply_overrides(table[self.profile], self.overrides, owner=owner)

    def describe(self) -> dict[str, Any]:
        """Settings to record in ``results.json`` (profile and resolved config)."""
        return {"profile": self.profile}


METHODS: Registry[type[Method]] = Registry("method")
