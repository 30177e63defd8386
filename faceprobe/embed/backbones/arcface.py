"""ArcFace-style ONNX models via onnxruntime: any user file, and two registered MobileFaceNets.

Backbones:
- ``arcface.onnx``: any ArcFace-style model (insightface's w600k_r50, glint360k, ...), passed as
  ``weights=FILE``. Conventions default to insightface's (RGB, (x - 127.5) / 127.5, the ArcFace
  112 template) and are overridden by a JSON file beside the model, ``<model>.json``
  (``w600k_r50.onnx.json``) with keys ``channel_order``, ``mean``, ``std`` (docs/arcface-onnx.md).
- ``arcface.mobilefacenet``: foamliu's MobileFaceNet (RGB, x/255 then ImageNet mean/std, 128-d),
  default file ``mobilefacenet-foamliu.onnx``.
- ``arcface.mobilefacenet-paddle``: a PaddlePaddle MobileFaceNet (RGB, (x - 127.5) / 127.5, 128-d),
  default file ``mobilefacenet-arcface-paddle.onnx``.

Decisions:
- The layout (NCHW or NHWC), the input size and the embedding dimension are read from the model;
  the chip is the ArcFace 5-point template scaled to that size. Preprocessing is the config's
  (:func:`faceprobe.embed.backbones.base.to_model_input`), read at every call, so a config
  restored from a store's manifest is the one applied.
- A graph exported with a fixed batch (foamliu's file: input ``1x3x112x112``) is made dynamic
  when loading: the first input and output dimensions become ``N`` and Reshape constants that
  hard-code the batch become ``-1`` (or ``0``, copy, when the shape already has a ``-1``). The
  edited graph must reproduce the original per-chip outputs on a probe batch (within 1e-4);
  otherwise the original graph is kept and fed in chunks of its fixed batch. ``weights_sha256``
  is the file's on disk, not the edited bytes'.
- onnxruntime runs with every usable core (``os.sched_getaffinity``) and all graph optimisations.
  Measured on this machine: 2 cores shared with another job (load 2-4), 512-1,024 LFW chips,
  best of 4-6 rounds, chips/s. foamliu: the original fixed graph fed chip by chip 376 (222 at load
  3.8), the dynamic graph in batches of 64 344 (307 at load 3.8); paddle (dynamic already): batch
  1 97-133, batch 64 135-146. Batching gains 1.1-1.4x under load, about nothing for foamliu with
  a free core (its per-chip convolutions are already as fast). Batched outputs equal per-chip ones
  exactly (max abs diff 0.0 on the 15 LFW fixture chips, both models), and equal the original file
  run by hand with the documented preprocessing within 3e-7.
- A registered model's default file must have the pinned sha256 (its conventions were measured on
  that file); another export of it is used on purpose with ``weights=FILE``.
- fp32 only: an fp16 ONNX export carries its own precision, onnxruntime does not cast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from faceprobe.embed.align import ARCFACE_TEMPLATE, scaled_template
from faceprobe.embed.backbones.base import (
    CHANNEL_ORDERS,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    Backbone,
    BackboneConfig,
    check_precision,
    l2_normalise,
    resolve_device,
    resolve_weights,
    to_model_input,
)
from faceprobe.errors import ConfigError, WeightsError
from faceprobe.files import file_sha256

log = logging.getLogger(__name__)

SIDECAR_KEYS = ("channel_order", "mean", "std")
PROBE_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class OnnxModelSpec:
    """A registered ONNX face model: its default file, where it comes from, its conventions."""

    name: str
    filename: str | None
    url: str | None
    sha256: str | None
    channel_order: str = "RGB"
    mean: float | tuple[float, float, float] = 127.5
    std: float | tuple[float, float, float] = 127.5
    source: str = ""


GENERIC = OnnxModelSpec("arcface.onnx", None, None, None)
MOBILEFACENET = OnnxModelSpec(
    "arcface.mobilefacenet", "mobilefacenet-foamliu.onnx",
    "https://github.com/foamliu/MobileFaceNet/raw/a6cc903/weights/MobileFaceNet.onnx",
    "b7120c095d60094f28a4a54ba6a8bf51b297a6273fb40ef6350dfec1f63d9507",
    channel_order="RGB", mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255,
    source="foamliu/MobileFaceNet @ a6cc903, weights/MobileFaceNet.onnx (Apache-2.0)")
MOBILEFACENET_PADDLE = OnnxModelSpec(
    "arcface.mobilefacenet-paddle", "mobilefacenet-arcface-paddle.onnx",
    "https://github.com/ACM-player/YOLOV5_Try/raw/ef28441/arcface.onnx",
    "0a08a264481d7c1b9fc90e9a6719207bff586a3ed21d1c7c156594a26388799e",
    channel_order="RGB", mean=127.5, std=127.5,
    source="ACM-player/YOLOV5_Try @ ef28441, arcface.onnx (no licence stated)")
SPECS = {s.name: s for s in (GENERIC, MOBILEFACENET, MOBILEFACENET_PADDLE)}


def sidecar_path(model: str | os.PathLike) -> Path:
    """``<model>.json``: the user's statement of a model's conventions."""
    return Path(str(model) + ".json")


def read_sidecar(model: str | os.PathLike) -> dict:
    """The validated conventions in ``<model>.json`` ({} when there is none)."""
    path = sidecar_path(model)
    if not path.is_file():
        return {}
    allowed = (f"allowed keys: channel_order ({' or '.join(CHANNEL_ORDERS)}), mean and std "
               "(one number or 3, in 0..255 pixel units)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); {allowed}") \
            from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} must hold a JSON object; {allowed}")
    unknown = sorted(set(d) - set(SIDECAR_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; {allowed}")
    out = {}
    if "channel_order" in d:
        v = d["channel_order"]
        if not isinstance(v, str) or v.upper() not in CHANNEL_ORDERS:
            raise ConfigError(f"{path}: channel_order {v!r} is not RGB or BGR; {allowed}")
        out["channel_order"] = v.upper()
    for k in ("mean", "std"):
        if k not in d:
            continue
        v = d[k]
        vals = v if isinstance(v, list) else [v]
        ok = len(vals) in (1, 3) if isinstance(v, list) else True
        ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                        and np.isfinite(x) for x in vals)
        if ok and k == "std":
            ok = all(x > 0 for x in vals)
        if not ok:
            what = "positive" if k == "std" else "finite"
            raise ConfigError(f"{path}: {k} {json.dumps(v)} is not one {what} number or a list of "
                              f"3; {allowed}")
        out[k] = float(vals[0]) if len(vals) == 1 else tuple(float(x) for x in vals)
    return out


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _session(model, device, threads: int | None = None):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # idle intra-op threads must not spin: in the embed pass this process shares the cores with
    # the MTCNN worker processes, and spinning threads starve them (measured under load: a
    # per-image MTCNN call went from ~0.5 s to ~2.4 s beside a spinning session)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def cached_dynamic_batch_model(path: str | os.PathLike) -> bytes:
    """:func:`dynamic_batch_model`, kept in ``$FACEPROBE_HOME/cache`` under the file's sha256:
    editing needs ``import onnx`` (~1 s, mostly ml_dtypes) on every start otherwise."""
    from faceprobe.embed.backbones.base import read_cache, write_cache

    name = f"{file_sha256(path)}.dynamic-batch.onnx"
    data = read_cache(name)
    if data is None:
        data = dynamic_batch_model(path)
        write_cache(name, data)
    return data


def dynamic_batch_model(path: str | os.PathLike) -> bytes:
    """The model at ``path`` with its batch dimension made symbolic (``N``), as bytes.

    The first graph input's and every graph output's first dimension become ``N``; a Reshape whose
    constant shape starts with the fixed batch gets ``-1`` there (``0``, copy the input's, when the
    shape already has a ``-1``). Stale intermediate shapes are dropped (onnxruntime infers them).
    Raises on anything it cannot edit; the caller checks the result against the original."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dim0 = inputs[0].type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value") or dim0.dim_value <= 0:
        return model.SerializeToString()  # already dynamic
    fixed = int(dim0.dim_value)
    dim0.Clear()
    dim0.dim_param = "N"
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del graph.value_info[:]
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for k, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] in inits:
            continue
        if node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
        elif node.input[1] in consts:
            attr = next((a for a in consts[node.input[1]].attribute if a.name == "value"), None)
            if attr is None:
                continue
            shape = numpy_helper.to_array(attr.t)
        else:
            continue  # computed at run time (Shape -> Concat): follows the input
        if shape.ndim != 1 or not len(shape) or int(shape[0]) != fixed:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        new = shape.copy()
        new[0] = -1 if -1 not in shape[1:] else 0
        if new[0] == 0 and allowzero:
            raise ValueError(f"Reshape {node.name} hard-codes the batch with allowzero=1")
        name = f"{node.input[1]}__faceprobe_dynamic_{k}"
        graph.initializer.append(numpy_helper.from_array(new.astype(shape.dtype), name))
        node.input[1] = name
    # drop the constants the edits left unused (onnxruntime would warn about each)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)
    for t in [t for t in graph.initializer if t.name not in used]:
        if t.name not in {i.name for i in graph.input}:
            graph.initializer.remove(t)
    return model.SerializeToString()


class ArcFaceOnnx(Backbone):
    """An ArcFace-style ONNX model; ``spec`` says which (default: any user file)."""

    def __init__(self, weights=None, device="auto", precision: str = "fp32",
                 spec: OnnxModelSpec | str = GENERIC):
        spec = SPECS[spec] if isinstance(spec, str) else spec
        name = spec.name
        if weights == "random" or (weights is None and spec.filename is None):
            raise ConfigError(
                f"backbone {name} needs an ONNX model: pass weights=FILE (--weights FILE), "
                "e.g. insightface's w600k_r50.onnx")
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, ("fp32",), name)
        path = resolve_weights(spec.filename or str(weights), weights, spec.url,
                               what=f"{name} ONNX model")
        self.weights_sha256 = file_sha256(path)
        self.weights_path = str(path)
        if weights is None and spec.sha256 and self.weights_sha256 != spec.sha256:
            raise WeightsError(
                f"{path} has sha256 {self.weights_sha256}, not {spec.name}'s {spec.sha256} "
                f"({spec.source}); replace it, or pass another export with --weights FILE")
        conv = read_sidecar(path) if spec is GENERIC else {}
        try:
            session = _session(str(path), self.device)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsError(f"{path} is not a usable ONNX model ({type(exc).__name__}: "
                               f"{first})") from None
        inp = session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4:
            raise WeightsError(f"{path}: expected a 4-d image input, got shape {shape}")
        layout = "NHWC" if shape[3] == 3 and shape[1] != 3 else "NCHW"
        hw = shape[1:3] if layout == "NHWC" else shape[2:4]
        size = int(hw[0]) if isinstance(hw[0], int) and hw[0] > 0 else 112
        self.layout = layout  # the graph's, whatever a restored config says
        self.session, self.input_name = session, inp.name
        self.output_name = session.get_outputs()[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.config = BackboneConfig(
            name=name, input_size=size, mean=conv.get("mean", spec.mean),
            std=conv.get("std", spec.std), embedding_dim=0, alignment="similarity",
            template=tuple(map(tuple, scaled_template(ARCFACE_TEMPLATE, 112, size).tolist())),
            margin=0.0, feature_dims={}, layout=layout,
            channel_order=conv.get("channel_order", spec.channel_order))
        self._model = str(path)  # what the session was made from, to remake it (set_threads)
        if self.fixed_batch is not None:
            self._make_dynamic(path)
        out_shape = self.session.get_outputs()[0].shape
        dim = out_shape[-1] if isinstance(out_shape[-1], int) and out_shape[-1] > 0 else None
        if dim is None:
            dim = self._run(np.zeros((1, size, size, 3), np.uint8)).shape[1]
        self.config = dataclasses.replace(self.config, embedding_dim=int(dim),
                                          feature_dims={"embedding": int(dim)})

    @property
    def batched(self) -> bool:
        """Whether a batch of chips goes to onnxruntime in one call."""
        return self.fixed_batch is None

    def _make_dynamic(self, path: Path) -> None:
        """Swap in the dynamic-batch graph when it reproduces the original's per-chip outputs."""
        fixed = self.fixed_batch
        size = self.config.input_size
        chips = np.random.default_rng(0).integers(0, 256, (fixed + 2, size, size, 3), np.uint8)
        try:
            model = cached_dynamic_batch_model(path)
            session = _session(model, self.device)
            x = to_model_input(chips, self.config, self.layout)
            got = np.asarray(session.run([self.output_name], {self.input_name: x})[0], np.float32)
            want = self._run(chips)
            got = got.reshape(len(chips), -1)
            err = float(np.abs(got - want).max())
            if got.shape != want.shape or not err <= PROBE_TOLERANCE * max(1.0, np.abs(want).max()):
                raise ValueError(f"batched outputs differ from per-chip ones by {err:.3g}")
        except Exception as exc:  # noqa: BLE001 - any failure: keep the original graph
            log.warning("%s: a batch of %d only (%s: %s); chips go in one call each",
                        path, fixed, type(exc).__name__, str(exc).strip().splitlines()[0]
                        if str(exc).strip() else "")
            return
        self.session, self.fixed_batch, self._model = session, None, model

    def set_threads(self, n: int | None) -> None:
        if n != self.threads:
            super().set_threads(n)
            self.session = _session(self._model, self.device, self.threads)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = to_model_input(batch, self.config, self.layout)
        n, step = len(x), self.fixed_batch
        if step is None:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
            return np.asarray(out, np.float32).reshape(n, -1)
        parts = []
        for s in range(0, n, step):
            part = x[s:s + step]
            if len(part) < step:  # a fixed batch above 1: pad the last chunk
                part = np.concatenate([part, np.zeros((step - len(part), *x.shape[1:]),
                                                      np.float32)])
            out = np.asarray(self.session.run([self.output_name], {self.input_name: part})[0],
                             np.float32)
            parts.append(out.reshape(step, -1)[:min(step, n - s)])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _features(self, batch, groups):
        return {"embedding": l2_normalise(self._run(batch))}
