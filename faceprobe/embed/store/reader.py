"""Store: read access to a store directory (info, shard reads, batches, chips, verify)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from faceprobe.embed import chips as chip_codec
from faceprobe.embed.recipe import recipe_of
from faceprobe.embed.store.data import ShardColumns, StoreData
from faceprobe.embed.store.layout import (
    _SHARD_RE,
    _STR_COLUMNS,
    USABLE_STATUSES,
    _done_shards,
    shard_name,
    stats_name,
)
from faceprobe.embed.store.manifest import _read_manifest
from faceprobe.errors import StoreError
from faceprobe.files import file_sha256


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
