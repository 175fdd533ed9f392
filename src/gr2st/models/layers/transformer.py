"""Pre-norm transformer blocks over the spots of a batch (encoder and Reg2ST's decoder).

Spots are tokens: an input of shape ``(n_spots, dim)`` is one sequence, an input of
shape ``(batch, n_spots, dim)`` several. Attention masks are boolean ``(n, n)``
matrices where ``True`` means "query ``i`` may attend to key ``j``" (the convention of
``torch.nn.functional.scaled_dot_product_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr2st.errors import GR2STConfigError


class FeedForward(nn.Module):
    """``Linear → GELU → Dropout → Linear → Dropout``.

    Examples
    --------
    >>> FeedForward(8, 16)(torch.randn(3, 8)).shape
    torch.Size([3, 8])
    """

    def __init__(self, dim: int, hidden_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with ``heads × dim_head`` inner width.

    Self-attention when ``context`` is omitted, cross-attention otherwise. Query, key
    and value projections have no bias; the output projection is followed by dropout.

    Parameters
    ----------
    dim
        Token width (input and output).
    heads, dim_head
        Number of heads and the width of each.
    dropout
        Dropout after the output projection.
    context_dim
        Width of the context tokens (defaults to ``dim``).

    Examples
    --------
    >>> attn = Attention(12, heads=2, dim_head=4)
    >>> attn(torch.randn(5, 12)).shape
    torch.Size([5, 12])
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def _split_heads(self, t: Tensor) -> Tensor:
        # (..., n, heads * d) -> (..., heads, n, d)
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(-3, -2)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Attend from ``x`` (``(..., n, dim)``) to ``context`` (default: ``x``)."""
        source = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k, v = (self._split_heads(t) for t in self.to_kv(source).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(-3, -2).flatten(-2))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + Attn(LN(x))`` then ``x + FF(LN(x))``.

    Examples
    --------
    >>> block = TransformerBlock(16, heads=2, dim_head=8, mlp_dim=16)
    >>> block(torch.randn(7, 16)).shape
    torch.Size([7, 16])
    """

    def __init__(
        self, dim: int, *, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask)
        return x + self.ff(self.ff_norm(x))


class TransformerEncoder(nn.Module):
    """A stack of ``depth`` :class:`TransformerBlock` s.

    Examples
    --------
    >>> enc = TransformerEncoder(16, depth=2, heads=2, dim_head=8, mlp_dim=16)
    >>> enc(torch.randn(7, 16)).shape
    torch.Size([7, 16])
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout)
            for _ in range(depth)
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask=mask)
        return x


class CrossAttention(nn.Module):
    """Multi-head attention from ``x`` to ``context`` with biased projections.

    Reg2ST's attention: query, key, value and output projections are ``dim → dim``
    linear layers with a bias, each head is ``dim / heads`` wide, and dropout acts on
    the attention weights (training only).

    Parameters
    ----------
    dim
        Token width (input and output); a multiple of ``heads``.
    heads
        Number of heads.
    dropout
        Dropout on the attention weights.
    head_merge_quirk
        **quirk** of Reg2ST's code: the per-head outputs, laid out ``(heads, n, d)``,
        are viewed as ``(n, heads · d)`` without moving the head axis back, so row ``i``
        holds consecutive chunks of that layout (for ``i < n / heads``: head 0 of spots
        ``heads · i … heads · i + heads − 1``), not spot ``i``'s heads. ``False`` merges
        the heads of each spot (standard attention).

    Examples
    --------
    >>> CrossAttention(8, heads=2)(torch.randn(5, 8), torch.randn(5, 8)).shape
    torch.Size([5, 8])
    """

    def __init__(
        self, dim: int, *, heads: int, dropout: float = 0.0, head_merge_quirk: bool = False
    ) -> None:
        super().__init__()
        if dim % heads:
            raise GR2STConfigError(f"CrossAttention: dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.head_merge_quirk = head_merge_quirk
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        if self.head_merge_quirk:
            return self.to_out(out.reshape(*out.shape[:-3], out.shape[-2], -1))
        return self.to_out(out.transpose(-3, -2).flatten(-2))


class DecoderBlock(nn.Module):
    """Reg2ST's decoder block: cross-attention to a context, then an MLP, both pre-norm.

    ``x + Dropout(CrossAttn(LN(x), context))`` then ``x + Dropout(MLP(LN(x)))`` with
    ``MLP = Linear → GELU → Dropout → Linear``. The context enters the attention as it
    is (no norm), and the block has no self-attention: the published block defines one
    but its call is commented out. ``mask`` restricts which context spots each spot sees;
    ``head_merge_quirk`` is :class:`CrossAttention`'s.

    Examples
    --------
    >>> block = DecoderBlock(16, heads=2, mlp_dim=32)
    >>> block(torch.randn(5, 16), torch.randn(5, 16)).shape
    torch.Size([5, 16])
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        head_merge_quirk: bool = False,
    ) -> None:
        super().__init__()
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(
            dim, heads=heads, dropout=dropout, head_merge_quirk=head_merge_quirk
        )
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), context, mask))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class TransformerDecoder(nn.Module):
    """``depth`` :class:`DecoderBlock` s sharing one context and one mask, then a LayerNorm.

    Examples
    --------
    >>> dec = TransformerDecoder(16, depth=2, heads=2, mlp_dim=32)
    >>> dec(torch.randn(5, 16), torch.randn(5, 16)).shape
    torch.Size([5, 16])
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        head_merge_quirk: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            DecoderBlock(
                dim,
                heads=heads,
                mlp_dim=mlp_dim,
                dropout=dropout,
                head_merge_quirk=head_merge_quirk,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, context, mask=mask)
        return self.norm(x)


def random_attention_mask(
    n: int,
    *,
    mask_rate: float,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean ``(n, n)`` mask hiding each off-diagonal pair with probability ``mask_rate``.

    The diagonal is always kept, so every query attends to at least itself.

    Examples
    --------
    >>> m = random_attention_mask(4, mask_rate=1.0)
    >>> bool(m.equal(torch.eye(4, dtype=torch.bool)))
    True
    """
    if not 0.0 <= mask_rate <= 1.0:
        raise GR2STConfigError(f"mask_rate must be in [0, 1], got {mask_rate}")
    draws = torch.rand(n, n, generator=generator, device=device)
    return (draws >= mask_rate) | torch.eye(n, dtype=torch.bool, device=device)
