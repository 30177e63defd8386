"""Where things lie in a store directory, and the vocabulary of its rows.

Layout::

    STORE/manifest.json            what every shard was made with (backbone, weights, alignment...)
    STORE/shard-00000.h5           rows [0, shard_size) of the run's record list
    STORE/shard-00000.stats.json   written last: its presence is what marks the shard complete
    STORE/.lock                    flock'ed by the one live writer

The names here are shared by every other module of the store and import none of them.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from faceprobe.embed import chips as chip_codec

FORMAT = "faceprobe-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.stats\.json$")

USABLE_STATUSES = ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks")
FAILED_STATUSES = ("no_face", "face_too_small", "unreadable", "missing", "error")
STATUSES = USABLE_STATUSES + FAILED_STATUSES

# Keys of one row dict given to StoreWriter.write_shard. Only `path` and `status` are required.
ROW_FIELDS: dict[str, str] = {
    "path": "str: the image file",
    "dataset": "str: reader name",
    "split": "str | None",
    "identity": "str | None",
    "face": "int: index of the face in its image (0 unless multi_face='all')",
    "labels": "dict task -> class name or age in years",
    "status": "str: one of STATUSES",
    "error": "str: message for failed rows, '' otherwise",
    "policy": "str: how the face was chosen (largest, central, all, whole_image, dataset)",
    "features": "dict group -> 1-d float array, or None for failed rows",
    "box": "(4,) x1 y1 x2 y2 in image pixels, or None",
    "score": "float detector probability, or None",
    "landmarks_detected": "(5, 2) or None",
    "landmarks_dataset": "(5, 2) or None",
    chip_codec.ROW_KEY: "(size, size, 3) uint8 aligned face, kept when the manifest has `chips`",
}
_STR_COLUMNS = ("path", "dataset", "split", "identity", "status", "error", "policy")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def stats_name(index: int) -> str:
    return f"shard-{index:05d}.stats.json"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _done_shards(path: Path) -> list[int]:
    done = []
    for p in path.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and (path / shard_name(int(m.group(1)))).exists():
            done.append(int(m.group(1)))
    return sorted(done)
