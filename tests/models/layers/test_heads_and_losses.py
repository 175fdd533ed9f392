from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gr2st.models.layers.contrastive import clip_binary_cross_entropy, clip_cross_entropy
from gr2st.models.layers.projection import ProjectionHead


def test_projection_head_formula_and_eval_dropout():
    torch.manual_seed(0)
    head = ProjectionHead(5, 4, dropout=0.5).eval()
    x = torch.randn(3, 5)
    a = head.projection(x)
    expected = F.layer_norm(
        a + head.fc(F.gelu(a)), (4,), head.layer_norm.weight, head.layer_norm.bias
    )
    torch.testing.assert_close(head(x), expected)
    head.train()
    assert not torch.allclose(head(x), expected)  # dropout is active in training


def test_clip_cross_entropy_matches_log_softmax():
    torch.manual_seed(1)
    logits = torch.randn(4, 4)
    rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    cols = -torch.log_softmax(logits, dim=0).diagonal().mean()
    assert float(clip_cross_entropy(logits)) == pytest.approx(float((rows + cols) / 2), rel=1e-6)
    assert float(clip_cross_entropy(torch.eye(4) * 50)) == pytest.approx(0.0, abs=1e-6)


def test_clip_binary_cross_entropy_matches_formula_and_is_symmetric():
    torch.manual_seed(2)
    logits = torch.randn(5, 5)
    eye = torch.eye(5)
    p = torch.sigmoid(logits)
    manual = -(eye * torch.log(p) + (1 - eye) * torch.log(1 - p)).mean()
    assert float(clip_binary_cross_entropy(logits)) == pytest.approx(float(manual), rel=1e-5)
    assert float(clip_binary_cross_entropy(logits.T)) == pytest.approx(float(manual), rel=1e-5)
