"""The KeypointRCNN architectures (5 keypoints) and where their starting weights come from.

Decisions:
- Two backbones under torchvision's KeypointRCNN. ``mobilefacenet`` (the default): foamliu's
  MobileFaceNet (``faceprobe.embed.backbones.mobilefacenet_torch``, ArcFace-trained on faces)
  cut at strides 8 and 16 (128 and 512 channels) under a 128-channel FPN plus a max-pool level
  (stride 32), a 256-d two-layer box head and a 4-conv 128-channel keypoint head. ``resnet50``:
  torchvision's ``keypointrcnn_resnet50_fpn`` layout, for COCO or ImageNet weights. The ResNet
  cannot learn on a CPU from scratch, and COCO weights cannot be had everywhere; the
  face-pretrained MobileFaceNet is ~1/20 of its compute and trains on 2 CPU cores (README,
  "Landmarks"). Its normalisation is torchvision's default (x/255, ImageNet mean/std), which is
  MobileFaceNet's own.
- No stride-4 level: the faces here span 100-250 px, and the stride-4 map made the RPN head and
  the FPN's output conv cost ~1.2 GMAC per 256 px image, as much as the backbone. Anchors: two
  sizes per level, (32, 64), (96, 128), (192, 256) px at strides 8 / 16 / 32, aspect ratios
  0.5 / 1 / 2; RoIs pooled from the stride 8 and 16 levels (the pool level only feeds the RPN).
- Weights never download for ``resnet50``: ``coco`` / ``imagenet`` are looked up as torchvision's
  file names in ``$FACEPROBE_HOME/weights`` and torch's checkpoint cache; a missing file is a
  WeightsError naming it and both places. ``pretrained`` (the default) is ``coco`` for the ResNet
  and ``mobilefacenet-foamliu.pt`` for the MobileFaceNet, resolved like the embedding backbone's
  weights (local first, then its download URL when online). A FILE may be a detection checkpoint,
  a ResNet-50 classification state dict or a MobileFaceNet state dict (e.g. from
  ``faceprobe finetune``).
- With pretrained weights the backbone's batch norm is frozen (statistics and affine: batches of
  4 images give noisy statistics) and its first stage stays fixed (torchvision's default for the
  ResNet: the stem and layer1); from scratch everything trains with ordinary batch norm.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from faceprobe.errors import ConfigError, WeightsError

CLASSES = {"face": ("background", "face"), "gender": ("background", "woman", "man")}
NUM_KEYPOINTS = 5
BACKBONES = ("mobilefacenet", "resnet50")
WEIGHT_FILES = {
    "coco": ("keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
             "keypointrcnn_resnet50_fpn_coco-9f466800.pth"),
    "imagenet": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
}
FPN_CHANNELS = 128
ANCHORS = ((32, 64), (96, 128), (192, 256))  # px, per level: strides 8, 16, 32


def check_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise ConfigError(f"unknown landmark backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return name


def resolve_weights(spec: str, backbone: str = "resnet50") -> Path | None:
    """``none`` -> None; ``pretrained`` -> the backbone's file; ``coco``/``imagenet`` -> the cached
    torchvision file (ResNet only); else an existing file."""
    from faceprobe.embed.backbones.base import resolve_weights as resolve_file
    from faceprobe.embed.backbones.base import torch_checkpoint_dirs, weights_dir

    check_backbone(backbone)
    if spec == "none":
        return None
    if spec == "pretrained":
        if backbone == "mobilefacenet":
            from faceprobe.embed.backbones import mobilefacenet_torch as mfn

            return resolve_file(mfn.FILENAME, None, mfn.URL, what="MobileFaceNet weights")
        spec = "coco"
    if spec in WEIGHT_FILES:
        if backbone != "resnet50":
            raise ConfigError(f"--weights {spec} is for --backbone resnet50; the {backbone} "
                              "backbone takes pretrained, none or a file")
        dirs = [weights_dir(), *torch_checkpoint_dirs()]
        for d in dirs:
            for name in WEIGHT_FILES[spec]:
                if (d / name).is_file():
                    return d / name
        where = " or ".join(str(d) for d in dirs)
        raise WeightsError(
            f"{spec} weights for KeypointRCNN not found: put {WEIGHT_FILES[spec][0]} in {where} "
            "(nothing is downloaded), pass --weights FILE, or use --weights none (random init)")
    p = Path(spec).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file {p} does not exist; pass pretrained, none, coco, "
                           "imagenet (resnet50) or an existing .pth/.pt file")
    return p


class MobileFaceNetFPNBody(nn.Module):
    """MobileFaceNet's layers up to its 512-channel 1x1 conv, returning the stride 4, 8 and 16
    maps; the embedding layers (global depthwise conv, 128-d projection) are dropped."""

    def __init__(self, frozen_bn: bool):
        super().__init__()
        from faceprobe.embed.backbones.mobilefacenet_torch import MobileFaceNet

        net = MobileFaceNet()
        del net.gdconv, net.conv3, net.bn
        self.net = net
        self.frozen_bn = frozen_bn
        self.in_channels = [128, 512]
        if frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
            for p in [*net.conv1.parameters(), *net.dw_conv.parameters()]:
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_bn:  # pretrained statistics stay; a batch of 4 images cannot re-estimate them
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x):
        f = self.net.features
        x = self.net.dw_conv(self.net.conv1(x))
        c8 = f[5:12](f[:5](x))
        c16 = self.net.conv2(f[12:](c8))
        return OrderedDict([("0", c8), ("1", c16)])


class WithFPN(nn.Module):
    def __init__(self, body: MobileFaceNetFPNBody, out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.in_channels, out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(self.body(x))


def _max_size(image_size: int) -> int:
    return max(int(image_size), int(round(image_size * 1333 / 800)))


def _mobilefacenet_model(config: dict) -> nn.Module:
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    c = FPN_CHANNELS
    backbone = WithFPN(MobileFaceNetFPNBody(bool(config.get("pretrained"))), c)
    levels = ["0", "1"]
    size = int(config["image_size"])
    return KeypointRCNN(
        backbone, num_classes=None, min_size=size, max_size=_max_size(size),
        rpn_anchor_generator=AnchorGenerator(ANCHORS, ((0.5, 1.0, 2.0),) * len(ANCHORS)),
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_post_nms_top_n_test=int(config.get("proposals", 1000)),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, len(CLASSES[config["classes"]])),
        box_batch_size_per_image=int(config.get("rois_per_image", 512)),
        keypoint_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        keypoint_head=KeypointRCNNHeads(c, (128,) * 4),
        keypoint_predictor=KeypointRCNNPredictor(128, NUM_KEYPOINTS))


def build_model(config: dict) -> nn.Module:
    """The architecture described by ``config`` (backbone, classes, image_size, pretrained),
    untrained. A config without ``backbone`` (checkpoints before the MobileFaceNet) is the ResNet."""
    if check_backbone(config.get("backbone", "resnet50")) == "mobilefacenet":
        return _mobilefacenet_model(config)
    from torchvision.models import resnet50
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    pretrained = bool(config.get("pretrained"))
    norm = FrozenBatchNorm2d if pretrained else torch.nn.BatchNorm2d
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=norm),
                                     3 if pretrained else 5)
    size = int(config["image_size"])
    model = KeypointRCNN(backbone, num_classes=len(CLASSES[config["classes"]]),
                         num_keypoints=NUM_KEYPOINTS, min_size=size, max_size=_max_size(size),
                         box_batch_size_per_image=int(config.get("rois_per_image", 512)),
                         rpn_post_nms_top_n_test=int(config.get("proposals", 1000)))
    if pretrained and config.get("bn_eps") is not None:
        overwrite_eps(model, float(config["bn_eps"]))
    return model


def load_state(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or non-tensor file
        raise WeightsError(f"{path} is not a loadable torch weights file "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return obj["model"]  # a faceprobe checkpoint: fine-tune from it
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds no state dict")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}  # saved from DataParallel
    return obj


def weights_kind(state: dict) -> str:
    keys = list(state)
    if any(k.startswith("backbone.body.") for k in keys):
        return "detection"
    if "conv1.weight" in state and any(k.startswith("layer4.") for k in keys):
        return "resnet50"
    if "dw_conv.depthwise.weight" in state and any(k.startswith("features.") for k in keys):
        return "mobilefacenet"
    raise WeightsError("weights are neither a KeypointRCNN/detection state dict, a ResNet-50 "
                       "classification one nor a MobileFaceNet one")


def init_from_weights(model: nn.Module, state: dict, path: Path) -> dict:
    """Load what fits from ``state`` (read from ``path``): a detection checkpoint everywhere
    except the layers whose shape differs (class count, 17 COCO keypoints -> 5), a ResNet-50 or
    a MobileFaceNet into the backbone (the MobileFaceNet's embedding layers are not used)."""
    kind = weights_kind(state)
    body = model.backbone.body
    target = {"detection": model, "resnet50": body}.get(kind, getattr(body, "net", body))
    own = target.state_dict()
    fit = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    body_keys = [k for k in own if (k.startswith("backbone.body.") or kind != "detection")
                 and not k.endswith("num_batches_tracked")]
    missing_body = [k for k in body_keys if k not in fit]
    if missing_body:
        arch = "MobileFaceNet" if hasattr(body, "net") else "ResNet-50"
        raise WeightsError(f"{path} does not match this model's {arch} backbone "
                           f"({len(missing_body)} tensors missing or of another shape, e.g. "
                           f"{missing_body[0]}); a {kind} file needs the matching --backbone")
    target.load_state_dict(fit, strict=False)
    unused = ("fc.", "gdconv.", "conv3.", "bn.")  # classifier / embedding layers: not used here
    skipped = sorted(k for k in state if k not in fit and not k.startswith(unused))
    return {"kind": kind, "loaded": len(fit), "reinitialised": skipped}
