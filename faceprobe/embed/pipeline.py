"""The embed pass: records -> decode -> detect -> align -> backbone -> rows -> store shards.

Decisions:
- Records are cut into shards of ``shard_size`` consecutive records (the store's contract); a
  resumed run skips complete shards, so a kill loses at most the shards in flight.
- Decoding, detection and alignment run in worker processes (a torch DataLoader over chunks of
  ~16 records, one torch thread per worker) while the main process runs the backbone on batches
  of chips. On a CPU MTCNN is the bottleneck and its small convolutions scale badly with
  intra-op threads, so processes beat threads. On CUDA the workers only decode and detection
  runs batched on the GPU in the main process.
- Chips are embedded in batches of ``batch_size`` counted from the start of each shard, so a
  shard's batches, and with them its bits, do not depend on what ran before (resume = rerun).
- Nothing about one image can stop the run: every failure becomes a row with a status and a
  one-line message (``missing``, ``unreadable``, ``no_face``, ``face_too_small``, ``error``).
- Determinism: fixed thread counts per process, no data-dependent batching across shards, seeded
  random weights; two identical fp32 runs are bitwise identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed import chips as chip_codec
from faceprobe.embed import features as extra_features
from faceprobe.embed.align import align_face
from faceprobe.embed.backbones import Backbone, BackboneConfig, create_backbone
from faceprobe.embed.backbones.base import resolve_device
from faceprobe.embed.detect import MULTI_FACE_POLICIES, NO_FACE_POLICIES, FaceDetector
from faceprobe.embed.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from faceprobe.embed.recipe import backbone_entry, make_recipe, parse_backbones, parse_weights
from faceprobe.errors import ConfigError, StoreError
from faceprobe.threads import torch_threads

CHUNK = 16  # records per worker task: enough same-size images for one MTCNN batch
LANDMARK_MODES = ("detect", "dataset")
DETECTORS = ("mtcnn", "scrfd")


@dataclass(frozen=True)
class PrepareConfig:
    """Everything a worker needs to turn records into chips (picklable, small)."""

    backbone: BackboneConfig
    multi_face: str = "central"
    no_face: str = "skip"
    min_face_size: float | None = None
    landmarks: str = "detect"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    detector_device: str = "cpu"
    extra_features: tuple = ()  # groups of faceprobe.embed.features computed next to alignment
    others: tuple = ()  # BackboneConfigs of the further backbones, each aligned on its own
    # (index, name, weights file, precision, groups) of backbones the workers run themselves
    in_workers: tuple = ()
    detector: str = "mtcnn"  # see DETECTORS
    detector_weights: str | None = None  # SCRFD's ONNX file, resolved

    def describe(self) -> str:
        b = self.backbone
        how = f"{b.alignment} {b.input_size}px"
        how += f" margin={b.margin:g}" if b.alignment == "crop" else " template"
        ms = "auto" if self.min_face_size is None else f"{self.min_face_size:g}"
        det = "" if self.detector == "mtcnn" else f" detector={self.detector}"
        return (f"{how}; landmarks={self.landmarks} multi_face={self.multi_face} "
                f"no_face={self.no_face} min_face_size={ms}{det}")


ALIGNMENTS = ("similarity", "crop", "dlib5")


def with_alignment(config: BackboneConfig, align: str) -> BackboneConfig:
    """``config`` with another alignment. dlib5 needs dlib's chip geometry (dlib.resnet only);
    similarity needs a template (FaceNet's is ArcFace's, scaled to 160 px with a margin)."""
    if align not in ALIGNMENTS:
        raise ConfigError(f"--align {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    if align == "dlib5" and config.name != "dlib.resnet":
        raise ConfigError("--align dlib5 cuts dlib's own 150x150 chip; it is for dlib.resnet only")
    template = config.template
    if align == "similarity" and template is None:
        from faceprobe.embed.align import ARCFACE_TEMPLATE, scaled_template

        template = tuple(map(tuple, scaled_template(ARCFACE_TEMPLATE, 112, config.input_size,
                                                    0.1).tolist()))
    return dataclasses.replace(config, alignment=align, template=template)


_DETECTORS: dict[tuple, FaceDetector] = {}


def _detector(cfg: PrepareConfig) -> FaceDetector:
    key = (cfg.detector, cfg.detector_weights, cfg.detector_device, cfg.min_face_size,
           cfg.multi_face, cfg.no_face)
    if key not in _DETECTORS:  # one per process: workers build their own after the fork
        if cfg.detector == "scrfd":
            from faceprobe.embed.detect_scrfd import ScrfdDetector

            # one onnxruntime thread on a CPU wherever it runs (a worker, or the main process
            # scoring images), as MTCNN: the same image then gives the same points everywhere
            _DETECTORS[key] = ScrfdDetector(
                cfg.detector_weights, cfg.detector_device, cfg.min_face_size,
                multi_face=cfg.multi_face, no_face=cfg.no_face,
                threads=1 if cfg.detector_device == "cpu" else None)
        else:
            _DETECTORS[key] = FaceDetector(cfg.detector_device, cfg.min_face_size,
                                           multi_face=cfg.multi_face, no_face=cfg.no_face)
    return _DETECTORS[key]


def resolve_detector(detector: str, weights=None) -> str | None:
    """The weights file of ``detector`` (None for MTCNN, whose weights ship inside
    facenet-pytorch; the recipe hashes it); unknown names and missing files fail here, before
    any image."""
    if detector not in DETECTORS:
        raise ConfigError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector == "mtcnn":
        if weights:
            raise ConfigError("--detector-weights is for --detector scrfd; MTCNN's weights ship "
                              "with facenet-pytorch")
        return None
    from faceprobe.embed.detect_scrfd import ScrfdDetector

    return str(ScrfdDetector._resolve(weights))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _base_row(rec: FaceRecord) -> dict:
    lm = None if rec.landmarks is None else np.asarray(rec.landmarks, np.float32).reshape(5, 2)
    return {
        "path": rec.path, "dataset": rec.dataset, "split": rec.split, "identity": rec.identity,
        "face": 0, "labels": dict(rec.labels), "status": "error", "error": "", "policy": "",
        "features": None, "box": None, "score": None, "landmarks_detected": None,
        "landmarks_dataset": lm, "chip": None,
    }


def decode_records(records: Sequence[FaceRecord], cfg: PrepareConfig) -> list[tuple[dict, object]]:
    """(row, image or None) per record; unreadable images become failed rows here."""
    out = []
    for rec in records:
        row = _base_row(rec)
        img = None
        try:
            img = load_image(rec.path, cfg.max_pixels)
        except ImageLoadError as exc:
            row["status"], row["error"] = exc.status, str(exc)
        except Exception as exc:  # noqa: BLE001 - one image never stops the run
            row["status"], row["error"] = "error", f"{rec.path}: {_one_line(exc)}"
        out.append((row, img))
    return out


@contextlib.contextmanager
def _detection_threads(detector: FaceDetector):
    """MTCNN on a CPU runs with one intra-op thread wherever it runs (a worker, the main process
    scoring images, the web app): its points then come out bitwise the same everywhere, so a
    photo scored directly gets the chips its store row got (with two threads the float sums
    differ in the last bits, which moved MobileFaceNet embeddings by ~1e-4)."""
    if detector.device.type != "cpu":
        yield
        return
    with torch_threads(1):
        yield


def detect_align(decoded: list[tuple[dict, object]], cfg: PrepareConfig,
                 detector: FaceDetector) -> list[dict]:
    """Rows (one per chosen face; failed images keep their single row) with ``chip`` set."""
    todo = [(row, img) for row, img in decoded if img is not None]
    results = {}
    if todo:
        use_lm = cfg.landmarks == "dataset"
        imgs = [img for _, img in todo]
        lms = [row["landmarks_dataset"] if use_lm else None for row, _ in todo]
        try:
            with _detection_threads(detector):
                found = detector.locate(imgs, lms)
        except Exception:  # noqa: BLE001 - retry one by one so only the culprit fails
            found = []
            for img, lm in zip(imgs, lms, strict=True):
                try:
                    found.append(detector.locate([img], [lm])[0])
                except Exception as exc:  # noqa: BLE001
                    found.append(exc)
        for (row, _), res in zip(todo, found, strict=True):
            results[id(row)] = res
    rows: list[dict] = []
    for row, img in decoded:
        res = results.get(id(row))
        if res is None:
            rows.append(row)
            continue
        if isinstance(res, BaseException):
            row["status"], row["error"] = "error", f"{row['path']}: detection failed: {_one_line(res)}"
            rows.append(row)
            continue
        row["policy"] = res.policy
        if not res.faces:
            row["status"], row["error"] = res.status, f"{row['path']}: {res.error}"
            rows.append(row)
            continue
        for k, face in enumerate(res.faces):
            r = dict(row) if k else row
            r["face"], r["status"], r["error"] = k, res.status, ""
            r["box"], r["score"] = face.box, face.score
            if res.status != "dataset_landmarks":
                r["landmarks_detected"] = face.landmarks
            try:
                r["chip"] = align_face(img, cfg.backbone, face.landmarks, face.box)
                r["chips"] = [align_face(img, c, face.landmarks, face.box) for c in cfg.others]
            except Exception as exc:  # noqa: BLE001
                r["status"], r["error"] = "error", f"{row['path']}: alignment failed: {_one_line(exc)}"
            else:
                if cfg.extra_features:
                    _add_extra(r, img, cfg, face)
            rows.append(r)
    return rows


def _add_extra(r: dict, img, cfg: PrepareConfig, face) -> None:
    """The extra feature groups of one aligned face, in ``r["extra"]`` (failing the row if they
    cannot be computed: a store never holds a usable row with a group missing)."""
    try:
        r["extra"] = extra_features.compute(
            cfg.extra_features, img, r, cfg.backbone, chip=r["chip"], used_box=face.box,
            used_landmarks=face.landmarks)
    except Exception as exc:  # noqa: BLE001
        r["status"], r["error"] = "error", f"{r['path']}: features failed: {_one_line(exc)}"
        r["chip"] = None


_WORKER_BACKBONES: dict[tuple, Backbone] = {}


def _chip(row: dict, k: int) -> np.ndarray:
    """Backbone ``k``'s chip of a row: the first backbone's is ``chip``, the others' ``chips``."""
    return row["chip"] if k == 0 else row["chips"][k - 1]


def _worker_embed(rows: list[dict], cfg: PrepareConfig) -> list[dict]:
    """Run the backbones that are cheaper in the workers (``in_workers``) on this chunk's chips;
    their groups wait in ``row["pre"]`` for the main process."""
    todo = [r for r in rows if r.get("chip") is not None]
    for k, name, weights, precision, groups in cfg.in_workers if todo else ():
        key = (name, weights, precision)
        try:
            if key not in _WORKER_BACKBONES:  # one per worker process, built after the fork
                _WORKER_BACKBONES[key] = create_backbone(name, weights=weights, device="cpu",
                                                         precision=precision)
            chips = np.stack([_chip(r, k) for r in todo])
            feats = _WORKER_BACKBONES[key].features(chips, groups, batch_size=len(todo))
        except Exception as exc:  # noqa: BLE001 - the chunk's faces fail, not the run
            for r in todo:
                r["status"], r["error"] = "error", f"{r['path']}: embedding failed: {_one_line(exc)}"
                r["chip"] = r["chips"] = None
            return rows
        for i, r in enumerate(todo):
            pre = r.setdefault("pre", {})
            for g in groups:
                pre[g if k == 0 else name] = feats[g][i]
    return rows


def _preload_for_workers(cfg: PrepareConfig, backbones: Sequence[Backbone]) -> None:
    """Build the detector and the backbones the workers run here, before the workers fork, so
    each inherits them instead of importing facenet-pytorch (~2 s) and loading models itself."""
    _detector(cfg)
    for k, name, weights, precision, _ in cfg.in_workers:
        _WORKER_BACKBONES.setdefault((name, weights, precision), backbones[k])


def prepare_records(records: Sequence[FaceRecord], cfg: PrepareConfig, detect: bool = True):
    decoded = decode_records(records, cfg)
    if not detect:
        return decoded
    return _worker_embed(detect_align(decoded, cfg, _detector(cfg)), cfg)


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, chunks: list[tuple[int, list[FaceRecord]]], cfg: PrepareConfig, detect: bool):
        self.chunks, self.cfg, self.detect = chunks, cfg, detect

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        shard, recs = self.chunks[i]
        try:
            return shard, len(recs), prepare_records(recs, self.cfg, self.detect)
        except Exception as exc:  # noqa: BLE001 - never lose a chunk; record why instead
            msg = _one_line(exc)
            rows = []
            for rec in recs:
                row = _base_row(rec)
                row["error"] = f"{rec.path}: {msg}"
                rows.append((row, None) if not self.detect else row)
            return shard, len(recs), rows


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int | None) -> None:
    """In a worker: be SIGKILLed when the parent dies (a ``kill -9`` or the OOM killer gives the
    parent no chance to stop its workers, which would live on re-parented to init). Linux only;
    the signal is tied to the thread that forked the worker, the one iterating the loader. A
    parent that died between the fork and the ``prctl`` is caught by its changed ppid."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _worker_init(_, parent: int | None = None):
    # the store lock's fd was already closed here by store.py's at-fork hook
    _die_with_parent(parent)
    torch.set_num_threads(1)


def _loader(ds, workers: int):
    """A DataLoader whose worker processes end with this process (see ``_die_with_parent``)."""
    import functools
    import multiprocessing as mp

    # forked workers are this process's children; under spawn/forkserver (not faceprobe's
    # default, but a user may set it) their parent differs, so their ppid cannot be checked
    method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
    parent = os.getpid() if method == "fork" else None
    return torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4,
        worker_init_fn=functools.partial(_worker_init, parent=parent),
        collate_fn=lambda x: x, persistent_workers=False,
    )


def _iter_chunks(chunks, cfg, detect, workers):
    ds = _Chunks(chunks, cfg, detect)
    if workers <= 0:
        for i in range(len(ds)):
            yield ds[i]
        return
    yield from _loader(ds, workers)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(8, _cores()))


def make_backbones(backbone, weights=None, device="auto", precision="fp32") -> list[Backbone]:
    """Backbones from a name, ``"a,b"``, a Backbone or a list of either; ``weights`` one per
    backbone (see :func:`faceprobe.embed.recipe.parse_weights`)."""
    if isinstance(backbone, Backbone):
        return [backbone]
    items = parse_backbones(backbone) if isinstance(backbone, str) else list(backbone)
    if not items:
        raise ConfigError("--backbone needs at least one backbone name")
    ws = parse_weights(weights, len(items))
    out = [b if isinstance(b, Backbone) else
           create_backbone(str(b), weights=w, device=device, precision=precision)
           for b, w in zip(items, ws, strict=True)]
    names = [b.name for b in out]
    if len(set(names)) != len(names) or "embedding" in names[1:]:
        raise ConfigError(f"backbones {', '.join(names)}: each backbone once")
    return out


def split_chips(features: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``features`` without the ``chips`` group, and whether it was asked for (chips are kept
    beside the groups, not as one: see faceprobe.embed.chips)."""
    return tuple(g for g in features if g != chip_codec.GROUP), chip_codec.GROUP in features


def _check_options(multi_face, no_face, landmarks, features, backbones: Sequence[Backbone]):
    """The store's groups: the first backbone's (``embedding`` first), the extra groups asked
    for, and one group per further backbone, named after it."""
    if multi_face not in MULTI_FACE_POLICIES:
        raise ConfigError(f"multi_face={multi_face!r}; choose one of {', '.join(MULTI_FACE_POLICIES)}")
    if no_face not in NO_FACE_POLICIES:
        raise ConfigError(f"no_face={no_face!r}; choose one of {', '.join(NO_FACE_POLICIES)}")
    if landmarks not in LANDMARK_MODES:
        raise ConfigError(f"landmarks={landmarks!r}; choose one of {', '.join(LANDMARK_MODES)}")
    first, *rest = backbones
    others = [bb.name for bb in rest]
    groups = tuple(dict.fromkeys(["embedding", *[g for g in features if g not in others],
                                  *others]))
    own, extra = extra_features.split_groups([g for g in groups if g not in others],
                                             tuple(first.config.feature_dims))
    first.check_groups(own)
    extra_features.check_available(extra)
    return groups


def _group_dims(backbones: Sequence[Backbone], groups) -> dict[str, int]:
    dims = {bb.name: bb.config.embedding_dim for bb in backbones[1:]}
    dims.update(extra_features.EXTRA_DIMS)
    dims.update(backbones[0].config.feature_dims)
    return {g: int(dims[g]) for g in groups}


def _extra_groups(groups) -> tuple[str, ...]:
    return tuple(g for g in groups if g in extra_features.EXTRA_DIMS)


def prepare_config(backbones: Sequence[Backbone], groups, *, multi_face="central",
                   no_face="skip", min_face_size=None, landmarks="detect",
                   max_pixels=DEFAULT_MAX_PIXELS, detector_device="cpu", detector="mtcnn",
                   detector_weights=None) -> PrepareConfig:
    return PrepareConfig(backbones[0].config, multi_face, no_face, min_face_size, landmarks,
                         max_pixels, detector_device, _extra_groups(groups),
                         tuple(bb.config for bb in backbones[1:]), detector=detector,
                         detector_weights=detector_weights)


def _in_workers(backbones: Sequence[Backbone], groups) -> tuple:
    """Backbones with ``runs_in_workers`` (dlib: single-threaded, so one copy per worker process
    uses every core where one in the main process uses one) and a weights file to load there."""
    out = []
    for k, bb in enumerate(backbones):
        if bb.runs_in_workers and bb.weights_path:
            own = tuple(g for g in groups if g in bb.config.feature_dims) if k == 0 \
                else ("embedding",)
            out.append((k, bb.name, bb.weights_path, bb.precision, own))
    return tuple(out)


def build_meta(records: Sequence[FaceRecord], backbones: Sequence[Backbone], cfg: PrepareConfig,
               groups, shard_size: int, vocabularies: dict | None, dataset: str | None,
               root: str | None) -> dict:
    """The store manifest of an embed run (both engines write this, so either can resume a
    store the other started)."""
    from faceprobe.embed.store import build_vocabularies, records_fingerprint

    if vocabularies is None:
        tasks = {t for r in records for t in r.labels}
        vocabularies = {t: v for t, v in DEFAULT_VOCABULARIES.items() if t in tasks}
    bb = backbones[0]
    meta = {
        "backbone": bb.name, "weights_sha256": bb.weights_sha256, "alignment": cfg.describe(),
        "precision": bb.precision, "dtype": "float32",
        "features": _group_dims(backbones, groups),
        "vocabularies": build_vocabularies(records, vocabularies), "shard_size": int(shard_size),
        "dataset": dataset or (records[0].dataset if records else None), "root": root,
        "records_sha256": records_fingerprint(r.path for r in records),
        "num_records": len(records), "num_shards": math.ceil(len(records) / shard_size),
        "backbone_config": bb.config.as_dict(),
        "recipe": make_recipe(backbones, multi_face=cfg.multi_face, no_face=cfg.no_face,
                              min_face_size=cfg.min_face_size, landmarks=cfg.landmarks,
                              max_pixels=cfg.max_pixels, extra_features=cfg.extra_features,
                              detector=cfg.detector, detector_weights=cfg.detector_weights),
    }
    if cfg.extra_features:  # only then, so an embedding-only manifest stays as it was
        meta["feature_provenance"] = extra_features.provenance(cfg.extra_features)
    return meta


class _Embedder:
    """Collects chips of one shard and embeds them in fixed batches from the shard's start; each
    backbone embeds its own chips (the first ``chip``, the others ``chips[k - 1]``)."""

    def __init__(self, backbones: Sequence[Backbone], groups, batch_size: int,
                 keep_chips: bool = False):
        self.backbones, self.groups, self.batch_size = list(backbones), tuple(groups), batch_size
        self.keep_chips = keep_chips  # the first backbone's chip goes to the store (chips group)
        others = {bb.name for bb in self.backbones[1:]}
        # the extra groups arrive computed in each row's "extra" (see detect_align)
        self.own = tuple(g for g in self.groups
                         if g not in extra_features.EXTRA_DIMS and g not in others)
        self.pending: list[dict] = []

    def add(self, rows: list[dict]) -> None:
        self.pending.extend(r for r in rows if r.get("chip") is not None)
        while len(self.pending) >= self.batch_size:
            self._run(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]

    def flush(self) -> None:
        if self.pending:
            self._run(self.pending)
        self.pending = []

    def _embed(self, rows: list[dict]) -> dict[str, np.ndarray]:
        feats: dict[str, np.ndarray] = {}
        for k, bb in enumerate(self.backbones):
            groups = self.own if k == 0 else ("embedding",)
            names = groups if k == 0 else (bb.name,)
            if all(n in r.get("pre", {}) for r in rows for n in names):  # done in the workers
                feats.update({n: np.stack([r["pre"][n] for r in rows]) for n in names})
                continue
            chips = np.stack([_chip(r, k) for r in rows])
            part = bb.features(chips, groups, batch_size=len(rows))
            feats.update({n: part[g] for n, g in zip(names, groups, strict=True)})
        return feats

    def _run(self, rows: list[dict]) -> None:
        try:
            feats = self._embed(rows)
        except Exception as exc:  # noqa: BLE001 - a failing batch fails its rows, not the run
            for r in rows:
                r["status"], r["error"] = "error", f"{r['path']}: embedding failed: {_one_line(exc)}"
                r["chip"] = r["chips"] = None
            return
        for i, r in enumerate(rows):
            extra = r.pop("extra", None) or {}
            missing = [g for g in self.groups if g not in feats and g not in extra]
            if missing:
                r["status"] = "error"
                r["error"] = (f"{r['path']}: feature group(s) {', '.join(missing)} were not "
                              "computed (this engine does not compute them)")
            r["features"] = {g: feats[g][i] if g in feats else extra.get(g) for g in self.groups}
            if self.keep_chips and r["status"] != "error":
                r[chip_codec.ROW_KEY] = r["chip"]
            r["chip"] = r["chips"] = None


def _finish(rows: list[dict]) -> list[dict]:
    for r in rows:
        r.pop("chip", None)
        r.pop("chips", None)
        r.pop("pre", None)
        r.pop("extra", None)
        if r["status"] not in ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks"):
            r["features"] = None
            r.pop(chip_codec.ROW_KEY, None)
    return rows


def _check_labels(records: Sequence[FaceRecord], vocab: dict) -> None:
    """Refuse a label outside the store's vocabulary (or a non-numeric regression value) before
    any image is embedded: the store would refuse it anyway, but only when its shard is written,
    maybe hours into the run."""
    allowed = {t: frozenset(v) for t, v in vocab.items() if v is not None}
    for rec in records:
        for task, value in rec.labels.items():
            if task in allowed:
                if str(value) not in allowed[task]:
                    raise StoreError(f"label {task}={str(value)[:40]!r} of {rec.path} is not in "
                                     f"the vocabulary {vocab[task][:12]}; fix the label file or "
                                     "the reader's vocabulary")
            elif task in vocab:
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise StoreError(f"label {task}={str(value)[:40]!r} of {rec.path} is not a "
                                     "number; fix the label file") from None


def embed_dataset(records: Iterable[FaceRecord], out: str | os.PathLike, backbone: str | Backbone,
                  *, weights=None, shard_size: int = 1000, batch_size: int = 64,
                  device: str = "auto", precision: str = "fp32", workers: int | None = None,
                  limit: int | None = None, multi_face: str = "central", no_face: str = "skip",
                  min_face_size: float | None = None, landmarks: str = "detect",
                  features: Sequence[str] = ("embedding",), resume: bool = True,
                  overwrite: bool = False, show_progress: bool = True,
                  vocabularies: dict | None = None, dataset: str | None = None,
                  root: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  repair: bool = False, align: str | None = None, detector: str = "mtcnn",
                  detector_weights=None) -> dict:
    """Embed every record into the store at ``out``; returns a summary dict (rows by status,
    images/s, shards written/skipped). Resumes an existing store made with the same settings;
    ``repair`` first deletes the shards ``Store.verify`` finds damaged, so they are embedded
    again and the intact ones are kept. ``align`` overrides the backbone's alignment
    (``similarity``, ``crop``, or ``dlib5`` for dlib.resnet) and is recorded in the manifest.
    ``detector``: ``mtcnn`` (default) or ``scrfd`` (``detector_weights``: its ONNX file, else
    ``scrfd_2.5g_bnkps.onnx`` resolved like backbone weights); recorded in the recipe."""
    from faceprobe.embed.store import StoreWriter

    if shard_size < 1 or batch_size < 1:
        raise ConfigError("shard_size and batch_size must be at least 1")
    records = list(records)
    if limit is not None:
        records = records[:max(0, int(limit))]
    features, keep_chips = split_chips(features)
    detector_weights = resolve_detector(detector, detector_weights)
    bbs = make_backbones(backbone, weights, device, precision)
    bb = bbs[0]
    if align is not None:
        bb.config = with_alignment(bb.config, align)
    groups = _check_options(multi_face, no_face, landmarks, features, bbs)
    workers = default_workers() if workers is None else max(0, int(workers))
    dev = resolve_device(device if isinstance(backbone, str) else bb.device)
    detect_in_workers = dev.type == "cpu"
    cfg = prepare_config(bbs, groups, multi_face=multi_face, no_face=no_face,
                         min_face_size=min_face_size, landmarks=landmarks, max_pixels=max_pixels,
                         detector_device="cpu" if detect_in_workers else str(dev),
                         detector=detector, detector_weights=detector_weights)
    if detect_in_workers and workers > 0:
        cfg = dataclasses.replace(cfg, in_workers=_in_workers(bbs, groups))
    meta = build_meta(records, bbs, cfg, groups, shard_size, vocabularies, dataset, root)
    if keep_chips:
        meta["chips"] = chip_codec.spec(bb.config)
    _check_labels(records, meta["vocabularies"])
    n_shards = meta["num_shards"]
    t0 = time.perf_counter()
    status: Counter = Counter()
    with StoreWriter.open(out, meta, overwrite=overwrite, resume=resume) as writer:
        repaired = writer.repair() if repair else []
        done = writer.done_shards()
        pending = [i for i in range(n_shards) if i not in done]
        chunks = []
        for i in pending:
            recs = records[i * shard_size:(i + 1) * shard_size]
            chunks += [(i, recs[k:k + CHUNK]) for k in range(0, len(recs), CHUNK)]
        todo_images = sum(len(c) for _, c in chunks)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=todo_images, unit="img", desc=f"embed {'+'.join(b.name for b in bbs)}",
                       dynamic_ncols=True)
        embedder = _Embedder(bbs, groups, batch_size, keep_chips=keep_chips)
        main_detector = None if detect_in_workers else _detector(cfg)
        if chunks and detect_in_workers and workers > 0:
            _preload_for_workers(cfg, bbs)
            for b in bbs:  # the cores the detection workers leave free
                if b.yields_cores:
                    b.set_threads(max(1, _cores() - workers))
        remaining = {i: min(shard_size, len(records) - i * shard_size) for i in pending}
        shard_rows: dict[int, list[dict]] = {i: [] for i in pending}
        try:
            for shard, n_recs, rows in _iter_chunks(chunks, cfg, detect_in_workers, workers):
                if main_detector is not None:
                    rows = detect_align(rows, cfg, main_detector)
                embedder.add(rows)
                shard_rows[shard].extend(rows)
                remaining[shard] -= n_recs
                if bar is not None:
                    bar.update(n_recs)
                if remaining[shard] == 0:
                    embedder.flush()
                    rows = _finish(shard_rows.pop(shard))
                    writer.write_shard(shard, rows)
                    status.update(r["status"] for r in rows)
        finally:
            if bar is not None:
                bar.close()
            for b in bbs:
                b.set_threads(None)
    seconds = time.perf_counter() - t0
    return {
        "store": str(out), "backbone": ",".join(b.name for b in bbs), "precision": bb.precision,
        "records": len(records), "images": todo_images, "rows": sum(status.values()),
        "status": dict(sorted(status.items())), "shards_written": len(pending),
        "shards_skipped": len(done), "seconds": round(seconds, 3),
        "images_per_s": round(todo_images / seconds, 2) if seconds > 0 else None,
        "workers": workers, "repaired": [d["shard"] for d in repaired],
    }


def embed_images(paths: Iterable[str | os.PathLike], backbone, *, weights=None,
                 batch_size: int = 64, device: str = "auto", precision: str = "fp32",
                 multi_face: str = "central", no_face: str = "skip",
                 min_face_size: float | None = None, features: Sequence[str] = ("embedding",),
                 workers: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 detector: str = "mtcnn", detector_weights=None) -> list[dict]:
    """Rows (as for the store, ``features`` as arrays) for raw image files, without a store.
    ``backbone`` as for :func:`embed_dataset` (several give one group each after the first)."""
    records = [FaceRecord(path=str(Path(p)), dataset="images") for p in paths]
    bbs = make_backbones(backbone, weights, device, precision)
    groups = _check_options(multi_face, no_face, "detect", features, bbs)
    detector_weights = resolve_detector(detector, detector_weights)
    cfg = prepare_config(bbs, groups, multi_face=multi_face, no_face=no_face,
                         min_face_size=min_face_size, max_pixels=max_pixels, detector=detector,
                         detector_weights=detector_weights)
    chunks = [(0, records[k:k + CHUNK]) for k in range(0, len(records), CHUNK)]
    embedder = _Embedder(bbs, groups, batch_size)
    rows: list[dict] = []
    for _, _, part in _iter_chunks(chunks, cfg, True, workers):
        embedder.add(part)
        rows.extend(part)
    embedder.flush()
    return _finish(rows)


def format_summary(summary: dict) -> str:
    status = ", ".join(f"{k} {v}" for k, v in summary["status"].items()) or "none"
    rate = summary.get("images_per_s")
    return (f"{summary['images']} images -> {summary['rows']} rows ({status}) in "
            f"{summary['seconds']:.1f}s"
            + (f", {rate:.1f} images/s" if rate else "")
            + f"; shards written {summary['shards_written']}, skipped {summary['shards_skipped']}"
            + (f" (repaired {', '.join(map(str, summary['repaired']))})"
               if summary.get("repaired") else "")
            + f"; store {summary['store']}")



# --- adding feature groups to an existing store ---------------------------------------------

CHIPS = "__chips__"


class _ExtraChunks(torch.utils.data.Dataset):
    """(shard, rows) chunks whose extra groups a worker computes from the stored box/points, and
    the chips of the backbones being added (``CHIPS``, embedded by the main process)."""

    def __init__(self, chunks, groups, config: BackboneConfig, max_pixels, chip_configs=()):
        self.chunks, self.groups, self.config, self.max_pixels = chunks, groups, config, max_pixels
        self.chip_configs = tuple(chip_configs)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        shard, rows = self.chunks[i]
        out, cache = [], (None, None)
        for r in rows:
            if r["status"] not in USABLE:
                out.append({})
                continue
            if cache[0] != r["path"]:  # faces of one image are consecutive rows
                try:
                    cache = (r["path"], load_image(r["path"], self.max_pixels))
                except Exception as exc:  # noqa: BLE001
                    return shard, len(rows), (
                        f"{r['path']} (shard {shard}) cannot be read again ({_one_line(exc)}); "
                        "--add-features needs the images where they were embedded from")
            try:
                f = extra_features.compute(self.groups, cache[1], r, self.config)
                if self.chip_configs:
                    box, lm = extra_features.face_inputs(r)
                    f[CHIPS] = [align_face(cache[1], c, lm, box) for c in self.chip_configs]
                out.append(f)
            except Exception as exc:  # noqa: BLE001
                return shard, len(rows), f"{r['path']} (shard {shard}): {_one_line(exc)}"
        return shard, len(rows), out


_LIGHT = ("path", "status", "box", "landmarks_detected", "landmarks_dataset")
USABLE = ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks")


def _shard_has(path: Path, index: int, groups) -> bool:
    """True when shard ``index`` holds every group and its stats match the file (a kill between
    the two renames of a rewrite leaves them apart: the shard is then rewritten)."""
    import json

    import h5py

    from faceprobe.embed.store import file_sha256, shard_name, stats_name
    try:
        with h5py.File(path / shard_name(index), "r") as f:
            if not all(f"features/{g}" in f for g in groups):
                return False
        stats = json.loads((path / stats_name(index)).read_text())
        return stats.get("sha256") == file_sha256(path / shard_name(index))
    except (OSError, ValueError, KeyError):
        return False


def _embed_added(feats: list[dict], backbones: Sequence[Backbone], batch_size: int) -> None:
    """Embed the chips of the added backbones (``CHIPS`` of each row's computed groups) in
    batches, replacing them by each backbone's group."""
    idx = [i for i, f in enumerate(feats) if CHIPS in f]
    for lo in range(0, len(idx), batch_size):
        part = idx[lo:lo + batch_size]
        for k, bb in enumerate(backbones):
            chips = np.stack([feats[i][CHIPS][k] for i in part])
            emb = bb.features(chips, ("embedding",), batch_size=len(part))["embedding"]
            for j, i in enumerate(part):
                feats[i][bb.name] = emb[j]
    for f in feats:
        f.pop(CHIPS, None)


def add_features(out: str | os.PathLike, groups: Sequence[str], *, backbone: str | None = None,
                 weights=None, device: str = "auto", batch_size: int = 64,
                 workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 show_progress: bool = True) -> dict:
    """Add ``groups`` to the complete store at ``out`` without recomputing the others or
    detecting again: the extra groups (geometry68, geometry5, hog) and whole further backbones
    (a registered name, e.g. ``arcface.mobilefacenet``, becomes a group of that name, its chip
    aligned from the stored box and points; ``weights`` are those backbones' files in order).
    Every shard is read back, the groups computed, and the shard rewritten atomically with its
    existing columns unchanged. Resumable: a shard that already holds the groups is skipped; the
    manifest lists them once all do."""
    from faceprobe.embed.backbones import backbone_names
    from faceprobe.embed.recipe import recipe_of
    from faceprobe.embed.store import Store, StoreWriter, read_shard_rows

    out = Path(out)
    store = Store(out)
    groups = tuple(dict.fromkeys(g for g in groups if g))
    if not groups:
        raise ConfigError("--add-features needs at least one group, e.g. geometry68,hog or "
                          "arcface.mobilefacenet")
    known = set(backbone_names())
    own = [g for g in groups if g not in extra_features.EXTRA_DIMS and g not in known]
    if own:
        raise ConfigError(
            f"--add-features computes {', '.join(extra_features.EXTRA_GROUPS)} or adds a "
            f"backbone by name ({', '.join(sorted(known))}); {', '.join(own)} come from the "
            f"backbone: re-embed with --features {','.join([*store.feature_dims, *own])} "
            "--overwrite")
    first = parse_backbones(backbone)[0] if backbone else None
    if first is not None and first != store.meta["backbone"]:
        raise ConfigError(f"store {out} was embedded with {store.meta['backbone']}, not "
                          f"{first}; pass --backbone {store.meta['backbone']}")
    info = store.info()
    if not info["complete"]:
        raise StoreError(f"store {out} is incomplete ({info['shards']}/{info['shards_expected']} "
                         "shards); finish the embed run (re-run it) before --add-features")
    todo_groups = tuple(g for g in groups if g not in store.feature_dims)
    if store.meta["backbone"] in todo_groups:
        raise ConfigError(f"store {out} already holds {store.meta['backbone']} as its "
                          "'embedding' group")
    t0 = time.perf_counter()
    summary = {"store": str(out), "backbone": store.meta["backbone"], "added": list(todo_groups),
               "shards_written": 0, "shards_skipped": 0, "rows": 0, "seconds": 0.0}
    if not todo_groups:
        summary["shards_skipped"] = len(store.shards())
        return summary
    extra = tuple(g for g in todo_groups if g in extra_features.EXTRA_DIMS)
    names = [g for g in todo_groups if g not in extra_features.EXTRA_DIMS]
    extra_features.check_available(extra)
    added = make_backbones(names, weights, device) if names else []
    config = BackboneConfig.from_dict(store.meta["backbone_config"])
    old_meta = {k: v for k, v in store.meta.items() if k not in ("format", "format_version")}
    new_dims = {**store.feature_dims, **{g: extra_features.EXTRA_DIMS[g] for g in extra},
                **{bb.name: int(bb.config.embedding_dim) for bb in added}}
    prov = {**store.meta.get("feature_provenance", {}), **extra_features.provenance(extra)}
    recipe = recipe_of(store.meta)
    recipe["backbones"] = [*recipe["backbones"], *[backbone_entry(bb, bb.name) for bb in added]]
    recipe["extra_features"] = [*recipe.get("extra_features", []), *extra]
    workers = default_workers() if workers is None else max(0, int(workers))
    with StoreWriter.open(out, old_meta, resume=True) as writer:
        # shards are written with the new groups; the manifest on disk lists them at the end
        writer.meta["features"] = new_dims
        shards = store.shards()
        pending = [i for i in shards if not _shard_has(out, i, todo_groups)]
        summary["shards_skipped"] = len(shards) - len(pending)
        chunks = []
        remaining = {}
        for i in pending:
            # only what the workers need travels; the full rows are read again at write time
            light = [{k: r[k] for k in _LIGHT} for r in read_shard_rows(out, i, old_meta)]
            remaining[i] = len(light)
            chunks += [(i, light[k:k + CHUNK]) for k in range(0, len(light), CHUNK)]
            if not light:  # an empty shard
                writer.write_shard(i, [])
        computed: dict[int, list[dict]] = {i: [] for i in pending}
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(remaining.values()), unit="row",
                       desc=f"add {','.join(todo_groups)}", dynamic_ncols=True)
        ds = _ExtraChunks(chunks, extra, config, max_pixels, [bb.config for bb in added])
        if workers <= 0:
            results = (ds[k] for k in range(len(ds)))
        else:
            results = _loader(ds, workers)
        try:
            for shard, n, feats in results:
                if isinstance(feats, str):
                    raise StoreError(feats + f"; the {summary['shards_written']} shards already "
                                     "rewritten are kept, run again to resume")
                computed[shard].extend(feats)
                remaining[shard] -= n
                if bar is not None:
                    bar.update(n)
                if remaining[shard] == 0:
                    rows = read_shard_rows(out, shard, old_meta)
                    feats = computed.pop(shard)
                    _embed_added(feats, added, batch_size)
                    for r, f in zip(rows, feats, strict=True):
                        r["features"] = None if r["status"] not in USABLE else \
                            {**r["features"], **f}
                    writer.write_shard(shard, rows)
                    summary["shards_written"] += 1
                    summary["rows"] += len(rows)
        finally:
            if bar is not None:
                bar.close()
        writer.update_meta(features=new_dims, feature_provenance=prov, recipe=recipe)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
