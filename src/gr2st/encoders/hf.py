"""Any transformers vision backbone as an encoder: ``hf:<local dir or hub id>``.

Pathology foundation models (Phikon-v2, Phikon, UNI, …) ship as transformers checkpoints
with an image-processor config. The encoder feeds patches through that
``AutoImageProcessor`` (so resizing and normalisation are exactly the model's) and takes
the CLS token of ``last_hidden_state`` (the reference GR2ST features) or, with
``pooling="mean"``, the mean of the patch tokens (CLS and register tokens excluded).

The pooling can be given in the name, ``hf:owkin/phikon-v2?pooling=mean``, or as a keyword,
``get_encoder("hf:owkin/phikon-v2", pooling="mean")``. The encoder's ``name`` (and so its
``obsm`` key) is ``hf-<directory or repository name>``, with ``-mean`` appended for mean
pooling.

Nothing is downloaded when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set or when the
hub does not answer within a few seconds: the weights must then be in a local directory or
the Hugging Face cache, otherwise a :class:`~gr2st.errors.GR2STConfigError` says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlparse

import numpy as np
import torch

from gr2st._utils.device import resolve_device
from gr2st._utils.files import sha256_file
from gr2st._utils.optional import require
from gr2st.encoders.base import Encoder
from gr2st.encoders.registry import ENCODERS
from gr2st.errors import GR2STConfigError

Pooling = Literal["cls", "mean"]

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HUB_TIMEOUT_S = 3.0


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the Hugging Face hub must not or cannot be used.

    Set by ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, or when a TCP connection to the hub
    endpoint fails within a few seconds (so an offline machine errors instead of hanging).
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_HUB_TIMEOUT_S):
            return False
    except OSError:
        return True


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars, restoring them afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def parse_source(source: str) -> tuple[str, dict[str, str]]:
    """Split ``"<dir or hub id>?key=value&…"`` into the reference and its options.

    Examples
    --------
    >>> parse_source("owkin/phikon-v2?pooling=mean")
    ('owkin/phikon-v2', {'pooling': 'mean'})
    """
    ref, _, query = source.partition("?")
    return ref, dict(parse_qsl(query, keep_blank_values=True))


def _weights_hash(model_dir: Path) -> str:
    """sha256 over the weight files of a checkpoint directory (name + content hash each).

    Files in the Hugging Face cache are links to blobs named by the sha256 of their content
    (git-LFS), which spares reading gigabytes on every run.
    """
    files = sorted(p for p in model_dir.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise GR2STConfigError(
            f"hf encoder: no weight file ({', '.join(_WEIGHT_SUFFIXES)}) in {model_dir}"
        )
    h = hashlib.sha256()
    for path in files:
        blob = path.resolve().name
        digest = blob if path.is_symlink() and _SHA256_HEX.match(blob) else sha256_file(path)
        h.update(f"{path.name}:{digest}\n".encode())
    return h.hexdigest()


def _display_name(ref: str, pooling: str) -> str:
    base = Path(ref.rstrip("/\\")).name or "model"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base)
    return f"hf-{base}" + ("-mean" if pooling == "mean" else "")


class HFEncoder(Encoder):
    """A transformers vision backbone (ViT/DINOv2 family) with its image processor.

    Parameters
    ----------
    source
        A local checkpoint directory, or a hub id (``"owkin/phikon-v2"``), optionally with
        ``?pooling=cls|mean``.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    pooling
        ``"cls"`` (default): the CLS token of ``last_hidden_state``; ``"mean"``: the mean of
        the patch tokens.
    revision
        Hub revision (branch, tag or commit) when ``source`` is a hub id.

    Examples
    --------
    >>> enc = HFEncoder("owkin/phikon-v2")  # doctest: +SKIP
    >>> enc.name, enc.dim  # doctest: +SKIP
    ('hf-phikon-v2', 1024)
    """

    def __init__(
        self,
        source: str,
        *,
        device: str = "auto",
        pooling: Pooling | None = None,
        revision: str | None = None,
    ) -> None:
        ref, query = parse_source(source)
        unknown = set(query) - {"pooling"}
        if unknown:
            raise GR2STConfigError(f"hf encoder {source!r}: unknown option(s) {sorted(unknown)}")
        if pooling is not None and "pooling" in query and query["pooling"] != pooling:
            raise GR2STConfigError(
                f"hf encoder {source!r}: pooling={pooling!r} contradicts the name's option"
            )
        pooling_ = pooling or query.get("pooling") or "cls"
        if pooling_ not in ("cls", "mean"):
            raise GR2STConfigError(
                f"hf encoder {source!r}: pooling must be 'cls' or 'mean', got {pooling_!r}"
            )
        if not ref:
            raise GR2STConfigError("hf encoder: give a local directory or hub id after 'hf:'")
        self.pooling: str = pooling_
        self.device = resolve_device(device)
        self.source = ref
        self._model, self._processor, model_dir = self._load(ref, revision)
        config = self._model.config
        if not isinstance(getattr(config, "hidden_size", None), int):
            raise GR2STConfigError(
                f"hf encoder {ref!r}: {type(self._model).__name__} has no hidden_size; "
                "expected a ViT-style backbone (ViT, DINOv2, …)"
            )
        self.name = _display_name(ref, self.pooling)
        self.dim = int(config.hidden_size)
        self.input_size = self._processor_size(int(getattr(config, "image_size", 224)))
        # DINOv2-with-registers puts register tokens between CLS and the patch tokens.
        self._skip = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self._hash = _weights_hash(model_dir)

    @property
    def weights_hash(self) -> str:
        return self._hash

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling}

    def _load(self, ref: str, revision: str | None) -> tuple[Any, Any, Path]:
        require("transformers", feature="the hf: encoder", extra="hf")
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import cached_file

        path = Path(ref).expanduser()
        is_local = path.is_dir()
        if not is_local and (not _HUB_ID.match(ref) or ref.startswith((".", "~"))):
            raise GR2STConfigError(f"hf encoder: model directory {ref} does not exist")
        offline = is_local or hub_offline()
        where = str(path) if is_local else ref
        try:
            with _quiet_transformers():
                processor = AutoImageProcessor.from_pretrained(
                    where, local_files_only=offline, revision=revision
                )
                model = AutoModel.from_pretrained(
                    where, local_files_only=offline, revision=revision, dtype=torch.float32
                )
                config_file = cached_file(
                    where, "config.json", local_files_only=True, revision=revision
                )
        except (OSError, ValueError) as err:
            if is_local:
                raise GR2STConfigError(
                    f"hf encoder: {path} is not a transformers checkpoint with an image "
                    f"processor ({type(err).__name__}: {str(err).splitlines()[0]})"
                ) from err
            hint = (
                "no such local directory, and the hub is offline with no copy in the Hugging "
                f"Face cache; download it first (hf download {ref}) or pass a local directory"
                if offline
                else f"cannot be loaded from the hub ({str(err).splitlines()[0]})"
            )
            raise GR2STConfigError(f"hf encoder {ref!r}: {hint}") from err
        if config_file is None:
            raise GR2STConfigError(f"hf encoder {ref!r}: config.json not found")
        model.eval().requires_grad_(False).to(self.device)
        return model, processor, Path(config_file).parent

    def _processor_size(self, default: int) -> int:
        proc = self._processor
        size = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
        size = size or getattr(proc, "size", None) or {}
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        return int(get("height") or get("shortest_edge") or default)

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        pixels = self._processor(images=list(batch), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hidden = self._model(pixel_values=pixels.to(self.device)).last_hidden_state
            if hidden.ndim != 3:
                raise GR2STConfigError(
                    f"hf encoder {self.source!r}: last_hidden_state has shape "
                    f"{tuple(hidden.shape)}; expected (batch, tokens, dim) from a ViT-style model"
                )
            out = hidden[:, 0] if self.pooling == "cls" else hidden[:, self._skip :].mean(dim=1)
            return out.float().cpu().numpy()


@ENCODERS.register("hf")
def _hf(source: str, *, device: str = "auto", **options: Any) -> HFEncoder:
    """Build ``hf:<source>`` (see :class:`HFEncoder`)."""
    return HFEncoder(source, device=device, **options)
