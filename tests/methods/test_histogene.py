from __future__ import annotations

import dataclasses

import pytest
import torch
from anndata import AnnData

from gr2st._constants import ARRAY_X, PATCHES
from gr2st.datasets import synthetic
from gr2st.encoders import extract_patches
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import prepare_section
from gr2st.methods.base import METHODS
from gr2st.methods.histogene import PROFILES, HisToGene, HisToGeneConfig, HisToGeneNet

KEY = "X_unused"  # HisToGene reads patches, not features
# Tiny widths that still learn in seconds (the architecture is unchanged).
SMALL = ["dim=32", "depth=1", "heads=2", "dim_head=16", "mlp_dim=64"]
TINY = HisToGeneConfig(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, n_positions=10)


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> list[AnnData]:
    """Strong-signal synthetic sections with their 16-px patches (colour ↔ expression)."""
    raw = synthetic(
        n_sections=4,
        n_genes=16,
        grid=(8, 8),
        signal=2.0,
        image_dir=tmp_path_factory.mktemp("images"),
        seed=0,
    )
    extract_patches(raw, out_px=16, size_px=48, stain=None, progress=False)
    return [prepare_section(a, genes=list(a.var_names)) for a in raw]


def _method(*overrides: str, seed: int = 0, profile: str = "default") -> HisToGene:
    return HisToGene(
        feature_key=KEY,
        profile=profile,
        overrides=[*SMALL, *overrides],
        seed=seed,
        device="cpu",
        progress=False,
    )


def test_registered_with_the_published_paper_profile():
    assert METHODS.get("histogene") is HisToGene
    assert list(HisToGene.profiles) == ["paper", "default"]
    assert HisToGene.input == "pixels"
    assert HisToGene.patch_px == 112
    paper = PROFILES["paper"]
    assert (paper.epochs, paper.lr, paper.optimizer, paper.weight_decay) == (100, 1e-5, "adam", 0)
    assert (paper.dim, paper.depth, paper.heads, paper.dim_head, paper.mlp_dim) == (
        1024,
        8,
        16,
        64,
        2048,
    )
    assert (paper.dropout, paper.pixel_scale, paper.lr_step_epochs) == (0.1, 255.0, 0)
    assert not paper.augmentation.active  # the ViT loader applies no transform
    cpu = PROFILES["default"]
    # The cpu profile keeps the architecture: only widths, depth, epochs and lr shrink.
    assert cpu.dim < paper.dim
    assert cpu.epochs < paper.epochs
    assert cpu.mlp_dim == 2 * cpu.dim
    assert cpu.heads * cpu.dim_head == cpu.dim


def test_paper_network_has_the_published_parameter_counts():
    # tutorial.ipynb (HER2ST, 785 genes, n_pos=35) lists 38.5 M, 35.8 K, 35.8 K, 67.2 M and
    # 806 K parameters for patch_embedding, x_embed, y_embed, vit and gene_head.
    config = HisToGeneConfig(n_positions=35)
    with torch.device("meta"):
        net = HisToGeneNet(785, patch_px=112, config=config)
    counts = {
        name: sum(p.numel() for p in module.parameters()) for name, module in net.named_children()
    }
    assert counts["patch_embedding"] == 3 * 112 * 112 * 1024 + 1024
    assert counts["x_embed"] == counts["y_embed"] == 35 * 1024
    assert round(counts["vit"] / 1e5) == 672
    assert counts["gene_head"] == 2 * 1024 + 1024 * 785 + 785
    assert round(sum(counts.values()) / 1e6) == 107  # "106 M" (106.59 M) in the tutorial


def test_forward_matches_a_hand_computation():
    torch.manual_seed(0)
    net = HisToGeneNet(5, patch_px=4, config=TINY).eval()
    patches = torch.rand(6, 3, 4, 4)
    positions = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 0]])
    tokens = (
        patches.reshape(6, 48) * 255.0 @ net.patch_embedding.weight.T
        + net.patch_embedding.bias
        + net.x_embed.weight[positions[:, 0]]
        + net.y_embed.weight[positions[:, 1]]
    )
    expected = net.gene_head(net.vit(tokens))
    torch.testing.assert_close(net(patches, positions), expected)
    # pixel_scale only rescales the input.
    unscaled = HisToGeneNet(5, patch_px=4, config=dataclasses.replace(TINY, pixel_scale=1.0))
    unscaled.load_state_dict(net.state_dict())
    unscaled.eval()
    torch.testing.assert_close(unscaled(patches * 255.0, positions), expected)


def test_every_spot_sees_the_whole_section():
    torch.manual_seed(0)
    net = HisToGeneNet(5, patch_px=4, config=TINY).eval()
    patches, positions = torch.rand(6, 3, 4, 4), torch.randint(0, 10, (6, 2))
    out = net(patches, positions)
    # Spot order does not matter: the output permutes with the input.
    order = torch.tensor([3, 1, 5, 0, 2, 4])
    torch.testing.assert_close(net(patches[order], positions[order]), out[order])
    # Changing spot 5's patch changes spot 0's prediction (attention over spots).
    changed = patches.clone()
    changed[5] = 1 - changed[5]
    assert not torch.allclose(net(changed, positions)[0], out[0])
    # Training mode applies dropout (embedding, attention output, MLP).
    net.train()
    assert not torch.allclose(net(patches, positions), net(patches, positions))


def test_bad_options_and_inputs_are_rejected(sections):
    with pytest.raises(GR2STConfigError, match="no profile 'gpu'; it has: paper, default"):
        HisToGene(feature_key=KEY, profile="gpu")
    with pytest.raises(GR2STConfigError, match="unknown override 'width'"):
        _method("width=3")
    with pytest.raises(GR2STConfigError, match="histogene: dim must be > 0, got 0"):
        _method("dim=0")
    with pytest.raises(GR2STConfigError, match="pixel_scale must be > 0"):
        _method("pixel_scale=-1")
    with pytest.raises(GR2STConfigError, match="dropout must be in"):
        _method("dropout=1")
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
    info = HisToGene(feature_key=KEY, profile="default", overrides=["epochs=7"]).describe()
    assert info["profile"] == "default"
    assert info["epochs"] == 7
    assert info["dim"] == PROFILES["default"].dim
    assert HisToGene(feature_key=KEY, profile="paper").describe()["pixel_scale"] == 255.0
