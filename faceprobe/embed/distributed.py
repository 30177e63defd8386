"""The embed pass on a Ray cluster: ``faceprobe embed ... --engine ray``.

    embed_dataset_ray(records, out, backbone, address=None, actors=N, gpus_per_actor=0.0,
                      max_retries=2, **the keyword options of embed_dataset)

Decisions:
- One Ray Data block is one store shard: the driver cuts the record list into the store's shards
  exactly as the local engine does, skips the complete ones *before* dispatch, and hands Ray a
  dataset of ``{"shard": i, "records": JSON}`` items, one block each. Records travel as JSON of
  plain dicts (no FaceRecord pickles), so a worker needs only faceprobe installed, not the
  driver's reader classes.
- ``map_batches`` runs a pool of actors (``concurrency=actors``); each builds the backbone and
  MTCNN once, then runs the local engine's own per-shard code on a shard: ``workers.iter_chunks``
  (decode + detect + align per 16-record chunk, with its never-lose-a-chunk fallback),
  ``embedder.ChipEmbedder`` (batches of ``batch_size`` counted from the shard's start) and
  ``embedder.finish_rows``. Same
  code and same batch boundaries, so a shard's rows match the local engine's (bitwise when the
  thread counts match; within float noise otherwise).
- Only the driver writes: it holds the store lock and writes each returned shard with the same
  ``StoreWriter.write_shard`` (temporary name, fsync, rename, stats), as results stream in. A
  killed driver therefore leaves exactly what a killed local run leaves, and the next run (either
  engine) resumes it; ``store info`` and ``store verify`` see no difference. The manifest is built
  with the same keys and values as the local engine's, so the engines can resume each other.
- Failures are bounded twice. An exception escaping the per-shard code (the per-image code already
  turns image problems into rows, so this is systemic: out of memory, a backbone crash) is retried
  inside the actor up to ``max_retries`` times. A dying actor process (segfault, OOM kill) is
  restarted by Ray and its block re-run up to ``max_retries`` times (``max_task_retries``); after
  that the block is dropped (``max_errored_blocks=-1``) and the driver writes that shard as
  ``error`` rows naming the cause. Either way the shard is then complete; re-embed with
  ``--overwrite`` (or delete the shard's two files) to retry it.
- Rows come back to the driver as one pickled list per shard. That is transport inside one's own
  cluster (Ray pickles everything it moves anyway); the store itself stays pickle-free.
- ``address=None`` starts a throw-away single-machine Ray bound to 127.0.0.1 (nothing listens on
  other interfaces) and shuts it down afterwards; ``'auto'`` or ``HOST:PORT`` joins a running
  cluster, whose nodes need faceprobe installed and the weights file at the same path (each actor
  checks the sha256 against the driver's before embedding anything).
- Ray is optional (``pip install 'faceprobe[ray]'``) and imported only when this engine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from faceprobe import faults
from faceprobe.data.records import FaceRecord
from faceprobe.embed.images import DEFAULT_MAX_PIXELS
from faceprobe.errors import ConfigError, FaceprobeError, WeightsError

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install 'faceprobe[ray]'"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FaceprobeError(f"--engine ray needs Ray Data, which is not installed; run "
                             f"{INSTALL_HINT} (or use --engine local)") from None
    return ray


def _json_default(v: Any):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")


def record_to_dict(rec: FaceRecord) -> dict:
    lm = None if rec.landmarks is None else \
        np.asarray(rec.landmarks, np.float32).reshape(-1).tolist()
    return {"path": rec.path, "dataset": rec.dataset, "labels": dict(rec.labels),
            "raw": dict(rec.raw), "landmarks": lm, "identity": rec.identity, "split": rec.split}


def record_from_dict(d: dict) -> FaceRecord:
    # float32 -> float64 -> JSON text -> float32 is exact, so landmarks survive bit for bit
    lm = None if d.get("landmarks") is None else \
        np.asarray(d["landmarks"], np.float32).reshape(5, 2)
    return FaceRecord(path=d["path"], dataset=d["dataset"], labels=d.get("labels") or {},
                      raw=d.get("raw") or {}, landmarks=lm, identity=d.get("identity"),
                      split=d.get("split"))


def _backbone_spec(bb, weights, align: str | None = None) -> dict:
    """How an actor rebuilds the driver's backbone (an object with dlib/ONNX handles inside is
    not portable; its name, weights, precision and ``--align`` override are)."""
    if weights is None or not isinstance(weights, str | os.PathLike):
        weights = "random" if str(bb.weights_sha256).startswith("random-seed") else \
            getattr(bb, "weights_path", None)
    return {"name": bb.name, "weights": None if weights is None else str(weights),
            "precision": bb.precision, "weights_sha256": bb.weights_sha256, "align": align}


class ShardEmbedder:
    """A Ray Data actor: loads the backbone once, then embeds one shard per call."""

    def __init__(self, spec: dict, prepare: dict, groups: Sequence[str], batch_size: int,
                 device: str, threads: int, max_retries: int):
        import torch

        from faceprobe.embed.backbones import create_backbone
        from faceprobe.embed.prepare import PrepareConfig

        torch.set_num_threads(max(1, int(threads)))  # fixed per process, as in the local engine
        self.bb = create_backbone(spec["name"], weights=spec["weights"], device=device,
                                  precision=spec["precision"])
        if spec.get("align"):  # --align: the same override the local engine applies
            from faceprobe.embed.prepare import with_alignment
            self.bb.config = with_alignment(self.bb.config, spec["align"])
        if self.bb.weights_sha256 != spec["weights_sha256"]:
            raise WeightsError(
                f"{spec['name']} weights on this node (sha256 {self.bb.weights_sha256}) differ "
                f"from the driver's ({spec['weights_sha256']}); put the same file on every node")
        dev = self.bb.device
        self.detect_here = dev.type == "cpu"
        self.cfg = PrepareConfig(self.bb.config, detector_device="cpu" if self.detect_here
                                 else str(dev), **prepare)
        self.groups, self.batch_size, self.max_retries = tuple(groups), batch_size, max_retries

    def embed_shard(self, shard: int, records: list[FaceRecord]) -> list[dict]:
        from faceprobe.embed.embedder import ChipEmbedder, finish_rows
        from faceprobe.embed.prepare import detect_align, detector_for
        from faceprobe.embed.workers import CHUNK, iter_chunks

        chunks = [(shard, records[k:k + CHUNK]) for k in range(0, len(records), CHUNK)]
        embedder = ChipEmbedder([self.bb], self.groups, self.batch_size)
        rows: list[dict] = []
        for _, _, part in iter_chunks(chunks, self.cfg, self.detect_here, 0):
            if not self.detect_here:
                part = detect_align(part, self.cfg, detector_for(self.cfg))
            embedder.add(part)
            rows.extend(part)
        embedder.flush()
        return finish_rows(rows)

    def __call__(self, batch: dict) -> dict:
        shards, results, attempts = [], [], []
        for shard, text in zip(batch["shard"], batch["records"], strict=True):
            shard = int(shard)
            records = [record_from_dict(d) for d in json.loads(text)]
            fault = faults.ray_fault(r.path for r in records)  # bounded-retry tests
            if fault == "exit":
                os._exit(3)
            rows, err, tries = None, None, 0
            while rows is None and tries <= self.max_retries:
                tries += 1
                try:
                    if fault == "raise":
                        raise RuntimeError(f"injected fault on shard {shard}")
                    rows = self.embed_shard(shard, records)
                except Exception as exc:  # noqa: BLE001 - bounded retry, then error rows
                    err = exc
            if rows is None:
                rows = failed_rows(records, f"shard {shard} failed {tries} times: "
                                   f"{_one_line(err)}")
            shards.append(shard)
            results.append(pickle.dumps(rows, protocol=5))
            attempts.append(tries)
        return {"shard": np.array(shards, np.int64), "rows": np.array(results, dtype=object),
                "attempts": np.array(attempts, np.int64)}


def _one_line(exc: BaseException | None) -> str:
    from faceprobe.embed.prepare import one_line
    return one_line(exc) if exc is not None else "unknown error"


def failed_rows(records: Sequence[FaceRecord], message: str) -> list[dict]:
    from faceprobe.embed.prepare import base_row

    rows = []
    for rec in records:
        row = base_row(rec)
        row.pop("chip", None)
        row["status"], row["error"] = "error", f"{rec.path}: {message}"
        rows.append(row)
    return rows


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Joins or starts Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    # log_to_driver off: Ray prints forwarded worker lines on stdout, which must stay clean for
    # `--json`; an actor's failure reaches the user as the error this module raises instead
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
             "logging_level": "warning"}
    if address is None:
        # "local" never attaches to a cluster that `ray start` left running on this machine
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 _node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    return True


def embed_dataset_ray(records: Iterable[FaceRecord], out: str | os.PathLike, backbone,
                      *, address: str | None = None, actors: int | None = None,
                      gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0,
                      num_cpus: int | None = None, max_retries: int = 2, weights=None,
                      shard_size: int = 1000, batch_size: int = 64, device: str = "auto",
                      precision: str = "fp32", workers: int | None = None,
                      limit: int | None = None, multi_face: str = "central",
                      no_face: str = "skip", min_face_size: float | None = None,
                      landmarks: str = "detect", features: Sequence[str] = ("embedding",),
                      resume: bool = True, overwrite: bool = False, show_progress: bool = True,
                      vocabularies: dict | None = None, dataset: str | None = None,
                      root: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      repair: bool = False, align: str | None = None) -> dict:
    """``embed_dataset`` on Ray: same store, same rows, same summary keys (plus ``engine``,
    ``actors``, ``retried_shards``, ``lost_shards``); ``repair`` and ``align`` as there (each
    actor applies the ``align`` override to the backbone it builds). ``workers`` is accepted and
    ignored (each actor is one process); ``device`` only chooses where the driver builds the
    backbone to read its metadata: actors use CUDA exactly when ``gpus_per_actor`` > 0.
    ``num_cpus`` sizes the private Ray started when ``address`` is None (default: all CPUs)."""
    from faceprobe.embed.backbones.base import Backbone
    from faceprobe.embed.prepare import with_alignment
    from faceprobe.embed.run_config import (
        build_meta,
        check_options,
        make_backbones,
        prepare_config,
    )
    from faceprobe.embed.store import StoreWriter

    ray = _import_ray()
    if shard_size < 1 or batch_size < 1:
        raise ConfigError("shard_size and batch_size must be at least 1")
    if max_retries < 0:
        raise ConfigError(f"max_retries must be 0 or more, got {max_retries}")
    if gpus_per_actor < 0 or cpus_per_actor <= 0:
        raise ConfigError("--gpus-per-actor must be >= 0 and cpus per actor > 0")
    if actors is not None and actors < 1:
        raise ConfigError(f"--actors must be at least 1, got {actors}")
    records = list(records)
    if limit is not None:
        records = records[:max(0, int(limit))]
    # the driver needs the backbone only for its metadata: keep it off the GPU unless fp16 forces
    meta_device = device if precision == "fp16" else "cpu"
    bbs = [backbone] if isinstance(backbone, Backbone) else \
        make_backbones(backbone, weights, meta_device, precision)
    if len(bbs) > 1:
        raise ConfigError("--engine ray embeds with one backbone; use --engine local for "
                          f"{','.join(b.name for b in bbs)}, or add the others afterwards with "
                          "--add-features NAME")
    bb = bbs[0]
    if align is not None:  # before the manifest is built, so it records the override
        bb.config = with_alignment(bb.config, align)
    groups = check_options(multi_face, no_face, landmarks, features, bbs)
    prepare = {"multi_face": multi_face, "no_face": no_face, "min_face_size": min_face_size,
               "landmarks": landmarks, "max_pixels": max_pixels}
    cfg = prepare_config(bbs, groups, **prepare)
    meta = build_meta(records, bbs, cfg, groups, shard_size, vocabularies, dataset, root)
    spec = _backbone_spec(bb, weights, align)

    t0 = time.perf_counter()
    status: Counter = Counter()
    retried: list[int] = []
    lost: list[int] = []
    n_actors = 0
    with StoreWriter.open(out, meta, overwrite=overwrite, resume=resume) as writer:
        repaired = writer.repair() if repair else []
        done = writer.done_shards()
        pending = [i for i in range(meta["num_shards"]) if i not in done]
        shard_recs = {i: records[i * shard_size:(i + 1) * shard_size] for i in pending}
        todo_images = sum(len(r) for r in shard_recs.values())
        if pending:
            started = _connect(ray, address, num_cpus)
            try:
                n_actors = actors or _default_actors(ray, cpus_per_actor, gpus_per_actor,
                                                     len(pending))
                bar = None
                if show_progress:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=todo_images, unit="img", desc=f"embed {bb.name} (ray)",
                               dynamic_ncols=True)
                try:
                    results = _run(ray, shard_recs, spec, prepare, groups, batch_size,
                                   gpus_per_actor, cpus_per_actor, n_actors, max_retries)
                    try:
                        for shard, rows, attempts in results:
                            writer.write_shard(shard, rows)
                            status.update(r["status"] for r in rows)
                            if attempts > 1:
                                retried.append(shard)
                            if bar is not None:
                                bar.update(len(shard_recs[shard]))
                            del shard_recs[shard]
                    except ray.exceptions.RayError as exc:
                        # e.g. actors that cannot load the backbone; the cause is chained
                        kept = len(pending) - len(shard_recs)
                        raise FaceprobeError(
                            f"the Ray run stopped: {_first_line(exc)}; the {kept} shards already "
                            "written are kept, run again to resume") from exc
                    # blocks Ray gave up on after max_retries actor deaths never came back
                    for shard in sorted(shard_recs):
                        rows = failed_rows(shard_recs[shard],
                                           f"shard {shard} lost: its actor died {max_retries + 1}"
                                           " times (out of memory? see the Ray logs)")
                        writer.write_shard(shard, rows)
                        status.update(r["status"] for r in rows)
                        lost.append(shard)
                finally:
                    if bar is not None:
                        bar.close()
            finally:
                if started:
                    ray.shutdown()
    seconds = time.perf_counter() - t0
    return {
        "store": str(out), "backbone": bb.name, "precision": bb.precision,
        "records": len(records), "images": todo_images, "rows": sum(status.values()),
        "status": dict(sorted(status.items())), "shards_written": len(pending),
        "shards_skipped": len(done), "seconds": round(seconds, 3),
        "images_per_s": round(todo_images / seconds, 2) if seconds > 0 and todo_images else None,
        "workers": n_actors, "repaired": [d["shard"] for d in repaired], "engine": "ray", "actors": n_actors,
        "retried_shards": sorted(retried), "lost_shards": lost,
    }


def _first_line(exc: BaseException) -> str:
    """The actor's own error out of Ray's wrapping (whose text embeds the remote traceback)."""
    texts = []
    e: BaseException | None = exc
    while e is not None:
        texts.append(str(e))
        e = e.__cause__
    for text in texts:
        found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", text, re.M)
        if found:
            name, message = found[-1]
            return f"{name}: {message.strip()}"[:300]
    text = next((ln.strip() for t in texts for ln in t.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text}"[:300]


def _default_actors(ray, cpus_per_actor: float, gpus_per_actor: float, n_blocks: int) -> int:
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus_per_actor)
    if gpus_per_actor > 0:
        n = min(n, int(res.get("GPU", 0) // gpus_per_actor))
    if n < 1:
        raise ConfigError(f"the Ray cluster has {res.get('CPU', 0)} CPUs and {res.get('GPU', 0)} "
                          f"GPUs: not enough for one actor of {cpus_per_actor} CPU and "
                          f"{gpus_per_actor} GPU")
    return max(1, min(n, n_blocks))


def _run(ray, shard_recs: dict[int, list[FaceRecord]], spec, prepare, groups, batch_size,
         gpus_per_actor, cpus_per_actor, n_actors, max_retries):
    """Yields (shard, rows, attempts) as actors finish shards, in completion order."""
    from ray.data import DataContext

    items = [{"shard": i, "records": json.dumps([record_to_dict(r) for r in recs],
                                                default=_json_default)}
             for i, recs in shard_recs.items()]
    ctx = DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
    # a Dataset copies the context when it is created, so the override is scoped to this one
    ctx.max_errored_blocks, ctx.enable_progress_bars = -1, False
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        remote = {"num_gpus": gpus_per_actor} if gpus_per_actor > 0 else {}
        with warnings.catch_warnings():
            # max_task_retries has no named parameter yet; Ray warns about the catch-all
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                ShardEmbedder, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cpus_per_actor,
                fn_constructor_kwargs={
                    "spec": spec, "prepare": prepare, "groups": list(groups),
                    "batch_size": batch_size, "device": "cuda" if gpus_per_actor > 0 else "cpu",
                    "threads": max(1, int(cpus_per_actor)), "max_retries": max_retries},
                max_task_retries=max_retries, **remote)
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for shard, blob, attempts in zip(batch["shard"], batch["rows"], batch["attempts"],
                                         strict=True):
            yield int(shard), pickle.loads(blob), int(attempts)


# --- CLI glue (wired into `faceprobe embed` by faceprobe/commands/embed.py) -------------------

def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale-out (Ray)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: worker processes on this machine (default); ray: a pool of Ray "
                        f"actors, this machine or a cluster ({INSTALL_HINT})")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' (the one `ray start` made here) or "
                        "HOST:PORT; default: start a private one-machine Ray for this run")
    g.add_argument("--actors", type=int, default=None,
                   help="Ray actors that each load the backbone once (default: one per CPU, or "
                        "per GPU share with --gpus-per-actor)")
    g.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor, e.g. 0.5 packs two actors on a GPU (default 0: CPU)")


def embed_with_engine(args: argparse.Namespace, records: Iterable[FaceRecord], **kwargs) -> dict:
    """``embed_dataset`` or ``embed_dataset_ray`` per ``args.engine``; kwargs are
    embed_dataset's (out=..., backbone=..., shard_size=..., ...)."""
    engine = getattr(args, "engine", "local") or "local"
    if engine == "local":
        from faceprobe.embed.pipeline import embed_dataset
        return embed_dataset(records, **kwargs)
    if engine != "ray":
        raise ConfigError(f"--engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return embed_dataset_ray(records, address=getattr(args, "address", None),
                             actors=getattr(args, "actors", None),
                             gpus_per_actor=getattr(args, "gpus_per_actor", 0.0) or 0.0,
                             **kwargs)
