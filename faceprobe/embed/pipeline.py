"""The embed pass: records -> decode -> detect -> align -> backbone -> rows -> store shards.
The per-record steps are in ``prepare``, the worker processes in ``workers``, the run's set-up
and manifest in ``run_config``; adding groups to an existing store in ``add_features``.

Decisions:
- Records are cut into shards of ``shard_size`` consecutive records (the store's contract); a
  resumed run skips complete shards, so a kill loses at most the shards in flight.
- Chips are embedded in batches of ``batch_size`` counted from the start of each shard, so a
  shard's batches, and with them its bits, do not depend on what ran before (resume = rerun).
- Determinism: fixed thread counts per process, no data-dependent batching across shards, seeded
  random weights; two identical fp32 runs are bitwise identical.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from faceprobe.data.records import FaceRecord
from faceprobe.embed import chips as chip_codec
from faceprobe.embed.backbones import Backbone
from faceprobe.embed.backbones.base import resolve_device
from faceprobe.embed.detectors import choose_detector
from faceprobe.embed.embedder import ChipEmbedder, finish_rows
from faceprobe.embed.images import DEFAULT_MAX_PIXELS
from faceprobe.embed.prepare import (
    detect_align,
    detector_for,
    preload_for_workers,
    with_alignment,
)
from faceprobe.embed.run_config import (
    build_meta,
    check_labels,
    check_options,
    in_workers,
    make_backbones,
    prepare_config,
    split_chips,
)
from faceprobe.embed.workers import CHUNK, cores, default_workers, iter_chunks
from faceprobe.errors import ConfigError


def embed_dataset(records: Iterable[FaceRecord], out: str | os.PathLike, backbone: str | Backbone,
                  *, weights=None, shard_size: int = 1000, batch_size: int = 64,
                  device: str = "auto", precision: str = "fp32", workers: int | None = None,
                  limit: int | None = None, multi_face: str = "central", no_face: str = "skip",
                  min_face_size: float | None = None, landmarks: str = "detect",
                  features: Sequence[str] = ("embedding",), resume: bool = True,
                  overwrite: bool = False, show_progress: bool = True,
                  vocabularies: dict | None = None, dataset: str | None = None,
                  root: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  repair: bool = False, align: str | None = None, detector: str = "auto",
                  detector_weights=None) -> dict:
    """Embed every record into the store at ``out``; returns a summary dict (rows by status,
    images/s, shards written/skipped). Resumes an existing store made with the same settings;
    ``repair`` first deletes the shards ``Store.verify`` finds damaged, so they are embedded
    again and the intact ones are kept. ``align`` overrides the backbone's alignment
    (``similarity``, ``crop``, or ``dlib5`` for dlib.resnet) and is recorded in the manifest.
    ``detector``: ``auto`` (default: SCRFD when its file is here, else MTCNN; a resumed store
    keeps its own), ``mtcnn`` or ``scrfd`` (``detector_weights``: its ONNX file, else
    ``scrfd_2.5g_bnkps.onnx`` resolved like backbone weights); recorded in the recipe and in
    the summary."""
    from faceprobe.embed.store import StoreWriter

    if shard_size < 1 or batch_size < 1:
        raise ConfigError("shard_size and batch_size must be at least 1")
    records = list(records)
    if limit is not None:
        records = records[:max(0, int(limit))]
    features, keep_chips = split_chips(features)
    bbs = make_backbones(backbone, weights, device, precision)
    bb = bbs[0]
    if align is not None:
        bb.config = with_alignment(bb.config, align)
    groups = check_options(multi_face, no_face, landmarks, features, bbs)
    detector, detector_weights = choose_detector(detector, detector_weights,
                                                 None if overwrite else out)
    workers = default_workers() if workers is None else max(0, int(workers))
    dev = resolve_device(device if isinstance(backbone, str) else bb.device)
    detect_in_workers = dev.type == "cpu"
    cfg = prepare_config(bbs, groups, multi_face=multi_face, no_face=no_face,
                         min_face_size=min_face_size, landmarks=landmarks, max_pixels=max_pixels,
                         detector_device="cpu" if detect_in_workers else str(dev),
                         detector=detector, detector_weights=detector_weights)
    if detect_in_workers and workers > 0:
        cfg = dataclasses.replace(cfg, in_workers=in_workers(bbs, groups))
    meta = build_meta(records, bbs, cfg, groups, shard_size, vocabularies, dataset, root)
    if keep_chips:
        meta["chips"] = chip_codec.spec(bb.config)
    check_labels(records, meta["vocabularies"])
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
        embedder = ChipEmbedder(bbs, groups, batch_size, keep_chips=keep_chips)
        main_detector = None if detect_in_workers else detector_for(cfg)
        if chunks and detect_in_workers and workers > 0:
            preload_for_workers(cfg, bbs)
            for b in bbs:  # the cores the detection workers leave free
                if b.yields_cores:
                    b.set_threads(max(1, cores() - workers))
        remaining = {i: min(shard_size, len(records) - i * shard_size) for i in pending}
        shard_rows: dict[int, list[dict]] = {i: [] for i in pending}
        try:
            for shard, n_recs, rows in iter_chunks(chunks, cfg, detect_in_workers, workers):
                if main_detector is not None:
                    rows = detect_align(rows, cfg, main_detector)
                embedder.add(rows)
                shard_rows[shard].extend(rows)
                remaining[shard] -= n_recs
                if bar is not None:
                    bar.update(n_recs)
                if remaining[shard] == 0:
                    embedder.flush()
                    rows = finish_rows(shard_rows.pop(shard))
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
        "detector": detector,
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
                 detector: str = "auto", detector_weights=None,
                 landmarks: str = "detect") -> list[dict]:
    """Rows (as for the store, ``features`` as arrays) for raw image files, without a store.
    ``backbone`` and ``detector`` as for :func:`embed_dataset` (several backbones give one group
    each after the first)."""
    records = [FaceRecord(path=str(Path(p)), dataset="images") for p in paths]
    bbs = make_backbones(backbone, weights, device, precision)
    if landmarks == "dataset":
        raise ConfigError("images have no dataset landmarks; use landmarks='detect' or 'dlib68'")
    groups = check_options(multi_face, no_face, landmarks, features, bbs)
    detector, detector_weights = choose_detector(detector, detector_weights)
    cfg = prepare_config(bbs, groups, multi_face=multi_face, no_face=no_face,
                         min_face_size=min_face_size, max_pixels=max_pixels, detector=detector,
                         detector_weights=detector_weights, landmarks=landmarks)
    chunks = [(0, records[k:k + CHUNK]) for k in range(0, len(records), CHUNK)]
    embedder = ChipEmbedder(bbs, groups, batch_size)
    rows: list[dict] = []
    for _, _, part in iter_chunks(chunks, cfg, True, workers):
        embedder.add(part)
        rows.extend(part)
    embedder.flush()
    return finish_rows(rows)


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
