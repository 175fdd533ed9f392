from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv

from gr2st.errors import GR2STConfigError
from gr2st.graph import functional_topk_graph, spatial_knn_graph
from gr2st.models import DenseGATConv, make_gat
from gr2st.models.gat import edge_multiplicity


def _graphs(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    pos = torch.randint(0, 12, (n, 2), generator=gen).float()
    h, t = torch.randn(n, 5, generator=gen), torch.randn(n, 5, generator=gen)
    return {
        "spatial": spatial_knn_graph(pos, k=7),
        "functional": functional_topk_graph(h, t, torch.randint(0, 6, (n,), generator=gen), k=7),
        # duplicates and explicit self-loops: PyG counts duplicates and resets self-loops
        "random": torch.randint(0, n, (2, 4 * n), generator=gen),
        "empty": torch.zeros(2, 0, dtype=torch.long),
    }


@pytest.mark.parametrize("kind", ["spatial", "functional", "random", "empty"])
def test_dense_gat_equals_pyg_outputs_and_gradients(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 40
    edge_index = _graphs(n, gen)[kind]
    pyg = GATConv(12, 6, heads=3, dropout=0.5).eval()
    with torch.no_grad():  # a non-zero bias, so it is compared too
        pyg.bias.normal_(generator=gen)
    dense = DenseGATConv(12, 6, heads=3, dropout=0.5).eval()
    dense.load_state_dict(pyg.state_dict())
    x = torch.randn(n, 12, generator=gen)
    x_pyg, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_pyg, out_dense = pyg(x_pyg, edge_index), dense(x_dense, edge_index)
    assert out_dense.shape == (n, 18)
    torch.testing.assert_close(out_dense, out_pyg, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(n, 18, generator=gen)
    out_pyg.backward(upstream)
    out_dense.backward(upstream)
    torch.testing.assert_close(x_dense.grad, x_pyg.grad, atol=1e-5, rtol=1e-5)
    for name, p in pyg.named_parameters():
        torch.testing.assert_close(
            dict(dense.named_parameters())[name].grad, p.grad, atol=1e-5, rtol=1e-5
        )


def test_state_dict_names_match_pyg() -> None:
    assert set(DenseGATConv(4, 3, heads=2).state_dict()) == set(GATConv(4, 3, heads=2).state_dict())


def test_edge_multiplicity_counts_duplicates_and_resets_self_loops() -> None:
    edge_index = torch.tensor([[0, 0, 1, 1, 2], [1, 1, 1, 2, 0]])
    counts = edge_multiplicity(edge_index, 3, dtype=torch.float32)
    # counts[dst, src]: 0→1 twice, 1→1 self-loop dropped and re-added once, 1→2, 2→0.
    assert counts.tolist() == [[1, 0, 1], [2, 1, 0], [0, 1, 1]]


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    conv = DenseGATConv(8, 4, heads=2, dropout=0.5)
    x, edge_index = torch.randn(20, 8), spatial_knn_graph(torch.randn(20, 2), k=5)
    conv.train()
    assert not torch.allclose(conv(x, edge_index), conv(x, edge_index))
    conv.eval()
    torch.testing.assert_close(conv(x, edge_index), conv(x, edge_index))


def test_make_gat_picks_the_implementation() -> None:
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="dense"), DenseGATConv)
    assert isinstance(make_gat(4, 3, heads=2, dropout=0.1, impl="pyg"), GATConv)
    with pytest.raises(GR2STConfigError, match="gat_impl"):
        make_gat(4, 3, heads=2, dropout=0.1, impl="sparse")  # type: ignore[arg-type]
