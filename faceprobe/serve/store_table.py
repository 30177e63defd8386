"""A store's rows with the bundle's predictions, filtered and paged for the store page, and their
thumbnails.

Decisions:
- The table streams the store once at start-up (``iter_batches``, failed rows included),
  predicts the usable rows and keeps only metadata, labels and probabilities, not the
  embeddings; filtering a page is then numpy over that table.
- Split semantics follow ``faceprobe evaluate``: ``train``/``val``/``test`` are the bundle's
  recorded split re-derived on this store's usable rows (or the store's own split column when the
  bundle records none); ``all`` is every row. So "misclassified for task T, split S" counts exactly
  the off-diagonal cells of the confusion matrix ``evaluate(bundle, store, split=S)`` reports.
- Thumbnails are read only from inside the dataset root recorded in the store, after resolving
  symlinks and ``..``; a row whose path resolves elsewhere is refused, whatever the store says.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, is_regression
from faceprobe.embed.images import DEFAULT_MAX_PIXELS, ImageLoadError, image_size, load_image
from faceprobe.embed.store import FAILED_STATUSES, STATUSES, USABLE_STATUSES, Store, StoreData
from faceprobe.errors import StoreError
from faceprobe.heads.bundle import Bundle
from faceprobe.serve.predictor import Predictor
from faceprobe.serve.responses import BadRequest, Forbidden, NotFound, jpeg, num, points

SPLITS = ("all", "train", "val", "test")
STATUS_GROUPS = {"usable": USABLE_STATUSES, "failed": FAILED_STATUSES}
THUMB_SIDE = 160
FULL_SIDE = 720


class StoreTable:
    """A store's rows with the bundle's predictions, filtered and paged for the store page."""

    def __init__(self, store: Store, bundle: Bundle, predictor: Predictor,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        bundle.check_store(store)
        self.store, self.bundle, self.predictor = store, bundle, predictor
        self.max_pixels = max_pixels
        self.tasks = list(store.tasks)
        self.vocab = store.vocabularies
        parts: list[StoreData] = []
        outs: list[dict[str, np.ndarray]] = []
        for d in store.iter_batches(65536, features=list(bundle.features), tasks=self.tasks,
                                    usable_only=False):
            usable = np.isin(d.status, USABLE_STATUSES)
            full = self._empty_outputs(len(d))
            if usable.any():
                got = predictor.predict({g: d.X[g][usable] for g in bundle.features})
                for key, arr in got.items():
                    full[key][usable] = arr
            d.X = {}
            parts.append(d)
            outs.append(full)
        if not parts:
            raise StoreError(f"store {store.path} has no rows to browse")
        self.data = parts[0] if len(parts) == 1 else StoreData.concat(parts)
        self.out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        self.n = len(self.data)
        self.usable = np.isin(self.data.status, USABLE_STATUSES)
        self.pred = {t: np.where(self.usable, np.nan_to_num(self.out[t]).argmax(axis=1), -1)
                     for t in predictor.categorical}
        self.eval_split, self.split_note = self._derive_split()
        self.shard_start = self._shard_offsets()
        self.root, self.root_note = self._root()
        self._thumb = lru_cache(maxsize=512)(self._make_thumb)  # <= ~30 MB of JPEGs

    def _empty_outputs(self, n: int) -> dict[str, np.ndarray]:
        p = self.predictor
        full = {t: np.full((n, len(p.vocab[t])), np.nan, np.float32) for t in p.categorical}
        if p.has_age:
            full[AGE] = np.full(n, np.nan, np.float32)
        if p.age_expected:
            full["age_expected"] = np.full(n, np.nan, np.float32)
        return full

    def _derive_split(self) -> tuple[np.ndarray, str]:
        split = np.full(self.n, "", dtype=object)
        idx = np.flatnonzero(self.usable)
        desc = self.bundle.meta.get("split") or {}
        if desc and len(idx):
            from faceprobe.heads.splits import split_from_description

            try:
                sp = split_from_description(self.data.subset(idx), desc)
            except Exception as exc:  # noqa: BLE001 - the page still works with the store's own
                note = f"the bundle's split could not be re-derived here ({exc})"
            else:
                for name in ("train", "val", "test"):
                    split[idx[getattr(sp, name)]] = name
                return split, f"the bundle's recorded split: {desc.get('text', '')}"
        else:
            note = "the store's split column"
        raw = np.asarray(self.data.split, dtype=object)
        split[idx] = raw[idx]
        return split, note

    def _shard_offsets(self) -> dict[int, int]:
        starts: dict[int, int] = {}
        for pos, s in enumerate(self.data.row_id[:, 0].tolist()):
            starts.setdefault(int(s), pos)
        return starts

    def _root(self) -> tuple[str | None, str]:
        raw = self.store.meta.get("root")
        if not raw:
            return None, f"store {self.store.path} records no dataset root; images unavailable"
        real = os.path.realpath(raw)
        if not os.path.isdir(real):
            return None, (f"dataset root {raw} recorded in the store is not a directory here "
                          "(run `faceprobe serve` from where the store was made)")
        return real, f"images served from {real}"

    # -- rows -------------------------------------------------------------------------------

    def position(self, shard: int, index: int) -> int:
        pos = self.shard_start.get(int(shard), -1) + int(index)
        if int(index) < 0 or pos < 0 or pos >= self.n or \
                tuple(self.data.row_id[pos]) != (int(shard), int(index)):
            raise NotFound(f"store has no row {shard}/{index}")
        return pos

    def info(self) -> dict[str, Any]:
        return {"path": str(self.store.path), "rows": self.n,
                "status": dict(sorted(Counter(self.data.status.tolist()).items())),
                "tasks": {t: self.vocab[t] for t in self.tasks}, "split_note": self.split_note,
                "images": self.root is not None, "images_note": self.root_note,
                "splits": {s: int((self.eval_split == s).sum()) for s in SPLITS[1:]}}

    def filter(self, *, status: str | None = None, task: str | None = None,
               true: str | None = None, pred: str | None = None, misclassified: bool = False,
               split: str = "all") -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        if status:
            wanted = STATUS_GROUPS.get(status, (status,))
            if not set(wanted) <= set(STATUSES):
                raise BadRequest(f"status {status!r} unknown; use usable, failed or one of "
                                 f"{', '.join(STATUSES)}")
            mask &= np.isin(self.data.status, wanted)
        if split not in SPLITS:
            raise BadRequest(f"split {split!r} unknown; use {', '.join(SPLITS)}")
        if split != "all":
            mask &= self.eval_split == split
        if (true or pred or misclassified) and not task:
            raise BadRequest("true, pred and misclassified need task=<a task>")
        if task:
            if task not in self.tasks and task not in self.bundle.tasks:
                raise BadRequest(f"task {task!r} unknown; the store has {', '.join(self.tasks)}")
            if (true or pred or misclassified) and (is_regression(task) or
                                                    not self.vocab.get(task)):
                raise BadRequest(f"{task} is a number, not a class: filter by true/pred/"
                                 "misclassified on a categorical task")
            if (true or misclassified) and task not in self.tasks:
                raise BadRequest(f"the store has no {task} labels; it has "
                                 f"{', '.join(self.tasks) or 'none'}")
            if (pred or misclassified) and task not in self.pred:
                raise BadRequest(f"the bundle does not predict {task}; it predicts "
                                 f"{', '.join(self.predictor.categorical)}")
            true_voc = list(self.vocab.get(task) or [])
            pred_voc = self.predictor.vocab.get(task, [])
            for name, value, voc in (("true", true, true_voc), ("pred", pred, pred_voc)):
                if value and value not in voc:
                    raise BadRequest(f"{name}={value!r} is not a class of {task} "
                                     f"({', '.join(voc)})")
            y = self.data.y.get(task)
            if true:
                mask &= y == true_voc.index(true)
            if pred:
                mask &= self.pred[task] == pred_voc.index(pred)
            if misclassified:
                mask &= self.usable & (y >= 0) & (self.pred[task] != y)
        return np.flatnonzero(mask)

    def row(self, pos: int, full: bool = False) -> dict[str, Any]:
        d = self.data
        shard, index = (int(v) for v in d.row_id[pos])
        labels: dict[str, Any] = {}
        for t in self.tasks:
            v = d.y[t][pos]
            voc = self.vocab.get(t)
            labels[t] = (voc[int(v)] if v >= 0 else None) if voc else num(v, 1)
        preds = self.predictor.describe(self.out, pos, full=full) if self.usable[pos] else {}
        wrong = {t: bool(preds[t]["label"] != labels.get(t)) for t in self.predictor.categorical
                 if preds and labels.get(t) is not None}
        res = {"shard": shard, "index": index, "path": str(d.path[pos]),
               "status": str(d.status[pos]), "error": str(d.extra["error"][pos]),
               "split": str(d.split[pos]), "eval_split": str(self.eval_split[pos]),
               "identity": str(d.identity[pos]), "face": int(d.extra["face"][pos]),
               "labels": labels, "predictions": preds, "misclassified": wrong,
               "thumb": f"/api/thumb/{shard}/{index}"}
        if full:
            res.update(box=points(d.box[pos]), detector_score=num(d.score[pos]),
                       landmarks_detected=points(d.landmarks_detected[pos]),
                       landmarks_dataset=points(d.landmarks_dataset[pos]),
                       policy=str(d.extra["policy"][pos]), dataset=str(d.dataset[pos]))
        return res

    # -- images -----------------------------------------------------------------------------

    def resolve(self, pos: int) -> str:
        """The row's file, only when it resolves inside the dataset root."""
        if self.root is None:
            raise NotFound(self.root_note)
        p = str(self.data.path[pos])
        if not os.path.isabs(p):
            p = os.path.join(self.root, p)
        real = os.path.realpath(p)
        if os.path.commonpath([real, self.root]) != self.root:
            raise Forbidden(f"row {'/'.join(map(str, self.data.row_id[pos]))}: its path "
                            f"resolves outside the dataset root {self.root}; not served")
        if not os.path.isfile(real):
            raise NotFound(f"image of row {'/'.join(map(str, self.data.row_id[pos]))} "
                           "is missing")
        return real

    def image_size(self, pos: int) -> tuple[int, int] | None:
        try:
            return image_size(self.resolve(pos))
        except (NotFound, Forbidden):
            return None

    def thumb(self, pos: int, full: bool = False) -> bytes:
        return self._thumb(pos, full)

    def _make_thumb(self, pos: int, full: bool) -> bytes:
        path = self.resolve(pos)
        try:
            img = load_image(path, self.max_pixels)
        except ImageLoadError as exc:
            raise NotFound(str(exc)) from None
        if full:
            return jpeg(img, FULL_SIDE)
        box = self.data.box[pos]
        if np.isfinite(box).all():
            x1, y1, x2, y2 = (float(v) for v in box)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half = 0.65 * max(x2 - x1, y2 - y1)  # the face plus some hair and chin
            h, w = img.shape[:2]
            left, top = int(max(0, cx - half)), int(max(0, cy - half))
            right, bottom = int(min(w, cx + half)), int(min(h, cy + half))
            if right > left and bottom > top:
                img = img[top:bottom, left:right]
        return jpeg(img, THUMB_SIDE, quality=80)
