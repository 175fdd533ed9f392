"""The contract every registered method keeps, checked on the same synthetic sections.

For each method: predictions have the test section's shape, are float32 and finite;
fitting is deterministic for a seed; a learned method stopped mid-fit resumes to
identical predictions; and every method beats the per-gene training mean on a strong
synthetic signal, by a margin that holds for any seed (``GR2ST_TEST_SEED``, see
``scripts/check_test_stability.sh``) and CPU kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anndata import AnnData

from gr2st._constants import PATCHES
from gr2st.datasets import synthetic
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes import prepare_section
from gr2st.methods import METHODS, Method
from gr2st.methods.mean import MeanBaseline
from gr2st.training import Checkpoint
from learning_seed import LEARNING_SEED

KEY = "X_toy"
SEED = LEARNING_SEED


@dataclass(frozen=True)
class Spec:
    """How a method is made small enough for a test, and trained to learn."""

    small: tuple[str, ...] = ()
    learn: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    patch_px: int | None = None
    #: Largest test MSE relative to the training mean's.
    max_mse_ratio: float = 0.7
    #: Smallest mean per-gene Pearson r on the test section.
    min_pcc: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "gr2st": Spec(
        small=("model.proj_dim=32", "model.heads=2", "model.n_positions=64", "predict.top_k=20"),
        learn=("train.epochs=40",),
        quick=("train.epochs=4", "train.feature_noise=0.1"),
    ),
    "mclstexp": Spec(
        small=("projection_dim=32", "heads=2", "dim_head=16", "top_k=20", "batch_size=32"),
        learn=("epochs=20",),
        quick=("epochs=4", "dropout=0.1"),
    ),
    "reg2st": Spec(
        small=(
            "hidden_dim=32",
            "gene_encoder_dim=32",
            "decoder_mlp_dim=32",
            "decoder_depth=1",
            "decoder_heads=2",
            "warmup_epochs=1",
        ),
        learn=(
            "epochs=100",
            "lr=3e-3",
            "warmup_lr=3e-4",
            "final_lr=3e-5",
            "use_positions=false",
        ),
        max_mse_ratio=0.85,
        min_pcc=0.3,
        quick=("epochs=4",),
    ),
    "histogene": Spec(
        small=("dim=32", "depth=1", "heads=2", "dim_head=16", "mlp_dim=64"),
        learn=("epochs=40", "lr=1e-3", "dropout=0"),
        quick=("epochs=4", "aug_hflip=0.5", "aug_rotation=90"),
        # Raw-intensity inputs keep predictions close to the gene means (see its docstring).
        max_mse_ratio=0.9,
        min_pcc=0.3,
        patch_px=32,
    ),
    "hist2st": Spec(
        small=(
            "channels=8",
            "patch_size=8",
            "reduced_channels=4",
            "transformer_depth=1",
            "heads=2",
            "dim_head=16",
            "gnn_depth=2",
            "views=1",
        ),
        # At lr 1e-3 the last epoch's weights swung with the seed and the CPU kernel (MSE
        # ratio 0.43-1.2); at 3e-4 over seeds 0-9 and the default/avx2 kernels: ratio
        # 0.48-0.74, r 0.42-0.61.
        learn=(
            "epochs=100",
            "lr=3e-4",
            "lr_step_epochs=0",
            "pixel_scale=1",
            "w_zinb=0",
            "dropout=0",
        ),
        quick=("epochs=4", "lr_step_epochs=2"),
        max_mse_ratio=0.9,
        min_pcc=0.3,
        patch_px=32,
    ),
    "thitogene": Spec(
        small=(
            "dynamic_channels=4",
            "stem_channels=4,8,8,8",
            "primary_dim=4",
            "capsules=4",
            "capsule_dim=8",
            "depth=1",
            "heads=2",
            "dim_head=8",
            "mlp_dim=32",
            "gat_heads=2",
            "gat_hidden=16",
            "gat_out=16",
            "head_hidden=32",
        ),
        learn=("epochs=80", "lr=1e-3", "dropout=0"),
        quick=("epochs=4",),
        patch_px=48,
        # A spot is predicted from its neighbours' messages only (no self-loop, as
        # published), so finely mixed states cap it below the others: over seeds 0-4 and
        # the default/avx2 kernels its MSE ratio was 0.69-0.89 and its r 0.26-0.42.
        max_mse_ratio=0.97,
        min_pcc=0.15,
    ),
    "hggep": Spec(
        small=(
            "dim=32",
            "tap_channels=4",
            "vit_depth=1",
            "heads=2",
            "dim_head=16",
            "lstm_layers=1",
            "dropout=0",
            "hypergraph_dropout=0",
        ),
        learn=("epochs=30", "lr=5e-3", "views=1"),
        quick=("epochs=3", "views=1", "view_pool=1"),
        patch_px=32,
    ),
    "knn": Spec(small=("top_k=20",)),
    "ridge": Spec(small=("n_components=8",)),
    "oracle": Spec(small=("top_k=20",)),
    "mean": Spec(),
}
# The package's own methods (tests may register helpers of their own).
NAMES = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("gr2st.")]
LEARNED = [n for n in NAMES if METHODS.get(n).has_profiles]
RANKED = [n for n in NAMES if n != "mean"]
# Their fits take seconds each even when small: slow, so that `make test-fast` stays quick.
HEAVY = {"hggep", "hist2st"}


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


_COLOURS = np.array(
    [[230, 120, 160], [120, 60, 170], [250, 220, 230], [90, 140, 200], [200, 200, 90]]
)


def test_every_registered_method_has_a_spec() -> None:
    assert sorted(SPECS) == NAMES


def _method_class(name: str) -> type[Method[Any]]:
    cls = METHODS.get(name)
    px = SPECS[name].patch_px
    if px is None:
        return cls
    # The same method on small patches, so that a fit takes seconds.
    return type(f"Small{cls.__name__}", (cls,), {"patch_px": px})


def make(
    name: str, *overrides: str, seed: int = 0, device: str = "cpu", **kwargs: Any
) -> Method[Any]:
    return _method_class(name)(
        feature_key=KEY,
        overrides=[*SPECS[name].small, *overrides],
        seed=seed,
        device=device,
        progress=False,
        **kwargs,
    )


def strong_sections(seed: int) -> list[AnnData]:
    """Four sections where image features and patches both carry the latent state plainly.

    Features: a random 64-d code of the state plus noise. Patches: a flat colour per
    state plus pixel noise (48 px; methods on smaller patches resize them). States mix
    finely enough that every test section holds several of them.
    """
    raw = synthetic(
        n_sections=4, n_genes=12, grid=(10, 10), signal=3.0, state_scale=1.0, depth=200, seed=seed
    )
    rng = np.random.default_rng(seed + 100)
    codes = rng.normal(size=(5, 64))
    out = []
    for adata in raw:
        section = prepare_section(adata, genes=list(adata.var_names))
        state = adata.obs["latent_state"].to_numpy()[adata.obs_names.get_indexer(section.obs_names)]
        features = 3.0 * codes[state] + rng.normal(0, 0.3, (section.n_obs, 64))
        section.obsm[KEY] = features.astype(np.float32)
        patches = _COLOURS[state][:, None, None, :] + rng.normal(0, 12, (section.n_obs, 48, 48, 3))
        section.obsm[PATCHES] = np.clip(patches, 0, 255).astype(np.uint8)
        out.append(section)
    return out


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    return strong_sections(SEED)


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny tensors: one thread avoids OpenMP synchronisation costs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", _params(NAMES))
def test_prediction_shape_dtype_and_determinism(name: str, sections: list[AnnData]) -> None:
    train, test = sections[:2], sections[3]
    quick = SPECS[name].quick
    a, b = make(name, *quick, seed=SEED), make(name, *quick, seed=SEED)
    for m in (a, b):
        m.fit(train)
    pred = a.predict(test)
    assert pred.shape == (test.n_obs, test.n_vars)
    assert pred.dtype == np.float32
    assert np.isfinite(pred).all()
    np.testing.assert_array_equal(pred, b.predict(test))
    np.testing.assert_array_equal(pred, a.predict(test))  # predicting changes nothing
    if METHODS.get(name).has_profiles:
        other = make(name, *quick, seed=SEED + 1)
        other.fit(train)
        assert not np.array_equal(pred, other.predict(test))


@pytest.mark.parametrize("name", _params(LEARNED))
def test_a_fit_stopped_midway_resumes_to_identical_predictions(
    name: str, sections: list[AnnData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = sections[:2], sections[3]
    quick = SPECS[name].quick
    straight = make(name, *quick, seed=SEED, checkpoint_every=0)
    straight.fit(train, workdir=tmp_path / "straight")
    real_save = Checkpoint.save

    def crash_after_second_epoch(self: Checkpoint, **kwargs: Any) -> None:
        real_save(self, **kwargs)
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        make(name, *quick, seed=SEED, checkpoint_every=0).fit(train, workdir=tmp_path / "resumed")
    monkeypatch.setattr(Checkpoint, "save", real_save)
    torch.manual_seed(4321)  # a fresh process: another global RNG state
    resumed = make(name, *quick, seed=SEED, checkpoint_every=0)
    resumed.fit(train, workdir=tmp_path / "resumed")
    assert resumed.training_stats is not None
    assert resumed.training_stats.resumed_from == 2
    np.testing.assert_array_equal(resumed.predict(test), straight.predict(test))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", LEARNED)
def test_the_cuda_path_trains_on_the_device_and_predicts(
    name: str, precision: str, sections: list[AnnData]
) -> None:
    train, test = sections[:2], sections[3]
    method = make(name, *SPECS[name].quick, f"precision={precision}", device="cuda")
    method.fit(train)
    assert method.training_stats is not None
    assert method.training_stats.peak_gpu_bytes > 0  # the fit ran on the GPU
    pred = method.predict(test)
    assert pred.shape == (test.n_obs, test.n_vars)
    assert np.isfinite(pred).all()
    if precision == "fp32":
        cpu = make(name, *SPECS[name].quick)
        cpu.fit(train)
        # Same seed, another device: close, though not bitwise (other kernels).
        assert np.corrcoef(pred.ravel(), cpu.predict(test).ravel())[0, 1] > 0.9


def _scores(pred: np.ndarray, truth: np.ndarray, mean: np.ndarray) -> tuple[float, float]:
    ratio = float(((pred - truth) ** 2).mean() / ((mean - truth) ** 2).mean())
    return ratio, float(np.nanmean(pearson_per_gene(pred, truth)))


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("name", RANKED)
def test_beats_the_training_mean_on_a_strong_signal(name: str, sections: list[AnnData]) -> None:
    train, test = sections[:3], sections[3]
    spec = SPECS[name]
    method = make(name, *spec.learn, seed=SEED)
    method.fit(train)
    pred = method.predict(test if method.is_ceiling else _without_expression(test))
    baseline = MeanBaseline(feature_key=KEY)
    baseline.fit(train)
    truth = np.asarray(test.X)
    ratio, pcc = _scores(pred, truth, baseline.predict(test))
    print(f"{name} seed={SEED}: mse ratio {ratio:.3f}, pcc {pcc:.3f}")
    assert ratio < spec.max_mse_ratio
    assert pcc > spec.min_pcc


def _without_expression(adata: AnnData) -> AnnData:
    """The test section as the benchmark hands it to a method (no measured expression)."""
    blind = adata.copy()
    blind.X = np.zeros_like(np.asarray(adata.X))
    blind.layers.clear()
    return blind
