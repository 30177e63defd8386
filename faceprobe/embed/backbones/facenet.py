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
- Inference folds every batch norm into the convolution (or linear layer) before it
  (``torch.nn.utils.fusion``): the same function up to float rounding, one pass over each
  activation fewer. The weights' hash is of the file, so folding changes no recorded value.
- Runtime: fp32 on a CPU runs in onnxruntime (``runtime='onnxruntime'``), the network exported
  once with ``torch.onnx.export`` and cached in ``$FACEPROBE_HOME/cache`` under the weights'
  hash and the torch version. Measured on a 2-core AVX2 EPYC (batch 32, same load for all):
  onnxruntime 16.1 chips/s, torch eager 2.6 (NCHW), 3.0 (batch norm folded), 4.3 (folded,
  channels-last). Outputs agree within 1e-7. bf16 (AMX) and CUDA stay in torch; if the export
  fails (a torch without the TorchScript exporter) the torch path runs and says so once.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from faceprobe.embed.backbones.base import (
    BackboneConfig,
    TorchBackbone,
    check_precision,
    l2_normalise,
    read_cache,
    resolve_device,
    resolve_weights,
    to_model_input,
    torch_checkpoint_dirs,
    write_cache,
)
from faceprobe.errors import WeightsError
from faceprobe.files import file_sha256

RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
WEIGHTS = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
RANDOM_SEED = 0
RUNTIMES = ("auto", "torch", "onnxruntime")
log = logging.getLogger(__name__)


def facenet_config(variant: str) -> BackboneConfig:
    return BackboneConfig(
        name=f"facenet.{variant}", input_size=160, mean=127.5, std=128.0, embedding_dim=512,
        alignment="crop", template=None, margin=14.0,
        feature_dims={"embedding": 512, "pooled": 1792},
    )


class _Outputs(torch.nn.Module):
    """InceptionResnetV1 up to both outputs faceprobe stores: the 1792-d pooled layer and the
    512-d bottleneck (before L2 normalisation)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        return _pooled_and_embedding(self.m, x)


def _pooled_and_embedding(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    for layer in (m.conv2d_1a, m.conv2d_2a, m.conv2d_2b, m.maxpool_3a, m.conv2d_3b,
                  m.conv2d_4a, m.conv2d_4b, m.repeat_1, m.mixed_6a, m.repeat_2,
                  m.mixed_7a, m.repeat_3, m.block8, m.avgpool_1a):
        x = layer(x)
    pooled = x.flatten(1)
    return pooled, m.last_bn(m.last_linear(pooled))


def _cache_name(key: str) -> str:
    return f"facenet-{key}-torch{torch.__version__}.onnx"


def onnx_model(model: torch.nn.Module, key: str) -> bytes:
    """``model`` (both outputs) exported as an ONNX graph with a symbolic batch, and kept in
    ``$FACEPROBE_HOME/cache`` under ``key`` (the weights' hash) and the torch version, where
    the constructor looks first (a cached graph that does not load is exported again)."""
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Outputs(model).eval(), torch.zeros(1, 3, 160, 160), buf,
                          dynamo=False, input_names=["x"], output_names=["pooled", "embedding"],
                          dynamic_axes={"x": {0: "n"}, "pooled": {0: "n"},
                                        "embedding": {0: "n"}})
    write_cache(_cache_name(key), buf.getvalue())
    return buf.getvalue()


def _random_model() -> torch.nn.Module:
    """InceptionResnetV1 with the seeded random weights of ``weights='random'`` (two runs embed
    identically: tests, benchmarks)."""
    from facenet_pytorch import InceptionResnetV1

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return InceptionResnetV1(pretrained=None, classify=False)


def random_state_dict() -> dict:
    """The seeded random weights as a weights file holds them (batch norms not folded): for
    tests and benchmarks that need a file or a plain InceptionResnetV1."""
    return _random_model().state_dict()


def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode batch norm into the layer before it (InceptionResnetV1's
    ``BasicConv2d`` conv + bn, and ``last_linear`` + ``last_bn``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for mod in model.modules():
        if isinstance(getattr(mod, "bn", None), torch.nn.BatchNorm2d) and \
                isinstance(getattr(mod, "conv", None), torch.nn.Conv2d):
            mod.conv = fuse_conv_bn_eval(mod.conv, mod.bn)
            mod.bn = torch.nn.Identity()
    model.last_linear = fuse_linear_bn_eval(model.last_linear, model.last_bn)
    model.last_bn = torch.nn.Identity()
    return model


class FaceNet(TorchBackbone):
    # the backbone, not MTCNN, bounds this pass (bf16 InceptionResnetV1: ~85 chips/s on 2 cores):
    # keeping every thread beside the workers measured 12.9 s for 600 LFW images, one 13.8 s
    yields_cores = False

    def __init__(self, variant: str = "vggface2", weights=None, device="auto",
                 precision: str = "fp32", runtime: str = "auto"):
        if variant not in WEIGHTS:
            raise ValueError(f"unknown facenet variant {variant!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.config = facenet_config(variant)
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, name=self.config.name)
        if isinstance(weights, str) and weights == "random":
            self.weights_sha256, self.weights_path, path = f"random-seed-{RANDOM_SEED}", None, None
        else:
            path = resolve_weights(WEIGHTS[variant], weights, RELEASE + WEIGHTS[variant],
                                   extra_dirs=torch_checkpoint_dirs(),
                                   what=f"{self.config.name} weights")
            self.weights_sha256, self.weights_path = file_sha256(path), str(path)
        if runtime == "auto":
            runtime = "onnxruntime" if (self.device.type, self.precision) == ("cpu", "fp32") \
                else "torch"
        self.runtime, self.session, self._onnx, self._model = runtime, None, None, None
        if runtime == "onnxruntime":
            # a graph exported before from these very weights needs no torch model at all
            cached = read_cache(_cache_name(self.weights_sha256))
            if cached is not None:
                with contextlib.suppress(Exception):
                    self.session = self._session(cached)
                    self._onnx = cached
            if self.session is None:
                self._export(self._build(path))
        if self.runtime == "torch" and self._model is None:
            self._build(path)  # now, so a bad weights file fails here, not mid-run

    @property
    def model(self) -> torch.nn.Module:
        """The torch network (built on first use when the onnxruntime graph came from the
        cache)."""
        if self._model is None:
            self._build(self.weights_path)
        return self._model

    def _build(self, path) -> torch.nn.Module:
        from facenet_pytorch import InceptionResnetV1

        if path is None:
            model = _random_model()
        else:
            model = InceptionResnetV1(pretrained=None, classify=False)
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
        model = _fold_batchnorm(model.eval().requires_grad_(False)).to(self.device)
        if self.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        return model

    def _export(self, model) -> None:
        try:
            self._onnx = onnx_model(model, self.weights_sha256)
            self.session = self._session(self._onnx)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: torch still works
            log.warning("facenet: onnxruntime path unavailable (%s: %s); running in torch",
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc) else "")
            self.runtime, self.session = "torch", None

    def _session(self, data: bytes):
        from faceprobe.embed.backbones.arcface import _session

        return _session(data, self.device, self.threads)

    def set_threads(self, n: int | None) -> None:
        if n != self.threads:
            super().set_threads(n)
            if self.session is not None:
                self.session = self._session(self._onnx)

    def describe(self) -> dict:
        return {**super().describe(), "runtime": self.runtime}

    def _features(self, batch, groups):
        if self.session is None:
            return super()._features(batch, groups)
        pooled, emb = self.session.run(None, {"x": to_model_input(batch, self.config)})
        out = {}
        if "embedding" in groups:
            out["embedding"] = l2_normalise(emb)
        if "pooled" in groups:
            out["pooled"] = np.asarray(pooled, np.float32)
        return out

    def _forward(self, batch, groups):
        m = self.model
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.config.mean) / self.config.std
        x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            pooled, emb = _pooled_and_embedding(m, x)
        out = {}
        if "embedding" in groups:
            out["embedding"] = F.normalize(emb.float(), p=2, dim=1).cpu().numpy()
        if "pooled" in groups:
            out["pooled"] = pooled.float().cpu().numpy()
        return out
