"""Closed-set identification: rank the gallery identities for every probe image.

Decisions:
- Gallery = one template per identity. ``per_identity='one'`` enrols the identity's first usable
  image in store order (deterministic, no seed to report); an integer ``n`` enrols its first ``n``;
  ``'all'`` enrols every image of the gallery split. Several images become one template: the mean
  of their normalised embeddings, renormalised (the standard "average template"; it weighs every
  image equally and keeps cosine scoring).
- Two modes. Different gallery and probe splits: the gallery is built from the gallery split and
  every probe-split image is a probe. Same split (``gallery_split == probe_split``, e.g. CelebA
  ``test``, whose official splits share no identity): each identity's first ``n`` images enrol and
  its remaining images are the probes; ``'all'`` is refused there, it would leave no probe.
- A probe whose identity has no template is open-set: counted in ``probes_open_set`` (with the mean
  of its best score, useful to pick a rejection threshold), never scored as an error. When no
  probe at all is closed-set, that is a user error: the splits share no identity.
- Probes without an identity label and rows whose face failed are counted, not scored.
- Top-k accuracy for k in 1, 2, 3, 5: the true identity is among the k most similar templates
  (ties go to the lower template index, see ``similarity.topk``). ``k`` is capped at the gallery
  size, where accuracy is trivially 1; ``notes`` says so.
- Memory: the store is streamed twice (templates, then probe batches); only the templates and one
  probe batch are in memory, and the similarity search is chunked.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from faceprobe.embed.store import USABLE_STATUSES, Store
from faceprobe.errors import ConfigError, StoreError
from faceprobe.identity.similarity import normalize, topk

KS = (1, 2, 3, 5)
ANY_SPLIT = "all"


def _parse_per_identity(per_identity: Any) -> int | None:
    """'one' -> 1, 'all' -> None (every image), an integer string or int -> itself."""
    if per_identity in ("one", 1, "1"):
        return 1
    if per_identity == "all" or per_identity is None:
        return None
    try:
        n = int(per_identity)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"per_identity must be 'one', 'all' or a positive integer, "
                          f"got {per_identity!r}")
    return n


def _in_split(split: np.ndarray, name: str | None) -> np.ndarray:
    if name is None or name == ANY_SPLIT:
        return np.ones(len(split), dtype=bool)
    return split == name


def identify(store: Store | str | os.PathLike, gallery_split: str | None = "train",
             probe_split: str | None = "test", per_identity: str | int = "one", *,
             feature: str = "embedding", ks: tuple[int, ...] = KS,
             batch_size: int = 65536, transform: Callable | None = None) -> dict:
    """Top-k identification accuracy of probes against per-identity gallery templates.

    ``gallery_split`` / ``probe_split``: split names in the store, or ``'all'``/None for every row.
    ``per_identity``: ``'one'``, ``'all'`` or a number of images per identity to enrol.
    ``transform``: maps a batch of the group's vectors to the space compared in (a margin
    head's projection, ``faceprobe identify --model``); identity when None.
    """
    mapped = transform or (lambda x: x)
    store = store if isinstance(store, Store) else Store(store)
    n_enrol = _parse_per_identity(per_identity)
    if feature not in store.feature_dims:
        raise StoreError(f"store {store.path} has no feature group {feature!r} (it has "
                         f"{', '.join(store.feature_dims)})")
    same_split = (gallery_split or ANY_SPLIT) == (probe_split or ANY_SPLIT)
    if same_split and n_enrol is None:
        raise ConfigError(
            "per_identity 'all' with the same gallery and probe split leaves no probe; use 'one' "
            "or a number of images to enrol, or pick another --probe-split")

    # Pass 1: templates, plus the counts that explain an empty result.
    sums: dict[str, np.ndarray] = {}
    counts: Counter = Counter()
    split_rows: Counter = Counter()
    gallery_failed = 0
    gallery_labelled = 0
    for d in store.iter_batches(batch_size, features=(feature,), tasks=(), usable_only=False):
        labelled = d.identity != ""
        split_rows.update(d.split[labelled].tolist())
        sel = _in_split(d.split, gallery_split) & labelled
        usable = np.isin(d.status, USABLE_STATUSES)
        gallery_failed += int((sel & ~usable).sum())
        gallery_labelled += int(sel.sum())
        emb = normalize(mapped(d.X[feature]))
        for i in np.flatnonzero(sel & usable):
            ident = d.identity[i]
            if n_enrol is not None and counts[ident] >= n_enrol:
                continue
            counts[ident] += 1
            if ident in sums:
                sums[ident] += emb[i]
            else:
                sums[ident] = emb[i].astype(np.float32, copy=True)
    if not sums:
        if not split_rows:
            raise StoreError(f"store {store.path} has no identity labels; identification "
                             "needs a dataset with identities (e.g. CelebA, LFW)")
        if gallery_labelled == 0:
            have = ", ".join(f"{k or '(no split)'}: {v}" for k, v in sorted(split_rows.items()))
            raise StoreError(
                f"store {store.path} has no rows with an identity in split {gallery_split!r} "
                f"(rows with an identity per split: {have}); pick one of those splits for "
                "--gallery-split, or 'all' (with --probe-split all each identity's first image "
                "enrols and the rest are probes)")
        raise StoreError(f"no usable face among the {gallery_labelled} gallery rows of "
                         f"split {gallery_split!r} in {store.path}")
    gallery_ids = np.array(sorted(sums), dtype=object)
    index = {ident: j for j, ident in enumerate(gallery_ids)}
    templates = normalize(np.stack([sums[i] for i in gallery_ids]))
    del sums
    k_max = min(max(ks), len(gallery_ids))

    # Pass 2: probes, in batches against the templates.
    hits = Counter()
    scored = open_set = no_identity = failed = 0
    open_best: list[float] = []
    closed_best: list[float] = []
    seen: Counter = Counter()
    probe_splits = None if (probe_split or ANY_SPLIT) == ANY_SPLIT else [probe_split]
    for d in store.iter_batches(batch_size, features=(feature,), tasks=(), splits=probe_splits,
                                usable_only=False):
        usable = np.isin(d.status, USABLE_STATUSES)
        has_id = d.identity != ""
        failed += int((~usable).sum())
        no_identity += int((usable & ~has_id).sum())
        keep = usable & has_id
        if same_split:
            # The first n usable images of each identity (same store order as pass 1) enrolled.
            for i in np.flatnonzero(keep):
                seen[d.identity[i]] += 1
                if seen[d.identity[i]] <= n_enrol:
                    keep[i] = False
        if not keep.any():
            continue
        true = np.array([index.get(x, -1) for x in d.identity[keep]], dtype=np.int64)
        idx, score = topk(mapped(d.X[feature][keep]), templates, k_max)
        closed = true >= 0
        open_set += int((~closed).sum())
        open_best.extend(score[~closed, 0].tolist())
        closed_best.extend(score[closed, 0].tolist())
        scored += int(closed.sum())
        correct_at = (idx[closed] == true[closed, None])
        for k in ks:
            hits[k] += int(correct_at[:, :min(k, k_max)].any(axis=1).sum())
    if scored == 0:
        raise ConfigError(
            f"no probe in split {probe_split!r} has an identity enrolled from split "
            f"{gallery_split!r} ({open_set} open-set probes); the splits share no identity "
            "(CelebA's official splits are identity-disjoint): use the same split for both, "
            "e.g. --gallery-split test --probe-split test, to enrol one image per identity and "
            "probe with the rest")
    notes = []
    if max(ks) > len(gallery_ids):
        notes.append(f"the gallery has {len(gallery_ids)} identities: top-k for k >= that is 1 "
                     "by construction")
    return {
        "accuracy": {f"top{k}": hits[k] / scored for k in ks},
        "top1": hits[1] / scored if 1 in ks else None,
        "gallery_identities": len(gallery_ids),
        "gallery_images": int(sum(counts.values())),
        "gallery_failed": gallery_failed,
        "probes": scored, "probes_open_set": open_set, "probes_no_identity": no_identity,
        "probes_failed": failed,
        "top1_score_mean": {"closed_set": _mean(closed_best), "open_set": _mean(open_best)},
        "gallery_split": gallery_split or ANY_SPLIT, "probe_split": probe_split or ANY_SPLIT,
        "mode": "same-split" if same_split else "cross-split",
        "per_identity": "all" if n_enrol is None else ("one" if n_enrol == 1 else n_enrol),
        "template": "mean of normalised embeddings, renormalised",
        "store": str(store.path), "backbone": store.meta.get("backbone"), "feature": feature,
        "notes": notes,
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
