"""Embeddings in and out of a store: Parquet (streamed) and ``.npz`` export, Parquet / ``.npy``
import (``faceprobe store export|import``), and the decoding that ``score`` uses on Parquet.

Export layout (one row per store row): ``path``, ``face``, ``status``, ``split``, ``identity``,
``dataset``, each feature group as a fixed-size list of float32 (null for failed rows), each
label as its class name (string) or, for a regression task such as age, a float (missing =
null), ``box`` / ``landmarks_detected`` / ``landmarks_dataset`` as fixed-size lists (null when
absent) and ``score``. The manifest's provenance (backbone, weights sha256, recipe,
vocabularies, features) is JSON under the ``faceprobe`` key of the file's key-value metadata.

Decisions:
- Parquet export is written one shard at a time (``pyarrow.parquet.ParquetWriter``), so memory
  is one shard whatever the store's size. ``.npz`` holds every column in memory (numpy writes
  it at once); use Parquet for big stores.
- Import reads the input twice, streamed (``ParquetFile.iter_batches``): label columns only, to
  build vocabularies (the manifest needs them before the first shard), then everything. A
  faceprobe export keeps its recorded vocabularies (class order included), so heads trained on
  the re-imported store are the same heads.
- A bad row (null / wrong-length / non-finite embedding) is skipped and reported by its input
  row number (0-based); ``strict`` stops at the first. A column of a type that cannot hold
  numbers is refused up front, in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed.recipe import recipe_of
from faceprobe.embed.store import STATUSES, USABLE_STATUSES, Store, StoreWriter
from faceprobe.errors import ConfigError

META_KEY = b"faceprobe"
_TEXT = ("path", "status", "split", "identity", "dataset")
_ARRAYS = {"box": 4, "landmarks_detected": 10, "landmarks_dataset": 10}
RESERVED = frozenset((*_TEXT, "face", "score", "error", "policy", *_ARRAYS))
BATCH = 65536


def provenance(store: Store) -> dict:
    m = store.meta
    return {"format": "faceprobe-export", "backbone": m.get("backbone"),
            "weights_sha256": m.get("weights_sha256"), "recipe": recipe_of(m),
            "vocabularies": store.vocabularies, "features": store.feature_dims,
            "alignment": m.get("alignment"), "precision": m.get("precision"),
            "dataset": m.get("dataset"), "records_sha256": m.get("records_sha256"),
            "shard_size": m.get("shard_size"), "store": str(store.path)}


def _fixed(a: np.ndarray, null: np.ndarray):
    import pyarrow as pa

    a = np.ascontiguousarray(a, np.float32).reshape(len(a), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1],
                                             mask=pa.array(null))


def _labels(vocab: list[str] | None, y: np.ndarray):
    import pyarrow as pa

    if vocab is None:
        return pa.array(y.astype(np.float32), mask=np.isnan(y))
    names = np.asarray(vocab + [""], dtype=object)[np.where(y >= 0, y, len(vocab))]
    return pa.array(names.tolist(), type=pa.string(), mask=y < 0)


def _shard_table(store: Store, index: int):
    import pyarrow as pa

    d = store.read_shard(index, list(store.feature_dims))
    cols: dict[str, Any] = {"path": pa.array(d.path.tolist(), pa.string()),
                            "face": pa.array(d.extra["face"].astype(np.int32)),
                            "status": pa.array(d.status.tolist(), pa.string())}
    for name in ("split", "identity", "dataset"):
        v = getattr(d, name)
        cols[name] = pa.array(v.tolist(), pa.string(), mask=v == "")
    for g, X in d.X.items():
        cols[g] = _fixed(X, np.isnan(X).all(axis=1))
    for t, vocab in store.vocabularies.items():
        cols[t] = _labels(vocab, d.y[t])
    for name in _ARRAYS:
        a = getattr(d, name).reshape(len(d), -1)
        cols[name] = _fixed(a, np.isnan(a).all(axis=1))
    cols["score"] = pa.array(d.score, mask=np.isnan(d.score))
    return pa.table(cols)


def export_store(store: Store | str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write every row of ``store`` to ``out`` (``.parquet`` streamed, ``.npz`` in memory)."""
    store = store if isinstance(store, Store) else Store(store)
    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".parquet", ".npz"):
        raise ConfigError(f"--out must end in .parquet or .npz, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + kind)
    rows = 0
    meta = json.dumps(provenance(store), sort_keys=True).encode()
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq

            writer = None
            for i in store.shards():
                t = _shard_table(store, i)
                if writer is None:
                    t = t.replace_schema_metadata({META_KEY: meta})
                    writer = pq.ParquetWriter(tmp, t.schema)
                writer.write_table(t.cast(writer.schema))
                rows += len(t)
            if writer is None:
                raise ConfigError(f"store {store.path} has no complete shards to export")
            writer.close()
        else:
            parts = [_shard_table(store, i) for i in store.shards()]
            arrays: dict[str, np.ndarray] = {"faceprobe": np.array(meta.decode())}
            import pyarrow as pa

            t = pa.concat_tables(parts)
            rows = len(t)
            for name in t.column_names:
                col = t.column(name).combine_chunks()
                if pa.types.is_fixed_size_list(col.type):
                    arrays[name] = _matrix(col)[0]  # null rows as NaN
                elif pa.types.is_string(col.type):
                    arrays[name] = np.array(col.fill_null("").to_pylist(), dtype=str)
                else:
                    arrays[name] = col.to_numpy(zero_copy_only=False)
            np.savez(tmp, **arrays)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"out": str(out), "rows": rows, "shards": len(store.shards()),
            "features": store.feature_dims, "tasks": list(store.vocabularies)}


def _matrix(col, dim: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A list column -> (n, dim) float32 (NaN rows where bad), a validity mask, per-row reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
                    or pa.types.is_null(t.value_type)):
        raise ConfigError(f"column of type {t} cannot hold embeddings (want a list of numbers)")
    if dim is None:
        dim = t.list_size if pa.types.is_fixed_size_list(t) else _common_length(col)
    null = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(t):
        length = np.full(n, t.list_size)
    else:
        length = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    ok = ~null & (length == dim)
    X = np.full((n, dim), np.nan, np.float32)
    if ok.any():
        sub = col if ok.all() else col.filter(pa.array(ok))
        vals = sub.flatten().to_numpy(zero_copy_only=False)
        X[ok] = np.asarray(vals, np.float32).reshape(-1, dim)
    finite = np.isfinite(X).all(axis=1)
    why = ["" if o and f else "null" if nu else f"length {ln}, expected {dim}" if not o
           else "NaN or inf" for o, f, nu, ln in zip(ok, finite, null, length, strict=True)] \
        if not (ok & finite).all() else []
    return X, ok & finite, why


def _common_length(col) -> int:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(col.slice(0, 1024)).drop_null().to_numpy()
    if not len(lengths):
        raise ConfigError("cannot tell the embedding dimension: the first rows are all null")
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[counts.argmax()])


def parquet_batch(pf, cap: int = BATCH) -> int:
    """Rows per ``iter_batches`` batch: at most one row group. A batch spanning row groups makes
    pyarrow hold far more than the batch (a 200k-row export read in 65536-row batches over
    10000-row groups peaked at 1.5 GB; one row group at a time, 0.3 GB)."""
    md = pf.metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    return max(1, min(cap, min(sizes) if sizes else cap))


def read_meta(schema) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


class _Source:
    """Record batches of a Parquet file, or of an ``.npy`` matrix plus a CSV of its rows."""

    def __init__(self, path: Path, labels_csv: str | os.PathLike | None, embedding: str):
        self.path = path
        if path.suffix.lower() == ".npy":
            import pyarrow.csv as pcsv

            if labels_csv is None:
                raise ConfigError(f"{path.name} is an .npy matrix: give --labels CSV (with a path "
                                  "column) for its rows")
            self.npy = np.load(path, mmap_mode="r")
            if self.npy.ndim != 2:
                raise ConfigError(f"{path} holds shape {self.npy.shape}; want (rows, dim)")
            self.csv = pcsv.read_csv(labels_csv)
            if len(self.csv) != len(self.npy):
                raise ConfigError(f"{labels_csv} has {len(self.csv)} rows but {path.name} has "
                                  f"{len(self.npy)}; they must match line for line")
            self.embedding = embedding
            self.names = [*self.csv.column_names, embedding]
            self.schema = self.csv.schema
            self.meta: dict = {}
            self.rows = len(self.npy)
        else:
            import pyarrow.parquet as pq

            try:
                self.pf = pq.ParquetFile(path, pre_buffer=False)
            except Exception as exc:  # noqa: BLE001  (pyarrow raises several kinds)
                raise ConfigError(f"{path} is not a readable Parquet file ({exc})") from None
            self.npy = None
            self.schema = self.pf.schema_arrow
            self.names = self.schema.names
            self.meta = read_meta(self.schema)
            self.rows = self.pf.metadata.num_rows

    def batches(self, columns: list[str]) -> Iterator:
        if self.npy is None:
            yield from self.pf.iter_batches(parquet_batch(self.pf), columns=columns)
            return
        keep = [c for c in columns if c != self.embedding]
        for lo in range(0, self.rows, BATCH):
            t = self.csv.slice(lo, BATCH).select(keep)
            if self.embedding in columns:
                X = np.asarray(self.npy[lo:lo + BATCH], np.float32)
                t = t.append_column(self.embedding, _fixed(X, np.zeros(len(X), bool)))
            yield t

    def column_type(self, name: str):
        return None if name not in self.names or name == getattr(self, "embedding", None) \
            else self.schema.field(name).type


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for v in values or ():
        name, sep, col = v.partition("=")
        if not sep or not name or not col:
            raise ConfigError(f"{what} wants NAME=COLUMN, got {v!r}")
        out[name] = col
    return out


def import_file(src: str | os.PathLike, out: str | os.PathLike, *, embedding_column: str =
                "embedding", features: list[str] | None = None, labels: list[str] | None = None,
                labels_csv: str | os.PathLike | None = None, backbone_name: str | None = None,
                strict: bool = False, shard_size: int | None = None, overwrite: bool = False,
                ) -> dict:
    """Build a store at ``out`` from a Parquet file (or ``.npy`` + ``labels_csv``)."""
    import pyarrow as pa

    src = Path(src)
    if not src.exists():
        raise ConfigError(f"{src} does not exist")
    source = _Source(src, labels_csv, embedding_column)
    prov = source.meta
    groups = {"embedding": embedding_column, **_pairs(features, "--feature")}
    if features is None:  # a faceprobe export: every group it holds
        groups.update({g: g for g in prov.get("features") or {} if g in source.names
                       and g != "embedding"})
    for g, c in groups.items():
        if c not in source.names:
            raise ConfigError(f"{src.name} has no column {c!r} for feature group {g!r} (it has "
                              f"{', '.join(source.names[:12])}); name it with --embedding-column "
                              "or --feature GROUP=COLUMN")
    if labels:
        label_cols = _pairs(labels, "--label")
    elif prov.get("vocabularies") is not None:
        label_cols = {t: t for t in prov["vocabularies"] if t in source.names}
    elif source.npy is not None:
        label_cols = {c: c for c in source.names if c not in RESERVED and c != embedding_column}
    else:
        label_cols = {c: c for c in source.names if c in DEFAULT_VOCABULARIES}
    for t, c in label_cols.items():
        if c not in source.names:
            raise ConfigError(f"{src.name} has no column {c!r} for label {t!r}")
    # pass 1: vocabularies
    old_vocab = prov.get("vocabularies") or {}
    regression = {}
    for t, c in label_cols.items():
        typ = source.column_type(c)
        if typ is None or not (pa.types.is_string(typ) or pa.types.is_large_string(typ)
                               or pa.types.is_floating(typ) or pa.types.is_integer(typ)
                               or pa.types.is_boolean(typ) or pa.types.is_dictionary(typ)):
            raise ConfigError(f"label column {c!r} has type {typ}: want strings or numbers")
        regression[t] = pa.types.is_floating(typ) or pa.types.is_integer(typ)
    seen: dict[str, set] = {t: set() for t, r in regression.items() if not r}
    if seen:
        for b in source.batches(sorted({label_cols[t] for t in seen})):
            for t in seen:
                seen[t].update(str(v) for v in b.column(label_cols[t]).unique().to_pylist()
                               if v is not None)
    vocab: dict[str, list[str] | None] = {}
    for t in label_cols:
        if regression[t]:
            vocab[t] = None
        else:
            base = [v for v in (old_vocab.get(t) or []) if label_cols[t] == t]
            vocab[t] = base + sorted(seen[t] - set(base))
    # pass 2: rows
    ftypes = {g: source.schema.field(c).type if c in source.schema.names else None
              for g, c in groups.items()}
    dims = {g: (t.list_size if t is not None and pa.types.is_fixed_size_list(t) else None)
            for g, t in ftypes.items()}
    backbone = backbone_name or prov.get("backbone") or "imported"
    same = backbone == prov.get("backbone")
    cols = sorted({*groups.values(), *label_cols.values(),
                   *(c for c in (*_TEXT, "face", "score", *_ARRAYS) if c in source.names)})
    writer = None
    bad: list[tuple[int, str]] = []
    pending: list[dict] = []
    shard = written = 0
    size = shard_size or int(prov.get("shard_size") or 10000)
    base = 0
    try:
        for b in source.batches(cols):
            n = b.num_rows
            mats, oks, whys = {}, np.ones(n, bool), [""] * n
            for g, c in groups.items():
                X, ok, why = _matrix(b.column(c), dims[g])
                dims[g] = X.shape[1]
                mats[g] = X
                for i in np.flatnonzero(~ok):
                    whys[i] = whys[i] or f"{c}: {why[i]}"
                oks &= ok
            get = {c: b.column(c).to_pylist() for c in cols if c not in groups.values()}
            status = get.get("status") or ["ok"] * n
            for i in range(n):
                st = status[i] if status[i] in STATUSES else "ok"
                failed_row = st not in USABLE_STATUSES
                if not oks[i] and not (failed_row and whys[i].endswith("null")):
                    if strict:
                        raise ConfigError(f"row {base + i} of {src.name}: bad embedding "
                                          f"({whys[i]}); fix it or drop --strict to skip it")
                    bad.append((base + i, whys[i]))
                    continue
                lab = {}
                for t, c in label_cols.items():
                    v = get[c][i]
                    if v is None or (regression[t] and not np.isfinite(float(v))):
                        continue
                    lab[t] = float(v) if regression[t] else str(v)
                row = {"path": get["path"][i] if "path" in get else f"row-{base + i}",
                       "status": st, "labels": lab, "face": (get.get("face") or [0] * n)[i],
                       "features": None if failed_row else {g: X[i] for g, X in mats.items()},
                       "score": (get.get("score") or [None] * n)[i]}
                for c in ("split", "identity", "dataset"):
                    row[c] = get[c][i] if c in get else None
                for c in _ARRAYS:
                    if get.get(c) and get[c][i] is not None:
                        row[c] = get[c][i]
                pending.append(row)
            base += n
            if writer is None and pending:
                meta = {"backbone": backbone, "features": dims, "vocabularies": vocab,
                        "shard_size": size, "dataset": prov.get("dataset") or "imported",
                        "alignment": prov.get("alignment") if same else None,
                        "precision": prov.get("precision") if same else None,
                        "weights_sha256": prov.get("weights_sha256") if same else None,
                        "records_sha256": f"imported:{src.name}:{source.rows}",
                        "imported_from": str(src.resolve())}
                if same and prov.get("recipe"):
                    meta["recipe"] = prov["recipe"]
                writer = StoreWriter.open(out, meta, overwrite=overwrite, resume=False)
            while len(pending) >= size:
                writer.write_shard(shard, pending[:size])
                shard, written, pending = shard + 1, written + size, pending[size:]
        if writer is None:
            raise ConfigError(f"{src} has no importable rows ({len(bad)} bad)")
        if pending:
            writer.write_shard(shard, pending)
            shard, written = shard + 1, written + len(pending)
        writer.update_meta(num_shards=shard, num_records=written)
    finally:
        if writer is not None:
            writer.close()
    return {"store": str(out), "rows": written, "shards": shard, "bad_rows": len(bad),
            "bad": [{"row": r, "problem": p} for r, p in bad[:10]], "features": dims,
            "tasks": {t: (v if v is None else len(v)) for t, v in vocab.items()},
            "backbone": backbone}
