"""What every backbone shares: its config, device/precision choice, weights resolution, batching.

A backbone's :class:`BackboneConfig` travels with it so that preprocessing (chip size, alignment,
template, normalisation) cannot drift from what its weights were trained with: the pipeline asks
the backbone, never a separate setting.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from faceprobe.errors import ConfigError, WeightsError

PRECISIONS = ("fp32", "bf16", "fp16")
DOWNLOAD_TIMEOUT_S = 30


CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # in 0..1 units
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)  # the same in the config's 0..255 pixel units
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def _norm_value(v, what: str) -> float | tuple[float, float, float]:
    """A scalar or a 3-sequence of finite numbers (JSON lists become tuples)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = [float(x) for x in v]
        if len(vals) != 3:
            raise ConfigError(f"{what} must be one number or 3 (one per channel), got {len(vals)}")
        out: float | tuple = tuple(vals)
    elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        vals = [float(v)]
        out = float(v)
    else:
        raise ConfigError(f"{what} must be one number or 3 (one per channel), got {v!r}")
    if not all(np.isfinite(vals)):
        raise ConfigError(f"{what} must be finite, got {v!r}")
    return out


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else "(" + ",".join(f"{x:g}" for x in v) + ")"


def normalisation_label(mean, std) -> str:
    """A readable name for ``(x - mean) / std`` in 0..255 pixel units."""
    m, s = np.broadcast_to(np.asarray(mean, float), 3), np.broadcast_to(np.asarray(std, float), 3)
    if np.allclose(m, 127.5) and np.allclose(s, 127.5):
        return "arcface: (x-127.5)/127.5"
    if np.allclose(m, IMAGENET_MEAN_255) and np.allclose(s, IMAGENET_STD_255):
        return (f"imagenet: x/255, mean {_fmt(IMAGENET_MEAN)}, std {_fmt(IMAGENET_STD)}")
    if np.allclose(m, 0) and np.allclose(s, 1):
        return "none: raw 0..255 pixels"
    return f"(x-{_fmt(mean)})/{_fmt(std)}"


@dataclass(frozen=True)
class BackboneConfig:
    """How a chip becomes the model's input, and what comes out.

    Preprocessing (:func:`to_model_input`): the aligned uint8 RGB chip is put in
    ``channel_order``, normalised as ``(x - mean) / std`` with ``x`` in 0..255 (``mean``/``std``
    one number or one per channel, in the channel order the model receives), and laid out as
    ``layout``. ``normalisation`` is a readable label, derived from mean/std when not given.
    """

    name: str
    input_size: int
    mean: float | tuple[float, float, float]
    std: float | tuple[float, float, float]
    embedding_dim: int
    alignment: str  # 'similarity' (5 points onto template) or 'crop' (margin crop of the box)
    template: tuple | None = None  # (5, 2) points in input_size pixels for 'similarity'
    margin: float = 0.0  # crop margin in output pixels (facenet-pytorch's convention)
    feature_dims: dict = field(default_factory=dict)  # group -> dim; always has 'embedding'
    channel_order: str = "RGB"  # what the model receives: 'RGB' or 'BGR'
    layout: str = "NCHW"  # 'NCHW' or 'NHWC'
    normalisation: str = ""  # readable label, e.g. 'arcface: (x-127.5)/127.5'

    def __post_init__(self):
        # frozen: normalise through object.__setattr__ (JSON lists -> tuples, labels filled in)
        set_ = object.__setattr__
        set_(self, "mean", _norm_value(self.mean, f"backbone {self.name} mean"))
        set_(self, "std", _norm_value(self.std, f"backbone {self.name} std"))
        if np.any(np.asarray(self.std, float) == 0):
            raise ConfigError(f"backbone {self.name} std must not be 0")
        order = str(self.channel_order).upper()
        if order not in CHANNEL_ORDERS:
            raise ConfigError(f"backbone {self.name} channel_order {self.channel_order!r}; "
                              f"choose one of {', '.join(CHANNEL_ORDERS)}")
        set_(self, "channel_order", order)
        layout = str(self.layout).upper()
        if layout not in LAYOUTS:
            raise ConfigError(f"backbone {self.name} layout {self.layout!r}; choose one of "
                              f"{', '.join(LAYOUTS)}")
        set_(self, "layout", layout)
        if self.template is not None:
            set_(self, "template", tuple(tuple(float(c) for c in p) for p in self.template))
        if not self.normalisation:
            set_(self, "normalisation", normalisation_label(self.mean, self.std))

    def as_dict(self) -> dict:
        """JSON-ready; :meth:`from_dict` rebuilds an equal config."""
        return {
            "name": self.name, "input_size": self.input_size,
            "mean": self.mean if isinstance(self.mean, float) else list(self.mean),
            "std": self.std if isinstance(self.std, float) else list(self.std),
            "embedding_dim": self.embedding_dim, "alignment": self.alignment,
            "template": None if self.template is None else [list(p) for p in self.template],
            "margin": self.margin, "feature_dims": dict(self.feature_dims),
            "channel_order": self.channel_order, "layout": self.layout,
            "normalisation": self.normalisation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        """The config of :meth:`as_dict` output, also after a JSON round trip (lists become
        tuples); keys that older manifests lack take their defaults, unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"backbone config has unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(names))}")
        kw = dict(d)
        kw["feature_dims"] = {str(k): int(v) for k, v in (kw.get("feature_dims") or {}).items()}
        for k in ("input_size", "embedding_dim"):
            if kw.get(k) is not None:
                kw[k] = int(kw[k])
        if kw.get("margin") is not None:
            kw["margin"] = float(kw["margin"])
        missing = [f.name for f in fields(cls) if f.name not in kw
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ConfigError(f"backbone config lacks {', '.join(missing)}")
        return cls(**kw)


def to_model_input(batch: np.ndarray, config: BackboneConfig, layout: str | None = None
                   ) -> np.ndarray:
    """A uint8 NHWC RGB batch as the model's float32 input: ``config.channel_order``,
    ``(x - mean) / std`` per channel, then ``layout`` (default ``config.layout``)."""
    x = np.asarray(batch)
    if x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"expected an (n, h, w, 3) RGB batch, got shape {x.shape}")
    if config.channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    x = (x.astype(np.float32) - mean) / std  # broadcasts over the last (channel) axis
    if (layout or config.layout) == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def faceprobe_home() -> Path:
    return Path(os.environ.get("FACEPROBE_HOME", "~/.faceprobe")).expanduser()


def cache_path(name: str) -> Path:
    """A derived model file (an edited or exported graph) in ``$FACEPROBE_HOME/cache``."""
    return faceprobe_home() / "cache" / name


def read_cache(name: str) -> bytes | None:
    try:
        return cache_path(name).read_bytes()
    except OSError:
        return None


def write_cache(name: str, data: bytes) -> None:
    """Keep ``data`` under ``name`` (written to a per-process ``*.tmp``, then renamed, so two
    processes filling the same entry never leave half a file)."""
    path = cache_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:  # a read-only home only costs the work again next time
        pass


def weights_dir() -> Path:
    return faceprobe_home() / "weights"


def offline() -> bool:
    return os.environ.get("FACEPROBE_OFFLINE", "") not in ("", "0") or \
        os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")




def torch_checkpoint_dirs() -> list[Path]:
    """Where torch (and facenet-pytorch, which uses $TORCH_HOME/checkpoints) cache weights."""
    hub = Path(torch.hub.get_dir())
    dirs = [hub / "checkpoints", hub.parent / "checkpoints"]
    return list(dict.fromkeys(dirs))


def resolve_weights(filename: str, explicit: str | os.PathLike | None, url: str | None,
                    extra_dirs: Sequence[Path] = (), what: str = "weights") -> Path:
    """``explicit`` file, else ``$FACEPROBE_HOME/weights/<filename>``, else ``extra_dirs`` (torch's
    checkpoint cache), else download ``url`` into ``$FACEPROBE_HOME/weights`` when online."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"{what} file {p} not found")
        return p
    target = weights_dir() / filename
    for d in (weights_dir(), *extra_dirs):
        if (d / filename).is_file():
            return d / filename
    looked = ", ".join(str(d) for d in (weights_dir(), *extra_dirs))
    hint = (f"download {url or filename} on a connected machine and save it as {target} "
            f"(or set FACEPROBE_HOME, or pass --weights FILE)")
    if url is None:
        raise WeightsError(f"{what} {filename} not found (looked in {looked}); {hint}")
    if offline():
        raise WeightsError(f"{what} {filename} not found (looked in {looked}) and FACEPROBE_OFFLINE "
                           f"is set; {hint}")
    try:
        _download(url, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"{what} {filename} not found (looked in {looked}) and downloading it "
                           f"failed ({reason}); {hint}") from None
    return target


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "faceprobe"})
    # written to a temporary name and renamed, so an interrupted download never looks complete
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp, os.fdopen(fd, "wb") as f:
            while block := resp.read(1 << 20):
                f.write(block)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but CUDA is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}; choose auto, cpu or cuda")
    return dev


def check_precision(precision: str, device: torch.device, supported: Sequence[str] = PRECISIONS,
                    name: str = "") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision not in supported:
        raise ConfigError(f"backbone {name} runs in {', '.join(supported)} only, not {precision}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a CUDA device (CPUs have no fast fp16 path); "
                          "use --precision bf16 on a CPU")
    if precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        import warnings
        warnings.warn(f"{name or 'backbone'}: this CPU has no native bf16 (AVX512-BF16/AMX), so "
                      "bf16 runs emulated and slower than fp32; use --precision fp32 here",
                      stacklevel=2)
    return precision


def native_cpu_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX): without them bf16 is
    emulated and measured 6-8x slower than fp32 (MobileFaceNet training, AVX2 EPYC)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def as_batch(faces, size: int, name: str) -> np.ndarray:
    """Faces as a (n, size, size, 3) uint8 array; a single face becomes a batch of one."""
    if isinstance(faces, np.ndarray):
        arr = faces[None] if faces.ndim == 3 else faces
    else:
        faces = list(faces)
        arr = np.stack(faces) if faces else np.zeros((0, size, size, 3), np.uint8)
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
        raise ValueError(f"backbone {name} takes {size}x{size} RGB chips, got an array of shape "
                         f"{arr.shape}; align faces with faceprobe.embed.align first")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class Backbone:
    """Base class: subclasses set ``config``, ``weights_sha256``, ``device``, ``precision`` and
    implement ``_features(batch uint8 NHWC, groups) -> dict group -> (n, dim) float32``."""

    config: BackboneConfig
    weights_sha256: str
    weights_path: str | None = None
    device: torch.device
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def feature_dims(self) -> dict[str, int]:
        return dict(self.config.feature_dims)

    def check_groups(self, groups: Sequence[str]) -> tuple[str, ...]:
        groups = tuple(groups)
        unknown = [g for g in groups if g not in self.config.feature_dims]
        if unknown:
            raise ConfigError(f"backbone {self.name} has no feature group(s) {', '.join(unknown)}; "
                              f"it has: {', '.join(self.config.feature_dims)}")
        return groups

    def features(self, faces, groups: Sequence[str] = ("embedding", "pooled"), batch_size: int = 64,
                 show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        """Feature groups of aligned chips, computed in batches of ``batch_size``."""
        groups = self.check_groups(groups)
        arr = as_batch(faces, self.config.input_size, self.name)
        n = len(arr)
        out = {g: np.zeros((n, self.config.feature_dims[g]), np.float32) for g in groups}
        starts = range(0, n, max(1, int(batch_size)))
        if show_progress_bar:
            from tqdm.auto import tqdm
            starts = tqdm(starts, total=len(starts), unit="batch", desc=self.name)
        for s in starts:
            part = self._features(arr[s:s + batch_size], groups)
            for g in groups:
                out[g][s:s + batch_size] = part[g]
        return out

    threads: int | None = None  # intra-op threads in this process; None = every core
    # whether the embed pass may shrink ``threads`` to the cores its detection workers leave
    yields_cores = True
    # whether each embed worker process runs its own copy (a single-threaded model, e.g. dlib)
    runs_in_workers = False

    def set_threads(self, n: int | None) -> None:
        """Run on ``n`` intra-op threads (None: every core). The embed pass gives the backbone
        the cores its detection workers leave free: two workers plus a 2-thread backbone on 2
        cores ran at 57 images/s, with a 1-thread backbone at 100 (MobileFaceNet, 600 LFW)."""
        self.threads = None if n is None else max(1, int(n))

    def embed(self, faces, batch_size: int = 64, show_progress_bar: bool = False) -> np.ndarray:
        """(n, embedding_dim) float32, L2-normalised; one row per face."""
        return self.features(faces, ("embedding",), batch_size, show_progress_bar)["embedding"]

    def _features(self, batch: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {**self.config.as_dict(), "weights_sha256": self.weights_sha256,
                "weights": self.weights_path, "device": str(self.device),
                "precision": self.precision}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r})")


class TorchBackbone(Backbone):
    """A backbone whose network runs in torch (``_forward(batch, groups)``): the precision's
    autocast and, on a CPU, the intra-op threads ``set_threads`` gave it."""

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def _features(self, batch, groups):
        if self.threads is None or self.device.type != "cpu":
            return self._forward(batch, groups)
        from faceprobe.threads import torch_threads

        with torch_threads(self.threads):
            return self._forward(batch, groups)

    def _forward(self, batch: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError
