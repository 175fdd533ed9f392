from __future__ import annotations

import torch
import torch.nn.functional as F

from gr2st.models.layers.knowledge_graph import KnowledgeGraphAttention


def _reference(
    layer: KnowledgeGraphAttention, x: torch.Tensor, head_x: torch.Tensor, tail_x: torch.Tensor
) -> torch.Tensor:
    """WiKG's per-node computation written with explicit loops over nodes."""
    h = layer.fc_in(x)
    h = (h + h.mean(0)) / 2
    e_h, e_t = layer.w_head(head_x), layer.w_tail(tail_x)
    rows = []
    for i in range(len(x)):
        scores = torch.stack([e_h[i] @ e_t[j] for j in range(len(x))]) * layer.scale
        top, idx = torch.topk(scores, layer.top_k)
        p = torch.softmax(top, 0)
        gates = [
            torch.tanh(e_h[i] + p[m] * e_t[j] + (1 - p[m]) * e_h[i]) for m, j in enumerate(idx)
        ]
        # WiKG's einsum("ijkl,ijkm->ijk"): product of the two vectors' sums.
        logits = torch.stack([e_t[j].sum() * g.sum() for j, g in zip(idx, gates, strict=True)])
        a = torch.softmax(logits, 0)
        message = sum(a[m] * e_t[j] for m, j in enumerate(idx))
        fused = F.leaky_relu(layer.sum_linear(h[i] + message)) + F.leaky_relu(
            layer.product_linear(h[i] * message)
        )
        rows.append(layer.fc_out(layer.norm(fused)))
    return torch.stack(rows)


def test_forward_matches_loop_reference():
    torch.manual_seed(0)
    layer = KnowledgeGraphAttention(5, hidden_dim=8, out_dim=3, top_k=4).eval()
    x, heads, tails = torch.randn(9, 5), torch.randn(9, 5), torch.randn(9, 5)
    torch.testing.assert_close(layer(x, heads, tails), _reference(layer, x, heads, tails))
    torch.testing.assert_close(layer(x), _reference(layer, x, x, x))


def test_neighbours_are_top_k_by_head_tail_score():
    torch.manual_seed(1)
    layer = KnowledgeGraphAttention(4, hidden_dim=6, out_dim=2, top_k=3)
    x, heads, tails = torch.randn(7, 4), torch.randn(7, 4), torch.randn(7, 4)
    scores, index = layer.neighbours(x, heads, tails)
    assert index.shape == scores.shape == (7, 3)
    full = layer.w_head(heads) @ layer.w_tail(tails).T * layer.scale
    torch.testing.assert_close(scores, full.sort(dim=1, descending=True).values[:, :3])
    torch.testing.assert_close(full.gather(1, index), scores)


def test_top_k_is_clipped_and_nodes_are_permutation_equivariant():
    torch.manual_seed(2)
    layer = KnowledgeGraphAttention(4, hidden_dim=6, out_dim=2, top_k=6).eval()
    x = torch.randn(3, 4)
    assert layer(x).shape == (3, 2)  # 3 nodes < top_k = 6
    y, heads, tails = torch.randn(10, 4), torch.randn(10, 4), torch.randn(10, 4)
    perm = torch.randperm(10)
    torch.testing.assert_close(
        layer(y, heads, tails)[perm], layer(y[perm], heads[perm], tails[perm])
    )


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(3)
    layer = KnowledgeGraphAttention(4, hidden_dim=6, out_dim=2, top_k=3)
    layer(torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
