"""Extra fields: per-row arrays that a later stage writes next to a store's shards.

Layout::

    STORE/extra-<name>-shard-00000.h5   dataset ``values``: one row per row of shard-00000.h5

Decisions:
- The shards and the manifest are never touched: a later stage (``landmarks predict``) adds
  results without risking the embeddings, and deleting ``extra-<name>-*`` undoes it.
- Each file is written to ``*.tmp``, fsync'ed and renamed (the store writer's discipline), so a file that
  exists is complete; its presence is what a resumed run skips.
- Each file records the sha256 of the shard it annotates (from the shard's stats). A shard that
  was re-embedded since makes its extra stale, and reading a stale extra fails with the fix
  instead of silently pairing old predictions with new rows.
- No lock: files are per (name, shard) and atomic, so two writers can only both write the same
  complete file; the store's writer lock is for the embed stage.
- A name that is a built-in column or a reserved word of StoreData is refused, so an extra can
  never be mistaken for (or shadow) the store's own data.
- Reading a field that no shard has at all is an error naming the command that makes it; rows of
  shards without a file, and rows the writer left NaN, read as NaN.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from faceprobe import __version__
from faceprobe.embed.store import ROW_FIELDS, Store, shard_name, stats_name
from faceprobe.errors import StoreError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Built-in row fields, StoreData attribute names and the shard's own h5 columns.
RESERVED = frozenset(ROW_FIELDS) | frozenset({
    "x", "y", "features", "labels", "row_id", "extra", "shard", "rows", "values", "manifest",
})

# The command that writes each known field, for the error that says how to get it.
_PREDICT = "faceprobe landmarks predict MODEL STORE"
WRITERS: dict[str, str] = {
    "landmarks_rcnn": _PREDICT, "landmarks_rcnn_score": _PREDICT, "rcnn_box": _PREDICT,
    "rcnn_box_score": _PREDICT, "rcnn_trained": _PREDICT, "rcnn_gender": _PREDICT + " (with a --classes gender model)",
}


def extra_file_name(name: str, shard_index: int) -> str:
    return f"extra-{name}-shard-{shard_index:05d}.h5"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(f"extra field name {name!r} is invalid; use lowercase letters, digits "
                         "and _ (starting with a letter)")
    if name in RESERVED:
        raise StoreError(f"extra field name {name!r} is a built-in store field; choose another "
                         "name (e.g. prefix it with the stage that writes it)")
    return name


def _shard_info(store_path: Path, shard_index: int) -> dict:
    p = store_path / stats_name(shard_index)
    if not p.exists() or not (store_path / shard_name(shard_index)).exists():
        raise StoreError(f"store {store_path} has no complete shard {shard_index}; an extra field "
                         "can only annotate an existing shard")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{p} is damaged ({exc}); run `faceprobe store verify {store_path}`"
                         ) from None


def write_extra(store_path: str | os.PathLike, name: str, shard_index: int, values,
                attrs: dict | None = None) -> Path:
    """Write ``values`` (one row per row of shard ``shard_index``) as extra field ``name``.

    Floating values are stored as float32 (NaN = no value for that row). ``attrs`` (JSON-able)
    is kept in the file, e.g. which model produced the values.
    """
    store_path = Path(store_path)
    Store(store_path)  # a clear error when it is not a store
    check_name(name)
    stats = _shard_info(store_path, shard_index)
    values = np.asarray(values)
    if values.dtype.kind == "f" or values.dtype.kind in "iub":
        values = values.astype(np.float32)
    else:
        raise StoreError(f"extra field {name!r}: values must be numeric, got {values.dtype}")
    if values.ndim == 0 or values.shape[0] != int(stats["rows"]):
        raise StoreError(f"extra field {name!r} for shard {shard_index} has "
                         f"{values.shape[0] if values.ndim else 0} rows; the shard has "
                         f"{stats['rows']} (faceprobe bug)")
    out = store_path / extra_file_name(name, shard_index)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w", libver="latest") as f:
        f.create_dataset("values", data=values)
        f.attrs["name"] = name
        f.attrs["shard"] = shard_index
        f.attrs["rows"] = int(stats["rows"])
        f.attrs["shard_sha256"] = str(stats.get("sha256", ""))
        f.attrs["faceprobe_version"] = __version__
        f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        f.attrs["attrs_json"] = json.dumps(attrs or {}, sort_keys=True)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def extra_shards(store_path: str | os.PathLike, name: str) -> list[int]:
    """Shards that have a file for extra field ``name`` (whether or not it is stale)."""
    pattern = re.compile(rf"^extra-{re.escape(name)}-shard-(\d{{5,}})\.h5$")
    out = []
    for p in Path(store_path).iterdir():
        m = pattern.match(p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def is_current(store_path: str | os.PathLike, name: str, shard_index: int) -> bool:
    """True when the extra file exists and annotates the shard as it is now."""
    store_path = Path(store_path)
    p = store_path / extra_file_name(name, shard_index)
    if not p.exists():
        return False
    try:
        with h5py.File(p, "r") as f:
            sha = str(f.attrs.get("shard_sha256", ""))
    except OSError:
        return False
    return sha == str(_shard_info(store_path, shard_index).get("sha256", ""))


def list_extras(store_path: str | os.PathLike) -> dict[str, list[int]]:
    """Extra field name -> shards that have it."""
    pattern = re.compile(r"^extra-([a-z][a-z0-9_]*)-shard-(\d{5,})\.h5$")
    out: dict[str, list[int]] = {}
    for p in Path(store_path).iterdir():
        m = pattern.match(p.name)
        if m:
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return {k: sorted(v) for k, v in sorted(out.items())}


def read_extra_attrs(store_path: str | os.PathLike, name: str, shard_index: int) -> dict:
    p = Path(store_path) / extra_file_name(name, shard_index)
    with h5py.File(p, "r") as f:
        return json.loads(f.attrs.get("attrs_json", "{}"))


def read_extra(store: Store | str | os.PathLike, name: str, row_id: np.ndarray) -> np.ndarray:
    """Values of extra field ``name`` for rows ``row_id`` ((n, 2) shard, index), float32 with NaN
    for rows that have none."""
    store = store if isinstance(store, Store) else Store(store)
    check_name(name)
    row_id = np.asarray(row_id, dtype=np.int64).reshape(-1, 2)
    have = extra_shards(store.path, name)
    if not have:
        how = WRITERS.get(name)
        hint = f"; make it with `{how}`" if how else ""
        raise StoreError(f"store {store.path} has no extra field {name!r}{hint}")
    per_shard: dict[int, np.ndarray] = {}
    for s in np.unique(row_id[:, 0]) if len(row_id) else ():
        s = int(s)
        if s not in have:
            continue
        p = store.path / extra_file_name(name, s)
        if not is_current(store.path, name, s):
            raise StoreError(f"{p} was written for an older version of shard {s} (re-embedded "
                             f"since); delete it and run `{WRITERS.get(name, 'the stage that wrote it')}` "
                             "again")
        try:
            with h5py.File(p, "r") as f:
                per_shard[s] = f["values"][...]
        except (OSError, KeyError) as exc:
            raise StoreError(f"{p} is unreadable ({exc}); delete it and write it again") from None
    if per_shard:
        shape = next(iter(per_shard.values())).shape[1:]
    else:  # none of the asked rows has a file: the shape still comes from one that exists
        with h5py.File(store.path / extra_file_name(name, have[0]), "r") as f:
            shape = f["values"].shape[1:]
    out = np.full((len(row_id), *shape), np.nan, dtype=np.float32)
    for s, vals in per_shard.items():
        sel = row_id[:, 0] == s
        idx = row_id[sel, 1]
        if len(idx) and idx.max() >= len(vals):
            raise StoreError(f"extra field {name!r} of shard {s} has {len(vals)} rows; row "
                             f"{int(idx.max())} was asked for (faceprobe bug)")
        out[sel] = vals[idx]
    return out
