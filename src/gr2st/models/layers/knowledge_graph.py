"""WiKG-style dynamic knowledge-graph attention over the spots of one section.

WiKG (Li et al., CVPR 2024, "Dynamic graph representation with knowledge-aware
attention for histopathology whole slide image analysis") treats every patch as a node
with a *head* and a *tail* embedding. Each node links to the ``top_k`` nodes whose tail
is most similar to its head (a graph rebuilt at every forward pass), weighs those
neighbours with a gated knowledge-aware attention, and fuses its own state with the
aggregated neighbourhood by bi-interaction. Reg2ST applies it per spot (no slide-level
readout), so the layer returns one embedding per node, and it feeds heads and tails
from other tensors than the node states (its ``WiKG.forward(x, e_h, e_t)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KnowledgeGraphAttention(nn.Module):
    """Dynamic top-k graph + knowledge-aware attention + bi-interaction, per node.

    For node features ``x`` and head / tail sources ``head_x``, ``tail_x`` (each
    ``(n, in_dim)``, default ``x``)::

        h   = LeakyReLU(Linear(x));  h = (h + mean_nodes(h)) / 2     (node states)
        e_h = W_head head_x,  e_t = W_tail tail_x
        s_ij = e_h_i · e_t_j / sqrt(hidden);  N(i) = top_k_j s_ij
        p_ij = softmax_{j∈N(i)} s_ij
        r_ij = p_ij e_t_j + (1 - p_ij) e_h_i                    (relation-aware tail)
        g_ij = tanh(e_h_i + r_ij)
        a_ij = softmax_{j∈N(i)} ((Σ_d e_t_jd) · (Σ_d g_ijd))       (knowledge attention)
        m_i  = Σ_j a_ij e_t_j
        z_i  = LeakyReLU(L1(h_i + m_i)) + LeakyReLU(L2(h_i ⊙ m_i))
        out  = Linear(LayerNorm(Dropout(z_i)))

    **quirk** (kept, as WiKG's and Reg2ST's code compute it): the knowledge-attention
    logit is ``einsum("ijkl,ijkm->ijk", e_t, g)``, the product of the two vectors'
    sums, not their dot product.

    Parameters
    ----------
    in_dim
        Width of ``x``, ``head_x`` and ``tail_x``.
    hidden_dim
        Width of node states and head/tail embeddings.
    out_dim
        Width of the output.
    top_k
        Neighbours per node (clipped to the number of nodes).
    dropout
        Dropout on the fused messages.

    Examples
    --------
    >>> layer = KnowledgeGraphAttention(8, hidden_dim=16, out_dim=4, top_k=3)
    >>> layer(torch.randn(10, 8)).shape
    torch.Size([10, 4])
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden_dim: int,
        out_dim: int,
        top_k: int = 6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.scale = hidden_dim**-0.5
        self.fc_in = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU())
        self.w_head = nn.Linear(in_dim, hidden_dim)
        self.w_tail = nn.Linear(in_dim, hidden_dim)
        self.sum_linear = nn.Linear(hidden_dim, hidden_dim)
        self.product_linear = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, out_dim)

    def neighbours(
        self, x: Tensor, head_x: Tensor | None = None, tail_x: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(scores, index)`` of each node's ``top_k`` neighbours, both ``(n, k)``."""
        e_h, e_t = self._head_tail(x, head_x, tail_x)
        return self._top_k(e_h, e_t)

    def _head_tail(
        self, x: Tensor, head_x: Tensor | None, tail_x: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return (
            self.w_head(x if head_x is None else head_x),
            self.w_tail(x if tail_x is None else tail_x),
        )

    def _top_k(self, e_h: Tensor, e_t: Tensor) -> tuple[Tensor, Tensor]:
        scores = (e_h * self.scale) @ e_t.T
        k = min(self.top_k, e_t.shape[0])
        values, index = torch.topk(scores, k=k, dim=-1)
        return values, index

    def forward(
        self, x: Tensor, head_x: Tensor | None = None, tail_x: Tensor | None = None
    ) -> Tensor:
        h = self.fc_in(x)
        # WiKG's instance-normalisation-like shift towards the section mean.
        h = (h + h.mean(dim=0, keepdim=True)) * 0.5
        e_h, e_t = self._head_tail(x, head_x, tail_x)
        top_scores, index = self._top_k(e_h, e_t)
        neighbour_tails = e_t[index]  # (n, k, hidden)
        p = F.softmax(top_scores, dim=-1).unsqueeze(-1)
        relation = p * neighbour_tails + (1.0 - p) * e_h.unsqueeze(1)
        gate = torch.tanh(e_h.unsqueeze(1) + relation)
        knowledge = F.softmax(neighbour_tails.sum(-1) * gate.sum(-1), dim=-1)  # (n, k)
        message = torch.einsum("nk,nkd->nd", knowledge, neighbour_tails)
        fused = F.leaky_relu(self.sum_linear(h + message)) + F.leaky_relu(
            self.product_linear(h * message)
        )
        return self.fc_out(self.norm(self.dropout(fused)))
