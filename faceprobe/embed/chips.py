"""The optional ``chips`` group: each usable row's aligned face crop, kept in its shard.

``faceprobe embed ... --features embedding,chips`` stores, for every usable row, the chip the
first backbone embedded (uint8 RGB, that backbone's input size and alignment), so training that
needs pixels (``faceprobe finetune``) runs from the store without a second detection pass.

Decisions:
- Chips are not a feature group in the manifest's ``features`` (those are float vectors that
  heads concatenate; nobody wants 37,632 pixel values as a head's input): they sit in a
  ``chips`` dataset of shape (rows, size, size, 3) uint8 in each shard, described by the
  manifest's ``chips`` entry (size, backbone, alignment, template, compression). Failed rows
  hold zeros.
- Compression: gzip level 1 in chunks of 64 chips. Measured on CelebA chips (112 px, ArcFace
  template): see the README's cost per row. Level 1 because higher levels cost write time for
  a few percent.
- Which chip: the first backbone's, because its alignment and size are what the store's
  ``embedding`` saw; a second backbone's chips would need their own entry (not built: say so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from faceprobe.errors import StoreError

GROUP = "chips"
DATASET = "chips"
ROW_KEY = "face_chip"  # the row dict's key the pipeline fills and the writer reads
COMPRESSION = {"compression": "gzip", "compression_opts": 1}
CHUNK_ROWS = 64


def spec(config: Any) -> dict:
    """The manifest's ``chips`` entry for chips cut with backbone ``config``."""
    return {"size": int(config.input_size), "channels": 3, "dtype": "uint8",
            "backbone": config.name, "alignment": config.alignment,
            "template": None if config.template is None else np.asarray(config.template).tolist(),
            "compression": f"{COMPRESSION['compression']}-{COMPRESSION['compression_opts']}"}


def encode(rows: Sequence[dict], chip_spec: dict) -> np.ndarray:
    size = int(chip_spec["size"])
    out = np.zeros((len(rows), size, size, 3), np.uint8)
    for i, r in enumerate(rows):
        chip = r.get(ROW_KEY)
        if chip is None:
            continue
        chip = np.asarray(chip)
        if chip.shape != (size, size, 3):
            raise StoreError(f"chip of {r.get('path')} has shape {chip.shape}, the store keeps "
                             f"{size}x{size}x3 chips")
        out[i] = chip
    return out


def write(f: h5py.File, arr: np.ndarray) -> None:
    chunks = (max(1, min(CHUNK_ROWS, len(arr))), *arr.shape[1:])
    f.create_dataset(DATASET, data=arr, chunks=chunks, **COMPRESSION)


def read_rows(f: h5py.File, n: int) -> list[np.ndarray | None]:
    """The chips of one open shard as ``write_shard`` row values (``None`` where all zeros)."""
    if DATASET not in f:
        return [None] * n
    arr = f[DATASET][...]
    return [a if a.any() else None for a in arr]
