"""Batch scoring: a bundle over a store (streamed) or over image files (embedded first).

Output columns: ``path``, ``face``, ``status``, then per categorical task ``{task}`` (the predicted
class) and ``{task}_p_{class}`` for each class, then ``age`` (years) when the head predicts age,
or ``age_expected`` (the expectation over the age_group probabilities) when it predicts only
age_group. Failed rows (no usable embedding) keep their path and status with empty predictions.

Decisions:
- Batches are whole shards (a batch straddling shards would cost a concatenation and a re-slice:
  1M rows read ~1.8x slower with 65536-row batches over 10k-row shards); ``batch_size`` only
  splits them further.
- Only the columns the output needs are read (``Store.iter_columns``), and text stays UTF-8
  bytes from the HDF5 file to the CSV: decoding 1M paths to ``str`` and encoding them back cost
  as much as the model. The next shard is read in a thread while this one is predicted (the
  matrix products release the GIL). Memory: two shards plus one batch of output; nothing
  accumulates across batches.
- CSV is formatted without per-row Python formatting: probabilities are rounded to 4 decimals
  and looked up in a table of the 10001 possible byte strings, ages (0.1 year) likewise, class
  labels from a per-task table; rows are then joined by ``bytes.join`` over ``zip`` (C loops).
  Paths that need CSV quoting are quoted (checked once per batch on the joined text).
- Parquet is written batch by batch with pyarrow when it is installed; asking for ``.parquet``
  without it is refused before any work is done.
- ``show_progress`` draws a tqdm bar on stderr: rows scored for a store; images embedded (rows
  scored as its postfix) for image files, which are embedded and scored ``batch_size`` (256)
  images at a time so the bar moves (embedding is the slow part).
- Scoring only predicts, so a store whose label vocabulary differs from the bundle's (FairFace's
  7 races against a UTKFace bundle's 5) is scored all the same; the result lists the tasks whose
  true labels are not comparable with the predictions (``labels_not_comparable``, by
  ``heads.evaluate.align_tasks``), and the CLI prints them. No true labels are written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, AGE_GROUPS
from faceprobe.embed.store import USABLE_STATUSES, Store
from faceprobe.errors import ConfigError
from faceprobe.heads.common import AGE_GROUP, progress_bar

_P_TABLE = np.array([f"{i / 10000:.4f}".encode() for i in range(10001)], dtype=object)
_AGE_TABLE = np.array([f"{i / 10:.1f}".encode() for i in range(1501)], dtype=object)
_FACE_TABLE = np.array([str(i).encode() for i in range(256)], dtype=object)
_USABLE = np.array([s.encode() for s in USABLE_STATUSES], dtype=object)
_AGE_MIDPOINTS = np.array([1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 75.0], np.float32)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _csv_bytes(b: bytes) -> bytes:
    if any(c in b for c in b',"\n\r'):
        return b'"' + b.replace(b'"', b'""') + b'"'
    return b


class _Columns:
    """The output schema of a bundle: column names and how to fill them from model outputs."""

    def __init__(self, bundle: Any):
        self.bundle = bundle
        voc = bundle.vocabularies
        model = bundle.model
        self.cat_tasks = [t for t in bundle.tasks if voc.get(t)]
        self.has_age = AGE in bundle.tasks
        self.age_expected = not self.has_age and AGE_GROUP in self.cat_tasks \
            and list(voc[AGE_GROUP]) == AGE_GROUPS
        self.bin_means = np.asarray(getattr(model, "age_bin_means_", _AGE_MIDPOINTS), np.float32)
        self.names = ["path", "face", "status"]
        self.label_tables = {}
        for t in self.cat_tasks:
            self.names.append(t)
            self.names += [f"{t}_p_{c}" for c in voc[t]]
            self.label_tables[t] = np.array([_csv_bytes(str(c).encode()) for c in voc[t]],
                                            dtype=object)
        if self.has_age:
            self.names.append(AGE)
        if self.age_expected:
            self.names.append("age_expected")

    def header(self) -> bytes:
        return b",".join(_csv_bytes(n.encode()) for n in self.names) + b"\n"

    def predict(self, X: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.bundle.predict_outputs(X)
        if self.age_expected:
            out["age_expected"] = out[AGE_GROUP] @ self.bin_means
        return out

    def csv_block(self, path: np.ndarray, face: np.ndarray, status: np.ndarray,
                  usable: np.ndarray, out: dict[str, np.ndarray]) -> bytes:
        """Rows as CSV bytes; ``path`` and ``status`` hold UTF-8 bytes (as read from a store)."""
        n = len(path)
        if not n:
            return b""
        paths = path.tolist()
        if any(c in b"".join(paths) for c in b',"\n\r'):
            paths = [_csv_bytes(p) for p in paths]
        face = np.asarray(face, np.int64)
        faces = (_FACE_TABLE[face] if face.min() >= 0 and face.max() < len(_FACE_TABLE)
                 else np.array([str(v).encode() for v in face], dtype=object))
        cols: list[list[bytes]] = [paths, faces.tolist(), status.tolist()]

        def fill(values: np.ndarray) -> list[bytes]:
            if usable.all():
                return values.tolist()
            col = np.full(n, b"", dtype=object)
            col[usable] = values
            return col.tolist()

        for t in self.cat_tasks:
            p = np.asarray(out[t], dtype=np.float32)
            cols.append(fill(self.label_tables[t][p.argmax(axis=1)] if len(p) else []))
            q = np.rint(np.clip(p, 0, 1) * 10000).astype(np.int64)
            for k in range(p.shape[1]):
                cols.append(fill(_P_TABLE[q[:, k]]))
        for name in ([AGE] if self.has_age else []) + (["age_expected"] if self.age_expected else []):
            a = np.rint(np.clip(np.asarray(out[name], np.float64), 0, 150) * 10).astype(np.int64)
            cols.append(fill(_AGE_TABLE[a]))
        return b"\n".join(map(b",".join, zip(*cols, strict=True))) + b"\n"

    def arrow_table(self, path, face, status, usable, out):
        import pyarrow as pa

        n = len(path)
        mask = ~usable

        def fill(values, dtype):
            col = np.zeros(n, dtype=dtype) if dtype is not object else np.full(n, "", dtype=object)
            col[usable] = values
            return pa.array(col, mask=mask)

        data = {"path": pa.array(path.tolist(), type=pa.string()),
                "face": pa.array(np.asarray(face, np.int32)),
                "status": pa.array(status.tolist(), type=pa.string())}
        voc = self.bundle.vocabularies
        for t in self.cat_tasks:
            p = np.asarray(out[t], dtype=np.float32)
            labels = np.asarray(voc[t], dtype=object)[p.argmax(axis=1)] if len(p) else []
            data[t] = fill(labels, object)
            for k, c in enumerate(voc[t]):
                data[f"{t}_p_{c}"] = fill(p[:, k], np.float32)
        for name in ([AGE] if self.has_age else []) + (["age_expected"] if self.age_expected else []):
            data[name] = fill(np.asarray(out[name], np.float32), np.float32)
        return pa.table(data)


class _Writer:
    def __init__(self, out: Path, cols: _Columns):
        self.out, self.cols = out, cols
        self.parquet = out.suffix.lower() == ".parquet"
        self.tmp = out.with_name(out.name + ".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        self._pq = None
        if not self.parquet:
            self._f = open(self.tmp, "wb", buffering=1 << 22)
            self._f.write(cols.header())

    def write(self, path, face, status, usable, out) -> None:
        if self.parquet:
            import pyarrow.parquet as pq

            table = self.cols.arrow_table(path, face, status, usable, out)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
        else:
            self._f.write(self.cols.csv_block(path, face, status, usable, out))

    def close(self, ok: bool) -> None:
        if self.parquet:
            if self._pq is not None:
                self._pq.close()
        else:
            self._f.close()
        if ok and self.tmp.exists():
            os.replace(self.tmp, self.out)
        elif self.tmp.exists():
            self.tmp.unlink()


def check_output(out: str | os.PathLike) -> Path:
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out must end in .csv or .parquet, got {out.name!r}")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow, which is not installed; "
                              "pip install pyarrow, or use --out preds.csv") from None
    return out


@dataclass
class _Batch:
    """What scoring needs of a row batch: features, and path/status as UTF-8 bytes."""

    X: dict[str, np.ndarray]
    path: np.ndarray
    status: np.ndarray
    face: np.ndarray

    images: int | None = None  # image files behind these rows (when scoring images)

    def __len__(self) -> int:
        return len(self.path)


def _score_batches(bundle: Any, batches: Iterable[_Batch], out: Path,
                   progress: Callable[[int], None] | None, bar: Any = None) -> dict[str, Any]:
    cols = _Columns(bundle)
    groups = list(bundle.features)
    writer = _Writer(out, cols)
    rows = scored = 0
    start = time.perf_counter()
    ok = False
    try:
        for d in batches:
            usable = np.isin(d.status, _USABLE)
            if usable.all():
                res = cols.predict({g: d.X[g] for g in groups})
            elif usable.any():
                res = cols.predict({g: d.X[g][usable] for g in groups})
            else:
                res = {t: np.zeros((0, len(bundle.vocabularies[t])), np.float32)
                       for t in cols.cat_tasks}
                res.update({k: np.zeros(0, np.float32) for k in (AGE, "age_expected")})
            writer.write(d.path, d.face, d.status, usable, res)
            rows += len(d)
            scored += int(usable.sum())
            if progress:
                progress(len(d))
            if bar is not None:
                bar.update(len(d) if d.images is None else d.images)
                if d.images is not None:
                    bar.set_postfix(rows=rows, scored=scored, refresh=False)
        ok = True
    finally:
        writer.close(ok)
        if bar is not None:
            bar.close()
    secs = time.perf_counter() - start
    return {"out": str(out), "rows": rows, "scored": scored, "failed": rows - scored,
            "seconds": secs, "rows_per_s": rows / secs if secs > 0 else float("inf")}


def labels_not_comparable(bundle: Any, store: Store) -> dict[str, str]:
    """Tasks the store has labels for that cannot be compared with the bundle's predictions
    (their class vocabularies differ), each with the reason."""
    from faceprobe.heads.evaluate import align_tasks

    return dict(align_tasks(bundle, store.vocabularies).mismatched)


def score_store(bundle: Any, store: Store | str | os.PathLike, out: str | os.PathLike, *,
                batch_size: int | None = None, progress: Callable[[int], None] | None = None,
                show_progress: bool = False) -> dict[str, Any]:
    """Score every row of ``store`` (failed rows included, with empty predictions) into ``out``.

    Shards are read by ``Store.iter_columns`` (only features, path, status and face; text kept
    as bytes; the next shard prefetched in a thread while this one is predicted and written).
    ``batch_size`` only splits shards further, to bound memory on stores with huge shards."""
    out = check_output(out)
    store = store if isinstance(store, Store) else Store(store)
    bundle.check_store(store)
    groups = list(bundle.features)
    not_comparable = labels_not_comparable(bundle, store)
    bar = None
    if show_progress:
        bar = progress_bar(True, sum(s["rows"] for s in store.shard_stats()), "row", "score")

    def batches():
        for sh in store.iter_columns(groups, ("path", "status", "face")):
            n = len(sh)
            step = min(batch_size or n, n) or 1
            for lo in range(0, n, step):
                yield _Batch(X={g: sh.X[g][lo:lo + step] for g in groups},
                             path=sh.columns["path"][lo:lo + step],
                             status=sh.columns["status"][lo:lo + step],
                             face=sh.columns["face"][lo:lo + step])

    res = _score_batches(bundle, batches(), out, progress, bar)
    res["labels_not_comparable"] = not_comparable
    return res


def check_parquet_provenance(bundle: Any, meta: dict, name: str) -> None:
    """Refuse, in one line, a Parquet file whose recorded backbone or weights differ from the
    bundle's (files without faceprobe metadata are taken as they are)."""
    from faceprobe.errors import BundleError

    theirs = meta.get("backbone")
    if theirs and theirs != bundle.backbone:
        raise BundleError(f"bundle {bundle.path} was trained on {bundle.backbone!r} embeddings but "
                          f"{name} holds {theirs!r} (its faceprobe metadata); score embeddings of "
                          "the bundle's backbone or train a bundle on these")
    ws, ours = meta.get("weights_sha256"), (bundle.meta.get("store") or {}).get("weights_sha256")
    if ws and ours and ws != ours:
        raise BundleError(f"bundle {bundle.path} was trained with other {bundle.backbone} weights "
                          f"(sha256 {ours[:12]}) than {name} ({ws[:12]}); re-embed or retrain")


def score_parquet(bundle: Any, src: str | os.PathLike, out: str | os.PathLike, *,
                  batch_size: int | None = None, progress: Callable[[int], None] | None = None,
                  show_progress: bool = False) -> dict[str, Any]:
    """Score embeddings that arrive as Parquet (a ``store export``, or any file with a list column
    per bundle feature group), streamed batch by batch. Optional columns: ``path`` (else
    ``row-N``), ``face``, ``status``. A row whose embedding is null, of the wrong length or not
    finite is written with status ``error`` and empty predictions."""
    import pyarrow.parquet as pq

    from faceprobe.embed.exchange import _matrix, parquet_batch, read_meta

    out = check_output(out)
    src = Path(src)
    try:
        pf = pq.ParquetFile(src, pre_buffer=False)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{src} is not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    check_parquet_provenance(bundle, read_meta(pf.schema_arrow), src.name)
    groups = dict(bundle.features)
    missing = [g for g in groups if g not in names]
    if missing:
        raise ConfigError(f"{src.name} has no column {', '.join(map(repr, missing))} (the "
                          f"bundle's feature groups); it has {', '.join(names[:12])}")
    for g, dim in groups.items():
        t = pf.schema_arrow.field(g).type
        if getattr(t, "list_size", dim) != dim:
            raise ConfigError(f"{src.name} column {g!r} has dimension {t.list_size}; the bundle "
                              f"expects {dim}")
    cols = [*groups, *(c for c in ("path", "face", "status") if c in names)]
    bar = progress_bar(True, pf.metadata.num_rows, "row", "score") if show_progress else None

    def batches():
        base = 0
        for b in pf.iter_batches(parquet_batch(pf, batch_size or 65536), columns=cols):
            n = b.num_rows
            ok = np.ones(n, bool)
            X = {}
            for g, dim in groups.items():
                X[g], good, _ = _matrix(b.column(g), dim)
                ok &= good
            path = (np.array([str(p).encode() for p in b.column("path").to_pylist()], object)
                    if "path" in names else
                    np.array([f"row-{base + i}".encode() for i in range(n)], object))
            status = (np.array([str(s or "ok").encode() for s in b.column("status").to_pylist()],
                               object) if "status" in names else np.full(n, b"ok", object))
            status[~ok & np.isin(status, _USABLE)] = b"error"
            face = (np.asarray(b.column("face").fill_null(0).to_numpy(), np.int64)
                    if "face" in names else np.zeros(n, np.int64))
            base += n
            yield _Batch(X=X, path=path, status=status, face=face)

    return _score_batches(bundle, batches(), out, progress, bar)


def expand_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given; directories walked (sorted) for image files."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*")
                            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(str(p))
        else:
            raise ConfigError(f"{p} does not exist; give image files, directories or a store")
    if not paths:
        raise ConfigError("no image files found in " + ", ".join(map(str, inputs)))
    return paths


def _rows_batch(rows: list[dict], groups: dict[str, int], backbone: str) -> _Batch:
    n = len(rows)
    X = {}
    for g, dim in groups.items():
        X[g] = np.full((n, dim), np.nan, np.float32)
        for i, r in enumerate(rows):
            vec = (r.get("features") or {}).get(g)
            if vec is None:
                continue
            vec = np.asarray(vec, np.float32).reshape(-1)
            if vec.shape[0] != dim:
                raise ConfigError(f"backbone {backbone} gave {g!r} of dimension {vec.shape[0]}; "
                                  f"the bundle expects {dim}")
            X[g][i] = vec
    # as bytes, like the columns read from a store
    return _Batch(X=X, path=np.array([str(r["path"]).encode() for r in rows], dtype=object),
                  status=np.array([str(r["status"]).encode() for r in rows], dtype=object),
                  face=np.array([int(r.get("face") or 0) for r in rows]))


def score_images(bundle: Any, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 batch_size: int = 256, progress: Callable[[int], None] | None = None,
                 weights: Any = None, device: str = "auto", workers: int = 0,
                 embed_batch_size: int = 64, show_progress: bool = False) -> dict[str, Any]:
    """Embed image files exactly as the bundle's training store was embedded (its recipe:
    backbones, weights, preprocessing, alignment, detection policy, feature groups), then score
    them like store rows. ``weights``: the backbones' files when the recorded ones moved."""
    out = check_output(out)
    try:
        from faceprobe.embed.pipeline import embed_images
        from faceprobe.embed.recipe import build_backbones, check_extra_groups, detection_options
    except ImportError as exc:
        raise ConfigError(f"scoring images needs the embed stage, which cannot be imported "
                          f"({exc}); embed the images with `faceprobe embed` and score the "
                          "store instead") from None
    files = expand_images(paths)
    recipe = bundle.recipe
    backbones = build_backbones(recipe, weights=weights, device=device,
                                what=f"bundle {bundle.path}")
    groups = bundle.features
    check_extra_groups(bundle.meta.get("store", {}).get("feature_provenance"), list(groups),
                       f"bundle {bundle.path}")
    options = detection_options(recipe)

    def batches():
        for lo in range(0, len(files), batch_size):
            chunk = files[lo:lo + batch_size]
            rows = embed_images(chunk, backbones, features=tuple(groups),
                                batch_size=embed_batch_size, workers=workers, **options)
            batch = _rows_batch(rows, groups, bundle.backbone)
            batch.images = len(chunk)
            yield batch

    bar = progress_bar(True, len(files), "img", "embed+score") if show_progress else None
    res = _score_batches(bundle, batches(), out, progress, bar)
    res["images"] = len(files)
    return res
