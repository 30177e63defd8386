"""MTFL (Multi-Task Facial Landmark): ``training.txt`` / ``testing.txt``, one face per line.

Line: ``path x1..x5 y1..y5 gender smile glasses pose``; points are left eye, right eye, nose,
left and right mouth corner (image-left first, as LANDMARK_NAMES); gender 1 male / 2 female,
smile and glasses 1 yes / 2 no, pose 1..5 = left profile .. frontal (3) .. right profile.

Decisions:
- The originals' quirks are normal input: Windows ``\\`` paths, a leading space on most lines,
  CRLF. The path is everything before the last 14 fields, so a path with spaces still parses.
- Either file alone is a dataset; split ``train``/``test`` comes from the file. A listed image
  that is not on disk is still yielded (the embed stage marks it ``missing``) and reported as
  ``missing_file``; a path listed twice keeps its first line (``duplicate_entry``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from faceprobe.data.base import DatasetReader
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.errors import DatasetError

FILES = (("training.txt", "train"), ("testing.txt", "test"))
_GENDER = {"1": "male", "2": "female"}
_YES_NO = {"1": "yes", "2": "no"}
_POSE = {str(i + 1): name for i, name in enumerate(DEFAULT_VOCABULARIES["pose"])}
_RAW_KEYS = ("gender", "smile", "glasses", "pose")


def _parse(line: str) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """(raw path, landmarks (5,2), (gender, smile, glasses, pose) codes); ValueError if bad."""
    fields = line.strip().rsplit(None, 14)
    if len(fields) != 15:
        raise ValueError(f"expected a path and 14 values, got {len(fields)} field(s)")
    try:
        coords = [float(v) for v in fields[1:11]]
    except ValueError:
        raise ValueError("landmark coordinates x1..x5 y1..y5 are not numbers") from None
    if not all(math.isfinite(c) for c in coords):
        raise ValueError("landmark coordinates are not finite")
    gender, smile, glasses, pose = codes = tuple(fields[11:])
    if gender not in _GENDER or smile not in _YES_NO or glasses not in _YES_NO or pose not in _POSE:
        raise ValueError(f"attributes {' '.join(codes)[:40]!r} are not "
                         "gender 1|2, smile 1|2, glasses 1|2, pose 1..5")
    return fields[0], np.array(coords, dtype=np.float32).reshape(2, 5).T.copy(), codes


def _labels_raw(raw_path: str, codes: tuple[str, ...]) -> tuple[dict, dict]:
    gender, smile, glasses, pose = codes
    labels = {"gender": _GENDER[gender], "smiling": _YES_NO[smile],
              "eyeglasses": _YES_NO[glasses], "pose": _POSE[pose]}
    raw = dict(zip(_RAW_KEYS, codes, strict=True))
    raw["path"] = raw_path
    return labels, raw


def parse_line(line: str) -> tuple[str, np.ndarray, dict, dict]:
    """(relative path with ``/``, landmarks (5,2), labels, raw) of one line; ValueError says
    what is wrong."""
    raw_path, landmarks, codes = _parse(line)
    labels, raw = _labels_raw(raw_path, codes)
    return raw_path.replace("\\", "/"), landmarks, labels, raw


class MTFLReader(DatasetReader):
    name = "mtfl"
    description = "MTFL: 5 landmarks, gender, smiling, eyeglasses, head pose (training.txt/testing.txt)"
    tasks = ("gender", "smiling", "eyeglasses", "pose")

    def expected(self) -> str:
        return "training.txt and/or testing.txt (MTFL) with the image folders beside them"

    def _locate(self) -> None:
        self.files = [(os.path.join(self.root, f), split) for f, split in FILES
                      if os.path.isfile(os.path.join(self.root, f))]
        if not self.files:
            raise DatasetError(f"{self.root} has no training.txt or testing.txt; "
                               f"expected {self.expected()}")

    def _iter_records(self) -> Iterator[FaceRecord]:
        rows = {}  # path -> tuple of untracked objects (no GC churn at 100k+ rows)
        for label_file, split in self.files:
            for i, line in enumerate(self.read_lines(label_file)):
                if not line.strip():
                    continue
                try:
                    raw_path, landmarks, codes = _parse(line)
                except ValueError as exc:
                    self.bad_line(label_file, i + 1, str(exc))
                    continue
                path = self.inside_root(label_file, i + 1, raw_path.replace("\\", "/"))
                if path is None:
                    continue
                if path in rows:
                    self.problem("duplicate_entry", file=label_file, line=i + 1, path=path,
                                 message="image listed again; the first line is kept")
                    continue
                rows[path] = (raw_path, landmarks, codes, split)
        for path in sorted(rows):
            raw_path, landmarks, codes, split = rows[path]
            labels, raw = _labels_raw(raw_path, codes)
            self.check_exists(path)
            yield FaceRecord(path=path, dataset=self.name, labels=labels, raw=raw,
                             landmarks=landmarks, split=split)
