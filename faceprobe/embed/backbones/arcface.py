"""Any ArcFace-style ONNX model (insightface's w600k_r50, glint360k, ...) via onnxruntime.

Decisions:
- 112x112 chips on insightface's 5-point template, RGB, (x - 127.5) / 127.5: the convention of
  insightface's ``ArcFaceONNX`` and of every model exported from arcface_torch.
- The embedding dimension, the input size and the layout (NCHW or NHWC) are read from the
  model, so any such file works; a model with a fixed batch of 1 is fed one chip at a time
  (the only case with per-image calls), any other in batches.
- There is no default file (licences differ): ``weights=FILE`` is required.
- fp32 only: an fp16 ONNX export carries its own precision, onnxruntime does not cast.
"""

from __future__ import annotations

import numpy as np

from faceprobe.embed.align import ARCFACE_TEMPLATE, scaled_template
from faceprobe.embed.backbones.base import (
    Backbone,
    BackboneConfig,
    check_precision,
    l2_normalise,
    resolve_device,
    resolve_weights,
)
from faceprobe.errors import ConfigError, WeightsError
from faceprobe.files import file_sha256


class ArcFaceOnnx(Backbone):
    def __init__(self, weights=None, device="auto", precision: str = "fp32"):
        import onnxruntime as ort
        import torch

        if weights is None or weights == "random":
            raise ConfigError(
                "backbone arcface.onnx needs an ONNX model: pass weights=FILE (--weights FILE), "
                "e.g. insightface's w600k_r50.onnx")
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, ("fp32",), "arcface.onnx")
        path = resolve_weights(str(weights), weights, None, what="ArcFace ONNX model")
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise WeightsError(f"{path} is not a usable ONNX model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise WeightsError(f"{path}: expected a 4-d image input, got shape {shape}")
        self.nhwc = shape[3] == 3 and shape[1] != 3
        hw = shape[1:3] if self.nhwc else shape[2:4]
        size = hw[0] if isinstance(hw[0], int) and hw[0] > 0 else 112
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.output_name = self.session.get_outputs()[0].name
        out_shape = self.session.get_outputs()[0].shape
        dim = out_shape[-1] if isinstance(out_shape[-1], int) and out_shape[-1] > 0 else None
        if dim is None:
            dim = self._run(np.zeros((1, size, size, 3), np.uint8)).shape[1]
        template = scaled_template(ARCFACE_TEMPLATE, 112, size)
        self.config = BackboneConfig(
            name="arcface.onnx", input_size=int(size), mean=127.5, std=127.5,
            embedding_dim=int(dim), alignment="similarity",
            template=tuple(map(tuple, template.tolist())), margin=0.0,
            feature_dims={"embedding": int(dim)},
        )
        self.weights_sha256 = file_sha256(path)
        self.weights_path = str(path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = (batch.astype(np.float32) - 127.5) / 127.5
        if not self.nhwc:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.fixed_batch == 1 and len(x) > 1:
            return np.concatenate([self.session.run([self.output_name], {self.input_name: x[i:i + 1]})[0]
                                   for i in range(len(x))])
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, np.float32).reshape(len(x), -1)

    def _features(self, batch, groups):
        return {"embedding": l2_normalise(self._run(batch))}
