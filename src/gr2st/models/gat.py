"""Graph attention (GAT) layer as dense masked attention, equal to PyG's ``GATConv``.

GR2ST's graphs have at most a few thousand spots per forward pass (training batches
hold at most ``train.batch_size`` = 2,048). There one masked ``(heads, N, N)``
attention followed by a batched matrix product is faster than PyG's edge-wise
gather/scatter — 4x for one layer's forward and backward at 300 spots, 8 heads of 256
on CPU — and deterministic on every device. Its memory grows as ``heads · N²`` (about
130 MB per intermediate at N = 2,048, 8 heads), so for much larger graphs
``model.gat_impl=pyg`` computes the same function in ``O(edges)`` memory.

A kNN graph's edge ``[i, j]`` sends a message from ``i`` to ``j``: a spot attends over
the spots that chose it (a varying number), not over its own ``k`` choices, so a
fixed-width ``(N, k)`` neighbour gather would compute a different (transposed) model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv
from torch_geometric.nn.inits import glorot, zeros

from gr2st.errors import GR2STConfigError

GATImpl = Literal["dense", "pyg"]


def edge_multiplicity(edge_index: Tensor, num_nodes: int, *, dtype: torch.dtype) -> Tensor:
    """Incoming-edge counts ``A[dst, src]`` with PyG's self-loop rule applied.

    Existing self-loops are dropped and exactly one is added per node, as
    ``GATConv(add_self_loops=True)`` does. Duplicate edges are counted, so that a
    softmax weighted by ``A`` equals PyG's softmax over the edge list.

    Examples
    --------
    >>> edge_multiplicity(torch.tensor([[0, 0, 1], [0, 1, 0]]), 2, dtype=torch.float32)
    tensor([[1., 1.],
            [1., 1.]])
    """
    src, dst = edge_index[0], edge_index[1]
    counts = torch.zeros(num_nodes, num_nodes, dtype=dtype, device=edge_index.device)
    counts.index_put_((dst, src), torch.ones_like(src, dtype=dtype), accumulate=True)
    counts.fill_diagonal_(1.0)
    return counts


class DenseGATConv(nn.Module):
    """``GATConv(in_channels, out_channels, heads, dropout)`` computed as dense attention.

    Same parameters (and state-dict names) as ``torch_geometric.nn.GATConv`` with its
    defaults (concatenated heads, self-loops, LeakyReLU 0.2, bias), so weights move
    between the two with ``load_state_dict``. Messages flow from ``edge_index[0]``
    (source) to ``edge_index[1]`` (target); each target attends over its incoming edges
    plus one self-loop.

    Parameters
    ----------
    in_channels, out_channels
        Input and per-head output widths; the output has ``heads * out_channels`` columns.
    heads
        Number of attention heads.
    dropout
        Dropout probability of the normalised attention coefficients.
    negative_slope
        LeakyReLU slope of the attention logits.

    Examples
    --------
    >>> conv = DenseGATConv(4, 3, heads=2)
    >>> conv(torch.randn(5, 4), torch.tensor([[0, 1], [1, 2]])).shape
    torch.Size([5, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        heads: int = 1,
        dropout: float = 0.0,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.dropout = dropout
        self.negative_slope = negative_slope
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG's initialisation: Glorot-uniform weights and attention vectors, zero bias."""
        glorot(self.lin.weight)
        glorot(self.att_src)
        glorot(self.att_dst)
        zeros(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.shape[0]
        h, c = self.heads, self.out_channels
        xh = self.lin(x).view(n, h, c)
        alpha_src = (xh * self.att_src).sum(-1).T  # (H, N)
        alpha_dst = (xh * self.att_dst).sum(-1).T
        # log(count) is 0 on single edges and -inf off the graph: a mask that also
        # weights duplicate edges exactly as PyG's edge-wise softmax does.
        log_counts = edge_multiplicity(edge_index, n, dtype=x.dtype).log()
        logits = F.leaky_relu(alpha_dst[:, :, None] + alpha_src[:, None, :], self.negative_slope)
        attn = torch.softmax(logits + log_counts, dim=-1)
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        out = attn @ xh.transpose(0, 1)  # (H, N_dst, C)
        return out.transpose(0, 1).reshape(n, h * c) + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, heads={self.heads}, dropout={self.dropout}"
        )


def make_gat(
    in_channels: int, out_channels: int, *, heads: int, dropout: float, impl: GATImpl
) -> nn.Module:
    """Build a GAT layer with the reference's settings; ``impl`` picks the computation.

    Examples
    --------
    >>> type(make_gat(4, 3, heads=2, dropout=0.0, impl="pyg")).__name__
    'GATConv'
    """
    if impl == "dense":
        return DenseGATConv(in_channels, out_channels, heads=heads, dropout=dropout)
    if impl == "pyg":
        return GATConv(in_channels, out_channels, heads=heads, dropout=dropout)
    raise GR2STConfigError(f"model.gat_impl: expected 'dense' or 'pyg', got {impl!r}")
