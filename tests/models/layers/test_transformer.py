from __future__ import annotations

import pytest
import torch

from gr2st.errors import GR2STConfigError
from gr2st.models.layers.transformer import (
    Attention,
    DecoderBlock,
    TransformerBlock,
    TransformerDecoder,
    TransformerEncoder,
    random_attention_mask,
)


def _manual_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Per-head softmax(q kᵀ / √d) v written out, for one sequence."""
    q = attn.to_q(x)
    k, v = attn.to_kv(context).chunk(2, dim=-1)
    d = attn.dim_head
    heads = []
    for h in range(attn.heads):
        cols = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[:, cols] @ k[:, cols].T / d**0.5, dim=-1)
        heads.append(weights @ v[:, cols])
    return attn.to_out(torch.cat(heads, dim=-1))


def test_attention_matches_manual_computation():
    torch.manual_seed(0)
    attn = Attention(6, heads=3, dim_head=4).eval()
    x, ctx = torch.randn(5, 6), torch.randn(7, 6)
    torch.testing.assert_close(attn(x), _manual_attention(attn, x, x))
    torch.testing.assert_close(attn(x, ctx), _manual_attention(attn, x, ctx))


def test_mask_restricts_what_a_query_sees():
    torch.manual_seed(0)
    attn = Attention(6, heads=2, dim_head=3).eval()
    x = torch.randn(4, 6)
    only_self = torch.eye(4, dtype=torch.bool)
    out = attn(x, mask=only_self)
    # Attending only to itself returns the projected value of the token itself.
    _, v = attn.to_kv(x).chunk(2, dim=-1)
    torch.testing.assert_close(out, attn.to_out(v))
    # Changing the other tokens leaves a masked query's output untouched.
    y = x.clone()
    y[1:] = torch.randn(3, 6)
    torch.testing.assert_close(attn(y, mask=only_self)[0], out[0])


def test_batched_input_equals_per_sequence():
    torch.manual_seed(1)
    enc = TransformerEncoder(8, depth=2, heads=2, dim_head=4, mlp_dim=16).eval()
    x = torch.randn(3, 5, 8)
    batched = enc(x)
    for i in range(3):
        torch.testing.assert_close(batched[i], enc(x[i]))


def test_encoder_is_permutation_equivariant():
    torch.manual_seed(2)
    enc = TransformerEncoder(8, depth=2, heads=2, dim_head=4, mlp_dim=8).eval()
    x = torch.randn(6, 8)
    perm = torch.randperm(6)
    torch.testing.assert_close(enc(x)[perm], enc(x[perm]))


def test_block_is_pre_norm_residual():
    torch.manual_seed(3)
    block = TransformerBlock(8, heads=2, dim_head=4, mlp_dim=8).eval()
    x = torch.randn(5, 8)
    expected = x + block.attn(block.attn_norm(x))
    expected = expected + block.ff(block.ff_norm(expected))
    torch.testing.assert_close(block(x), expected)


def test_decoder_uses_context_and_mask():
    torch.manual_seed(4)
    block = DecoderBlock(8, heads=2, mlp_dim=16).eval()
    x, ctx = torch.randn(5, 8), torch.randn(5, 8)
    out = block(x, ctx)
    assert not torch.allclose(out, block(x, torch.randn(5, 8)))
    # With a diagonal mask, spot 0's output depends only on its own token and context.
    eye = torch.eye(5, dtype=torch.bool)
    x2, ctx2 = x.clone(), ctx.clone()
    x2[1:], ctx2[1:] = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(block(x, ctx, mask=eye)[0], block(x2, ctx2, mask=eye)[0])
    dec = TransformerDecoder(8, depth=3, heads=2, mlp_dim=16)
    assert dec(x, ctx).shape == (5, 8)
    assert len(dec.blocks) == 3


def test_random_attention_mask_rate_diagonal_and_seed():
    gen = torch.Generator().manual_seed(0)
    mask = random_attention_mask(400, mask_rate=0.75, generator=gen)
    assert mask.dtype == torch.bool
    assert mask.shape == (400, 400)
    assert bool(mask.diagonal().all())
    off = mask[~torch.eye(400, dtype=torch.bool)]
    assert float(off.float().mean()) == pytest.approx(0.25, abs=0.01)
    again = random_attention_mask(400, mask_rate=0.75, generator=torch.Generator().manual_seed(0))
    assert bool(mask.equal(again))
    assert bool(random_attention_mask(5, mask_rate=0.0).all())
    with pytest.raises(GR2STConfigError, match="mask_rate"):
        random_attention_mask(3, mask_rate=1.5)
