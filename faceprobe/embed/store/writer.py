"""StoreWriter: creating or resuming a store and writing its shards atomically.

Decisions:
- A shard is complete only when both its ``.h5`` and its ``.stats.json`` exist. Each is written to
  ``*.tmp``, flushed, fsync'ed and renamed, h5 first, so a kill at any moment leaves either a
  complete shard or one that the next run rewrites (img2dataset's rule).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from faceprobe import __version__, faults
from faceprobe.embed import chips as chip_codec
from faceprobe.embed.store.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    _done_shards,
    _now,
    shard_name,
    stats_name,
)
from faceprobe.embed.store.lock import _Lock
from faceprobe.embed.store.manifest import (
    _REQUIRED_META,
    _RESUME_KEYS,
    _read_manifest,
    _recipe_key,
)
from faceprobe.embed.store.reader import Store
from faceprobe.embed.store.row_codec import encode_rows
from faceprobe.errors import StoreError
from faceprobe.files import file_sha256


def _replace(tmp: Path, path: Path) -> None:
    faults.pause(faults.PAUSE_BEFORE_RENAME)  # reliability tests kill inside this window
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StoreWriter:
    """Writes shards into a store directory; one live writer per store."""

    def __init__(self, path: Path, meta: dict, lock: _Lock):
        self.path = path
        self.meta = meta
        self._lock = lock

    @classmethod
    def open(cls, path: str | os.PathLike, meta: dict, *, overwrite: bool = False,
             resume: bool = True) -> StoreWriter:
        """Create a store, or reopen one made with the same settings to resume it.

        ``meta`` needs at least backbone, features (group -> dim), vocabularies, shard_size;
        conventionally also weights_sha256, alignment, precision, dtype, dataset, root,
        records_sha256, num_records.
        """
        path = Path(path)
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing:
            raise StoreError(f"store metadata lacks {', '.join(missing)} (faceprobe bug)")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store directory; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        lock = _Lock(path)
        lock.acquire()
        try:
            manifest_path = path / MANIFEST
            full = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "faceprobe_version": __version__, "created": _now(), "dtype": "float32", **meta,
            }
            if manifest_path.exists() and not overwrite:
                old = _read_manifest(path)
                changed = [k for k in _RESUME_KEYS if old.get(k) != full.get(k)]
                if "recipe" in old and _recipe_key(old) != _recipe_key(full):
                    changed.append("recipe")
                if changed:
                    raise StoreError(
                        f"store {path} was written with other settings ({', '.join(changed)} "
                        "differ); use --overwrite to replace it or choose another --out"
                    )
                if not resume:
                    raise StoreError(f"store {path} exists; use --overwrite to replace it")
                full["created"] = old.get("created", full["created"])
            elif overwrite:
                for p in path.iterdir():
                    if p.name.startswith(("shard-", "extra-")) or p.name == MANIFEST:
                        p.unlink()
            elif any(p.name.startswith("shard-") for p in path.iterdir()):
                raise StoreError(f"{path} has shards but no {MANIFEST}; use --overwrite")
            for tmp in path.glob("*.tmp"):
                tmp.unlink()
            _write_atomic(manifest_path, json.dumps(full, indent=1, sort_keys=True).encode())
        except BaseException:
            lock.release()
            raise
        return cls(path, full, lock)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._lock.release()

    def done_shards(self) -> set[int]:
        return set(_done_shards(self.path))

    def repair(self) -> list[dict]:
        """Delete every shard ``verify`` finds damaged (its ``.h5`` and stats), so the resume that
        follows re-embeds those shards alone; returns the damaged entries."""
        if self._lock.fd is None:
            raise StoreError(f"store {self.path} writer is closed")
        damaged = Store(self.path).verify()["damaged"]
        for d in damaged:
            for name in (stats_name(d["shard"]), shard_name(d["shard"])):  # stats first: it marks done
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        if damaged:
            _fsync_dir(self.path)
        return damaged

    def update_meta(self, **items: Any) -> None:
        self.meta.update(items)
        _write_atomic(self.path / MANIFEST, json.dumps(self.meta, indent=1, sort_keys=True).encode())

    def write_shard(self, index: int, rows: Sequence[dict], *, extra_stats: dict | None = None
                    ) -> dict:
        """Write rows as shard ``index`` atomically; returns its stats."""
        if self._lock.fd is None:
            raise StoreError(f"store {self.path} writer is closed")
        columns = encode_rows(rows, self.meta)
        h5_path = self.path / shard_name(index)
        tmp = h5_path.with_name(h5_path.name + ".tmp")
        with h5py.File(tmp, "w", libver="latest") as f:
            for name, arr in columns.items():
                if name == chip_codec.DATASET:
                    chip_codec.write(f, arr)
                else:
                    f.create_dataset(name, data=arr)
            f.attrs["shard"] = index
            f.attrs["rows"] = len(rows)
            f.attrs["backbone"] = self.meta["backbone"]
            f.attrs["faceprobe_version"] = __version__
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _replace(tmp, h5_path)
        stats = {
            "shard": index, "rows": len(rows),
            "status": dict(Counter(r["status"] for r in rows)),
            "sha256": file_sha256(h5_path), "bytes": h5_path.stat().st_size,
            "backbone": self.meta["backbone"], "created": _now(), **(extra_stats or {}),
        }
        _write_atomic(self.path / stats_name(index), json.dumps(stats, sort_keys=True).encode())
        _fsync_dir(self.path)
        return stats
