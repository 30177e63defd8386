"""What a store read returns: ``StoreData`` (rows as numpy columns) and ``ShardColumns``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
