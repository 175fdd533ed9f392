from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anndata import AnnData
from efficientnet_lite_pytorch import EfficientNet

from gr2st._constants import PATCHES
from gr2st.datasets import synthetic
from gr2st.encoders import extract_patches
from gr2st.encoders.efficientnet import _build_module, weights_file
from gr2st.errors import GR2STConfigError
from gr2st.genes import prepare_section
from gr2st.graph import grid_graph
from gr2st.methods.base import METHODS
from gr2st.methods.hggep import (
    BACKBONE,
    HGGEP,
    PROFILES,
    CrossDifferenceConv,
    HGGEPConfig,
    HGGEPNet,
    LiteTaps,
    hyperedges,
)
from gr2st.models.layers import zinb_nll

# Small widths that still learn in seconds (the architecture is unchanged).
SMALL = [
    "dim=32",
    "tap_channels=4",
    "vit_depth=1",
    "heads=2",
    "dim_head=16",
    "lstm_layers=1",
    "dropout=0",
    "hypergraph_dropout=0",
]


# Fewer epochs and views for the determinism and resume checks.
QUICK = ("epochs=3", "views=1", "view_pool=1")


class SmallHGGEP(HGGEP):
    """HGGEP on 32-px patches: the backbone's maps shrink to 1 × 1, 12 times cheaper."""

    patch_px = 32


@pytest.fixture(scope="module")
def sections(tmp_path_factory: Any) -> list[AnnData]:
    folder = tmp_path_factory.mktemp("img")
    raw = synthetic(n_sections=4, n_genes=12, grid=(8, 8), signal=2.5, image_dir=folder, seed=2)
    extract_patches(raw, out_px=32, size_px=40, stain=None, progress=False)
    return [prepare_section(a, genes=list(a.var_names)) for a in raw]


@pytest.fixture(scope="module")
def strong() -> list[AnnData]:
    """Sections whose patches are flat colours of the latent state plus noise.

    Frozen ImageNet features barely separate the synthetic images' subtle hues; these
    patches carry the state plainly, so learning it is a matter of a few dozen steps.
    """
    raw = synthetic(n_sections=4, n_genes=12, grid=(8, 8), signal=2.5, seed=2)
    rng = np.random.default_rng(0)
    colours = np.array([[230, 120, 160], [120, 60, 170], [250, 220, 230]])
    for adata in raw:
        state = adata.obs["latent_state"].to_numpy()
        noisy = colours[state][:, None, None, :] + rng.normal(0, 12, (adata.n_obs, 32, 32, 3))
        adata.obsm[PATCHES] = np.clip(noisy, 0, 255).astype(np.uint8)
    return [prepare_section(a, genes=list(a.var_names)) for a in raw]


def _method(*overrides: str, profile: str = "default", seed: int = 0) -> SmallHGGEP:
    return SmallHGGEP(
        feature_key="X_unused",
        profile=profile,
        overrides=[*SMALL, *overrides],
        seed=seed,
        progress=False,
    )


def _small_config(**changes: Any) -> HGGEPConfig:
    base = HGGEPConfig(
        dim=16, tap_channels=2, vit_depth=1, heads=2, dim_head=8, lstm_layers=1, views=1
    )
    return HGGEPConfig(**{**base.__dict__, **changes})


def test_registered_with_both_profiles():
    assert METHODS.get("hggep") is HGGEP
    assert list(HGGEP.profiles) == ["paper", "default"]
    assert HGGEP.patch_px == 112
    paper = PROFILES["paper"]
    assert (paper.epochs, paper.lr, paper.lr_step_epochs, paper.dropout) == (520, 1e-5, 0, 0.2)
    assert (paper.dim, paper.vit_depth, paper.heads, paper.dim_head, paper.lstm_layers) == (
        1024,
        4,
        16,
        64,
        4,
    )
    assert (paper.views, paper.w_zinb, paper.w_distill, paper.hypergraph_dropout) == (
        5,
        0.25,
        0.5,
        0.5,
    )
    assert (paper.aug_rotation, paper.aug_hflip, paper.aug_grayscale) == (90.0, 0.2, 0.1)
    assert (paper.gem, paper.gem_theta, paper.finetune_backbone, paper.view_pool) == (
        True,
        0.7,
        True,
        0,
    )
    cpu = PROFILES["default"]
    assert (cpu.gem, cpu.finetune_backbone) == (False, False)
    assert cpu.view_pool > 0
    assert cpu.epochs < paper.epochs
    assert cpu.dim < paper.dim


def test_cross_difference_conv_is_the_published_two_convolution_form():
    torch.manual_seed(0)
    for stride in (1, 2):
        conv = CrossDifferenceConv(3, 4, stride=stride, theta=0.7)
        x = torch.randn(2, 3, 9, 9)
        w = conv.weight.detach()  # (4, 3, 5): up, left, centre, right, down
        zero = torch.zeros_like(w[..., :1])
        cross = torch.cat([zero, w[..., 0:1], zero, w[..., 1:4], zero, w[..., 4:5], zero], -1).view(
            4, 3, 3, 3
        )
        expected = F.conv2d(x, cross, stride=stride, padding=1) - 0.7 * F.conv2d(
            x, w.sum(-1)[..., None, None], stride=stride
        )
        torch.testing.assert_close(conv(x), expected)
    # By hand: unit taps on a 0..8 image; centre = (1 + 3 + 4 + 5 + 7) - 0.7 * 5 * 4 = 6.
    conv = CrossDifferenceConv(1, 1, stride=1, theta=0.7)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.arange(9.0).view(1, 1, 3, 3))
    assert out[0, 0, 1, 1].item() == pytest.approx(6.0)
    assert conv.kernel()[0, 0, 0, 0].item() == 0.0  # corners stay 0


def test_hyperedges_match_a_hand_computation():
    # Five spots in a row, 1-d features. Spot 0's only neighbour is 1 (score 1 + 1/14),
    # then the largest distance share is spot 4 (9/14). Spot 4: neighbour 3, then spot 0
    # (9/31 > 8/31). Spot 1: 2 (.5 + 3/13) beats 4 (8/13) beats 0 (.5 + 1/13).
    positions = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4]])
    features = torch.tensor([[0.0], [1.0], [4.0], [0.0], [9.0]], requires_grad=True)
    incidence = hyperedges(features, grid_graph(positions, neighbourhood=8), picks=2)
    assert incidence.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [1, 4, 2, 4, 3, 1, 4, 2, 3, 0]]
    # Spots without neighbours pick by feature distance alone (no NaN); picks <= n.
    apart = torch.tensor([[0, 0], [5, 5], [9, 9]])
    incidence = hyperedges(torch.tensor([[0.0], [1.0], [3.0]]), grid_graph(apart), picks=4)
    assert incidence.shape == (2, 9)
    assert incidence[1, :3].tolist() == [2, 1, 0]


def test_hyperedges_in_a_grid_join_the_least_similar_neighbours():
    # 6 x 6 grid, smooth features: the adjacency share (1/8 for an interior spot) dominates,
    # so the centre spots join the 4 neighbours farthest from them in feature space.
    rng = np.random.default_rng(0)
    positions = torch.cartesian_prod(torch.arange(6), torch.arange(6))
    features = torch.from_numpy(rng.normal(size=(36, 2))).float() * 0.1 + positions.float()
    edges = grid_graph(positions, neighbourhood=8)
    incidence = hyperedges(features, edges)
    assert incidence.shape == (2, 36 * 4)
    picks = incidence[1].view(36, 4)
    for spot in (14, 15, 20, 21):
        neighbours = edges[1, edges[0] == spot]
        distance = (features[neighbours] - features[spot]).norm(dim=1)
        expected = neighbours[distance.argsort(descending=True)[:4]]
        assert sorted(picks[spot].tolist()) == sorted(expected.tolist())


def test_lite_taps_are_the_encoder_trunk():
    module = _build_module(BACKBONE, weights_file(BACKBONE))
    taps = LiteTaps(module.net).eval()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        blocks, head = taps((x - 127.0) / 128.0)
        pooled = module(x)
    assert blocks.shape == (2, 320, 2, 2)
    assert head.shape == (2, 1280, 2, 2)
    torch.testing.assert_close(head.mean((2, 3)), pooled)


def test_frozen_backbone_stays_fixed_and_in_eval_mode():
    torch.manual_seed(0)
    lite = EfficientNet.from_name(BACKBONE)
    net = HGGEPNet(5, config=_small_config(gem=False, finetune_backbone=False), backbone=lite,
                   patch_px=32)  # fmt: skip
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    net.train()
    assert not net.backbone.training
    assert net.h4.training
    positions = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    taps = net.encode(torch.rand(9, 3, 32, 32))
    h = net.embed(taps, positions, grid_graph(positions, neighbourhood=8))
    net.gene_head(h).sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in before.items())
    assert net.h4.net[2].weight.grad is not None


@pytest.mark.slow
def test_paper_network_trains_gem_and_backbone():
    torch.manual_seed(0)
    lite = EfficientNet.from_name(BACKBONE)
    net = HGGEPNet(5, config=_small_config(), backbone=lite, patch_px=32).train()
    assert net.gem is not None
    positions = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    edges = grid_graph(positions, neighbourhood=8)
    h = net.embed(net.encode(torch.rand(9, 3, 32, 32)), positions, edges)
    counts = torch.poisson(torch.full((9, 5), 3.0))
    loss = net.gene_head(h).square().mean() + zinb_nll(counts, *net.zinb(h))
    assert torch.isfinite(loss)
    loss.backward()
    for module in (net.gem, net.backbone, net.h5, net.vits, net.hypergraph, net.zinb):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


@pytest.mark.slow
def test_view_pool_runs_the_backbone_once_per_copy(sections, monkeypatch):
    calls: list[int] = []
    real_forward = LiteTaps.forward

    def counting(self: LiteTaps, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return real_forward(self, x)

    monkeypatch.setattr(LiteTaps, "forward", counting)
    _method("epochs=2", "view_pool=2", "views=3").fit(sections[:2])
    # One probe when the net is built, then (original + 2 copies) x 2 sections, whatever
    # the number of epochs and views.
    assert calls == [1] + [64] * 6
    calls.clear()
    _method("epochs=2", "views=1", profile="paper").fit(sections[:1])
    assert calls == [1] + [64] * 4  # paper: original + 1 fresh view per step


@pytest.mark.slow
def test_paper_profile_fine_tunes_the_backbone(sections):
    method = _method("epochs=1", "views=1", profile="paper")
    method.fit(sections[:1])
    pretrained = _build_module(BACKBONE, weights_file(BACKBONE)).net.state_dict()
    trained = method.network_.backbone.stem[0].weight  # type: ignore[union-attr, index]
    assert not torch.equal(trained, pretrained["_conv_stem.weight"])
    pred = method.predict(sections[3])
    assert pred.shape == sections[3].shape
    assert np.isfinite(pred).all()


def test_bad_options_are_rejected():
    with pytest.raises(GR2STConfigError, match="hggep: no profile 'gpu'; it has: paper, default"):
        HGGEP(feature_key="X", profile="gpu")
    with pytest.raises(GR2STConfigError, match="needs finetune_backbone=false and gem=false"):
        _method("finetune_backbone=true")
    with pytest.raises(GR2STConfigError, match="needs finetune_backbone=false and gem=false"):
        _method("view_pool=2", profile="paper")
    with pytest.raises(GR2STConfigError, match="only used by the distillation views"):
        _method("views=0")
    with pytest.raises(GR2STConfigError, match="dim must be >= 2"):
        _method("dim=1")
    with pytest.raises(GR2STConfigError, match="hypergraph_dropout must be in"):
        _method("hypergraph_dropout=1")
    with pytest.raises(GR2STConfigError, match="gem_theta must be in"):
        _method("gem_theta=2", profile="paper")
    with pytest.raises(GR2STConfigError, match="lstm_layers must be > 0"):
        _method("lstm_layers=0")
    with pytest.raises(GR2STConfigError, match="aug_hflip must be in"):
        _method("aug_hflip=2")


def test_describe_names_the_backbone_and_the_checkpoint():
    info = HGGEP(feature_key="X", overrides=["epochs=7"]).describe()
    assert (info["profile"], info["epochs"]) == ("default", 7)
    assert "efficientnet-lite0" in info["backbone"]
    assert "ShuffleNetV2" in info["backbone"]
    assert info["checkpoint"].startswith("last epoch")
    assert HGGEP(feature_key="X", profile="paper").describe()["finetune_backbone"] is True
