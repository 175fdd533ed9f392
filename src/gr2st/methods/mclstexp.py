"""``mclstexp``: mclSTExp (Shi et al., 2024), contrastive spot–image alignment + retrieval.

What the published model does (ZhicengShi/mclSTExp, ``model.py``/``train.py``/
``evel_her2st.py``), and what this implementation follows:

- Spot tokens: log-normalised expression ``+ Emb_x(x) + Emb_y(y)`` (learned
  embeddings of the integer array coordinates, width = number of genes ``G``).
- Spot encoder: 2 pre-norm transformer blocks over the spots of a batch (the batch is
  one sequence; 8 heads × 64, MLP width ``G``, dropout 0) → ``ProjectionHead(G, 256)``.
- Image side: 224-px patch → DenseNet121 (ImageNet), fine-tuned end to end →
  ``ProjectionHead(1024, 256)``.
- Loss: symmetric CLIP cross-entropy on ``spot_emb @ image_embᵀ / τ``, ``τ = 1``, on
  unnormalised embeddings.
- Training: batches of 128 random spots pooled over all training sections, 90 epochs,
  Adam(lr 1e-4, weight decay 1e-3) created once; train-time augmentation of the patch
  (colour jitter 0.5/0.5/0.5, horizontal flip, rotation by up to 180°).
- Prediction: keys = spot embeddings of the training spots (eval mode, 32 consecutive
  spots per encoder pass), values = their expression; query = the test spot's image
  embedding; top-200 by cosine similarity, weights ∝ 1/L1² (:func:`gr2st.retrieval.retrieve`).

Profiles
--------
``paper``
    The published recipe, except that the image encoder is EfficientNet-Lite0
    (ImageNet, :func:`gr2st.encoders.get_encoder`) because DenseNet121 ImageNet weights
    are not available offline here, and rotations are by multiples of 90° (no
    interpolation); colour jitter factors are drawn as in ``ColorJitter(0.5, 0.5, 0.5)``
    but applied in a fixed order. Patches are read from ``uns["gr2st"]["image_path"]``
    at ``obsm["spatial"]``. Built for a GPU; it runs, slowly, on CPU.
``default``
    Frozen, precomputed image features (``obsm[feature_key]``) with a trainable
    ``ProjectionHead(D, 256)`` instead of the fine-tuned CNN, and no augmentation;
    coordinate embeddings sized to the largest training coordinate (rows are
    independent under Adam, so this trains the same function as 65,536 rows; only the
    random initialisation stream differs). Everything else as published.

Array coordinates are rounded to integers (the published code truncates; identical on
HER2ST's integer grid).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from anndata import AnnData
from torch import Tensor, nn

from gr2st._constants import IMAGE_PATH, SPATIAL, UNS
from gr2st._utils.device import resolve_device
from gr2st._utils.seed import seed_everything
from gr2st.config import (
    Config,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.methods.base import Method, register_method
from gr2st.models.layers import ProjectionHead, TransformerEncoder, clip_cross_entropy
from gr2st.retrieval import retrieve
from gr2st.sections import SectionArrays, section_arrays, section_name, stack_features
from gr2st.training import Batch, TrainingTask

log = logging.getLogger(__name__)

ImageInput = Literal["features", "pixels"]


@dataclass(frozen=True)
class MclSTExpConfig(Config):
    """Settings of :class:`MclSTExp` (defaults: the ``paper`` profile).

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay
        Adam training: passes over all training spots, spots per step (pooled across
        sections), learning rate, (L2) weight decay.
    temperature
        ``τ`` dividing the contrastive logits.
    projection_dim
        Width of both embeddings.
    depth, heads, dim_head
        Spot encoder: transformer blocks, heads, width per head (MLP width = genes).
    dropout
        Dropout of the spot encoder and the projection heads.
    n_positions
        Rows of each coordinate embedding; ``0`` sizes them to the largest training
        coordinate + 1.
    top_k
        Training spots averaged per prediction.
    key_batch_size
        Consecutive spots of a section per spot-encoder pass when embedding the
        training spots as retrieval keys.
    image_input
        ``"pixels"``: patches through a fine-tuned CNN; ``"features"``: frozen
        ``obsm[feature_key]``.
    encoder
        Registered encoder fine-tuned when ``image_input="pixels"``.
    patch_px
        Patch side in full-resolution pixels (``pixels`` only).
    augment
        Flip/rotate/colour-jitter training patches (``pixels`` only).
    image_batch_size
        Patches per forward pass when embedding test images (``pixels`` only).
    precision
        ``fp32``, ``tf32`` or ``bf16`` training (see :class:`gr2st.training.Trainer`).
    """

    epochs: PositiveInt = 90
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-3
    temperature: PositiveFloat = 1.0
    projection_dim: PositiveInt = 256
    depth: PositiveInt = 2
    heads: PositiveInt = 8
    dim_head: PositiveInt = 64
    dropout: Fraction = 0.0
    n_positions: NonNegativeInt = 65536
    top_k: PositiveInt = 200
    key_batch_size: PositiveInt = 32
    image_input: ImageInput = "pixels"
    encoder: str = "efficientnet-lite0"
    patch_px: PositiveInt = 224
    augment: bool = True
    image_batch_size: PositiveInt = 128
    precision: Precision = "fp32"


PROFILES: dict[str, MclSTExpConfig] = {
    "paper": MclSTExpConfig(),
    "default": MclSTExpConfig(image_input="features", n_positions=0, augment=False),
}


class MclSTExpNet(nn.Module):
    """The two encoders of mclSTExp.

    Parameters
    ----------
    n_genes
        Expression width ``G`` (token width of the spot encoder).
    image_dim
        Width of the image features fed to the image projection.
    n_positions
        Rows of each coordinate embedding.
    config
        Architecture settings.
    image_encoder
        Trainable CNN mapping ``(B, 3, H, W)`` 0..255 pixels to ``image_dim`` features;
        ``None`` when the inputs are precomputed features.

    Examples
    --------
    >>> net = MclSTExpNet(6, 4, n_positions=10, config=PROFILES["default"])
    >>> net.embed_spots(torch.rand(5, 6), torch.randint(0, 10, (5, 2))).shape
    torch.Size([5, 256])
    """

    def __init__(
        self,
        n_genes: int,
        image_dim: int,
        *,
        n_positions: int,
        config: MclSTExpConfig,
        image_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.x_embed = nn.Embedding(n_positions, n_genes)
        self.y_embed = nn.Embedding(n_positions, n_genes)
        self.spot_encoder = TransformerEncoder(
            n_genes,
            depth=config.depth,
            heads=config.heads,
            dim_head=config.dim_head,
            mlp_dim=n_genes,
            dropout=config.dropout,
        )
        self.spot_projection = ProjectionHead(
            n_genes, config.projection_dim, dropout=config.dropout
        )
        self.image_encoder = image_encoder
        self.image_projection = ProjectionHead(
            image_dim, config.projection_dim, dropout=config.dropout
        )
        self.temperature = config.temperature

    def embed_spots(self, expression: Tensor, positions: Tensor) -> Tensor:
        """Embed the spots of one batch (attention runs across them)."""
        tokens = expression + self.x_embed(positions[:, 0]) + self.y_embed(positions[:, 1])
        return self.spot_projection(self.spot_encoder(tokens))

    def embed_images(self, images: Tensor) -> Tensor:
        """Embed features (or pixels when the net owns an image encoder)."""
        features = images if self.image_encoder is None else self.image_encoder(images)
        return self.image_projection(features)

    def loss(self, expression: Tensor, positions: Tensor, images: Tensor) -> Tensor:
        """Symmetric CLIP loss of one batch."""
        logits = self.embed_spots(expression, positions) @ self.embed_images(images).T
        return clip_cross_entropy(logits / self.temperature)


def augment_patches(x: Tensor) -> Tensor:
    """Random flip, 90° rotation and colour jitter of ``(B, 3, H, W)`` 0..255 patches.

    Brightness, contrast and saturation factors are drawn per patch from ``U(0.5, 1.5)``
    (torchvision's ``ColorJitter(0.5, 0.5, 0.5)`` ranges) and applied in that order.
    Uses the global torch RNG of ``x``'s device.

    Examples
    --------
    >>> out = augment_patches(torch.full((2, 3, 8, 8), 100.0))
    >>> out.shape, bool(((out >= 0) & (out <= 255)).all())
    (torch.Size([2, 3, 8, 8]), True)
    """
    b = x.shape[0]
    device = x.device
    flip = torch.rand(b, device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    turns = torch.randint(0, 4, (b,), device=device)
    x = torch.stack(
        [torch.rot90(img, k, dims=(-2, -1)) for img, k in zip(x, turns.tolist(), strict=True)]
    )
    factors = torch.empty(3, b, 1, 1, 1, device=device).uniform_(0.5, 1.5)
    x = (x * factors[0]).clamp(0, 255)
    grey_weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    grey_mean = (x * grey_weights).sum(1, keepdim=True).mean(dim=(-2, -1), keepdim=True)
    x = ((x - grey_mean) * factors[1] + grey_mean).clamp(0, 255)
    grey = (x * grey_weights).sum(1, keepdim=True)
    return ((x - grey) * factors[2] + grey).clamp(0, 255)


class _ContrastiveTask(TrainingTask):
    """mclSTExp's batches (random spots pooled over sections) and CLIP loss."""

    def __init__(
        self, method: MclSTExp, expression: Tensor, positions: Tensor, images: Tensor
    ) -> None:
        self.cfg = method.config
        self.expression, self.positions, self.images = expression, positions, images

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        order = torch.from_numpy(rng.permutation(len(self.expression))).to(self.images.device)
        for index in order.split(self.cfg.batch_size):
            yield Batch(index, weight=float(index.numel()))

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        images = self.images[batch]
        if images.dtype == torch.uint8:
            images = images.float()
            if self.cfg.augment:
                # The global torch generator, seeded before the network was built.
                images = augment_patches(images)
        return cast(MclSTExpNet, net).loss(self.expression[batch], self.positions[batch], images)


@register_method
class MclSTExp(Method[MclSTExpConfig]):
    """mclSTExp: contrastive alignment of spot (expression + position) and image embeddings.

    Parameters
    ----------
    **kwargs
        See :class:`~gr2st.methods.base.Method` (``feature_key``, ``profile``,
        ``overrides``, ``seed``, ``device``, ``progress``).

    Examples
    --------
    >>> m = MclSTExp(feature_key="X_efficientnet-lite0", overrides=["epochs=5"])
    >>> m.config.epochs, m.config.image_input
    (5, 'features')
    """

    name = "mclstexp"
    learned = True
    profiles = PROFILES

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history_: list[float] = []
        self._net: MclSTExpNet | None = None
        self._keys: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._n_positions: int | None = None
        self._encoder_input_px: int | None = None

    # ----------------------------------------------------------------- inputs
    def _image_inputs(self, adata: AnnData) -> np.ndarray:
        """Features (float32) or patches (uint8, ``(n, 3, px, px)``) of one section."""
        if self.config.image_input == "features":
            return stack_features([adata], self.feature_key)
        if self._encoder_input_px is None:
            raise GR2STConfigError("mclstexp: the image encoder is not built yet")
        return _read_patches(adata, size_px=self.config.patch_px, out_px=self._encoder_input_px)

    def _build_image_encoder(self) -> tuple[nn.Module, int]:
        """A trainable copy of the configured encoder's network and its feature width."""
        from gr2st.encoders import get_encoder

        encoder = get_encoder(self.config.encoder, device="cpu", backend="torch")
        torch_module = getattr(encoder, "torch_module", None)
        if torch_module is None:
            raise GR2STConfigError(
                f"mclstexp: encoder {self.config.encoder!r} exposes no torch module to fine-tune"
            )
        self._encoder_input_px = int(encoder.input_size)
        module = copy.deepcopy(torch_module()).train().requires_grad_(True)
        return module, int(encoder.dim)

    # ---------------------------------------------------------------- training
    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        if not train:
            raise GR2STDataError("mclstexp: fit() needs at least one training section")
        cfg = self.config
        seed_everything(self.seed)
        device = resolve_device(self.device)
        sections = [section_arrays(a) for a in train]
        expression = np.concatenate([s.expression for s in sections])
        positions = np.concatenate([s.positions for s in sections])
        n_positions = cfg.n_positions or int(positions.max()) + 1
        if positions.max() >= n_positions:
            raise GR2STDataError(
                f"mclstexp: array coordinates up to {positions.max()} exceed "
                f"n_positions={n_positions}"
            )
        image_encoder: nn.Module | None = None
        if cfg.image_input == "pixels":
            image_encoder, image_dim = self._build_image_encoder()
            images = np.concatenate([self._image_inputs(a) for a in train])
        else:
            images = np.concatenate([self._image_inputs(a) for a in train])
            image_dim = images.shape[1]
        net = MclSTExpNet(
            expression.shape[1],
            image_dim,
            n_positions=n_positions,
            config=cfg,
            image_encoder=image_encoder,
        ).to(device)
        task = _ContrastiveTask(
            self,
            torch.from_numpy(expression).to(device),
            torch.from_numpy(positions).to(device),
            torch.from_numpy(images).to(device),
        )
        history = self.train_network(
            net,
            task,
            epochs=cfg.epochs,
            workdir=workdir,
            data=[expression, positions, images],
            precision=cfg.precision,
        )
        self._net = net.eval()
        self.history_ = history
        self._n_positions = n_positions
        self._keys = _spot_keys(net, sections, chunk=cfg.key_batch_size)
        self._values = expression

    # -------------------------------------------------------------- prediction
    @torch.no_grad()
    def embed_images(self, adata: AnnData) -> np.ndarray:
        """Image embeddings of the spots of ``adata`` (``(n_spots, projection_dim)``)."""
        if self._net is None:
            raise GR2STConfigError("mclstexp: embed_images() called before fit()")
        device = next(self._net.parameters()).device
        images = torch.from_numpy(self._image_inputs(adata))
        out = []
        for start in range(0, len(images), self.config.image_batch_size):
            batch = images[start : start + self.config.image_batch_size].to(device)
            if self._net.image_encoder is not None:
                batch = batch.float()
            out.append(self._net.embed_images(batch).cpu())
        return torch.cat(out).numpy()

    def predict(self, test: AnnData) -> np.ndarray:
        if self._keys is None or self._values is None:
            raise GR2STConfigError("mclstexp: predict() called before fit()")
        query = self.embed_images(test)
        top_k = min(self.config.top_k, len(self._keys))
        result = retrieve(query, self._keys, self._values, top_k=top_k)
        return np.asarray(result.mean, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        notes = (
            "image encoder: EfficientNet-Lite0 fine-tuned (published: DenseNet121); "
            "rotations by multiples of 90 degrees"
            if self.config.image_input == "pixels"
            else "frozen precomputed features + trainable projection head "
            "(published: DenseNet121 fine-tuned end to end); no augmentation"
        )
        described = super().describe()
        if self._n_positions is not None:
            described["n_positions"] = self._n_positions
        return {**described, "deviations": notes}


@torch.no_grad()
def _spot_keys(net: MclSTExpNet, sections: Sequence[SectionArrays], *, chunk: int) -> np.ndarray:
    """Eval-mode spot embeddings, ``chunk`` consecutive spots of a section per pass."""
    device = next(net.parameters()).device
    keys = []
    for s in sections:
        for start in range(0, len(s.expression), chunk):
            expr = torch.from_numpy(s.expression[start : start + chunk]).to(device)
            pos = torch.from_numpy(s.positions[start : start + chunk]).to(device)
            keys.append(net.embed_spots(expr, pos).cpu())
    return torch.cat(keys).numpy()


def _read_patches(adata: AnnData, *, size_px: int, out_px: int) -> np.ndarray:
    """All spot patches of a section, resized to ``out_px``: ``uint8`` ``(n, 3, out, out)``."""
    from gr2st.image.patches import iter_patches

    path = (adata.uns.get(UNS) or {}).get(IMAGE_PATH)
    if not path:
        raise GR2STDataError(
            f"section {section_name(adata)!r}: uns[{UNS!r}][{IMAGE_PATH!r}] is missing; "
            "image_input='pixels' reads patches from the section's image"
        )
    if SPATIAL not in adata.obsm:
        raise GR2STDataError(
            f"section {section_name(adata)!r}: obsm[{SPATIAL!r}] (spot centres) is missing"
        )
    out = np.empty((adata.n_obs, 3, out_px, out_px), np.uint8)
    for index, patches in iter_patches(
        path, np.asarray(adata.obsm[SPATIAL]), size_px=size_px, out_px=out_px
    ):
        out[index] = patches.transpose(0, 3, 1, 2)
    return out
