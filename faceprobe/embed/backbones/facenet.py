"""FaceNet: facenet-pytorch's InceptionResnetV1 (512-d), VGGFace2 or CASIA-WebFace weights.

Decisions:
- The model is built with ``pretrained=None`` and its state dict loaded from a file we resolve
  (``--weights FILE``, ``$FACEPROBE_HOME/weights``, torch's checkpoint cache, then facenet-pytorch's
  release URL), so nothing downloads behind the user's back and offline use says what to fetch.
- Alignment is ``crop``: facenet-pytorch's MTCNN box + margin crop at 160 px, which is how these
  weights were trained and evaluated (its LFW example uses margin 14); a landmark-warped chip frames
  the face differently and loses accuracy with these weights.
- Preprocessing is facenet-pytorch's ``fixed_image_standardization``: (x - 127.5) / 128.
- ``pooled`` is the 1792-d average-pooled layer before the bottleneck, raw (not normalised): heads
  standardise their inputs anyway, and the magnitudes carry information (smiling, expression) that
  the identity-trained 512-d bottleneck suppresses.
- On a CPU the model runs channels-last (faster oneDNN kernels, ~1.4x) and bf16 runs under
  ``torch.autocast`` (AMX); fp16 only on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faceprobe.embed.backbones.base import (
    Backbone,
    BackboneConfig,
    check_precision,
    resolve_device,
    resolve_weights,
    torch_checkpoint_dirs,
)
from faceprobe.errors import WeightsError
from faceprobe.files import file_sha256
from faceprobe.threads import torch_threads

RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
WEIGHTS = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
RANDOM_SEED = 0


def facenet_config(variant: str) -> BackboneConfig:
    return BackboneConfig(
        name=f"facenet.{variant}", input_size=160, mean=127.5, std=128.0, embedding_dim=512,
        alignment="crop", template=None, margin=14.0,
        feature_dims={"embedding": 512, "pooled": 1792},
    )


class FaceNet(Backbone):
    # the backbone, not MTCNN, bounds this pass (bf16 InceptionResnetV1: ~85 chips/s on 2 cores):
    # keeping every thread beside the workers measured 12.9 s for 600 LFW images, one 13.8 s
    yields_cores = False

    def __init__(self, variant: str = "vggface2", weights=None, device="auto",
                 precision: str = "fp32"):
        from facenet_pytorch import InceptionResnetV1

        if variant not in WEIGHTS:
            raise ValueError(f"unknown facenet variant {variant!r}")
        self.config = facenet_config(variant)
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, name=self.config.name)
        if isinstance(weights, str) and weights == "random":
            # seeded so that two runs with random weights embed identically (tests, benchmarks)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = InceptionResnetV1(pretrained=None, classify=False)
            self.weights_sha256 = f"random-seed-{RANDOM_SEED}"
            self.weights_path = None
        else:
            model = InceptionResnetV1(pretrained=None, classify=False)
            path = resolve_weights(WEIGHTS[variant], weights, RELEASE + WEIGHTS[variant],
                                   extra_dirs=torch_checkpoint_dirs(),
                                   what=f"{self.config.name} weights")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
                raise WeightsError(f"weights file {path} cannot be read as a torch state dict "
                                   f"({type(exc).__name__}: {exc})") from None
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[1:2] or [str(exc)]
                raise WeightsError(f"weights file {path} does not fit InceptionResnetV1 "
                                   f"({first[0].strip()})") from None
            self.weights_sha256 = file_sha256(path)
            self.weights_path = str(path)
        model.eval().requires_grad_(False).to(self.device)
        if self.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def _features(self, batch, groups):
        if self.threads is None or self.device.type != "cpu":
            return self._forward(batch, groups)
        with torch_threads(self.threads):
            return self._forward(batch, groups)

    def _forward(self, batch, groups):
        m = self.model
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.config.mean) / self.config.std
        x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            for layer in (m.conv2d_1a, m.conv2d_2a, m.conv2d_2b, m.maxpool_3a, m.conv2d_3b,
                          m.conv2d_4a, m.conv2d_4b, m.repeat_1, m.mixed_6a, m.repeat_2,
                          m.mixed_7a, m.repeat_3, m.block8, m.avgpool_1a):
                x = layer(x)
            pooled = x.flatten(1)
            emb = m.last_bn(m.last_linear(pooled))
        out = {}
        if "embedding" in groups:
            out["embedding"] = F.normalize(emb.float(), p=2, dim=1).cpu().numpy()
        if "pooled" in groups:
            out["pooled"] = pooled.float().cpu().numpy()
        return out
