"""Adding feature groups (geometry, HOG, a further backbone) to an existing store from its stored
boxes and points, without detecting again; each shard is rewritten atomically."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from faceprobe.embed import features as extra_features
from faceprobe.embed.align import align_face
from faceprobe.embed.backbones import Backbone, BackboneConfig
from faceprobe.embed.images import DEFAULT_MAX_PIXELS, load_image
from faceprobe.embed.prepare import one_line
from faceprobe.embed.recipe import backbone_entry, parse_backbones
from faceprobe.embed.run_config import make_backbones
from faceprobe.embed.workers import CHUNK, default_workers, loader
from faceprobe.errors import ConfigError, StoreError

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
                        f"{r['path']} (shard {shard}) cannot be read again ({one_line(exc)}); "
                        "--add-features needs the images where they were embedded from")
            try:
                f = extra_features.compute(self.groups, cache[1], r, self.config)
                if self.chip_configs:
                    box, lm = extra_features.face_inputs(r)
                    f[CHIPS] = [align_face(cache[1], c, lm, box) for c in self.chip_configs]
                out.append(f)
            except Exception as exc:  # noqa: BLE001
                return shard, len(rows), f"{r['path']} (shard {shard}): {one_line(exc)}"
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
            results = loader(ds, workers)
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
