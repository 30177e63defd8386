"""The embedding store: a directory of HDF5 shards plus a manifest.

Layout::

    STORE/manifest.json            what every shard was made with (backbone, weights, alignment...)
    STORE/shard-00000.h5           rows [0, shard_size) of the run's record list
    STORE/shard-00000.stats.json   written last: its presence is what marks the shard complete
    STORE/.lock                    flock'ed by the one live writer

Decisions:
- A shard is complete only when both its ``.h5`` and its ``.stats.json`` exist. Each is written to
  ``*.tmp``, flushed, fsync'ed and renamed, h5 first, so a kill at any moment leaves either a
  complete shard or one that the next run rewrites (img2dataset's rule).
- The lock is ``fcntl.flock`` on ``.lock``: the kernel releases it when the owner dies, so a stale
  lock from a killed run is taken over without guessing from pids; the pid is written into the
  file only so the refusal message can name the owner.
- Categorical labels are stored as int16 codes into the vocabulary recorded in the manifest
  (-1 = missing); ``age`` as float32 (NaN = missing). An unexpected label value is refused, never
  silently recoded.
- Nothing is pickled: strings, numbers and JSON only, so a store is data, not code.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import socket
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from faceprobe import __version__, faults
from faceprobe.data.vocab import is_regression
from faceprobe.embed import chips as chip_codec
from faceprobe.embed.recipe import recipe_of
from faceprobe.errors import StoreError, StoreLockedError
from faceprobe.files import file_sha256  # noqa: F401  (re-exported for stages and tests)

FORMAT = "faceprobe-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.stats\.json$")

USABLE_STATUSES = ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks")
FAILED_STATUSES = ("no_face", "face_too_small", "unreadable", "missing", "error")
STATUSES = USABLE_STATUSES + FAILED_STATUSES

# Keys of one row dict given to StoreWriter.write_shard. Only `path` and `status` are required.
ROW_FIELDS: dict[str, str] = {
    "path": "str: the image file",
    "dataset": "str: reader name",
    "split": "str | None",
    "identity": "str | None",
    "face": "int: index of the face in its image (0 unless multi_face='all')",
    "labels": "dict task -> class name or age in years",
    "status": "str: one of STATUSES",
    "error": "str: message for failed rows, '' otherwise",
    "policy": "str: how the face was chosen (largest, central, all, whole_image, dataset)",
    "features": "dict group -> 1-d float array, or None for failed rows",
    "box": "(4,) x1 y1 x2 y2 in image pixels, or None",
    "score": "float detector probability, or None",
    "landmarks_detected": "(5, 2) or None",
    "landmarks_dataset": "(5, 2) or None",
    chip_codec.ROW_KEY: "(size, size, 3) uint8 aligned face, kept when the manifest has `chips`",
}
_STR_COLUMNS = ("path", "dataset", "split", "identity", "status", "error", "policy")
_REQUIRED_META = ("backbone", "features", "vocabularies", "shard_size")
# Manifest keys that must match for a run to resume into an existing store.
_RESUME_KEYS = (
    "backbone", "weights_sha256", "alignment", "precision", "features", "dtype", "shard_size",
    "records_sha256", "vocabularies", "chips", "feature_provenance",
)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def stats_name(index: int) -> str:
    return f"shard-{index:05d}.stats.json"


def records_fingerprint(paths: Iterable[str]) -> str:
    """Hash of the ordered input list: resuming with another input list would misplace shards."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()




def build_vocabularies(records: Iterable[Any], declared: dict[str, list[str] | None]) -> dict:
    """Vocabularies for every task the records carry: the declared ones, and for a categorical
    task nobody declared (a generic CSV column, a folder class), its sorted distinct values."""
    vocab: dict[str, list[str] | None] = {k: (list(v) if v else None) for k, v in declared.items()}
    seen: dict[str, set] = {}
    for rec in records:
        for task, value in rec.labels.items():
            if task in vocab and (vocab[task] is not None or is_regression(task)):
                continue
            seen.setdefault(task, set()).add(str(value))
    for task, values in seen.items():
        vocab[task] = None if is_regression(task) else sorted(values)
    return vocab


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


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


class _Lock:
    """``flock`` on STORE/.lock, the pid of the owner written inside for the refusal message.

    An flock belongs to the open file description, which a ``fork`` shares: a forked child (a
    DataLoader worker) would keep the store locked after its parent died. So every lock this
    process holds is closed in each forked child (``os.register_at_fork`` below; the fd is
    O_CLOEXEC as well, for exec'd children), and the lock lives exactly as long as its owner."""

    _held: weakref.WeakSet[_Lock] = weakref.WeakSet()

    def __init__(self, store: Path):
        self.path = store / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StoreLockedError(_locked_message(self.path, owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}".encode())
        self.fd = fd
        _Lock._held.add(self)

    def release(self) -> None:
        _Lock._held.discard(self)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the fd drops the flock
            self.fd = None

    @classmethod
    def _forget_in_child(cls) -> None:
        # in a forked child: drop this copy of the parent's fds without unlocking (the parent
        # still holds the lock through its own fd) or truncating the owner's record
        for lock in list(cls._held):
            if lock.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(lock.fd)
                lock.fd = None
        cls._held = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Lock._forget_in_child)

_RETRY = "then run again (it resumes)"


def _lock_holders(path: Path) -> list[int]:
    """Pids of the processes on this machine (those /proc lets us see) with an fd of ``path``
    that holds a lock ("lock:" in its fdinfo); or, where fdinfo shows no locks, with it open."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    me, locking, opened = os.getpid(), [], []
    with contextlib.suppress(OSError):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == me:
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    fst = os.stat(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    continue
                opened.append(int(pid))
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if "\nlock:" in f.read():
                        locking.append(int(pid))
                        break
    return sorted(set(locking or opened))


def _describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({cmd[:100]})" if cmd else f"pid {pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_message(path: Path, record: str) -> str:
    """The refusal of a locked store, true to what this machine can check: the recorded owner is
    named as the writer only while it is alive (and, where /proc shows, holds the lock)."""
    store = path.parent
    m = re.match(r"pid (\d+) on (\S+)", record)
    if not m or m.group(2) != socket.gethostname():
        # another machine (a shared filesystem) or no record: nothing here can be checked
        return (f"store {store} is being written by {record or 'another process'}; wait for that "
                f"run to finish or stop it, {_RETRY}")
    owner = int(m.group(1))
    holders = _lock_holders(path)
    if _alive(owner) and (owner in holders or not holders):
        return (f"store {store} is being written by {record}; wait for that run to finish or "
                f"stop it (kill {owner}), {_RETRY}")
    dead = f"store {store} is locked, but not by a live run: its writer, pid {owner}, has exited"
    if holders:
        who = ", ".join(_describe_pid(p) for p in holders)
        one = len(holders) == 1
        return (f"{dead} and {who} {'still holds' if one else 'still hold'} the lock, left over "
                f"from it; stop {'it' if one else 'them'} (kill {' '.join(map(str, holders))}), "
                f"{_RETRY}")
    return (f"{dead} and the lock is still held, most likely by processes it started (its "
            f"decode/detect workers); stop them, {_RETRY}")


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


def encode_rows(rows: Sequence[dict], meta: dict) -> dict[str, np.ndarray]:
    """Row dicts -> the shard's column arrays (validated against the manifest)."""
    n = len(rows)
    str_dt = h5py.string_dtype("utf-8")
    cols: dict[str, np.ndarray] = {}
    for name in _STR_COLUMNS:
        cols[name] = np.array([_text(r.get(name)) for r in rows], dtype=object).astype(str_dt) \
            if n else np.zeros(0, dtype=str_dt)
    for r in rows:
        if r.get("status") not in STATUSES:
            raise StoreError(f"row {r.get('path')!r} has unknown status {r.get('status')!r}")
    cols["face"] = np.array([int(r.get("face") or 0) for r in rows], dtype=np.int16)
    dtype = np.float16 if meta.get("dtype") == "float16" else np.float32
    for group, dim in meta["features"].items():
        arr = np.full((n, int(dim)), np.nan, dtype=dtype)
        for i, r in enumerate(rows):
            vec = (r.get("features") or {}).get(group)
            if vec is None:
                continue
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
            if vec.shape[0] != int(dim):
                raise StoreError(
                    f"feature {group!r} of {r['path']} has dimension {vec.shape[0]}, "
                    f"the store expects {dim}"
                )
            arr[i] = vec
        cols[f"features/{group}"] = arr
    for task, vocab in meta["vocabularies"].items():
        cols[f"labels/{task}"] = _encode_labels(task, vocab, rows)
    cols["box"] = _stack(rows, "box", (4,))
    cols["score"] = np.array(
        [np.nan if r.get("score") is None else float(r["score"]) for r in rows], dtype=np.float32
    )
    cols["landmarks_detected"] = _stack(rows, "landmarks_detected", (5, 2))
    cols["landmarks_dataset"] = _stack(rows, "landmarks_dataset", (5, 2))
    if meta.get("chips"):
        cols[chip_codec.DATASET] = chip_codec.encode(rows, meta["chips"])
    return cols


def read_shard_rows(path: Path, index: int, meta: dict) -> list[dict]:
    """Shard ``index`` back as the row dicts ``write_shard`` takes (the inverse of
    ``encode_rows``: writing them again gives the same columns, bit for bit). Features are
    those of ``meta["features"]`` the file holds, raw (NaN rows included)."""
    p = Path(path) / shard_name(index)
    with h5py.File(p, "r") as f:
        n = int(f.attrs["rows"])

        def strs(name):
            return list(f[name].asstr()[...]) if n else []
        cols = {name: strs(name) for name in _STR_COLUMNS}
        face = f["face"][...]
        feats = {g: f[f"features/{g}"][...] for g in meta["features"] if f"features/{g}" in f}
        labels = {t: f[f"labels/{t}"][...] for t in meta["vocabularies"]}
        box, score = f["box"][...], f["score"][...]
        lm_det, lm_ds = f["landmarks_detected"][...], f["landmarks_dataset"][...]
        chips = chip_codec.read_rows(f, n) if meta.get("chips") else [None] * n
    rows = []
    for i in range(n):
        lab: dict[str, Any] = {}
        for t, vocab in meta["vocabularies"].items():
            v = labels[t][i]
            if vocab is None:
                if not np.isnan(v):
                    lab[t] = float(v)
            elif v >= 0:
                lab[t] = vocab[int(v)]
        rows.append({
            **{name: cols[name][i] for name in _STR_COLUMNS}, "face": int(face[i]),
            "labels": lab, "features": {g: a[i] for g, a in feats.items()},
            "box": box[i], "score": None if np.isnan(score[i]) else float(score[i]),
            "landmarks_detected": lm_det[i], "landmarks_dataset": lm_ds[i],
            chip_codec.ROW_KEY: chips[i],
        })
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    # A non-UTF-8 file name arrives with surrogate escapes, which HDF5's UTF-8 strings cannot
    # hold. Its stray bytes are kept as \xe9 escapes: U+FFFD would make two names that differ
    # only in those bytes the same path.
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _stack(rows: Sequence[dict], key: str, shape: tuple[int, ...]) -> np.ndarray:
    out = np.full((len(rows), *shape), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r.get(key) is not None:
            out[i] = np.asarray(r[key], dtype=np.float32).reshape(shape)
    return out


def _encode_labels(task: str, vocab: list[str] | None, rows: Sequence[dict]) -> np.ndarray:
    if vocab is None:
        out = np.full(len(rows), np.nan, dtype=np.float32)
        for i, r in enumerate(rows):
            v = (r.get("labels") or {}).get(task)
            if v is not None:
                out[i] = float(v)
        return out
    index = {name: k for k, name in enumerate(vocab)}
    out = np.full(len(rows), -1, dtype=np.int16)
    for i, r in enumerate(rows):
        v = (r.get("labels") or {}).get(task)
        if v is None:
            continue
        try:
            out[i] = index[str(v)]
        except KeyError:
            raise StoreError(
                f"label {task}={v!r} of {r['path']} is not in the store's vocabulary {vocab}"
            ) from None
    return out


def _recipe_key(meta: dict) -> Any:
    """What of a recipe must match to resume: not where the weights file was, only its hash."""
    r = meta.get("recipe") or {}
    return ([{k: v for k, v in b.items() if k != "weights"} for b in r.get("backbones", [])],
            {k: v for k, v in (r.get("detection") or {}).items() if k != "detector_weights"},
            r.get("extra_features"))


def _read_manifest(path: Path) -> dict:
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is not a faceprobe store (no {MANIFEST}); "
                         "create one with `faceprobe embed`") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path / MANIFEST} is damaged ({exc}); re-embed with --overwrite") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path / MANIFEST} is not a faceprobe store manifest")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format {meta.get('format_version')}, newer than this faceprobe "
            f"({__version__}) reads; upgrade faceprobe"
        )
    _check_manifest(path, meta)
    return meta


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_manifest(path: Path, meta: dict) -> None:
    """A manifest is read from disk, so it is untrusted: anything every reader relies on is
    checked here, where a bad value is one line, not a crash deep in a head."""
    where = path / MANIFEST
    feats = meta.get("features")
    if not isinstance(feats, dict) or not feats or not all(
            isinstance(k, str) and _is_count(v) for k, v in feats.items()):
        raise StoreError(f"{where} has invalid feature dimensions {str(feats)[:80]}; "
                         "re-embed with --overwrite")
    vocab = meta.get("vocabularies")
    if not isinstance(vocab, dict) or not all(
            v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            for v in vocab.values()):
        raise StoreError(f"{where} has invalid label vocabularies; re-embed with --overwrite")
    if not _is_count(meta.get("shard_size")):
        raise StoreError(f"{where} has an invalid shard_size {meta.get('shard_size')!r}; "
                         "re-embed with --overwrite")
    for key in ("num_shards", "num_records"):
        v = meta.get(key)
        if v is not None and not (_is_count(v) or v == 0):
            raise StoreError(f"{where} has an invalid {key} {v!r}; re-embed with --overwrite")


def _done_shards(path: Path) -> list[int]:
    done = []
    for p in path.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and (path / shard_name(int(m.group(1)))).exists():
            done.append(int(m.group(1)))
    return sorted(done)


@dataclass
class StoreData:
    """Rows read from a store, as numpy columns (see docs/CONTRACTS.md)."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    path: np.ndarray
    split: np.ndarray
    identity: np.ndarray
    status: np.ndarray
    dataset: np.ndarray
    box: np.ndarray
    score: np.ndarray
    landmarks_detected: np.ndarray
    landmarks_dataset: np.ndarray
    row_id: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.path)

    def subset(self, mask: np.ndarray) -> StoreData:
        def sel(a):
            return a[mask]
        return StoreData(
            X={k: sel(v) for k, v in self.X.items()}, y={k: sel(v) for k, v in self.y.items()},
            path=sel(self.path), split=sel(self.split), identity=sel(self.identity),
            status=sel(self.status), dataset=sel(self.dataset), box=sel(self.box),
            score=sel(self.score), landmarks_detected=sel(self.landmarks_detected),
            landmarks_dataset=sel(self.landmarks_dataset), row_id=sel(self.row_id),
            extra={k: sel(v) for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: Sequence[StoreData]) -> StoreData:
        first = parts[0]

        def cat(get):
            return np.concatenate([get(p) for p in parts])
        return StoreData(
            X={k: cat(lambda p, k=k: p.X[k]) for k in first.X},
            y={k: cat(lambda p, k=k: p.y[k]) for k in first.y},
            path=cat(lambda p: p.path), split=cat(lambda p: p.split),
            identity=cat(lambda p: p.identity), status=cat(lambda p: p.status),
            dataset=cat(lambda p: p.dataset), box=cat(lambda p: p.box),
            score=cat(lambda p: p.score), landmarks_detected=cat(lambda p: p.landmarks_detected),
            landmarks_dataset=cat(lambda p: p.landmarks_dataset), row_id=cat(lambda p: p.row_id),
            extra={k: cat(lambda p, k=k: p.extra[k]) for k in first.extra},
        )


@dataclass
class ShardColumns:
    """Some columns of one shard (``Store.read_columns``): text columns hold UTF-8 ``bytes``."""

    index: int
    X: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else \
            len(next(iter(self.X.values()), ()))


class Store:
    """Read access to a store directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"store {self.path} does not exist; create it with `faceprobe embed`")
        self.meta = _read_manifest(self.path)

    @property
    def vocabularies(self) -> dict[str, list[str] | None]:
        return self.meta["vocabularies"]

    @property
    def feature_dims(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.meta["features"].items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.vocabularies)

    def shards(self) -> list[int]:
        return _done_shards(self.path)

    def shard_stats(self) -> list[dict]:
        out = []
        for i in self.shards():
            try:
                out.append(json.loads((self.path / stats_name(i)).read_text()))
            except (OSError, ValueError) as exc:
                raise StoreError(f"{self.path / stats_name(i)} is damaged ({exc}); "
                                 "run `faceprobe store verify` and re-embed with --repair") from None
        return out

    def info(self) -> dict:
        stats = self.shard_stats()
        status: Counter = Counter()
        for s in stats:
            status.update(s["status"])
        m = self.meta
        return {
            "path": str(self.path), "rows": sum(s["rows"] for s in stats),
            "status": dict(sorted(status.items())),
            "dim": self.feature_dims.get("embedding", next(iter(self.feature_dims.values()), 0)),
            "features": self.feature_dims, "backbone": m["backbone"],
            "weights_sha256": m.get("weights_sha256"), "alignment": m.get("alignment"),
            "precision": m.get("precision"), "dtype": m.get("dtype"),
            "dataset": m.get("dataset"), "root": m.get("root"),
            "shards": len(stats), "shards_expected": m.get("num_shards"),
            "complete": m.get("num_shards") is None or len(stats) == m.get("num_shards"),
            "tasks": {t: (v if v is None else len(v)) for t, v in self.vocabularies.items()},
            "faceprobe_version": m.get("faceprobe_version"), "created": m.get("created"),
            "recipe": recipe_of(m), "chips": m.get("chips"),
        }

    def _check_request(self, features: Sequence[str], tasks: Sequence[str] | None) -> None:
        for g in features:
            if g not in self.feature_dims:
                raise StoreError(
                    f"store {self.path} has no feature group {g!r} (it has "
                    f"{', '.join(self.feature_dims)}); add it with `faceprobe embed ... "
                    f"--out {self.path} --add-features {g}`"
                )
        for t in tasks or ():
            if t not in self.vocabularies:
                raise StoreError(f"store {self.path} has no labels for task {t!r}; "
                                 f"it has: {', '.join(self.vocabularies) or 'none'}")

    @contextlib.contextmanager
    def _open_shard(self, index: int, features: Sequence[str]) -> Iterator[tuple[Any, int]]:
        """(open h5 file, row count) of one shard, each requested feature's shape checked
        against the manifest; an unreadable file becomes one StoreError naming the fix."""
        p = self.path / shard_name(index)
        try:
            with h5py.File(p, "r") as f:
                n = int(f.attrs["rows"])
                for g in features:
                    shape = f[f"features/{g}"].shape
                    if shape != (n, self.feature_dims[g]):
                        raise StoreError(
                            f"shard {p} holds {g!r} of shape {shape}, but the manifest says "
                            f"{n} rows of dimension {self.feature_dims[g]}; the store is "
                            f"inconsistent: run `faceprobe store verify {self.path}`")
                yield f, n
        except (OSError, KeyError) as exc:
            raise StoreError(f"shard {p} is unreadable ({exc}); run `faceprobe store verify "
                             f"{self.path}` and re-embed it with --repair") from None

    def read_shard(self, index: int, features: Sequence[str] = ("embedding",),
                   tasks: Sequence[str] | None = None) -> StoreData:
        """One shard, every column (strings decoded)."""
        self._check_request(features, tasks)
        tasks = list(self.vocabularies) if tasks is None else list(tasks)
        with self._open_shard(index, features) as (f, n):
            def strs(name):
                return f[name].asstr()[...].astype(object) if n else np.zeros(0, object)

            return StoreData(
                X={g: f[f"features/{g}"][...].astype(np.float32, copy=False) for g in features},
                y={t: f[f"labels/{t}"][...] for t in tasks},
                path=strs("path"), split=strs("split"), identity=strs("identity"),
                status=strs("status"), dataset=strs("dataset"), box=f["box"][...],
                score=f["score"][...], landmarks_detected=f["landmarks_detected"][...],
                landmarks_dataset=f["landmarks_dataset"][...],
                row_id=np.stack([np.full(n, index), np.arange(n)], axis=1).astype(np.int64),
                extra={"error": strs("error"), "policy": strs("policy"),
                       "face": f["face"][...]},
            )

    def iter_batches(self, batch_size: int = 65536, *, features: Sequence[str] = ("embedding",),
                     tasks: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                     usable_only: bool = True) -> Iterator[StoreData]:
        """Rows in store order, at most ``batch_size`` at a time; memory is bounded by one shard
        plus one batch."""
        pending: list[StoreData] = []
        count = 0
        for i in self.shards():
            d = self.read_shard(i, features, tasks)
            mask = np.ones(len(d), dtype=bool)
            if usable_only:
                mask &= np.isin(d.status, USABLE_STATUSES)
            if splits is not None:
                mask &= np.isin(d.split, list(splits))
            if not mask.all():
                d = d.subset(mask)
            while len(d):
                take = min(batch_size - count, len(d))
                pending.append(d.subset(np.arange(take)))
                count += take
                d = d.subset(np.arange(take, len(d)))
                if count == batch_size:
                    yield StoreData.concat(pending)
                    pending, count = [], 0
        if pending:
            yield StoreData.concat(pending)

    def read_columns(self, index: int, features: Sequence[str] = ("embedding",),
                     columns: Sequence[str] = ("path", "status", "face")) -> ShardColumns:
        """Only the named columns of one shard, text left as UTF-8 ``bytes`` (never decoded).

        The streaming readers' path (scoring): ``read_shard`` builds every column of a
        ``StoreData`` and decodes strings, which on a 1M-row store cost as much as the scoring."""
        self._check_request(features, ())
        with self._open_shard(index, features) as (f, n):
            X = {}
            for g in features:
                X[g] = np.empty((n, self.feature_dims[g]), np.float32)
                if n:
                    f[f"features/{g}"].read_direct(X[g])
            cols = {c: (f[c][...] if n else np.zeros(0, object)) for c in columns}
        return ShardColumns(index=index, X=X, columns=cols)

    def iter_columns(self, features: Sequence[str] = ("embedding",),
                     columns: Sequence[str] = ("path", "status", "face"), *,
                     prefetch: bool = True) -> Iterator[ShardColumns]:
        """``read_columns`` for every shard in order. With ``prefetch`` the next shard is read in
        a background thread while the caller works on this one (a scorer's matrix products
        release the GIL), so memory holds at most two shards."""
        shards = self.shards()
        if not prefetch or len(shards) < 2:
            for i in shards:
                yield self.read_columns(i, features, columns)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="faceprobe-read") as pool:
            nxt = pool.submit(self.read_columns, shards[0], features, columns)
            for k in range(len(shards)):
                cur = nxt.result()
                if k + 1 < len(shards):
                    nxt = pool.submit(self.read_columns, shards[k + 1], features, columns)
                yield cur

    def load(self, features: Sequence[str] = ("embedding",), tasks: Sequence[str] | None = None,
             splits: Sequence[str] | None = None, usable_only: bool = True) -> StoreData:
        """All matching rows in memory."""
        parts = list(self.iter_batches(1 << 62, features=features, tasks=tasks, splits=splits,
                                       usable_only=usable_only))
        if not parts:
            self._check_request(features, tasks)
            raise StoreError(f"store {self.path} has no usable rows"
                             + (f" in splits {', '.join(splits)}" if splits else ""))
        return parts[0] if len(parts) == 1 else StoreData.concat(parts)

    def load_chips(self, *, splits: Sequence[str] | None = None, tasks: Sequence[str] = (),
                   features: Sequence[str] = ("embedding",)) -> tuple[np.ndarray, StoreData]:
        """Every usable row's aligned chip, (N, size, size, 3) uint8, with those rows' columns
        (identity, split, the labels of ``tasks``, the groups of ``features``) in that order."""
        if not self.meta.get("chips"):
            raise StoreError(f"store {self.path} keeps no face chips; embed it with "
                             "--features embedding,chips")
        chips, parts = [], []
        for d in self.iter_batches(1 << 62, features=tuple(features), tasks=tasks,
                                   splits=splits):
            for shard in np.unique(d.row_id[:, 0]):
                with h5py.File(self.path / shard_name(int(shard)), "r") as f:
                    if chip_codec.DATASET not in f:
                        raise StoreError(f"shard {self.path / shard_name(int(shard))} has no "
                                         "chips although the manifest keeps them; re-embed it "
                                         "with --repair")
                    rows = d.row_id[d.row_id[:, 0] == shard, 1]
                    chips.append(f[chip_codec.DATASET][...][rows])
            parts.append(d)
        if not parts:
            raise StoreError(f"store {self.path} has no usable rows"
                             + (f" in splits {', '.join(splits)}" if splits else ""))
        return np.concatenate(chips), StoreData.concat(parts)

    def verify(self) -> dict:
        """Check every shard against its stats (checksum, rows) and the manifest (shard count,
        feature dimensions, label columns). Damage is reported, never raised: ``damaged`` names
        each shard with its problem, ``missing`` the shards the manifest expects that are not
        complete (a run not finished; ``interrupted``: those a kill left half-written)."""
        damaged: dict[int, str] = {}
        intact: list[int] = []
        rows = 0
        h5_idx = {int(m.group(1)) for p in self.path.iterdir()
                  if (m := re.match(r"^shard-(\d{5,})\.h5$", p.name))}
        stats_idx = {int(m.group(1)) for p in self.path.iterdir()
                     if (m := _SHARD_RE.match(p.name))}
        # an .h5 without stats is a write a kill interrupted: the next run rewrites it, so it
        # is reported as missing (incomplete), not as damage
        interrupted = sorted(h5_idx - stats_idx)
        expected = self.meta.get("num_shards")
        for idx in sorted(h5_idx & stats_idx):
            problem, n = self._check_shard(idx)
            if problem is None and expected is not None and idx >= int(expected):
                problem = f"index beyond the manifest's {expected} shards"
            if problem is None:
                intact.append(idx)
                rows += n
            else:
                damaged[idx] = problem
        missing = []
        if expected is not None:
            missing = [i for i in range(int(expected)) if i not in intact and i not in damaged]
        return {"ok": not damaged and not missing, "store": str(self.path), "shards": len(intact),
                "shards_expected": expected, "rows": rows,
                "damaged": [{"shard": i, "file": shard_name(i), "problem": damaged[i]}
                            for i in sorted(damaged)],
                "missing": missing, "interrupted": interrupted}

    def _check_shard(self, idx: int) -> tuple[str | None, int]:
        p, sp = self.path / shard_name(idx), self.path / stats_name(idx)
        try:
            stats = json.loads(sp.read_text())
            want_rows, want_sha = int(stats["rows"]), str(stats["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"stats file unreadable ({_short(exc)})", 0
        try:
            sha = file_sha256(p)
        except OSError as exc:
            return f"shard file unreadable ({_short(exc)})", 0
        if sha != want_sha:
            return "checksum differs from its stats (modified or damaged after writing)", 0
        try:
            with h5py.File(p, "r") as f:
                n = int(f.attrs["rows"])
                bad = [k for k in (*_STR_COLUMNS, "face", "box", "score") if f[k].shape[0] != n]
                for g, dim in self.feature_dims.items():
                    if f[f"features/{g}"].shape != (n, dim):
                        return (f"feature {g!r} has shape {f[f'features/{g}'].shape}, the "
                                f"manifest says ({n}, {dim})"), 0
                bad += [t for t in self.vocabularies if f[f"labels/{t}"].shape[0] != n]
        except (OSError, KeyError, ValueError) as exc:
            return f"unreadable ({_short(exc)})", 0
        if bad or n != want_rows:
            return "row count differs from its stats", 0
        num = self.meta.get("num_records")
        size = int(self.meta["shard_size"])
        if num is not None and n < min(size, int(num) - idx * size):
            return "fewer rows than the records it covers", 0
        return None, n


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__
