from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anndata import AnnData
from scipy import stats

from gr2st._constants import ARRAY_X, PATCHES
from gr2st.datasets import synthetic
from gr2st.encoders import extract_patches
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import prepare_section
from gr2st.graph import grid_adjacency, grid_graph
from gr2st.methods.base import METHODS
from gr2st.methods.hist2st import PATCH_PX, PROFILES, Hist2ST, Hist2STConfig, Hist2STNet
from gr2st.methods.pixels import PixelSection, size_factors
from gr2st.models.layers.convmixer import ConvMixer, ConvMixerBlock

KEY = "X_unused"  # Hist2ST reads patches, not features
# Small widths that still learn in seconds (the architecture is unchanged): 4 x 4 tokens
# of a 32-px patch, dim = 16 · 4.
SMALL = [
    "channels=8",
    "patch_size=8",
    "reduced_channels=4",
    "transformer_depth=1",
    "heads=2",
    "dim_head=32",
    "gnn_depth=2",
    "views=1",
]
# For the network-level tests on 8-px patches: 2 x 2 tokens of 2 channels, dim 8.
TINY = Hist2STConfig(
    channels=4,
    patch_size=4,
    kernel_size=3,
    reduced_channels=2,
    transformer_depth=1,
    heads=2,
    dim_head=4,
    gnn_depth=2,
    n_positions=10,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> list[AnnData]:
    """Strong-signal synthetic sections with 32-px patches (colour ↔ expression)."""
    raw = synthetic(
        n_sections=4,
        n_genes=16,
        grid=(8, 8),
        signal=2.0,
        image_dir=tmp_path_factory.mktemp("images"),
        seed=0,
    )
    extract_patches(raw, out_px=SmallHist2ST.patch_px, size_px=48, stain=None, progress=False)
    return [prepare_section(a, genes=list(a.var_names)) for a in raw]


class SmallHist2ST(Hist2ST):
    """Hist2ST on 32-px patches, so that fitting takes seconds."""

    patch_px = 32


def _method(*overrides: str, seed: int = 0, profile: str = "default") -> Hist2ST:
    return SmallHist2ST(
        feature_key=KEY,
        profile=profile,
        overrides=[*SMALL, *overrides],
        seed=seed,
        device="cpu",
        progress=False,
    )


def _tiny_section(n_genes: int = 2) -> PixelSection:
    """Five spots of 8-px patches: four on a 2 x 2 block and one isolated spot."""
    torch.manual_seed(1)
    positions = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [5, 5]])
    counts = torch.tensor([[0.0, 3.0], [5.0, 1.0], [0.0, 0.0], [2.0, 7.0], [1.0, 0.0]])
    counts = counts[:, :n_genes]
    return PixelSection(
        name="tiny",
        patches=torch.rand(5, 3, 8, 8),
        positions=positions,
        expression=torch.log1p(counts),
        counts=counts,
        size_factor=torch.from_numpy(size_factors(counts.numpy())),
    )


def test_registered_with_the_published_paper_profile():
    assert METHODS.get("hist2st") is Hist2ST
    assert list(Hist2ST.profiles) == ["paper", "default"]
    assert (Hist2ST.input, Hist2ST.patch_px, Hist2ST.needs_counts) == ("pixels", 112, True)
    paper = PROFILES["paper"]
    # HIST2ST_train.py: tag 5-7-2-8-4-16-32, 350 epochs, lr 1e-5, dropout 0.2, zinb 0.25,
    # bake 5, lamb 0.5; HIST2ST.py: Adam, StepLR(50, 0.9), n_pos 64, raw 0-255 pixels.
    assert (paper.kernel_size, paper.patch_size, paper.mixer_depth) == (5, 7, 2)
    assert (paper.transformer_depth, paper.gnn_depth, paper.heads, paper.channels) == (8, 4, 16, 32)
    assert (paper.epochs, paper.lr, paper.optimizer, paper.weight_decay) == (350, 1e-5, "adam", 0)
    assert (paper.lr_step_epochs, paper.lr_gamma, paper.dropout) == (50, 0.9, 0.2)
    assert (paper.w_zinb, paper.views, paper.w_distill) == (0.25, 5, 0.5)
    assert (paper.n_positions, paper.pixel_scale, paper.dim_head, paper.dim()) == (
        64,
        255.0,
        64,
        1024,
    )
    # The bake views: RandomGrayscale(0.1), RandomRotation(90), RandomHorizontalFlip(0.2).
    assert (paper.aug_grayscale, paper.aug_rotation, paper.aug_hflip) == (0.1, 90.0, 0.2)
    assert (paper.aug_vflip, paper.aug_brightness) == (0.0, 0.0)
    cpu = PROFILES["default"]
    # The cpu profile keeps the architecture and losses; widths, views and epochs shrink.
    for field in ("kernel_size", "mixer_depth", "transformer_depth", "gnn_depth", "channels"):
        assert getattr(cpu, field) == getattr(paper, field), field
    assert (cpu.w_zinb, cpu.w_distill, cpu.optimizer) == (0.25, 0.5, "adam")
    assert cpu.dim() < paper.dim()
    assert cpu.heads * cpu.dim_head == cpu.dim()  # inner attention width = dim, as published
    assert 1 <= cpu.views < paper.views
    assert cpu.epochs < paper.epochs


def test_paper_network_has_the_published_widths():
    with torch.device("meta"):
        net = Hist2STNet(785, patch_px=PATCH_PX, config=PROFILES["paper"])
    counts = {
        name: sum(p.numel() for p in module.parameters()) for name, module in net.named_children()
    }
    dim = 1024
    assert counts["patch_embedding"] == 3 * 7 * 7 * 32 + 32
    # Per block: two depthwise 5x5 (+bias) with BatchNorm, a 1x1 conv (+bias) with BatchNorm.
    assert counts["mixer"] == 2 * (2 * (32 * 25 + 32 + 2 * 32) + (32 * 32 + 32 + 2 * 32))
    assert counts["reduce"] == 32 * 4 + 4
    assert counts["x_embed"] == counts["y_embed"] == 64 * dim
    attention = dim * 3 * 1024 + 1024 * dim + dim  # qkv without bias, output with bias
    mlp = 2 * dim * dim + 2 * dim  # mlp_dim = dim
    assert counts["transformer"] == 8 * (attention + mlp + 4 * dim)  # + two LayerNorms
    assert counts["gnn"] == 4 * dim * dim  # gs_block: one bias-free weight per layer
    assert counts["jumping_knowledge"] == 2 * (4 * dim * (2 * dim) + 2 * 4 * dim)
    assert counts["gene_head"] == 2 * dim + dim * 785 + 785
    assert counts["zinb"] == 3 * (dim * 785 + 785)
    assert counts["distillation"] == dim * dim + dim + dim + 1


def test_convmixer_block_matches_a_hand_computation():
    torch.manual_seed(0)
    block = ConvMixerBlock(4, 3).train()
    x = torch.randn(2, 4, 5, 5)

    def conv_bn_gelu(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
        y = F.conv2d(x, conv.weight, conv.bias, padding=1, groups=4)
        y = (y - y.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
            y.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
        )
        return F.gelu(y)  # BatchNorm's affine starts at identity

    dw1, dw2 = block.depthwise[0], block.depthwise[3]
    residual = x + conv_bn_gelu(conv_bn_gelu(x, dw1), dw2)
    pw = block.pointwise[0]
    z = F.gelu(F.conv2d(residual, pw.weight, pw.bias))
    expected = (z - z.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        z.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)
    # Depthwise: channel c of the residual branch only reads channel c.
    assert dw1.weight.shape == (4, 1, 3, 3)
    assert len(ConvMixerBlock(4, 3, depthwise_convs=1).depthwise) == 3
    assert len(ConvMixer(4, depth=3, kernel_size=3)) == 3
    with pytest.raises(GR2STConfigError, match="kernel_size must be a positive odd"):
        ConvMixerBlock(4, 4)
    with pytest.raises(GR2STConfigError, match="depth must be >= 1"):
        ConvMixer(4, depth=0, kernel_size=3)


@pytest.mark.slow
def test_spot_states_match_a_hand_computation():
    torch.manual_seed(0)
    net = Hist2STNet(3, patch_px=8, config=TINY).eval()
    section = _tiny_section()
    edges = grid_graph(section.positions)
    x = net.reduce(net.mixer(net.patch_embedding(section.patches * 255.0))).flatten(1)
    assert x.shape == (5, 8)  # (8 / 4)² tokens x 2 channels
    x_emb, y_emb = (net.x_embed.weight, net.y_embed.weight)
    x = x + x_emb[section.positions[:, 0]] + y_emb[section.positions[:, 1]]
    x = net.transformer(x)
    # gs_block (gcn=True, mean): h_i = normalize(relu(W · mean of i's grid neighbours)).
    adjacency = grid_adjacency(section.positions)
    mean_of_neighbours = adjacency / adjacency.sum(1, keepdim=True).clamp_min(1)
    layers = []
    for conv in net.gnn:
        x = F.normalize(torch.relu(mean_of_neighbours @ x @ conv.lin_l.weight.T), dim=1)
        layers.append(x)
    sequence, _ = net.jumping_knowledge(torch.stack(layers))
    expected = sequence.mean(0)
    h = net.embed(section.patches, section.positions, edges)
    torch.testing.assert_close(h, expected)
    # The isolated spot gets a zero message (the published mean divides by zero).
    torch.testing.assert_close(layers[0][4], torch.zeros(8))
    assert torch.isfinite(h).all()
    # Every spot's state depends on the others (transformer) in a deterministic eval pass.
    changed = section.patches.clone()
    changed[3] = 1 - changed[3]
    assert not torch.allclose(net.embed(changed, section.positions, edges)[0], h[0])
    torch.testing.assert_close(net.embed(section.patches, section.positions, edges), h)


def test_zinb_loss_matches_a_hand_computation():
    # Two spots x two genes, with zeros and non-zeros and unequal size factors.
    config = dataclasses.replace(TINY, views=0, w_zinb=1.0)
    torch.manual_seed(0)
    net = Hist2STNet(2, patch_px=8, config=config).eval()  # eval: BatchNorm uses running stats
    full = _tiny_section()
    section = PixelSection(
        name="two",
        patches=full.patches[:2],
        positions=full.positions[:2],
        expression=full.expression[:2],
        counts=full.counts[:2],  # [[0, 3], [5, 1]]
        size_factor=torch.tensor([0.5, 1.5]),
    )
    terms = net.loss(section, torch.Generator())
    assert set(terms) == {"mse", "zinb"}
    with torch.no_grad():
        h = net.embed(section.patches, section.positions, grid_graph(section.positions))
        mean, theta, pi_logits = (t.double().numpy() for t in net.zinb(h))
        prediction = net.gene_head(h)
    mu = mean * np.array([[0.5], [1.5]])  # the size factor scales the NB mean
    pi = 1 / (1 + np.exp(-pi_logits))
    x = section.counts.double().numpy()
    nb = stats.nbinom.pmf(x, theta, theta / (theta + mu))
    likelihood = np.where(x == 0, pi + (1 - pi) * nb, (1 - pi) * nb)
    assert float(terms["zinb"].detach()) == pytest.approx(-np.log(likelihood).mean(), rel=1e-5)
    assert float(terms["mse"].detach()) == pytest.approx(
        float(((prediction - section.expression) ** 2).mean()), rel=1e-6
    )


@pytest.mark.slow
def test_loss_terms_are_weighted_and_every_parameter_learns():
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, views=2)
    net = Hist2STNet(2, patch_px=8, config=config).train()
    section = _tiny_section()
    terms = net.loss(section, torch.Generator().manual_seed(0))
    assert set(terms) == {"mse", "zinb", "distillation"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    # The distillation term is 0.5 x MSE(softmax-weighted views, prediction): reproduce it
    # from the same augmentation draws.
    net.zero_grad()
    weighted = net.loss(section, torch.Generator().manual_seed(7))

    def same_weights(**changes: Any) -> Hist2STNet:
        other = Hist2STNet(2, patch_px=8, config=dataclasses.replace(config, **changes))
        other.load_state_dict(net.state_dict())
        return other.train()

    unit = same_weights(w_distill=1.0, w_zinb=0.5).loss(section, torch.Generator().manual_seed(7))
    # Dropout is 0 and BatchNorm uses batch statistics: the same draws give the same views.
    torch.testing.assert_close(weighted["distillation"], 0.5 * unit["distillation"])
    torch.testing.assert_close(weighted["zinb"], 0.5 * unit["zinb"])
    torch.testing.assert_close(weighted["mse"], unit["mse"])
    assert set(same_weights(views=0, w_zinb=0.0).loss(section, torch.Generator())) == {"mse"}


def test_bad_options_and_inputs_are_rejected(sections):
    with pytest.raises(GR2STConfigError, match="no profile 'gpu'; it has: paper, default"):
        Hist2ST(feature_key=KEY, profile="gpu")
    with pytest.raises(GR2STConfigError, match="unknown override 'width'"):
        _method("width=3")
    with pytest.raises(GR2STConfigError, match="hist2st: gnn_depth must be > 0, got 0"):
        _method("gnn_depth=0")
    with pytest.raises(GR2STConfigError, match="patch_size must divide the 112-px patch"):
        _method("patch_size=5")
    with pytest.raises(GR2STConfigError, match="kernel_size must be odd"):
        _method("kernel_size=4")
    with pytest.raises(GR2STConfigError, match="hist2st: views must be >= 0, got -1"):
        _method("views=-1")
    with pytest.raises(GR2STConfigError, match="pixel_scale must be > 0"):
        _method("pixel_scale=0")
    with pytest.raises(GR2STConfigError, match="dropout must be in"):
        _method("dropout=1")
    with pytest.raises(GR2STConfigError, match="patch_size 3 must divide the 8-px patch"):
        Hist2STNet(2, patch_px=8, config=dataclasses.replace(TINY, patch_size=3))
    with pytest.raises(GR2STConfigError, match="before fit"):
        _method().predict(sections[0])
    no_patches = sections[0].copy()
    del no_patches.obsm[PATCHES]
    with pytest.raises(GR2STDataError, match=r"obsm\['patches'\] is missing"):
        _method("epochs=1").fit([no_patches])
    far = sections[0].copy()
    far.obs[ARRAY_X] = far.obs[ARRAY_X] + 100
    with pytest.raises(GR2STDataError, match="n_positions=64"):
        _method("epochs=1").fit([far])


def test_describe_records_the_profile():
    info = Hist2ST(feature_key=KEY, profile="default", overrides=["epochs=7"]).describe()
    assert info["profile"] == "default"
    assert info["epochs"] == 7
    assert info["reduced_channels"] == PROFILES["default"].reduced_channels
    assert Hist2ST(feature_key=KEY, profile="paper").describe()["views"] == 5
