"""``nn.Module`` building blocks shared by GR2ST and the learned baselines."""

from __future__ import annotations

from gr2st.models.layers.augment import Augmentation, augment_patches
from gr2st.models.layers.contrastive import clip_binary_cross_entropy, clip_cross_entropy
from gr2st.models.layers.distillation import ViewDistillation
from gr2st.models.layers.knowledge_graph import KnowledgeGraphAttention
from gr2st.models.layers.projection import ProjectionHead
from gr2st.models.layers.transformer import (
    Attention,
    CrossAttention,
    DecoderBlock,
    FeedForward,
    TransformerBlock,
    TransformerDecoder,
    TransformerEncoder,
    random_attention_mask,
)
from gr2st.models.layers.zinb import ZINBHead, size_factors, zinb_nll

__all__ = [
    "Attention",
    "Augmentation",
    "CrossAttention",
    "DecoderBlock",
    "FeedForward",
    "KnowledgeGraphAttention",
    "ProjectionHead",
    "TransformerBlock",
    "TransformerDecoder",
    "TransformerEncoder",
    "ViewDistillation",
    "ZINBHead",
    "augment_patches",
    "clip_binary_cross_entropy",
    "clip_cross_entropy",
    "random_attention_mask",
    "size_factors",
    "zinb_nll",
]
