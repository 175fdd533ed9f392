from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gr2st.models import GR2STModule, ModelConfig

SMALL = ModelConfig(proj_dim=8, heads=2, k_dynamic=5, k_spatial=5, n_positions=32, dropout=0.1)


def _batch(n: int = 30, genes: int = 12, dim: int = 7, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, dim, generator=gen),
        torch.rand(n, genes, generator=gen),
        torch.randint(0, 10, (n, 2), generator=gen).float(),
        torch.randint(0, 6, (n,), generator=gen),
    )


def _module(**changes: object) -> GR2STModule:
    torch.manual_seed(0)
    return GR2STModule(n_genes=12, image_dim=7, config=dataclasses.replace(SMALL, **changes))


@pytest.mark.parametrize("fusion", ["sum", "concat", "max", "mean"])
def test_shapes_for_every_fusion(fusion: str) -> None:
    module = _module(fusion=fusion)
    feats, expr, pos, types = _batch()
    assert module.embed_images(feats).shape == (30, 8)
    assert module.embed_spots(expr, pos, types).shape == (30, 8)
    width = 2 * 2 * 8 if fusion == "concat" else 2 * 8
    assert module.fusion_layer[0].in_features == width
    loss = module(feats, expr, pos, types)
    assert loss.shape == ()
    assert torch.isfinite(loss)


def test_loss_equals_hand_computed_symmetric_cross_entropy() -> None:
    module = _module(temperature=2.0)
    spot = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    image = torch.tensor([[0.5, 0.5], [1.0, -1.0], [0.0, 1.0]])
    logits = spot.numpy() @ image.numpy().T / 2.0

    def ce(rows: np.ndarray) -> float:
        log_softmax = rows - np.log(np.exp(rows).sum(1, keepdims=True))
        return float(-np.mean(np.diag(log_softmax)))

    expected = (ce(logits) + ce(logits.T)) / 2
    assert float(module.loss(spot, image)) == pytest.approx(expected, rel=1e-6)
    cosine = _module(normalise_logits=True).loss(spot, image)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos_logits = unit(spot.numpy()) @ unit(image.numpy()).T
    assert float(cosine) == pytest.approx((ce(cos_logits) + ce(cos_logits.T)) / 2, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["pyg", "sparse", "auto"])
@pytest.mark.parametrize("n", [30, 400])
def test_every_gat_path_computes_the_same_model(impl: str, n: int) -> None:
    # 400 spots: above both the GAT's and the spatial graph's dense thresholds.
    dense, other = _module(gat_impl="dense").eval(), _module(gat_impl=impl).eval()
    other.load_state_dict(dense.state_dict())
    feats, expr, pos, types = _batch(n)
    torch.testing.assert_close(
        dense.embed_spots(expr, pos, types),
        other.embed_spots(expr, pos, types),
        atol=1e-5,
        rtol=1e-5,
    )
    # Gradients of the loss too (no dropout in eval mode).
    for module in (dense, other):
        module.zero_grad()
        module(feats, expr, pos, types).backward()
    for (name, a), (_, b) in zip(dense.named_parameters(), other.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_same_seed_same_initial_weights_for_both_gat_paths() -> None:
    dense, pyg = _module(gat_impl="dense").state_dict(), _module(gat_impl="pyg").state_dict()
    assert list(dense) == list(pyg)
    for key in dense:
        assert torch.equal(dense[key], pyg[key]), key
    # The published model's parameter names, in its order.
    heads = [k.split(".")[0] for k in dense]
    assert list(dict.fromkeys(heads)) == [
        "x_embed",
        "y_embed",
        "cell_type_embed",
        "image_projection",
        "dynamic_head_proj",
        "dynamic_tail_proj",
        "spatial_proj",
        "dynamic_gat",
        "spatial_gat",
        "fusion_layer",
        "spot_projection",
    ]


def test_graph_construction_passes_no_gradient() -> None:
    module = _module().train()
    module(*_batch()).backward()
    # The tail projection only ranks neighbours (as in the reference): it never learns.
    assert module.dynamic_tail_proj.weight.grad is None
    assert module.dynamic_head_proj.weight.grad is not None


def test_ablation_switches_remove_their_parts() -> None:
    _feats, expr, pos, types = _batch()
    no_dyn = _module(use_dynamic=False, fusion="concat").eval()
    assert not hasattr(no_dyn, "dynamic_gat")
    assert no_dyn.fusion_layer[0].in_features == 16
    no_sp = _module(use_spatial=False).eval()
    assert not hasattr(no_sp, "spatial_gat")
    for module in (no_dyn, no_sp):
        assert module.embed_spots(expr, pos, types).shape == (30, 8)
    no_type = _module(use_cell_type=False).eval()
    assert not hasattr(no_type, "cell_type_embed")
    torch.testing.assert_close(
        no_type.embed_spots(expr, pos, types), no_type.embed_spots(expr, pos, (types + 1) % 6)
    )
    with_type = _module().eval()
    assert not torch.allclose(
        with_type.embed_spots(expr, pos, types), with_type.embed_spots(expr, pos, (types + 1) % 6)
    )
    no_pos = _module(use_position=False, use_spatial=False).eval()
    assert not hasattr(no_pos, "x_embed")
    torch.testing.assert_close(
        no_pos.embed_spots(expr, pos, types), no_pos.embed_spots(expr, pos + 3, types)
    )


def test_spot_input_is_expression_plus_embeddings() -> None:
    module = _module(use_cell_type=False).eval()
    _, expr, _, types = _batch()
    pos = torch.full((30, 2), 2.7)
    expected = expr + module.x_embed.weight[2] + module.y_embed.weight[2]
    torch.testing.assert_close(module.spot_input(expr, pos, types), expected)
    rounded = _module(use_cell_type=False, position_rounding="round").eval()
    assert rounded.position_index(pos)[0].tolist() == [3, 3]


def test_learnable_temperature_gets_a_gradient() -> None:
    module = _module(learnable_temperature=True, temperature=0.5)
    assert module.temperature().item() == pytest.approx(0.5)
    module(*_batch()).backward()
    assert module.log_temperature.grad is not None
    assert "log_temperature" not in _module().state_dict()
