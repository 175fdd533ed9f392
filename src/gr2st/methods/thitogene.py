"""``thitogene``: THItoGene (Jia et al., 2024), dynamic convolution + capsules + ViT + GAT.

What the published model does (yrjia1015/THItoGene: ``README.md`` and ``train.py`` for
the training and prediction recipe, ``vis_model.py``, ``ODConv.py``,
``efficient_capsnet.py``, ``GATLayer.py``, ``transformer.py`` and ``dataset.py``), and
what this implementation follows (with identical weights, inputs and graph it
reproduces the published ``THItoGene`` to 1.6e-6: ``docs/parity.md``):

- Every spot's 112-px patch goes through an omni-dimensional dynamic convolution
  (ODConv; 3 → 16 channels, kernel 4, stride 4, 4 candidate kernels): a squeeze branch
  (global average pool → 1×1 conv → BatchNorm → ReLU, 16 channels) gives sigmoid
  attentions over input channels, output filters and kernel positions and a softmax
  over the candidate kernels, which weight one kernel per patch
  (:class:`DynamicConv2d`). Then ReLU.
- Efficient-CapsNet on the 28 × 28 map (:class:`CapsuleEncoder`): convolutions
  16 → 32 (5×5), 32 → 64, 64 → 64, 64 → 128 (3×3, the last with stride 2), each with
  BatchNorm and ReLU; a depthwise 9×9 convolution to 1 × 1 gives 16 primary capsules
  of 8; self-attention routing (:class:`SelfAttentionRouting`) gives 20 capsules of
  64, each squashed by Efficient-CapsNet's ``(1 − e^{−‖s‖}) s/‖s‖`` (:func:`squash`).
- The capsules and two learned coordinate tokens (``Embedding(64, 64)`` for array x
  and y) are concatenated into one ``(20 + 2) · 64 = 1,408``-wide token per spot.
- A ViT over all spots of the section: embedding dropout, 4 pre-norm blocks, 16 heads
  of 64, MLP 2,048 (``2 · dim`` with ``dim = 1024``), dropout 0.2.
- A two-layer GAT on the spots' 4 nearest neighbours in array coordinates
  (``calcADJ(k=4, pruneTag='NA')``: every spot has exactly 4, no self-loop): dropout →
  8 heads of 1,024 (concatenated, ELU) → dropout → one head of 512 → ELU; LeakyReLU
  slope 0.01, attention dropout 0.2.
- Gene head ``Linear(512, 1024) → ReLU → LayerNorm → Linear(1024, G)``; loss MSE on
  log-normalised expression.
- Training: one section per step (``batch_size=1``, shuffled), Adam, lr 1e-5, 200
  epochs; the last epoch's weights are saved and used.

Deliberate choices and quirks:

- The GAT is PyG's ``GATConv`` (``add_self_loops=False``, no bias), the same function
  as pyGAT's dense layer on the same graph; only the initialisation differs (PyG's
  Glorot instead of Xavier with gain 1.414). The kNN graph breaks distance ties by
  the lower spot index (:func:`~gr2st.graph.spatial_knn_graph`) where the published
  ``argsort`` is unspecified.
- **quirk (kept in ``paper``):** the published ``train.py`` and ``predict.py`` hand the
  adjacency through a ``DataLoader(batch_size=1)``, so pyGAT's layer, written for an
  ``(n, n)`` matrix, gets ``(1, n, n)``: its ``softmax(dim=1)`` then normalises each
  spot's attention weights over the spots that listen to it instead of over the spots
  it listens to, and a spot that is nobody's neighbour sends ``1/n`` of its message to
  every spot (the ``-9e15`` mask makes its column uniform). ``paper`` reproduces this
  (``gat_normalise="receivers"``, :func:`receiver_normalised_gat`, equal to the
  published layer fed ``(1, n, n)`` to 2.4e-7 on C2, docs/parity.md); ``default`` uses
  the usual normalisation over each spot's neighbours (``"neighbours"``: PyG's
  ``GATConv``).
- **quirk:** without self-loops, a spot's GAT output mixes its 4 neighbours' messages
  only; its own token merely weights that mix (through the attention logits), so
  what the image shows at the spot reaches its prediction only through the ViT's
  mixing of tokens. We keep it, as published.
- The published ``ViT_HER2ST`` feeds raw 0–255 pixel values and defines colour
  jitter / flip / rotation transforms that ``__getitem__`` never applies. We feed
  ``[0, 1]`` patches; every path from the pixels passes a BatchNorm (the dynamic
  convolution is linear in its input, its attentions see it through a BatchNorm, and
  the stem's first convolution is batch-normalised), so in training the network is
  invariant to that scale. No augmentation, as published (the ``aug_*`` settings of
  :class:`~gr2st.methods.pixels.PixelConfig` can add some).
- The primary-capsule kernel equals the stem's output side, so a patch side other
  than 112 still ends in one position per capsule (9 at 112 px).

Profiles
--------
``paper``
    The settings above (a GPU run: ~63 M parameters, 200 epochs).
``default``
    Same layers, loss and optimizer, reduced so that a HER2ST-6 fold (5 sections,
    ~1,000 training spots) trains in about 2 CPU-minutes: 30 epochs instead of 200
    (150 optimizer steps instead of 6,200), so lr 1e-4 instead of 1e-5 (150 Adam steps
    of 1e-5 move a weight by at most about 0.0015); capsules of 32 instead of 64
    (tokens of 704), 2 ViT blocks of 8 heads with MLP 1,024 instead of 4 of 16 with
    2,048, and GAT heads of 256 instead of 1,024. An epoch then costs about 4
    CPU-seconds instead of 10; the dynamic convolution and capsule stem, about 3 of
    them, keep their published sizes.

At initialisation the routed capsules are about 1,000 times smaller than the
unit-variance coordinate tokens (Kaiming routing weights on a fan-in of
16 · 8 · ``capsule_dim``), so the ViT and GAT first see positions, not pixels. Within
the ``default`` budget the network does not get past that on HER2ST-6: its predictions
stay nearly constant across spots (per-gene SD ≈ 0.005) and their mean PCC is −0.065
on the B4 fold and −0.082 on the C2 fold; lr 3e-4 or 1e-3, no dropout, a head bias
started at the mean expression, or 30× larger routing weights (each checked over
10–30 epochs) did not change that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv

from gr2st.config import (
    Bound,
    Fraction,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from gr2st.errors import GR2STConfigError
from gr2st.graph import spatial_knn_graph
from gr2st.methods.base import register_method
from gr2st.methods.pixels import PixelConfig, PixelMethod, PixelNet
from gr2st.models.layers import TransformerEncoder

# ODConv's squeeze branch never narrows below this many channels.
_MIN_ATTENTION_CHANNELS = 16
# The stem's convolutions as (kernel, stride): 5×5, 3×3, 3×3, 3×3 stride 2.
_STEM_GEOMETRY = ((5, 1), (3, 1), (3, 1), (3, 2))
# The dynamic convolution's kernel and stride (112 px → 28 × 28).
_DYNAMIC_KERNEL = 4


@dataclass(frozen=True)
class THItoGeneConfig(PixelConfig):
    """Settings of :class:`THItoGene` (defaults: the ``paper`` profile).

    Attributes
    ----------
    dynamic_channels, dynamic_kernels, dynamic_reduction
        Output channels, candidate kernels and squeeze ratio of the dynamic convolution.
    stem_channels
        Output channels of the capsule stem's four convolutions.
    primary_dim
        Width of a primary capsule (the stem's last width must be a multiple).
    capsules, capsule_dim
        Number and width of the routed capsules (also the coordinate tokens' width).
    depth, heads, dim_head, mlp_dim
        The ViT over the spots.
    gat_heads, gat_hidden, gat_out, gat_slope
        GAT heads and per-head width of its first layer, width of its second,
        LeakyReLU slope of the attention logits.
    gat_normalise
        Over what a GAT attention coefficient is normalised: ``neighbours`` (the usual
        GAT: each spot's weights over the spots it listens to sum to one) or
        ``receivers`` (what the published training computes: its ``DataLoader`` hands
        the ``(1, n, n)`` adjacency to a layer written for ``(n, n)``, whose
        ``softmax(dim=1)`` then normalises each spot's weights over the spots that
        listen to it, and spreads a spot nobody listens to evenly over all spots).
    head_hidden
        Hidden width of the gene head.
    neighbours
        Graph neighbours per spot (nearest in array coordinates).
    """

    epochs: PositiveInt = 200
    lr: PositiveFloat = 1e-5
    dropout: Fraction = 0.2
    dynamic_channels: PositiveInt = 16
    dynamic_kernels: PositiveInt = 4
    dynamic_reduction: Annotated[float, Bound(low=0, high=1, low_open=True)] = 0.0625
    stem_channels: tuple[PositiveInt, ...] = (32, 64, 64, 128)
    primary_dim: PositiveInt = 8
    capsules: PositiveInt = 20
    capsule_dim: PositiveInt = 64
    depth: PositiveInt = 4
    heads: PositiveInt = 16
    dim_head: PositiveInt = 64
    mlp_dim: PositiveInt = 2048
    gat_heads: PositiveInt = 8
    gat_hidden: PositiveInt = 1024
    gat_out: PositiveInt = 512
    gat_slope: NonNegativeFloat = 0.01
    gat_normalise: Literal["neighbours", "receivers"] = "receivers"
    head_hidden: PositiveInt = 1024
    neighbours: PositiveInt = 4

    def check(self) -> None:
        if len(self.stem_channels) != len(_STEM_GEOMETRY):
            raise GR2STConfigError(
                f"stem_channels must be {len(_STEM_GEOMETRY)} positive widths, "
                f"got {self.stem_channels}"
            )
        if self.stem_channels[-1] % self.primary_dim:
            raise GR2STConfigError(
                f"the last stem_channels ({self.stem_channels[-1]}) must be a "
                f"multiple of primary_dim ({self.primary_dim})"
            )


PROFILES: dict[str, THItoGeneConfig] = {
    "paper": THItoGeneConfig(),
    "default": replace(
        THItoGeneConfig(),
        epochs=30,
        lr=1e-4,
        capsule_dim=32,
        depth=2,
        heads=8,
        mlp_dim=1024,
        gat_hidden=256,
        gat_normalise="neighbours",
    ),
}


# ---------------------------------------------------------------------- layers


class DynamicConv2d(nn.Module):
    """Omni-dimensional dynamic convolution (ODConv, Li et al., 2022), one kernel per sample.

    A squeeze branch ``avgpool → Linear → BatchNorm → ReLU`` gives four attentions per
    sample: ``channel`` (sigmoid, per input channel), ``filter`` (sigmoid, per output
    channel), ``spatial`` (sigmoid, per kernel position) and ``kernel`` (softmax over
    the ``kernels`` candidate weights). The sample's kernel is
    ``filter ⊗ channel ⊗ spatial ⊙ Σ_m kernel_m W_m``; scaling the kernel by the
    channel and filter attentions equals scaling the input and output as ODConv does.
    No bias, no padding.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    kernel_size, stride
        Square kernel side and stride.
    kernels
        Number of candidate kernels ``W_m``.
    reduction
        Squeeze width as a share of ``in_channels`` (at least 16 channels).

    Examples
    --------
    >>> conv = DynamicConv2d(3, 8, kernel_size=4, stride=4)
    >>> conv(torch.rand(2, 3, 16, 16)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        kernels: int = 4,
        reduction: float = 0.0625,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        hidden = max(int(in_channels * reduction), _MIN_ATTENTION_CHANNELS)
        self.squeeze = nn.Linear(in_channels, hidden, bias=False)
        self.squeeze_norm = nn.BatchNorm1d(hidden)
        self.channel_fc = nn.Linear(hidden, in_channels)
        self.filter_fc = nn.Linear(hidden, out_channels)
        self.spatial_fc = nn.Linear(hidden, kernel_size * kernel_size)
        self.kernel_fc = nn.Linear(hidden, kernels)
        self.weight = nn.Parameter(
            torch.empty(kernels, out_channels, in_channels, kernel_size, kernel_size)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ODConv's initialisation: Kaiming-normal (fan-out, ReLU) weights, zero biases."""
        heads = (self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc)
        for fc in (self.squeeze, *heads):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
        for fc in heads:
            nn.init.zeros_(fc.bias)
        for candidate in self.weight:
            nn.init.kaiming_normal_(candidate, mode="fan_out", nonlinearity="relu")

    def attentions(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(channel (B, C_in), filter (B, C_out), spatial (B, k, k), kernel (B, M))``."""
        z = F.relu(self.squeeze_norm(self.squeeze(x.mean(dim=(2, 3)))))
        k = self.kernel_size
        return (
            torch.sigmoid(self.channel_fc(z)),
            torch.sigmoid(self.filter_fc(z)),
            torch.sigmoid(self.spatial_fc(z)).view(-1, k, k),
            torch.softmax(self.kernel_fc(z), dim=1),
        )

    def sample_kernels(self, x: Tensor) -> Tensor:
        """The attention-weighted kernel of every sample, ``(B, C_out, C_in, k, k)``."""
        channel, filters, spatial, kernel = self.attentions(x)
        mixed = torch.einsum("bm,moikl->boikl", kernel, self.weight)
        return (
            mixed
            * filters[:, :, None, None, None]
            * channel[:, None, :, None, None]
            * spatial[:, None, None]
        )

    def forward(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        k, s = self.kernel_size, self.stride
        kernels = self.sample_kernels(x).flatten(2)  # (B, C_out, C_in·k·k)
        # One batched matrix product over unfolded windows instead of B convolutions.
        columns = F.unfold(x, kernel_size=k, stride=s)  # (B, C_in·k·k, L)
        out = torch.bmm(kernels, columns)
        return out.view(b, self.out_channels, (height - k) // s + 1, (width - k) // s + 1)


def squash(s: Tensor, *, eps: float = 1e-20) -> Tensor:
    """Efficient-CapsNet's squash over the last axis: ``(1 − e^{−‖s‖}) · s / ‖s‖``.

    Keeps a capsule's direction and maps its length to ``[0, 1)``.

    Examples
    --------
    >>> squash(torch.tensor([[3.0, 4.0]]))
    tensor([[0.5960, 0.7946]])
    """
    norm = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
    return (1.0 - torch.exp(-norm)) * s / (norm + eps)


class SelfAttentionRouting(nn.Module):
    """Efficient-CapsNet's non-iterative self-attention routing.

    Every primary capsule ``p`` predicts every output capsule ``k`` as
    ``u_kp = W_kp p`` (``W_kp`` of shape ``(in_dim, out_dim)``); its coupling to ``k``
    is the softmax over the output capsules of its agreement
    ``u_kp · Σ_q u_kq / √out_dim`` plus a learned prior ``b_kp``; the output capsule is
    ``squash(Σ_p c_kp u_kp)``.

    Parameters
    ----------
    in_capsules, in_dim
        Number and width of the input (primary) capsules.
    out_capsules, out_dim
        Number and width of the output capsules.

    Examples
    --------
    >>> routing = SelfAttentionRouting(16, 8, out_capsules=4, out_dim=6)
    >>> routing(torch.randn(3, 16, 8)).shape
    torch.Size([3, 4, 6])
    """

    def __init__(self, in_capsules: int, in_dim: int, *, out_capsules: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.weight = nn.Parameter(torch.empty(out_capsules, in_capsules, in_dim, out_dim))
        self.prior = nn.Parameter(torch.zeros(out_capsules, in_capsules))
        nn.init.kaiming_normal_(self.weight)

    def forward(self, primary: Tensor) -> Tensor:
        """``(B, in_capsules, in_dim)`` → ``(B, out_capsules, out_dim)``."""
        u = torch.einsum("bpi,kpid->bkpd", primary, self.weight)
        agreement = (u * u.sum(dim=2, keepdim=True)).sum(-1) / math.sqrt(self.out_dim)
        coupling = torch.softmax(agreement, dim=1) + self.prior
        return squash((coupling.unsqueeze(-1) * u).sum(dim=2))


def stem_side(patch_px: int) -> int:
    """Side of the capsule stem's output map for a ``patch_px`` patch (9 at 112 px).

    Examples
    --------
    >>> stem_side(112), stem_side(48)
    (9, 1)
    """
    side = (patch_px - _DYNAMIC_KERNEL) // _DYNAMIC_KERNEL + 1
    for kernel, stride in _STEM_GEOMETRY:
        side = (side - kernel) // stride + 1
    return side


class CapsuleEncoder(nn.Module):
    """Efficient-CapsNet after the dynamic convolution: stem, primary capsules, routing.

    Parameters
    ----------
    in_channels
        Channels of the input map.
    side
        Side of the stem's output map (:func:`stem_side`); the depthwise primary-capsule
        convolution covers it whole.
    stem_channels
        Widths of the four stem convolutions.
    primary_dim
        Width of a primary capsule; ``stem_channels[-1] / primary_dim`` capsules.
    capsules, capsule_dim
        Routed output capsules.

    Examples
    --------
    >>> enc = CapsuleEncoder(4, side=1, stem_channels=(4, 4, 4, 8), primary_dim=4,
    ...                      capsules=3, capsule_dim=5)
    >>> enc(torch.rand(2, 4, 12, 12)).shape
    torch.Size([2, 3, 5])
    """

    def __init__(
        self,
        in_channels: int,
        *,
        side: int,
        stem_channels: tuple[int, ...],
        primary_dim: int,
        capsules: int,
        capsule_dim: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for out, (kernel, stride) in zip(stem_channels, _STEM_GEOMETRY, strict=True):
            conv = nn.Conv2d(width, out, kernel, stride=stride)
            nn.init.kaiming_normal_(conv.weight)
            layers += [conv, nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.stem = nn.Sequential(*layers)
        self.primary = nn.Conv2d(width, width, side, groups=width)
        self.primary_dim = primary_dim
        self.routing = SelfAttentionRouting(
            width // primary_dim, primary_dim, out_capsules=capsules, out_dim=capsule_dim
        )

    def forward(self, x: Tensor) -> Tensor:
        primary = self.primary(self.stem(x)).view(x.shape[0], -1, self.primary_dim)
        return self.routing(squash(primary))


def neighbour_graph(positions: Tensor, *, k: int) -> Tensor:
    """``(2, E)`` GAT edges from each spot's ``k`` nearest spots to it (no self-loops).

    Matches THItoGene's ``calcADJ(k, pruneTag='NA')`` read by a pyGAT layer: spot ``i``
    aggregates its own ``k`` nearest neighbours, so the messages run ``j → i``.

    Examples
    --------
    >>> neighbour_graph(torch.tensor([[0, 0], [0, 1], [0, 3]]), k=1)
    tensor([[1, 0, 1],
            [0, 1, 2]])
    """
    edges = spatial_knn_graph(positions, k=k + 1)
    edges = edges[:, edges[0] != edges[1]]
    return edges.flip(0)


class THItoGeneNet(PixelNet):
    """THItoGene's network: patches and array coordinates of one section → expression.

    Parameters
    ----------
    n_genes
        Output genes.
    config
        Widths and depths (a :class:`THItoGeneConfig`).
    patch_px
        Side of the input patches.

    Examples
    --------
    >>> cfg = THItoGeneConfig(stem_channels=(4, 4, 4, 8), primary_dim=4, capsules=3,
    ...     capsule_dim=4, depth=1, heads=2, dim_head=4, mlp_dim=8, gat_heads=2,
    ...     gat_hidden=4, gat_out=4, head_hidden=8)
    >>> net = THItoGeneNet(5, config=cfg, patch_px=48)
    >>> net(torch.rand(6, 3, 48, 48), torch.randint(0, 4, (6, 2))).shape
    torch.Size([6, 5])
    """

    def __init__(self, n_genes: int, *, config: THItoGeneConfig, patch_px: int) -> None:
        super().__init__(config.augmentation)
        cfg = config
        side = stem_side(patch_px)
        if side < 1:
            raise GR2STConfigError(
                f"thitogene: patches of {patch_px} px are too small for the capsule stem "
                "(at least 44 px)"
            )
        self.neighbours = cfg.neighbours
        self.dropout = cfg.dropout
        self.gat_normalise = cfg.gat_normalise
        self.dynamic = DynamicConv2d(
            3,
            cfg.dynamic_channels,
            kernel_size=_DYNAMIC_KERNEL,
            stride=_DYNAMIC_KERNEL,
            kernels=cfg.dynamic_kernels,
            reduction=cfg.dynamic_reduction,
        )
        self.capsules = CapsuleEncoder(
            cfg.dynamic_channels,
            side=side,
            stem_channels=cfg.stem_channels,
            primary_dim=cfg.primary_dim,
            capsules=cfg.capsules,
            capsule_dim=cfg.capsule_dim,
        )
        self.x_embed = nn.Embedding(cfg.n_positions, cfg.capsule_dim)
        self.y_embed = nn.Embedding(cfg.n_positions, cfg.capsule_dim)
        width = (cfg.capsules + 2) * cfg.capsule_dim
        self.transformer = TransformerEncoder(
            width,
            depth=cfg.depth,
            heads=cfg.heads,
            dim_head=cfg.dim_head,
            mlp_dim=cfg.mlp_dim,
            dropout=cfg.dropout,
        )
        gat = {
            "dropout": cfg.dropout,
            "negative_slope": cfg.gat_slope,
            "add_self_loops": False,
            "bias": False,
        }
        self.gat_hidden = GATConv(width, cfg.gat_hidden, heads=cfg.gat_heads, **gat)
        self.gat_out = GATConv(
            cfg.gat_heads * cfg.gat_hidden, cfg.gat_out, heads=1, concat=False, **gat
        )
        self.head = nn.Sequential(
            nn.Linear(cfg.gat_out, cfg.head_hidden),
            nn.ReLU(),
            nn.LayerNorm(cfg.head_hidden),
            nn.Linear(cfg.head_hidden, n_genes),
        )

    def tokens(self, patches: Tensor, positions: Tensor) -> Tensor:
        """Per-spot ``(capsules + 2) · capsule_dim`` tokens: capsules ⊕ x ⊕ y embeddings."""
        capsules = self.capsules(F.relu(self.dynamic(patches)))
        coords = torch.stack([self.x_embed(positions[:, 0]), self.y_embed(positions[:, 1])], 1)
        return torch.cat([capsules, coords], dim=1).flatten(1)

    def forward(self, patches: Tensor, positions: Tensor) -> Tensor:
        """``(n, 3, s, s)`` patches and ``(n, 2)`` array coordinates → ``(n, G)``."""
        p, training = self.dropout, self.training
        h = self.transformer(F.dropout(self.tokens(patches, positions), p, training))
        edges = neighbour_graph(positions, k=self.neighbours)
        if self.gat_normalise == "receivers":
            listens = torch.zeros((len(h), len(h)), dtype=torch.bool, device=h.device)
            listens[edges[1], edges[0]] = True
            h = F.elu(receiver_normalised_gat(self.gat_hidden, F.dropout(h, p, training), listens))
            h = F.elu(receiver_normalised_gat(self.gat_out, F.dropout(h, p, training), listens))
        else:
            h = F.elu(self.gat_hidden(F.dropout(h, p, training), edges))
            h = F.elu(self.gat_out(F.dropout(h, p, training), edges))
        return self.head(h)


#: The published layer's stand-in for -inf on non-edges (its softmax over a column of
#: non-edges only is then uniform, not undefined).
_NON_EDGE = -9e15


def receiver_normalised_gat(conv: GATConv, x: Tensor, listens: Tensor) -> Tensor:
    """A ``GATConv``'s weights applied as the published THItoGene training applies its GAT.

    Logits as in GAT, ``e_ij = LeakyReLU(a_dst · W x_i + a_src · W x_j)`` for spot ``i``
    listening to spot ``j`` (``listens[i, j]``), but softmax-normalised over ``i`` for
    each ``j`` (non-edges at -9e15, see ``gat_normalise``); ``out_i = Σ_j α_ij W x_j``,
    heads concatenated or averaged like the layer's own, attention dropout from it.

    Examples
    --------
    >>> conv = GATConv(3, 2, heads=1, add_self_loops=False, bias=False)
    >>> listens = torch.tensor([[False, True], [False, True]])  # both listen to spot 1
    >>> out = receiver_normalised_gat(conv.eval(), torch.randn(2, 3), listens)
    >>> out.shape  # spot 1's message splits over its two listeners; spot 0's over all
    torch.Size([2, 2])
    """
    heads, width = conv.heads, conv.out_channels
    wx = conv.lin(x).view(-1, heads, width)
    to_dst = (wx * conv.att_dst).sum(-1)
    from_src = (wx * conv.att_src).sum(-1)
    logits = F.leaky_relu(to_dst[:, None, :] + from_src[None, :, :], conv.negative_slope)
    logits = logits.masked_fill(~listens[..., None], _NON_EDGE)
    alpha = F.dropout(torch.softmax(logits, dim=0), conv.dropout, conv.training)
    out = torch.einsum("ijh,jhc->ihc", alpha, wx)
    return out.flatten(1) if conv.concat else out.mean(1)


# ---------------------------------------------------------------------- method


@register_method
class THItoGene(PixelMethod[THItoGeneConfig]):
    """THItoGene as a benchmark method (see the module docstring).

    Examples
    --------
    >>> THItoGene(feature_key="X_unused", profile="paper").config.epochs
    200
    """

    name = "thitogene"
    profiles = PROFILES

    def network(self, n_genes: int) -> PixelNet:
        return THItoGeneNet(n_genes, config=self.config, patch_px=int(self.patch_px or 0))
