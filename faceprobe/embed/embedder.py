"""Embedding the chips of prepared rows in batches, the step both engines run in the process
that holds the backbones: rows in, the same rows out with their feature groups (or an error
status), never an exception for one bad batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceprobe.embed import chips as chip_codec
from faceprobe.embed import features as extra_features
from faceprobe.embed.backbones import Backbone
from faceprobe.embed.prepare import chip_of, one_line


class ChipEmbedder:
    """Collects chips of one shard and embeds them in fixed batches from the shard's start; each
    backbone embeds its own chips (the first ``chip``, the others ``chips[k - 1]``)."""

    def __init__(self, backbones: Sequence[Backbone], groups, batch_size: int,
                 keep_chips: bool = False):
        self.backbones, self.groups, self.batch_size = list(backbones), tuple(groups), batch_size
        self.keep_chips = keep_chips  # the first backbone's chip goes to the store (chips group)
        others = {bb.name for bb in self.backbones[1:]}
        # the extra groups arrive computed in each row's "extra" (see detect_align)
        self.own = tuple(g for g in self.groups
                         if g not in extra_features.EXTRA_DIMS and g not in others)
        self.pending: list[dict] = []

    def add(self, rows: list[dict]) -> None:
        self.pending.extend(r for r in rows if r.get("chip") is not None)
        while len(self.pending) >= self.batch_size:
            self._run(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]

    def flush(self) -> None:
        if self.pending:
            self._run(self.pending)
        self.pending = []

    def _embed(self, rows: list[dict]) -> dict[str, np.ndarray]:
        feats: dict[str, np.ndarray] = {}
        for k, bb in enumerate(self.backbones):
            groups = self.own if k == 0 else ("embedding",)
            names = groups if k == 0 else (bb.name,)
            if all(n in r.get("pre", {}) for r in rows for n in names):  # done in the workers
                feats.update({n: np.stack([r["pre"][n] for r in rows]) for n in names})
                continue
            chips = np.stack([chip_of(r, k) for r in rows])
            part = bb.features(chips, groups, batch_size=len(rows))
            feats.update({n: part[g] for n, g in zip(names, groups, strict=True)})
        return feats

    def _run(self, rows: list[dict]) -> None:
        try:
            feats = self._embed(rows)
        except Exception as exc:  # noqa: BLE001 - a failing batch fails its rows, not the run
            for r in rows:
                r["status"], r["error"] = "error", f"{r['path']}: embedding failed: {one_line(exc)}"
                r["chip"] = r["chips"] = None
            return
        for i, r in enumerate(rows):
            extra = r.pop("extra", None) or {}
            missing = [g for g in self.groups if g not in feats and g not in extra]
            if missing:
                r["status"] = "error"
                r["error"] = (f"{r['path']}: feature group(s) {', '.join(missing)} were not "
                              "computed (this engine does not compute them)")
            r["features"] = {g: feats[g][i] if g in feats else extra.get(g) for g in self.groups}
            if self.keep_chips and r["status"] != "error":
                r[chip_codec.ROW_KEY] = r["chip"]
            r["chip"] = r["chips"] = None


def finish_rows(rows: list[dict]) -> list[dict]:
    for r in rows:
        r.pop("chip", None)
        r.pop("chips", None)
        r.pop("pre", None)
        r.pop("extra", None)
        if r["status"] not in ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks"):
            r["features"] = None
            r.pop(chip_codec.ROW_KEY, None)
    return rows


