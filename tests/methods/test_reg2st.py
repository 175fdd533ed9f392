from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData

from gr2st._constants import ARRAY_X, COUNTS_LAYER
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes.normalize import prepare_section
from gr2st.methods.base import METHODS
from gr2st.methods.reg2st import (
    PROFILES,
    Reg2ST,
    Reg2STConfig,
    Reg2STNet,
    lr_schedule,
)
from gr2st.models.layers import size_factors

KEY = "X_latent"
# A small network that still learns in seconds (the architecture is unchanged).
SMALL = [
    "hidden_dim=64",
    "gene_encoder_dim=64",
    "decoder_mlp_dim=64",
    "decoder_depth=1",
    "warmup_epochs=2",
]


def _prepared(n_sections: int, *, grid: tuple[int, int] = (8, 8), seed: int = 0) -> list[AnnData]:
    """Strong-signal sections whose 64-d features encode the latent state."""
    rng = np.random.default_rng(seed)
    codes = np.random.default_rng(seed + 1).normal(size=(5, 64))
    out = []
    for raw in synthetic(n_sections=n_sections, n_genes=16, grid=grid, signal=2.0, seed=seed):
        section = prepare_section(raw, genes=list(raw.var_names))
        signal = 3.0 * codes[section.obs["latent_state"].to_numpy()]
        section.obsm[KEY] = (signal + rng.normal(0, 0.3, signal.shape)).astype(np.float32)
        out.append(section)
    return out


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    return _prepared(6)


def _method(*overrides: str, seed: int = 0) -> Reg2ST:
    return Reg2ST(
        feature_key=KEY,
        profile="default",
        overrides=[*SMALL, *overrides],
        seed=seed,
        progress=False,
    )


def test_registered_with_both_profiles():
    assert METHODS.get("reg2st") is Reg2ST
    assert list(Reg2ST.profiles) == ["paper", "default"]
    paper = PROFILES["paper"]
    # mask_rate 0: the published forward discards its masked decoder pass
    assert (paper.epochs, paper.decoder_depth, paper.graph_top_k, paper.mask_rate) == (
        400,
        6,
        6,
        0.0,
    )
    assert paper.head_merge_quirk
    assert (paper.w_contrastive, paper.w_zinb, paper.hidden_dim) == (0.5, 0.25, 256)


def test_lr_schedule_warms_up_then_decays():
    cfg = Reg2STConfig(epochs=20, warmup_epochs=5, lr=1e-3, warmup_lr=1e-4, final_lr=1e-6)
    lrs = lr_schedule(cfg, steps_per_epoch=3)
    assert lrs.shape == (60,)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[14] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:15]) > 0)
    assert np.all(np.diff(lrs[15:]) < 0)
    assert lrs[15] == pytest.approx(1e-3)
    assert 1e-6 < lrs[-1] < 1e-5  # the cosine approaches, without reaching, the floor


def test_size_factors():
    counts = np.array([[0, 0], [1, 1], [2, 4], [3, 3]], dtype=np.float32)
    np.testing.assert_allclose(size_factors(counts), [1e-3, 0.5, 1.5, 1.5], rtol=1e-6)
    with pytest.raises(GR2STDataError, match="median panel count"):
        size_factors(np.zeros((3, 2)))


def test_mask_randomises_training_passes_only():
    cfg = Reg2STConfig(
        hidden_dim=16,
        gene_encoder_dim=8,
        decoder_depth=1,
        decoder_heads=2,
        decoder_mlp_dim=8,
        dropout=0.0,
        graph_dropout=0.0,
        mask_rate=0.75,
    )
    torch.manual_seed(0)
    net = Reg2STNet(5, 12, config=cfg)
    x, pos = torch.randn(20, 12), torch.randint(0, 10, (20, 2))
    net.train()
    assert not torch.allclose(net.predict(x, pos), net.predict(x, pos))  # a new mask each pass
    net.eval()
    torch.testing.assert_close(net.predict(x, pos), net.predict(x, pos))
    unmasked = Reg2STNet(5, 12, config=Reg2STConfig(**{**cfg.__dict__, "mask_rate": 0.0}))
    unmasked.load_state_dict(net.state_dict())
    unmasked.train()
    torch.testing.assert_close(unmasked.predict(x, pos), net.predict(x, pos))


def test_losses_are_finite_and_all_parameters_learn():
    cfg = Reg2STConfig(
        hidden_dim=16, gene_encoder_dim=8, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=8
    )
    torch.manual_seed(0)
    net = Reg2STNet(5, 12, config=cfg)
    counts = torch.poisson(torch.full((20, 5), 3.0))
    expression = torch.log10(1 + 1e4 * counts / counts.sum(1, keepdim=True).clamp_min(1))
    terms = net.losses(
        torch.randn(20, 12), torch.randint(0, 10, (20, 2)), expression, counts, torch.ones(20)
    )
    assert set(terms) == {"contrastive", "mse", "projection", "zinb"}
    assert all(torch.isfinite(v) for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_bad_options_and_inputs_are_rejected(sections):
    with pytest.raises(GR2STConfigError, match="no profile 'gpu'; it has: paper, default"):
        Reg2ST(feature_key=KEY, profile="gpu")
    with pytest.raises(GR2STConfigError, match="warmup_epochs"):
        _method("epochs=2", "warmup_epochs=2")
    with pytest.raises(GR2STConfigError, match="divisible by decoder_heads"):
        _method("hidden_dim=30")
    with pytest.raises(GR2STConfigError, match="mask_rate"):
        _method("mask_rate=1")
    with pytest.raises(GR2STConfigError, match="before fit"):
        _method().predict(sections[0])
    no_counts = sections[0].copy()
    del no_counts.layers[COUNTS_LAYER]
    with pytest.raises(GR2STDataError, match=r"layers\['counts'\]"):
        _method("epochs=3").fit([no_counts])
    far = sections[0].copy()
    far.obs[ARRAY_X] = far.obs[ARRAY_X] + 100
    with pytest.raises(GR2STDataError, match="n_positions=64"):
        _method("epochs=3").fit([far])


def test_describe_records_the_profile():
    info = Reg2ST(feature_key=KEY, profile="default", overrides=["epochs=7"]).describe()
    assert info["profile"] == "default"
    assert info["epochs"] == 7
    assert info["decoder_depth"] == PROFILES["default"].decoder_depth


@pytest.mark.slow
def test_positions_ablation_ignores_coordinates(sections):
    train, test = sections[:2], sections[5]
    moved = test.copy()
    moved.obs[ARRAY_X] = (moved.obs[ARRAY_X] + 3) % 20
    for use, same in (("true", False), ("false", True)):
        method = _method("epochs=3", f"use_positions={use}")
        method.fit(train)
        a, b = method.predict(test), method.predict(moved)
        assert np.array_equal(a, b) is same
