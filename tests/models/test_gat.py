from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.graph import functional_topk_graph, spatial_knn_graph
from gr2st.models import AutoGATConv, DenseGATConv, SparseGATConv, make_gat
from gr2st.models.gat import EdgeList, edge_multiplicity

KERNELS = {"dense": DenseGATConv, "sparse": SparseGATConv, "auto": AutoGATConv}


def _graphs(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    pos = torch.randint(0, 12, (n, 2), generator=gen).float()
    h, t = torch.randn(n, 5, generator=gen), torch.randn(n, 5, generator=gen)
    # The functional graph with a low-rank affinity: a few hubs are chosen by many spots,
    # so in-degrees range from 0 to far above k.
    hub = torch.randn(n, 1, generator=gen) @ torch.randn(1, 5, generator=gen)
    return {
        "spatial": spatial_knn_graph(pos, k=7),
        "functional": functional_topk_graph(h, t, torch.randint(0, 6, (n,), generator=gen), k=7),
        "hubs": functional_topk_graph(hub, hub, None, k=7),
        # duplicates and explicit self-loops: PyG counts duplicates and resets self-loops
        "random": torch.randint(0, n, (2, 4 * n), generator=gen),
        "empty": torch.zeros(2, 0, dtype=torch.long),
    }


def _outputs_and_grads(
    conv: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor, upstream: torch.Tensor
) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out = conv(x, edge_index)
    out.backward(upstream)
    grads = {name: p.grad for name, p in conv.named_parameters()}
    return [out.detach(), x.grad, *(grads[name] for name in sorted(grads))]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("kind", ["spatial", "functional", "hubs", "random", "empty"])
def test_gat_kernels_equal_pyg_outputs_and_gradients(kind: str, kernel: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 40
    edge_index = _graphs(n, gen)[kind]
    pyg = GATConv(12, 6, heads=3, dropout=0.5).eval()
    with torch.no_grad():  # a non-zero bias, so it is compared too
        pyg.bias.normal_(generator=gen)
    ours = KERNELS[kernel](12, 6, heads=3, dropout=0.5).eval()
    ours.load_state_dict(pyg.state_dict())
    x, upstream = torch.randn(n, 12, generator=gen), torch.randn(n, 18, generator=gen)
    got = _outputs_and_grads(ours, x, edge_index, upstream)
    want = _outputs_and_grads(pyg, x, edge_index, upstream)
    assert got[0].shape == (n, 18)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("n", [7, 150, 400])
@pytest.mark.parametrize("kind", ["spatial", "functional", "hubs", "random"])
def test_edge_list_kernel_equals_dense_in_float64(kind: str, n: int) -> None:
    # Same function to rounding: in float64 both agree far below 1e-6, forward and
    # backward, with variable in-degree (spots receive from those that chose them).
    gen = torch.Generator().manual_seed(n)
    edge_index = _graphs(n, gen)[kind]
    dense = DenseGATConv(16, 8, heads=4).double().eval()
    with torch.no_grad():
        dense.bias.normal_(generator=gen)
    sparse = SparseGATConv(16, 8, heads=4).double().eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(n, 16, generator=gen, dtype=torch.float64)
    upstream = torch.randn(n, 32, generator=gen, dtype=torch.float64)
    got = _outputs_and_grads(sparse, x, edge_index, upstream)
    want = _outputs_and_grads(dense, x, edge_index, upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.slow
def test_edge_list_kernel_float32_within_1e6_of_dense_at_section_size() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 300
    pos = torch.randint(0, 30, (n, 2), generator=gen).float()
    dense = DenseGATConv(64, 32, heads=8).eval()
    sparse = SparseGATConv(64, 32, heads=8).eval()
    sparse.load_state_dict(dense.state_dict())
    x, upstream = torch.randn(n, 64, generator=gen), torch.randn(n, 256, generator=gen)
    edge_index = spatial_knn_graph(pos, k=20)
    for a, b in zip(
        _outputs_and_grads(sparse, x, edge_index, upstream),
        _outputs_and_grads(dense, x, edge_index, upstream),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-5)


def test_auto_switches_kernel_by_size() -> None:
    conv = AutoGATConv(4, 3, heads=2, dense_max_nodes=10)
    calls: list[str] = []
    conv._dense = lambda x, e: calls.append("dense") or x  # type: ignore[method-assign]
    conv._sparse = lambda x, e: calls.append("sparse") or x  # type: ignore[method-assign]
    edges = torch.zeros(2, 0, dtype=torch.long)
    conv(torch.zeros(10, 4), edges)
    conv(torch.zeros(11, 4), edges)
    assert calls == ["dense", "sparse"]


def test_state_dict_names_and_initial_weights_match_pyg() -> None:
    names = set(GATConv(4, 3, heads=2).state_dict())
    for kind in KERNELS.values():
        assert set(kind(4, 3, heads=2).state_dict()) == names
    states = []
    for kind in KERNELS.values():
        torch.manual_seed(0)
        states.append(kind(4, 3, heads=2).state_dict())
    for state in states[1:]:
        assert all(torch.equal(state[k], states[0][k]) for k in names)


def test_edge_multiplicity_counts_duplicates_and_resets_self_loops() -> None:
    edge_index = torch.tensor([[0, 0, 1, 1, 2], [1, 1, 1, 2, 0]])
    counts = edge_multiplicity(edge_index, 3, dtype=torch.float32)
    # counts[dst, src]: 0→1 twice, 1→1 self-loop dropped and re-added once, 1→2, 2→0.
    assert counts.tolist() == [[1, 0, 1], [2, 1, 0], [0, 1, 1]]


def test_edge_list_coalesces_like_edge_multiplicity() -> None:
    gen = torch.Generator().manual_seed(1)
    edge_index = torch.randint(0, 9, (2, 60), generator=gen)
    graph = EdgeList.build(edge_index, 9)
    rebuilt = torch.zeros(9, 9)
    rebuilt[graph.dst, graph.src] = graph.count.float()
    assert torch.equal(rebuilt, edge_multiplicity(edge_index, 9, dtype=torch.float32))
    # CSR order: by target, then source; the transposed order by source, then target.
    key = graph.dst * 9 + graph.src
    assert bool((key[1:] > key[:-1]).all())
    assert graph.crow.tolist() == [0, *torch.bincount(graph.dst, minlength=9).cumsum(0).tolist()]
    t_key = graph.src[graph.perm_t] * 9 + graph.dst[graph.perm_t]
    assert bool((t_key[1:] > t_key[:-1]).all())
    assert torch.equal(graph.col_t, graph.dst[graph.perm_t])


def test_edge_list_rejects_bad_edges() -> None:
    with pytest.raises(GR2STDataError, match=r"node ids must lie in \[0, 3\)"):
        SparseGATConv(4, 3)(torch.zeros(3, 4), torch.tensor([[0, 3], [1, 1]]))
    with pytest.raises(GR2STDataError, match="expected a \\(2, E\\) tensor"):
        SparseGATConv(4, 3)(torch.zeros(3, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_attention_dropout_only_in_training(kernel: str) -> None:
    torch.manual_seed(0)
    conv = KERNELS[kernel](8, 4, heads=2, dropout=0.5)
    x, edge_index = torch.randn(20, 8), spatial_knn_graph(torch.randn(20, 2), k=5)
    conv.train()
    assert not torch.allclose(conv(x, edge_index), conv(x, edge_index))
    conv.eval()
    torch.testing.assert_close(conv(x, edge_index), conv(x, edge_index))


@pytest.mark.slow
def test_edge_list_dropout_keeps_the_expected_output() -> None:
    # Inverted dropout on the attention: the mean over many masks is the eval output.
    torch.manual_seed(0)
    conv = SparseGATConv(6, 4, heads=2, dropout=0.3)
    x, edge_index = torch.randn(30, 6), spatial_knn_graph(torch.randn(30, 2), k=6)
    with torch.no_grad():
        expected = conv.eval()(x, edge_index)
        conv.train()
        mean = torch.stack([conv(x, edge_index) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, expected, atol=0.05 * float(expected.abs().max()), rtol=0)


def test_make_gat_picks_the_implementation() -> None:
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="dense"), DenseGATConv)
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="sparse"), SparseGATConv)
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="auto"), AutoGATConv)
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="pyg"), GATConv)
    with pytest.raises(GR2STConfigError, match="gat_impl"):
        make_gat(4, 3, heads=2, dropout=0.1, impl="csr")  # type: ignore[arg-type]
