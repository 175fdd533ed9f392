"""Graph attention (GAT) layers equal to PyG's ``GATConv``: dense and edge-list kernels.

A kNN graph's edge ``[i, j]`` sends a message from ``i`` to ``j``: a spot attends over
the spots that chose it (a varying number), not over its own ``k`` choices, so a
fixed-width ``(N, k)`` neighbour gather would compute a different (transposed) model.

Three computations of one function, with the same parameters and state-dict names:

- :class:`DenseGATConv`: one masked ``(heads, N, N)`` attention and a batched matrix
  product. Cost and memory grow as ``heads · N²``.
- :class:`SparseGATConv`: attention over the edge list and, per head, a sparse (CSR)
  times dense product for the messages; the backward pass uses the transposed CSR and a
  sampled matrix product, so no ``(edges, heads, channels)`` message tensor is ever
  built (PyG's ``GATConv`` builds several). Cost and memory grow with the edges.
- ``torch_geometric.nn.GATConv`` itself (``impl="pyg"``).

:class:`AutoGATConv` (``model.gat_impl=auto``, the default) runs the dense kernel up to
:data:`DENSE_MAX_NODES` nodes and the edge-list kernel above, where each is faster on
CPU: one layer of 8 heads × 256 channels, k = 20, forward + backward, one thread, dense
vs edge-list 117 vs 142 ms at 128 nodes, 143 vs 154 at 150, 280 vs 232 at 200, 539 vs
148 at 600 and 4.1 vs 0.9 s at 1,000 (``benchmarks/bench_train_step.py --only gat``).
The two agree to float rounding (1e-6); in training their attention dropout draws from
the random stream differently (the edge-list kernel draws per distinct edge, as the
dense one does per entry), so a seed gives other, equally distributed masks in each.
On CUDA the edge-list kernel's scatter-adds are not bit-reproducible run to run; the
dense one is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv
from torch_geometric.nn.inits import glorot, zeros

from gr2st.errors import GR2STConfigError, GR2STDataError

GATImpl = Literal["auto", "dense", "sparse", "pyg"]

#: Largest graph (nodes) on which ``auto`` runs the dense kernel.
DENSE_MAX_NODES = 160


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


def _row_pointers(rows: Tensor, num_nodes: int) -> Tensor:
    """CSR row pointers of sorted row indices."""
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=num_nodes).cumsum(0)
    return crow


@dataclass(frozen=True)
class EdgeList:
    """A graph's distinct edges in CSR order, with PyG's self-loop rule applied.

    Attributes
    ----------
    num_nodes
        ``N``.
    src, dst
        ``(E,)`` distinct edges sorted by ``(dst, src)``; every node has exactly one
        self-loop.
    count
        ``(E,)`` multiplicity of each edge in the input (self-loops 1).
    crow
        ``(N + 1,)`` row pointers of the ``dst × src`` matrix (columns ``src``).
    crow_t, col_t, perm_t
        The transposed (``src × dst``) matrix: row pointers, columns, and the
        permutation of the edges into its order.
    """

    num_nodes: int
    src: Tensor
    dst: Tensor
    count: Tensor
    crow: Tensor
    crow_t: Tensor
    col_t: Tensor
    perm_t: Tensor

    @classmethod
    def build(cls, edge_index: Tensor, num_nodes: int) -> EdgeList:
        """Coalesce ``edge_index`` (messages from row 0 to row 1) for ``num_nodes`` nodes.

        Examples
        --------
        >>> g = EdgeList.build(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]]), 2)
        >>> g.src.tolist(), g.dst.tolist(), g.count.tolist()
        ([0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 2, 1])
        """
        n = num_nodes
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise GR2STDataError(
                f"edge_index: expected a (2, E) tensor, got shape {tuple(edge_index.shape)}"
            )
        src, dst = edge_index[0].long(), edge_index[1].long()
        if src.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise GR2STDataError(f"edge_index: node ids must lie in [0, {n}) for {n} nodes")
        keep = src != dst
        loops = torch.arange(n, device=edge_index.device)
        key = torch.cat([dst[keep] * n + src[keep], loops * (n + 1)])
        key, count = torch.unique(key, sorted=True, return_counts=True)
        dst, src = key // n, key % n
        perm_t = torch.argsort(src * n + dst)
        return cls(
            num_nodes=n,
            src=src,
            dst=dst,
            count=count,
            crow=_row_pointers(dst, n),
            crow_t=_row_pointers(src, n),
            col_t=dst[perm_t],
            perm_t=perm_t,
        )

    def _csr(self, crow: Tensor, col: Tensor, values: Tensor) -> Tensor:
        n = self.num_nodes
        with warnings.catch_warnings():  # "CSR support is in beta": used as documented
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)

    def matrix(self, values: Tensor) -> Tensor:
        """``(N, N)`` CSR matrix ``M[dst, src] = values`` (values in edge order)."""
        return self._csr(self.crow, self.src, values)

    def transposed(self, values: Tensor) -> Tensor:
        """``(N, N)`` CSR matrix ``M[src, dst] = values`` (values in edge order)."""
        return self._csr(self.crow_t, self.col_t, values[self.perm_t])


class _HeadwiseSpMM(torch.autograd.Function):
    """``out[h] = A_h @ x[h]`` for per-head attention ``A_h`` on one edge list.

    Gradients: ``dx[h] = A_hᵀ @ dout[h]`` and, for each edge, ``dA_h[dst, src] =
    dout[h, dst] · x[h, src]`` (a sampled dense product), all in ``O(edges · C)``.
    """

    @staticmethod
    def forward(ctx: Any, attn: Tensor, x: Tensor, graph: EdgeList) -> Tensor:
        ctx.save_for_backward(attn, x)
        ctx.graph = graph
        out = torch.empty_like(x)
        for h in range(attn.shape[0]):
            torch.mm(graph.matrix(attn[h]), x[h], out=out[h])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        attn, x = ctx.saved_tensors
        graph: EdgeList = ctx.graph
        grad = grad.contiguous()
        heads = range(attn.shape[0])
        grad_attn = grad_x = None
        if ctx.needs_input_grad[0]:
            sampled = (
                torch.sparse.sampled_addmm(graph.matrix(attn[h]), grad[h], x[h].T, beta=0.0)
                for h in heads
            )
            grad_attn = torch.stack([s.values() for s in sampled])
        if ctx.needs_input_grad[1]:
            grad_x = torch.empty_like(x)
            for h in heads:
                torch.mm(graph.transposed(attn[h]), grad[h], out=grad_x[h])
        return grad_attn, grad_x, None


class _GATBase(nn.Module):
    """Parameters, initialisation and both kernels of PyG's ``GATConv`` defaults."""

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

    def _dense(self, x: Tensor, edge_index: Tensor) -> Tensor:
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

    def _sparse(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.shape[0]
        h, c = self.heads, self.out_channels
        graph = EdgeList.build(edge_index, n)
        xh = self.lin(x).view(n, h, c).transpose(0, 1).contiguous()  # (H, N, C)
        # <lin(x)_h, att_h> = <x, W_hᵀ att_h>: the attention vectors folded into the
        # weights, a (D, 2H) product instead of two passes over (H, N, C).
        weight = self.lin.weight.view(h, c, -1)
        folded = [torch.einsum("hcd,hc->hd", weight, a[0]) for a in (self.att_src, self.att_dst)]
        alpha = (x @ torch.cat(folded).T).T  # (2H, N)
        alpha_src, alpha_dst = alpha[:h], alpha[h:]
        logits = F.leaky_relu(
            alpha_src[:, graph.src] + alpha_dst[:, graph.dst], self.negative_slope
        )  # (H, E)
        # Softmax over each target's incoming edges, duplicates weighted by their count
        # (as the dense kernel's log-count mask); the shift by the row maximum is a
        # constant of each softmax, so it carries no gradient.
        dst = graph.dst.expand(h, -1)
        shift = logits.detach().new_zeros(h, n)
        shift.scatter_reduce_(1, dst, logits.detach(), "amax", include_self=False)
        weights = graph.count.to(x.dtype) * (logits - shift[:, graph.dst]).exp()
        total = weights.new_zeros(h, n).index_add(1, graph.dst, weights)
        attn = weights / total[:, graph.dst]
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        out: Tensor = _HeadwiseSpMM.apply(attn, xh, graph)  # (H, N_dst, C)
        return out.transpose(0, 1).reshape(n, h * c) + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, heads={self.heads}, dropout={self.dropout}"
        )


class DenseGATConv(_GATBase):
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

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self._dense(x, edge_index)


class SparseGATConv(_GATBase):
    """:class:`DenseGATConv`'s function over the edge list: ``O(edges)`` time and memory.

    Parameters as :class:`DenseGATConv`.

    Examples
    --------
    >>> conv = SparseGATConv(4, 3, heads=2)
    >>> conv(torch.randn(5, 4), torch.tensor([[0, 1], [1, 2]])).shape
    torch.Size([5, 6])
    """

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self._sparse(x, edge_index)


class AutoGATConv(_GATBase):
    """:class:`DenseGATConv`'s function by the kernel that is faster for the graph's size.

    Dense up to ``dense_max_nodes`` nodes, the edge-list kernel above.

    Parameters
    ----------
    in_channels, out_channels, heads, dropout, negative_slope
        As :class:`DenseGATConv`.
    dense_max_nodes
        Largest graph run by the dense kernel (default :data:`DENSE_MAX_NODES`).

    Examples
    --------
    >>> conv = AutoGATConv(4, 3, heads=2, dense_max_nodes=3)
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
        dense_max_nodes: int = DENSE_MAX_NODES,
    ) -> None:
        super().__init__(
            in_channels, out_channels, heads=heads, dropout=dropout, negative_slope=negative_slope
        )
        self.dense_max_nodes = dense_max_nodes

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if x.shape[0] <= self.dense_max_nodes:
            return self._dense(x, edge_index)
        return self._sparse(x, edge_index)


def make_gat(
    in_channels: int, out_channels: int, *, heads: int, dropout: float, impl: GATImpl
) -> nn.Module:
    """Build a GAT layer with the reference's settings; ``impl`` picks the computation.

    Examples
    --------
    >>> type(make_gat(4, 3, heads=2, dropout=0.0, impl="auto")).__name__
    'AutoGATConv'
    """
    kinds: dict[str, type[nn.Module]] = {
        "auto": AutoGATConv,
        "dense": DenseGATConv,
        "sparse": SparseGATConv,
        "pyg": GATConv,
    }
    if impl not in kinds:
        raise GR2STConfigError(f"model.gat_impl: expected one of {sorted(kinds)}, got {impl!r}")
    return kinds[impl](in_channels, out_channels, heads=heads, dropout=dropout)
