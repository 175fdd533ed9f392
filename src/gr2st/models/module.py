"""The GR2ST network in plain torch: two graph-attention branches and a CLIP loss.

One forward pass sees the spots of one section. Spots are embedded from their
expression, array coordinates and nuclear type; a functional graph (head–tail
affinities) and a spatial k-NN graph feed two GAT branches whose fused output is the
spot embedding. Image features get their own projection; a symmetric contrastive loss
pulls each spot's two embeddings together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr2st.graph import cdist_topk_graph, functional_topk_graph, spatial_knn_graph
from gr2st.models.config import ModelConfig
from gr2st.models.gat import make_gat
from gr2st.models.layers import ProjectionHead, clip_cross_entropy


class GR2STModule(nn.Module):
    """GR2ST's image and spot encoders (no AnnData: tensors in, tensors out).

    Parameters
    ----------
    n_genes
        Expression width ``G`` (the gene panel).
    image_dim
        Width ``D`` of the frozen image features.
    config
        Architecture switches (:class:`~gr2st.models.ModelConfig`).

    Examples
    --------
    >>> from gr2st.models import ModelConfig
    >>> m = GR2STModule(n_genes=6, image_dim=5, config=ModelConfig(proj_dim=4, heads=2))
    >>> feats, expr = torch.randn(7, 5), torch.randn(7, 6)
    >>> pos, types = torch.randint(0, 5, (7, 2)).float(), torch.randint(0, 6, (7,))
    >>> m(feats, expr, pos, types).shape
    torch.Size([])
    """

    def __init__(self, *, n_genes: int, image_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        p, width = c.proj_dim, c.heads * c.proj_dim
        # Submodules are created in the published code's order, with the same names and
        # initialisers: a seed gives the published model's initial weights, and a
        # published state dict loads as is.
        if c.use_position:
            self.x_embed = nn.Embedding(c.n_positions, n_genes)
            self.y_embed = nn.Embedding(c.n_positions, n_genes)
        if c.use_cell_type:
            self.cell_type_embed = nn.Sequential(
                nn.Embedding(c.n_cell_types, n_genes // 2),
                nn.Linear(n_genes // 2, n_genes),
                nn.ReLU(),
                nn.LayerNorm(n_genes),
                nn.Dropout(c.dropout),
            )
        self.image_projection = ProjectionHead(image_dim, p, dropout=c.dropout)
        if c.use_dynamic:
            self.dynamic_head_proj = nn.Linear(n_genes, p)
            self.dynamic_tail_proj = nn.Linear(n_genes, p)
        if c.use_spatial:
            self.spatial_proj = nn.Linear(n_genes, p)
        if c.use_dynamic:
            self.dynamic_gat = make_gat(p, p, heads=c.heads, dropout=c.dropout, impl=c.gat_impl)
        if c.use_spatial:
            self.spatial_gat = make_gat(p, p, heads=c.heads, dropout=c.dropout, impl=c.gat_impl)
        two_branches = c.use_dynamic and c.use_spatial
        fusion_in = 2 * width if c.fusion == "concat" and two_branches else width
        self.fusion_layer = nn.Sequential(
            nn.Linear(fusion_in, p), nn.ReLU(), nn.LayerNorm(p), nn.Dropout(c.dropout)
        )
        self.spot_projection = ProjectionHead(p, p, dropout=c.dropout)
        log_tau = torch.tensor(math.log(c.temperature))
        if c.learnable_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau, persistent=False)

    def position_index(self, pos: Tensor) -> Tensor:
        """Embedding rows of float array coordinates (``floor`` or ``round``)."""
        rounded = pos.floor() if self.config.position_rounding == "floor" else pos.round()
        return rounded.long()

    def embed_images(self, features: Tensor) -> Tensor:
        """``(N, D)`` image features → ``(N, P)`` image embeddings."""
        return self.image_projection(features)

    def spot_input(self, expression: Tensor, pos: Tensor, types: Tensor) -> Tensor:
        """``s = expression + Emb_x(x) + Emb_y(y) + T(type)`` (terms switched by config)."""
        s = expression
        if self.config.use_position:
            idx = self.position_index(pos)
            position = self.x_embed(idx[:, 0]) + self.y_embed(idx[:, 1])
            scale = self.config.position_scale
            s = s + (position if scale == 1 else scale * position)
        if self.config.use_cell_type:
            s = s + self.cell_type_embed(types)
        return s

    def dynamic_graph(self, h: Tensor, t: Tensor, types: Tensor | None) -> Tensor:
        """Functional graph from head/tail projections (see :func:`functional_topk_graph`)."""
        c = self.config
        return functional_topk_graph(
            h, t, types, k=c.k_dynamic, tau=c.temperature, same_type_bonus=c.same_type_bonus
        )

    def spatial_graph(self, pos: Tensor) -> Tensor:
        """Spatial k-NN graph of the array coordinates (see :func:`spatial_knn_graph`)."""
        if self.config.knn_ties == "cdist":
            return cdist_topk_graph(pos, k=self.config.k_spatial)
        return spatial_knn_graph(pos, k=self.config.k_spatial)

    def embed_spots(self, expression: Tensor, pos: Tensor, types: Tensor) -> Tensor:
        """Spot embeddings ``(N, P)`` of one section (or a batch of it) with its own graphs.

        Parameters
        ----------
        expression
            ``(N, G)`` log-normalised expression.
        pos
            ``(N, 2)`` float array coordinates (graph distances use them as given).
        types
            ``(N,)`` nuclear type ids.
        """
        c = self.config
        s = self.spot_input(expression, pos, types)
        branches = []
        if c.use_dynamic:
            h = self.dynamic_head_proj(s)
            with torch.no_grad():  # only the graph's indices are used
                t = self.dynamic_tail_proj(s)
            graph = self.dynamic_graph(h.detach(), t, types if c.use_cell_type else None)
            branches.append(self.dynamic_gat(h, graph))
        if c.use_spatial:
            graph = self.spatial_graph(pos)
            branches.append(self.spatial_gat(self.spatial_proj(s), graph))
        if len(branches) == 1:
            fused = branches[0]
        elif c.fusion == "concat":
            fused = torch.cat(branches, dim=-1)
        elif c.fusion == "sum":
            fused = branches[0] + branches[1]
        elif c.fusion == "max":
            fused = torch.maximum(branches[0], branches[1])
        else:
            fused = (branches[0] + branches[1]) / 2
        return self.spot_projection(self.fusion_layer(fused))

    def temperature(self) -> Tensor:
        """Current temperature ``τ`` of the contrastive logits."""
        return self.log_temperature.exp()

    def loss(self, spot_emb: Tensor, image_emb: Tensor) -> Tensor:
        """Symmetric contrastive loss between matched spot and image embeddings."""
        if self.config.normalise_logits:
            spot_emb, image_emb = F.normalize(spot_emb, dim=-1), F.normalize(image_emb, dim=-1)
        return clip_cross_entropy(spot_emb @ image_emb.T / self.temperature())

    def forward(self, features: Tensor, expression: Tensor, pos: Tensor, types: Tensor) -> Tensor:
        """Contrastive loss of one batch (the spots of one section)."""
        return self.loss(self.embed_spots(expression, pos, types), self.embed_images(features))
