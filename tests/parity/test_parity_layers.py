"""The baselines' building blocks against hand-built reference computations.

Each test writes the published layer's formula out with explicit loops or dense
matrices (our own code, not the published one) on a few tokens / spots and checks the
port's layer against it. ``docs/parity.md`` has the whole-model comparisons against the
published code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, SAGEConv

from gr2st.methods.hggep import CrossDifferenceConv
from gr2st.methods.histogene import HisToGeneConfig, HisToGeneNet
from gr2st.methods.thitogene import (
    DynamicConv2d,
    SelfAttentionRouting,
    neighbour_graph,
    receiver_normalised_gat,
    squash,
)
from gr2st.models.layers import CrossAttention, DecoderBlock, TransformerBlock


@pytest.fixture(autouse=True)
def _float64():
    """Exact references: run each test in float64, then restore the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_transformer_block_on_three_tokens_by_hand():
    torch.manual_seed(0)
    block = TransformerBlock(4, heads=2, dim_head=3, mlp_dim=5).eval()
    x = torch.randn(3, 4)

    def ln(t, norm):
        return (t - t.mean()) / torch.sqrt(
            t.var(unbiased=False) + norm.eps
        ) * norm.weight + norm.bias

    a = block.attn
    wq = a.to_q.weight
    wk, wv = a.to_kv.weight[:6], a.to_kv.weight[6:]
    normed = [ln(x[i], block.attn_norm) for i in range(3)]
    heads_out = []
    for i in range(3):
        per_head = []
        for h in range(2):
            s = slice(3 * h, 3 * h + 3)
            q = wq[s] @ normed[i]
            scores = torch.stack([q @ (wk[s] @ normed[j]) / math.sqrt(3) for j in range(3)])
            w = torch.softmax(scores, 0)
            per_head.append(sum(w[j] * (wv[s] @ normed[j]) for j in range(3)))
        heads_out.append(torch.cat(per_head))
    y = [x[i] + a.to_out[0].weight @ heads_out[i] + a.to_out[0].bias for i in range(3)]
    ff = block.ff.net
    out = []
    for i in range(3):
        hidden = F.gelu(ff[0].weight @ ln(y[i], block.ff_norm) + ff[0].bias)
        out.append(y[i] + ff[3].weight @ hidden + ff[3].bias)
    torch.testing.assert_close(block(x), torch.stack(out))


def test_q_and_kv_projections_equal_one_fused_qkv_projection():
    """vit-pytorch (HisToGene, Hist2ST, THItoGene, HGGEP, mclSTExp) fuses q, k, v in one layer."""
    torch.manual_seed(1)
    block = TransformerBlock(6, heads=2, dim_head=4, mlp_dim=6).eval()
    a = block.attn
    qkv = torch.cat([a.to_q.weight, a.to_kv.weight])  # (3 · 8, 6): q, k, v stacked
    x = torch.randn(5, 6)
    q, k, v = (
        t.view(5, 2, 4).transpose(0, 1) for t in (F.linear(x, qkv)).chunk(3, dim=-1)
    )  # (heads, n, d)
    att = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1) @ v
    expected = a.to_out(att.transpose(0, 1).reshape(5, 8))
    torch.testing.assert_close(a(x), expected)


def test_histogene_flatten_order_is_a_weight_permutation():
    """The published code flattens a (w, h, c) patch, ours (c, h, w): same model."""
    torch.manual_seed(2)
    cfg = HisToGeneConfig(dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8, dropout=0.0)
    net = HisToGeneNet(3, patch_px=4, config=cfg).eval()
    patches = torch.rand(5, 3, 4, 4)
    w = net.patch_embedding.weight.view(8, 3, 4, 4)
    theirs_w = w.permute(0, 3, 2, 1).reshape(8, -1)
    theirs_in = patches.permute(0, 3, 2, 1).reshape(5, -1) * 255.0
    torch.testing.assert_close(
        F.linear(theirs_in, theirs_w, net.patch_embedding.bias),
        net.patch_embedding(patches.flatten(1) * 255.0),
    )


def _dense_gat(x, w, a_dst, a_src, adjacency, slope):
    """pyGAT (THItoGene's GraphAttentionLayer): e_ij = LeakyReLU(a₁·Wh_i + a₂·Wh_j) on A_ij > 0."""
    wh = x @ w
    n = len(x)
    out = []
    for i in range(n):
        nbrs = [j for j in range(n) if adjacency[i, j] > 0]
        e = torch.stack([F.leaky_relu(a_dst @ wh[i] + a_src @ wh[j], slope) for j in nbrs])
        att = torch.softmax(e, 0)
        out.append(sum(att[m] * wh[j] for m, j in enumerate(nbrs)))
    return torch.stack(out)


def test_four_spot_graph_attention_by_hand():
    torch.manual_seed(3)
    # four spots on a line at 0, 1, 2 and 5; each spot's 2 nearest (no ties)
    positions = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 5]])
    edges = neighbour_graph(positions, k=2)
    adjacency = torch.zeros(4, 4)
    adjacency[edges[1], edges[0]] = 1.0  # receiver row, sender column
    expected_adjacency = torch.tensor(
        [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=adjacency.dtype
    )
    torch.testing.assert_close(adjacency, expected_adjacency)
    gat = GATConv(3, 2, heads=1, add_self_loops=False, bias=False, negative_slope=0.01).eval()
    x = torch.randn(4, 3)
    w = gat.lin.weight.T
    expected = _dense_gat(x, w, gat.att_dst[0, 0], gat.att_src[0, 0], adjacency, 0.01)
    torch.testing.assert_close(gat(x, edges), expected)


def test_four_spot_receiver_normalised_attention_by_hand():
    """THItoGene's published training: each sender's weights sum to one over its listeners."""
    torch.manual_seed(4)
    positions = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 5]])
    edges = neighbour_graph(positions, k=2)  # nobody listens to spot 3 (see above)
    listens = torch.zeros(4, 4, dtype=torch.bool)
    listens[edges[1], edges[0]] = True
    gat = GATConv(3, 2, heads=2, add_self_loops=False, bias=False, negative_slope=0.01).eval()
    x = torch.randn(4, 3)
    heads = []
    for h in range(2):
        w = gat.lin.weight[2 * h : 2 * h + 2].T
        wx = x @ w
        a_dst, a_src = gat.att_dst[0, h], gat.att_src[0, h]
        alpha = torch.zeros(4, 4)
        for j in range(4):
            listeners = [i for i in range(4) if listens[i, j]]
            if not listeners:  # the published -9e15 mask: a uniform column
                alpha[:, j] = 1 / 4
                continue
            logit = {i: F.leaky_relu(a_dst @ wx[i] + a_src @ wx[j], 0.01) for i in listeners}
            total = sum(math.exp(v) for v in logit.values())
            for i in listeners:
                alpha[i, j] = math.exp(logit[i]) / total
        heads.append(torch.stack([sum(alpha[i, j] * wx[j] for j in range(4)) for i in range(4)]))
    expected = torch.cat(heads, dim=1)
    torch.testing.assert_close(receiver_normalised_gat(gat, x, listens), expected)
    # Columns, not rows, sum to one: unlike GAT's usual normalisation.
    assert not torch.allclose(receiver_normalised_gat(gat, x, listens), gat(x, edges))


def test_hist2st_mean_aggregation_excludes_the_spot_itself():
    """gs_block(gcn=True, 'mean'): relu(W · mean of neighbours), then L2-normalised."""
    torch.manual_seed(4)
    adjacency = torch.tensor(
        [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64
    )
    x = torch.randn(4, 3)
    conv = SAGEConv(3, 2, aggr="mean", root_weight=False, bias=False)
    edges = adjacency.nonzero().T.flip(0)
    expected = F.normalize(
        torch.relu((adjacency / adjacency.sum(1, keepdim=True)) @ x @ conv.lin_l.weight.T), dim=1
    )
    torch.testing.assert_close(F.normalize(torch.relu(conv(x, edges)), dim=1), expected)


def test_capsule_squash_by_hand():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    out = squash(s)
    torch.testing.assert_close(out[0], (1 - math.exp(-5)) * torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(out[1], torch.zeros(2))
    # length 1 − e^{−‖s‖} ≈ ‖s‖ for a short capsule, direction kept
    assert float(out[2, 0]) == (1 - math.exp(-1e-3))


def test_self_attention_routing_by_hand():
    torch.manual_seed(5)
    routing = SelfAttentionRouting(3, 2, out_capsules=2, out_dim=4)
    with torch.no_grad():
        routing.prior.normal_()
    primary = torch.randn(1, 3, 2)
    w, b = routing.weight, routing.prior
    u = [[primary[0, p] @ w[k, p] for p in range(3)] for k in range(2)]  # u[k][p]
    agree = torch.tensor(
        [[float((u[k][p] @ sum(u[k])).detach()) / 2.0 for p in range(3)] for k in range(2)]
    )
    coupling = torch.softmax(agree, dim=0) + b  # softmax over the output capsules
    s = torch.stack([sum(coupling[k, p] * u[k][p] for p in range(3)) for k in range(2)])
    torch.testing.assert_close(routing(primary)[0], squash(s))


def test_odconv_kernel_aggregation_by_hand():
    """ODConv: x·α_channel → conv with Σ_m α_kernel,m (α_spatial ⊙ W_m) → ·α_filter."""
    torch.manual_seed(6)
    conv = DynamicConv2d(3, 4, kernel_size=2, stride=2, kernels=3).train()
    x = torch.rand(2, 3, 6, 6)
    channel, filters, spatial, kernel = conv.attentions(x)
    for b in range(2):
        weight = sum(kernel[b, m] * spatial[b] * conv.weight[m] for m in range(3))
        expected = F.conv2d(x[b : b + 1] * channel[b].view(1, 3, 1, 1), weight, stride=2)
        expected = expected * filters[b].view(1, 4, 1, 1)
        torch.testing.assert_close(conv(x)[b : b + 1], expected)


def test_hggep_cross_difference_conv_by_hand():
    torch.manual_seed(7)
    conv = CrossDifferenceConv(1, 1, stride=1, theta=0.7)
    x = torch.randn(1, 1, 5, 5)
    w = conv.weight[0, 0]  # taps: up, left, centre, right, down
    padded = F.pad(x, (1, 1, 1, 1))[0, 0]
    out = torch.zeros(5, 5)
    for r in range(5):
        for c in range(5):
            taps = [
                padded[r, c + 1],
                padded[r + 1, c],
                padded[r + 1, c + 1],
                padded[r + 1, c + 2],
                padded[r + 2, c + 1],
            ]
            out[r, c] = sum(
                wk * (t - 0.7 * padded[r + 1, c + 1]) for wk, t in zip(w, taps, strict=True)
            )
    torch.testing.assert_close(conv(x)[0, 0], out)


def test_reg2st_head_merge_quirk_on_three_spots():
    """Reg2ST's attention views its (heads, n, d) output as (n, heads · d)."""
    torch.manual_seed(8)
    attn = CrossAttention(4, heads=2, head_merge_quirk=True).eval()
    standard = CrossAttention(4, heads=2).eval()
    standard.load_state_dict(attn.state_dict())
    x, ctx = torch.randn(3, 4), torch.randn(3, 4)
    per_head = []
    for h in range(2):
        s = slice(2 * h, 2 * h + 2)
        q, k, v = (lin(t)[:, s] for lin, t in ((attn.to_q, x), (attn.to_k, ctx), (attn.to_v, ctx)))
        per_head.append(torch.softmax(q @ k.T / math.sqrt(2), -1) @ v)  # (3 spots, 2)
    layout = torch.stack(per_head)  # (heads, n, d) = (2, 3, 2): memory order head, spot, dim
    # row 0 = [head 0 of spots 0, 1]; row 1 = [head 0 of spot 2, head 1 of spot 0]; ...
    rows = torch.stack(
        [
            torch.cat([layout[0, 0], layout[0, 1]]),
            torch.cat([layout[0, 2], layout[1, 0]]),
            torch.cat([layout[1, 1], layout[1, 2]]),
        ]
    )
    torch.testing.assert_close(attn(x, ctx), attn.to_out(rows))
    merged = torch.stack([torch.cat([layout[0, i], layout[1, i]]) for i in range(3)])
    torch.testing.assert_close(standard(x, ctx), standard.to_out(merged))


def test_reg2st_decoder_block_has_no_self_attention():
    """A spot's output depends on its own token and the context, not on other tokens."""
    torch.manual_seed(9)
    block = DecoderBlock(8, heads=2, mlp_dim=16).eval()
    x, ctx = torch.randn(5, 8), torch.randn(5, 8)
    other = x.clone()
    other[1:] = torch.randn(4, 8)
    torch.testing.assert_close(block(x, ctx)[0], block(other, ctx)[0])
    n = block.cross_norm
    q_in = F.layer_norm(x, (8,), n.weight, n.bias, n.eps)
    y = x + block.cross_attn(q_in, ctx)  # the context is not normalised
    f = block.ff_norm
    expected = y + block.ff(F.layer_norm(y, (8,), f.weight, f.bias, f.eps))
    torch.testing.assert_close(block(x, ctx), expected)
