"""A trained bundle with what predicting from images needs: encoder, patch size, stain.

The bundle folder itself (``bundle.json``, weights, reference bank) is the one saved
model format, written by :meth:`gr2st.models.GR2ST.save` and read by
:meth:`gr2st.models.GR2ST.load` (see :mod:`gr2st.models.bundle`). :class:`Bundle`
wraps such a model with its image settings rebuilt as objects: the frozen encoder
(checked against the weights hash it was trained with), the stain normaliser and the
patch size; prediction goes through the model's own retrieval.

Examples
--------
>>> import pathlib, tempfile
>>> from gr2st.datasets import synthetic
>>> from gr2st.predict import train_bundle
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> *train, new = synthetic(n_sections=3, n_genes=8, grid=(3, 3), image_dir=tmp)
>>> path = train_bundle(train, tmp / "bundle", panel=["GENE000", "GENE001"], nuclei="none",
...                     size_px=48, device="cpu", progress=False,
...                     overrides=["train.epochs=1", "model.proj_dim=8", "predict.top_k=4"])
>>> bundle = load_bundle(path, device="cpu")
>>> bundle.encoder.name, bundle.panel_genes, bundle.train_sections
('efficientnet-lite0', ['GENE000', 'GENE001'], ['S0', 'S1'])
>>> bundle.patch_px(1.0)  # the 48 px training patches at 2 µm/px cover 96 µm
96
>>> bundle.predict(new, progress=False).shape
(9, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from gr2st._constants import MICRONS_PER_PIXEL, UNS
from gr2st.encoders import Encoder, get_encoder
from gr2st.errors import GR2STConfigError
from gr2st.image.stain import ReinhardNormalizer, StainNormalizer, get_stain_normalizer
from gr2st.models import GR2ST, GR2STConfig, ImageSettings, Prediction
from gr2st.models.bundle import (
    BANK_FILE,
    BUNDLE_FORMAT,
    BUNDLE_METHODS,
    META_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
)
from gr2st.predict.slide import predict_spots
from gr2st.predict.spots import resolve_image, spots_from_section

__all__ = [
    "BANK_FILE",
    "BUNDLE_FORMAT",
    "BUNDLE_METHODS",
    "META_FILE",
    "SCHEMA_VERSION",
    "WEIGHTS_FILE",
    "Bundle",
    "BundleSettings",
    "load_bundle",
    "save_bundle",
]


@dataclass(frozen=True)
class BundleSettings:
    """How the training inputs were made, as objects (stored in ``bundle.json``).

    Attributes
    ----------
    encoder
        The frozen patch encoder the features came from.
    size_px
        Patch side in full-resolution pixels.
    stain
        The stain normaliser applied to patches, or None.
    nuclei
        Nuclei source (``classical``, ``hovernet:…`` or ``none``).
    """

    encoder: Encoder
    size_px: int
    stain: StainNormalizer | None
    nuclei: str

    def image_settings(self, sections: Sequence[AnnData]) -> ImageSettings:
        """The serialisable :class:`~gr2st.models.ImageSettings` for ``sections``."""
        return ImageSettings(
            encoder=self.encoder.name,
            encoder_dim=int(self.encoder.dim),
            encoder_weights_hash=self.encoder.weights_hash,
            size_px=self.size_px,
            training_mpp=_training_mpp(sections),
            stain=_stain_meta(self.stain),
            nuclei=self.nuclei,
        )


class Bundle:
    """A loaded bundle: the GR2ST model with its encoder and preprocessing settings.

    Build one with :func:`load_bundle`.

    Attributes
    ----------
    model
        The :class:`~gr2st.models.GR2ST` model (eval mode) with its reference bank.
    encoder
        The encoder named in the bundle (None when loaded with ``check_encoder=False``).
    """

    def __init__(self, model: GR2ST, *, encoder: Encoder | None) -> None:
        if model.meta is None or model.path is None:
            raise GR2STConfigError("Bundle: expects a model read by GR2ST.load")
        if model.image_settings is None:
            raise GR2STConfigError(
                f"{model.path / META_FILE}: this bundle has no image settings (saved by "
                "GR2ST.save without image=...); it predicts from image features only "
                "(GR2ST.load(...).predict_features)"
            )
        self.model = model
        self.image: ImageSettings = model.image_settings
        self.encoder = encoder

    # ------------------------------------------------------------------ metadata
    @property
    def path(self) -> Path:
        """The bundle folder."""
        assert self.model.path is not None
        return self.model.path

    @property
    def meta(self) -> dict[str, Any]:
        """The parsed ``bundle.json``."""
        assert self.model.meta is not None
        return self.model.meta

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module

    @property
    def panel_genes(self) -> list[str]:
        """Genes of the model's panel (the training expression)."""
        return list(self.model.var_names)

    @property
    def all_genes(self) -> list[str]:
        """Every gene measured in all training sections (panel library size)."""
        return self.model.all_genes

    @property
    def train_sections(self) -> list[str]:
        """Training section names; provenance columns follow this order."""
        return self.model.train_section_names

    @property
    def n_bank_spots(self) -> int:
        """Training spots in the reference bank."""
        return int(self.meta["bank"]["n_spots"])

    @property
    def fingerprint(self) -> str:
        """sha256 identifying the bundle's settings and data files."""
        return str(self.meta["fingerprint"])

    @property
    def config(self) -> GR2STConfig:
        """The model configuration."""
        return self.model.config

    @property
    def size_px(self) -> int:
        """Training patch side in full-resolution pixels."""
        return self.image.size_px

    @property
    def size_um(self) -> float | None:
        """Training patch side in microns, when the training resolution was known."""
        return self.image.size_um

    def patch_px(self, mpp: float | None) -> int:
        """Patch side for a slide of ``mpp`` µm/pixel covering the training patch's area.

        Without the slide's or the training resolution, the training side in pixels.

        Examples
        --------
        >>> bundle.patch_px(0.25)  # doctest: +SKIP
        448
        """
        if mpp is None or self.size_um is None:
            return self.size_px
        return max(1, round(self.size_um / mpp))

    def stain_normalizer(self) -> StainNormalizer | None:
        """The training stain normaliser, rebuilt and checked against its stored key."""
        stain = self.image.stain
        if stain["name"] == "none":
            return None
        reference = stain.get("reference")
        if reference is not None:
            normalizer: StainNormalizer = ReinhardNormalizer(
                mean=np.asarray(reference["mean"]), std=np.asarray(reference["std"])
            )
        else:
            normalizer = get_stain_normalizer(stain["name"])
        if normalizer.key != stain["key"]:
            raise GR2STConfigError(
                f"{self.path / META_FILE}: stain.key {stain['key']!r} differs from this "
                f"installation's {stain['name']!r} normaliser ({normalizer.key!r}); the shipped "
                "reference changed since the bundle was trained"
            )
        return normalizer

    def load_encoder(self) -> Encoder:
        """Build the bundle's encoder, check its weights hash and keep it as ``encoder``
        (what :func:`load_bundle` does unless ``check_encoder=False``)."""
        encoder = get_encoder(self.image.encoder, device=str(self.device))
        self.check_encoder(encoder)
        self.encoder = encoder
        return encoder

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise unless ``encoder`` is the bundle's encoder with the same weights."""
        where = self.path / META_FILE
        if encoder.name != self.image.encoder or encoder.dim != self.image.encoder_dim:
            raise GR2STConfigError(
                f"{where}: encoder is {self.image.encoder!r} ({self.image.encoder_dim} "
                f"features), got {encoder.name!r} ({encoder.dim})"
            )
        expected = self.image.encoder_weights_hash
        if encoder.weights_hash != expected:
            raise GR2STConfigError(
                f"{where}: encoder.weights_hash {expected[:12]}… differs from the "
                f"installed {encoder.name!r} weights ({encoder.weights_hash[:12]}…); features "
                "would not match the training ones"
            )

    # ------------------------------------------------------------------ prediction
    def resolve_genes(self, genes: str | Sequence[str]) -> list[str]:
        """``"panel"``, ``"all"`` or a list of gene names (checked) → gene names."""
        return self.model.resolve_genes(genes)

    def bank_values(self, genes: Sequence[str]) -> torch.Tensor:
        """Dense float32 ``(n_bank_spots, len(genes))`` log-normalised bank expression."""
        return self.model.bank_values(genes)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Image features ``(N, encoder dim)`` → image embeddings ``(N, P)`` (float32)."""
        return self.model.embed_features(features)

    def retrieve(
        self,
        embeddings: np.ndarray,
        *,
        genes: Sequence[str],
        top_k: int | None = None,
        obs_names: Sequence[str] | None = None,
    ) -> Prediction:
        """Predict ``genes`` for image embeddings from the bank (chunked, memory ∝ spots).

        Returns the weighted mean, weighted standard deviation and per-section
        provenance of the ``top_k`` retrieved training spots.
        """
        chosen = list(genes)
        names = [str(i) for i in range(len(embeddings))] if obs_names is None else obs_names
        return self.model.retrieve_embeddings(
            embeddings,
            values=self.bank_values(chosen),
            genes=chosen,
            obs_names=names,
            top_k=top_k,
        )

    def predict_features(
        self, features: np.ndarray, *, genes: str | Sequence[str] = "panel"
    ) -> Prediction:
        """Predict from image features ``(N, encoder dim)`` (features already extracted).

        Examples
        --------
        >>> res = bundle.predict_features(adata.obsm["X_efficientnet-lite0"])  # doctest: +SKIP
        >>> res.mean.shape, res.provenance.sum(1)  # doctest: +SKIP
        """
        return self.model.predict_features(features, genes=genes)

    def predict(
        self,
        adata: AnnData,
        *,
        genes: str | Sequence[str] = "panel",
        image: str | Path | None = None,
        progress: bool = True,
    ) -> AnnData:
        """Predict a section read by :mod:`gr2st.io` from its image alone.

        The section's spot centres and image (``uns["gr2st"]["image_path"]``, or
        ``image``) are all that is used; its counts, when present, are kept in
        ``layers["measured"]`` for comparison. Returns the prediction as AnnData (see
        :func:`gr2st.predict.predict_spots`).

        Examples
        --------
        >>> pred = bundle.predict(gr2st.read_her2st("data/her2st", "C6"))  # doctest: +SKIP
        """
        spots = spots_from_section(adata, source="anndata")
        return predict_spots(
            self, resolve_image(spots, image), spots, genes=genes, progress=progress
        )

    def __repr__(self) -> str:
        return (
            f"Bundle({str(self.path)!r}, method={self.meta['method']!r}, "
            f"encoder={self.image.encoder!r}, sections={self.train_sections})"
        )


def _stain_meta(stain: StainNormalizer | None) -> dict[str, Any]:
    if stain is None:
        return {"name": "none", "key": "none", "reference": None}
    default = get_stain_normalizer(stain.name)
    if stain.key == default.key:
        return {"name": stain.name, "key": stain.key, "reference": None}
    if isinstance(stain, ReinhardNormalizer):
        reference = {"mean": stain.mean.tolist(), "std": stain.std.tolist()}
        rebuilt = ReinhardNormalizer(mean=stain.mean, std=stain.std)
        if rebuilt.key == stain.key:
            return {"name": stain.name, "key": stain.key, "reference": reference}
    raise GR2STConfigError(
        f"stain: a bundle can store the default {stain.name!r} normaliser or a Reinhard "
        "normaliser fitted on a reference image (with default tissue settings), not this one"
    )


def _training_mpp(sections: Sequence[AnnData]) -> float | None:
    values = [a.uns.get(UNS, {}).get(MICRONS_PER_PIXEL) for a in sections]
    if any(v is None for v in values):
        return None
    return float(np.median(np.asarray(values, dtype=np.float64)))


def save_bundle(
    model: GR2ST,
    path: str | Path,
    *,
    sections: Sequence[AnnData],
    all_genes: Sequence[AnnData],
    settings: BundleSettings,
    command: Sequence[str] | None = None,
) -> Path:
    """Write a trained GR2ST model, its reference bank and image settings as a bundle.

    Parameters
    ----------
    model
        A trained :class:`~gr2st.models.GR2ST`.
    path
        The bundle folder to create; an existing one is replaced only once the new one
        is complete.
    sections
        The model's training sections (for the training resolution).
    all_genes
        The same sections (same spots, in order) log-normalised over every gene
        measured in all of them with the panel library size.
    settings
        How the image inputs were made.
    command
        Command line recorded in ``bundle.json`` (default ``sys.argv``).

    Examples
    --------
    >>> save_bundle(model, "models/demo", sections=train, all_genes=train_all,
    ...             settings=settings)  # doctest: +SKIP
    """
    if not model.is_trained:
        raise GR2STConfigError("save_bundle: the model is not trained; call .train() first")
    return model.save(
        path, all_genes=all_genes, image=settings.image_settings(sections), command=command
    )


def load_bundle(path: str | Path, *, device: str = "auto", check_encoder: bool = True) -> Bundle:
    """Read and validate a bundle written by :func:`save_bundle` / ``gr2st train``.

    Every file is checked (see :func:`gr2st.models.bundle.read_bundle`); with
    ``check_encoder`` the bundle's encoder is built and its weights hash compared with
    the one the model was trained with.

    Parameters
    ----------
    path
        The bundle folder.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` for the network and the retrieval.
    check_encoder
        Build the bundle's encoder and compare its weights hash (``Bundle.encoder``
        stays None otherwise, e.g. for ``gr2st info``).

    Examples
    --------
    >>> bundle = load_bundle("models/her2st", device="cpu")  # doctest: +SKIP
    """
    bundle = Bundle(GR2ST.load(path, device=device), encoder=None)
    if check_encoder:
        bundle.load_encoder()
    return bundle
