"""The identity gallery: who an uploaded face most resembles among a store's identities.

Decisions:
- One template per identity (mean of normalised embeddings, renormalised, as in
  ``faceprobe identify``); rows without an identity label are enrolled under their file name.
- A gallery store of another backbone (or other weights) than the bundle's is refused: its
  embeddings would be other numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprobe.embed.store import Store
from faceprobe.errors import BundleError, StoreError
from faceprobe.heads.bundle import Bundle
from faceprobe.identity.similarity import normalize, topk
from faceprobe.serve.responses import num

TOP_IDENTITIES = 5


class Gallery:
    """Identity templates from a store, searched by cosine similarity."""

    def __init__(self, store: Store, bundle: Bundle):
        want = (bundle.meta.get("store") or {}).get("weights_sha256")
        have = store.meta.get("weights_sha256")
        if store.meta.get("backbone") != bundle.backbone or (want and have and want != have):
            raise BundleError(
                f"gallery store {store.path} holds {store.meta.get('backbone')} embeddings, not "
                f"the bundle's {bundle.backbone} ones (or other weights); embed the gallery "
                "with the same backbone")
        index: dict[str, int] = {}
        sums: list[np.ndarray] = []
        counts: list[int] = []
        for d in store.iter_batches(65536, features=("embedding",), tasks=[]):
            X = normalize(d.X["embedding"])
            for name, path, vec in zip(d.identity, d.path, X, strict=True):
                key = str(name) if name else Path(str(path)).stem
                k = index.setdefault(key, len(index))
                if k == len(sums):
                    sums.append(np.zeros_like(vec))
                    counts.append(0)
                sums[k] += vec
                counts[k] += 1
        if not index:
            raise StoreError(f"gallery store {store.path} has no usable rows")
        self.names = list(index)
        self.images = counts
        self.templates = normalize(np.stack(sums))
        self.path = store.path

    def search(self, embeddings: np.ndarray, k: int = TOP_IDENTITIES) -> list[list[dict]]:
        if len(embeddings) == 0:
            return []
        idx, score = topk(embeddings, self.templates, k)
        return [[{"identity": self.names[j], "similarity": num(s), "images": self.images[j]}
                 for j, s in zip(row_i, row_s, strict=True)] for row_i, row_s in zip(idx, score,
                                                                                     strict=True)]
