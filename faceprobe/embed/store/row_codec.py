"""Row dicts <-> a shard's HDF5 columns: ``encode_rows`` for the writer, ``read_shard_rows`` its
inverse (for stages that rewrite a shard).

Decisions:
- Categorical labels are stored as int16 codes into the vocabulary recorded in the manifest
  (-1 = missing); ``age`` as float32 (NaN = missing). An unexpected label value is refused, never
  silently recoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from faceprobe.embed import chips as chip_codec
from faceprobe.embed.store.layout import _STR_COLUMNS, STATUSES, shard_name
from faceprobe.errors import StoreError


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
