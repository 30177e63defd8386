"""Backbone registry, timm-style: ``create_backbone(name, weights=None, device='auto',
precision='fp32')`` and ``list_backbones()``.

Each backbone carries its :class:`BackboneConfig` (chip size, alignment, template, channel order,
normalisation, layout, feature groups) and ``weights_sha256``, and has ``embed(faces) -> (n, dim)``
L2-normalised float32 and ``features(faces, groups)``. Weights: ``None`` resolves the default file
(see each module), a path loads that file, ``'random'`` (FaceNet only) gives seeded random weights
for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faceprobe.embed.backbones.base import Backbone, BackboneConfig, to_model_input
from faceprobe.errors import ConfigError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    description: str
    embedding_dim: int | None
    alignment: str
    offline: bool  # usable with no download (weights ship with a package)


def _facenet(variant: str) -> Callable[..., Backbone]:
    def make(weights=None, device="auto", precision="fp32"):
        from faceprobe.embed.backbones.facenet import FaceNet
        return FaceNet(variant, weights=weights, device=device, precision=precision)
    return make


def _arcface(spec: str) -> Callable[..., Backbone]:
    def make(weights=None, device="auto", precision="fp32"):
        if spec == "arcface.mobilefacenet" and str(weights or "").endswith(".pt"):
            # a PyTorch state dict of the same network (foamliu's, or `faceprobe finetune`'s)
            from faceprobe.embed.backbones.mobilefacenet_torch import MobileFaceNetTorch
            return MobileFaceNetTorch(weights=weights, device=device, precision=precision)
        from faceprobe.embed.backbones.arcface import ArcFaceOnnx
        return ArcFaceOnnx(weights=weights, device=device, precision=precision, spec=spec)
    return make


def _dlib(weights=None, device="auto", precision="fp32"):
    from faceprobe.embed.backbones.dlib_resnet import DlibResNet
    return DlibResNet(weights=weights, device=device, precision=precision)


_REGISTRY: dict[str, tuple[Callable[..., Backbone], BackboneInfo]] = {
    "facenet.vggface2": (_facenet("vggface2"), BackboneInfo(
        "facenet.vggface2", "InceptionResnetV1 trained on VGGFace2 (facenet-pytorch), 512-d; "
        "also 1792-d pooled features", 512, "crop", False)),
    "facenet.casia-webface": (_facenet("casia-webface"), BackboneInfo(
        "facenet.casia-webface", "InceptionResnetV1 trained on CASIA-WebFace (facenet-pytorch), "
        "512-d; also 1792-d pooled features", 512, "crop", False)),
    "arcface.onnx": (_arcface("arcface.onnx"), BackboneInfo(
        "arcface.onnx", "any ArcFace-style ONNX model (--weights FILE), 112x112, dimension read "
        "from the model; conventions in FILE.json (docs/arcface-onnx.md)", None, "similarity",
        False)),
    "arcface.mobilefacenet": (_arcface("arcface.mobilefacenet"), BackboneInfo(
        "arcface.mobilefacenet", "MobileFaceNet, ArcFace loss on MS-Celeb-1M (foamliu, ONNX, "
        "4 MB), 128-d; RGB, ImageNet mean/std; --weights FILE.pt runs a PyTorch state dict of "
        "it (foamliu's or `faceprobe finetune`'s)", 128, "similarity", False)),
    "arcface.mobilefacenet-paddle": (_arcface("arcface.mobilefacenet-paddle"), BackboneInfo(
        "arcface.mobilefacenet-paddle", "MobileFaceNet, ArcFace loss, PaddlePaddle export (ONNX, "
        "4 MB), 128-d; RGB, (x-127.5)/127.5", 128, "similarity", False)),
    "dlib.resnet": (_dlib, BackboneInfo(
        "dlib.resnet", "dlib's ResNet face descriptor, 128-d, offline (face_recognition_models)",
        128, "dlib5", True)),
}


def list_backbones() -> list[BackboneInfo]:
    return [info for _, info in _REGISTRY.values()]


def backbone_names() -> list[str]:
    return list(_REGISTRY)


def create_backbone(name: str, weights=None, device="auto", precision: str = "fp32") -> Backbone:
    """Build backbone ``name``; an unknown name lists the known ones."""
    try:
        factory, _ = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(_REGISTRY)}") from None
    return factory(weights=weights, device=device, precision=precision)


def register_backbone(name: str, factory: Callable[..., Backbone], info: BackboneInfo) -> None:
    """Add a backbone (plugins, tests). ``factory(weights=, device=, precision=)``."""
    _REGISTRY[name] = (factory, info)


__all__ = ["Backbone", "BackboneConfig", "BackboneInfo", "backbone_names", "create_backbone",
           "list_backbones", "register_backbone", "to_model_input"]
