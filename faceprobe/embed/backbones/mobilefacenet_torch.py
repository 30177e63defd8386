"""foamliu's MobileFaceNet in PyTorch: the trainable twin of the ``arcface.mobilefacenet`` ONNX model.

- :class:`MobileFaceNet` is an ``nn.Module`` whose state dict has exactly the keys and shapes of
  foamliu's ``weights/mobilefacenet.pt`` (``mobilefacenet-foamliu.pt``, 307 tensors: ``conv1.*``,
  ``dw_conv.*``, ``features.0-14.*``, ``conv2.*``, ``gdconv.*``, ``conv3.*``, ``bn.*``), so that
  file loads with ``strict=True``. The layout was read off the state dict: a 3x3/2 stem (64), a
  depthwise-separable 3x3 (64), 15 inverted residuals (t, c, n, s) = (2, 64, 5, 2), (4, 128, 1, 2),
  (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1), a 1x1 to 512, a global depthwise 7x7 (GDC), a
  1x1 to 128 with bias and a BatchNorm: 128-d out. The state dict has no PReLU slopes: the stem,
  the expansions and the depthwise convs use ReLU6 and the separable block ReLU (foamliu's code);
  the ONNX export of the same weights agrees with this module to a max abs difference of 4e-7
  (min cosine 0.99999994) on the 8 aligned CelebA fixture chips (bf16 autocast: 7e-3, 0.9996).
- :func:`load_mobilefacenet` loads a file (the original, or :func:`faceprobe.identity.finetune`'s
  output) in eval mode and says in one line what is wrong with a file that does not fit.
- :class:`MobileFaceNetTorch` is a :class:`Backbone` with the registered ``arcface.mobilefacenet``
  config (name, RGB, x/255 then ImageNet mean/std, ArcFace 112 template, 128-d), so ``--weights
  FILE.pt`` can run the same model in torch: fine-tuned weights, bf16 on CPU, CUDA. Its
  embeddings equal the ONNX backbone's within 1e-4 (tests/test_mobilefacenet_torch.py).
- Metadata of a fine-tuned file is the JSON sidecar ``FILE.meta.json`` (:func:`meta_path`), read
  into ``MobileFaceNetTorch.finetune_meta`` and :meth:`describe`; the ``.pt`` itself stays a plain
  state dict in foamliu's layout, loadable by foamliu's own code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceprobe.embed.align import ARCFACE_TEMPLATE, scaled_template
from faceprobe.embed.backbones.base import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    BackboneConfig,
    TorchBackbone,
    check_precision,
    resolve_device,
    resolve_weights,
    to_model_input,
)
from faceprobe.errors import WeightsError
from faceprobe.files import file_sha256

NAME = "arcface.mobilefacenet"  # the registered ONNX backbone's name: the same model
FILENAME = "mobilefacenet-foamliu.pt"
URL = "https://github.com/foamliu/MobileFaceNet/raw/a6cc903/weights/mobilefacenet.pt"
SHA256 = "90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4"
EMBEDDING_DIM = 128
INPUT_SIZE = 112
# (expansion t, channels c, repeats n, first stride s), foamliu's setting
SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
LAYOUT_HINT = ("expected the foamliu layout (conv1.*, dw_conv.*, features.0-14.*, conv2.*, "
               "gdconv.*, conv3.*, bn.*)")


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU6; keys ``0.weight``, ``1.*``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True))


class DepthwiseSeparable(nn.Module):
    """depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class GlobalDepthwise(nn.Module):
    """GDC: a depthwise conv over the whole 7x7 map, then BN (no activation)."""

    def __init__(self, channels: int, kernel: int = 7):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.depthwise(x))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project -> BN; identity shortcut
    when the stride is 1 and the width unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            ConvBNReLU(cin, hidden, kernel=1),
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """(n, 3, 112, 112) normalised RGB -> (n, 128) raw (not L2-normalised) embedding."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, stride=2)
        self.dw_conv = DepthwiseSeparable(64, 64)
        blocks, cin = [], 64
        for t, c, n, s in SETTING:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.conv2 = ConvBNReLU(cin, 512, kernel=1)
        self.gdconv = GlobalDepthwise(512, 7)
        self.conv3 = nn.Conv2d(512, embedding_dim, 1)
        self.bn = nn.BatchNorm2d(embedding_dim)
        self.features = nn.Sequential(*blocks)

    def forward(self, x):
        x = self.dw_conv(self.conv1(x))
        x = self.conv2(self.features(x))
        x = self.bn(self.conv3(self.gdconv(x)))
        return x.flatten(1)


def meta_path(weights: str | os.PathLike) -> Path:
    """``FILE.meta.json``: what a fine-tuned weights file was trained from and how."""
    return Path(str(weights) + ".meta.json")


def read_meta(weights: str | os.PathLike) -> dict:
    """The sidecar metadata of a weights file ({} when there is none or it cannot be read)."""
    try:
        d = json.loads(meta_path(weights).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def _state_dict_of(obj, path) -> dict:
    """The tensor dict inside a loaded object: a plain state dict, or one wrapped under
    ``state_dict`` / ``model`` (a finetune checkpoint); a ``module.`` prefix is dropped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise WeightsError(f"{path} is not a MobileFaceNet state dict (it holds a "
                           f"{type(obj).__name__}, not a dict of tensors); {LAYOUT_HINT}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _names(keys, most: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def check_state_dict(state: dict, path, model: nn.Module | None = None) -> None:
    """Raise a one-line :class:`WeightsError` naming ``path`` unless ``state`` fits exactly."""
    want = (model or MobileFaceNet()).state_dict()
    missing, unexpected = set(want) - set(state), set(state) - set(want)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise WeightsError(f"{path} is not a MobileFaceNet state dict: {'; '.join(parts)}; "
                           f"{LAYOUT_HINT}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(f"{path} is not a MobileFaceNet state dict: {k} has shape "
                               f"{tuple(state[k].shape)}, expected {tuple(v.shape)}; "
                               f"{LAYOUT_HINT}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise WeightsError(f"{path}: tensor {k} holds NaN or infinite values")


def load_mobilefacenet(path: str | os.PathLike, device: str | torch.device = "cpu"
                       ) -> MobileFaceNet:
    """The MobileFaceNet in ``path`` (foamliu's state dict or a fine-tuned one), strictly loaded,
    in eval mode on ``device``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"MobileFaceNet weights file {p} not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"{p} cannot be read as a PyTorch state dict "
                           f"({type(exc).__name__}: {first[:200]})") from None
    state = _state_dict_of(obj, p)
    model = MobileFaceNet()
    check_state_dict(state, p, model)
    model.load_state_dict(state, strict=True)
    return model.eval().to(resolve_device(device))


def mobilefacenet_config() -> BackboneConfig:
    """The registered ``arcface.mobilefacenet`` config (equal to the ONNX backbone's)."""
    return BackboneConfig(
        name=NAME, input_size=INPUT_SIZE, mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255,
        embedding_dim=EMBEDDING_DIM, alignment="similarity",
        template=tuple(map(tuple, scaled_template(ARCFACE_TEMPLATE, 112, INPUT_SIZE).tolist())),
        margin=0.0, feature_dims={"embedding": EMBEDDING_DIM}, channel_order="RGB",
        layout="NCHW")


class MobileFaceNetTorch(TorchBackbone):
    """``arcface.mobilefacenet`` run in PyTorch from a ``.pt`` state dict (foamliu's or a
    fine-tuned one). ``weights=None`` resolves ``mobilefacenet-foamliu.pt`` (pinned sha256);
    fp32, bf16 (``torch.autocast``, also on CPU) or fp16 (CUDA only)."""

    def __init__(self, weights=None, device="auto", precision: str = "fp32"):
        self.config = mobilefacenet_config()
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, name=NAME)
        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = MobileFaceNet().eval()
            self.weights_sha256, self.weights_path = "random-seed-0", None
            self.finetune_meta: dict = {}
        else:
            path = resolve_weights(FILENAME, weights, URL, what=f"{NAME} PyTorch weights")
            self.weights_sha256 = file_sha256(path)
            if weights is None and self.weights_sha256 != SHA256:
                raise WeightsError(f"{path} has sha256 {self.weights_sha256}, not foamliu's "
                                   f"{SHA256}; replace it, or pass another file with --weights")
            model = load_mobilefacenet(path, "cpu")
            self.weights_path = str(path)
            self.finetune_meta = read_meta(path)
        self.model = model.requires_grad_(False).to(self.device)

    def _forward(self, batch: np.ndarray, groups=("embedding",)) -> dict[str, np.ndarray]:
        x = torch.from_numpy(to_model_input(batch, self.config)).to(self.device)
        with self._autocast():
            emb = self.model(x)
        return {"embedding": F.normalize(emb.float(), dim=1).cpu().numpy()}

    def describe(self) -> dict:
        d = super().describe()
        if self.finetune_meta:
            d["finetune"] = self.finetune_meta
        return d


__all__ = ["MobileFaceNet", "MobileFaceNetTorch", "check_state_dict", "load_mobilefacenet",
           "meta_path", "mobilefacenet_config", "read_meta"]
