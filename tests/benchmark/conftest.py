"""Synthetic sections and two tiny test methods for the fold-loop tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.config import Config
from gr2st.datasets import synthetic
from gr2st.methods import METHODS, Method
from gr2st.sections import section_name, stack_expression

FEATURES = feature_key("toy")


class Tracker(Method[Config]):
    """Training mean plus seeded noise; records every fit and checks the test is blind.

    Each fit leaves a ``ckpt`` file in its work folder and records whether one was
    already there (as a resumable method would find its checkpoint).
    """

    name = "test-tracker"
    profiles: ClassVar[dict[str, Config]] = {"default": Config()}
    calls: ClassVar[list[dict[str, Any]]] = []
    version: ClassVar[int] = 1

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        Tracker.calls.append(
            {
                "method": type(self).__name__,
                "train": tuple(section_name(a) for a in train),
                "seed": self.seed,
                "workdir": workdir,
                "found_checkpoint": workdir is not None and (workdir / "ckpt").exists(),
            }
        )
        if workdir is not None:
            (workdir / "ckpt").write_text("epoch 1")
        self._mean = stack_expression(train).mean(axis=0)

    def describe(self) -> dict[str, Any]:
        return {"profile": self.profile, "version": self.version}

    def predict(self, test: AnnData) -> np.ndarray:
        if test.X is not None:
            raise AssertionError("a method must not receive the test expression")
        rng = np.random.default_rng(self.seed)
        return self._mean + rng.normal(scale=0.1, size=(test.n_obs, test.n_vars))


class Flaky(Tracker):
    """A Tracker that crashes on its ``crash_on``-th fit while ``armed``."""

    name = "test-flaky"
    armed: ClassVar[bool] = False
    crash_on: ClassVar[int] = 2
    fits: ClassVar[int] = 0

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        Flaky.fits += 1
        if Flaky.armed and Flaky.fits == Flaky.crash_on:
            super().fit(train, workdir=workdir)  # leaves a checkpoint, then dies
            raise RuntimeError("simulated crash")
        super().fit(train, workdir=workdir)


class PixelTracker(Tracker):
    """A Tracker that declares it learns from patches (``obsm[PATCHES]``)."""

    name = "test-pixel-tracker"
    input = "pixels"
    patch_px = 8


METHODS.register("test-tracker")(Tracker)
METHODS.register("test-flaky")(Flaky)
METHODS.register("test-pixel-tracker")(PixelTracker)


@pytest.fixture
def tracker() -> type[Tracker]:
    """The registered ``test-tracker`` method class, with its call log cleared."""
    Tracker.calls.clear()
    Tracker.version = 1
    return Tracker


@pytest.fixture
def flaky(tracker: type[Tracker]) -> type[Flaky]:
    """The registered ``test-flaky`` method class, disarmed."""
    Flaky.armed = False
    Flaky.fits = 0
    return Flaky


def add_toy_features(sections: list[AnnData], *, seed: int = 0) -> None:
    """Noisy one-hot of the hidden state as stand-in image features."""
    rng = np.random.default_rng(seed)
    for adata in sections:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        adata.obsm[FEATURES] = (onehot + rng.normal(scale=0.3, size=onehot.shape)).astype(
            np.float32
        )


@pytest.fixture
def sections(tmp_path: Path) -> list[AnnData]:
    secs = synthetic(
        n_sections=3, n_genes=12, grid=(6, 6), signal=2.0, image_dir=tmp_path / "img", seed=1
    )
    add_toy_features(secs)
    return secs


@pytest.fixture
def four_sections(tmp_path: Path) -> list[AnnData]:
    """Four sections; S1 has a batch effect (its first six genes read 4x deeper)."""
    secs = synthetic(
        n_sections=4, n_genes=12, grid=(6, 6), signal=2.0, image_dir=tmp_path / "img", seed=1
    )
    counts = secs[1].X.toarray()
    counts[:, :6] *= 4
    secs[1].X = sp.csr_matrix(counts)
    add_toy_features(secs)
    return secs
