"""FairFace: ``fairface_label_train.csv`` / ``fairface_label_val.csv``.

Columns ``file,age,gender,race,service_test``; ``file`` is relative to the root (``train/1.jpg``).

Decisions:
- ``age`` is a bin, so it becomes ``age_group`` only (no ``age`` in years); the bins are the
  shared AGE_GROUPS. Gender ``Male``/``Female`` -> ``male``/``female``. Race keeps FairFace's 7
  classes under the task ``race`` with FairFace's own vocabulary (``vocabularies()``); it is not
  merged into UTKFace's 5 because ``East Asian``/``Southeast Asian`` have no 1:1 image there.
- Split ``train``/``val`` from the file name; either file alone is a dataset.
- A value outside the vocabularies makes the line bad (skipped, or LabelFormatError in strict
  mode). A listed image not on disk is still yielded and reported as ``missing_file``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from faceprobe.data.base import DatasetReader
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import AGE_GROUPS, DEFAULT_VOCABULARIES
from faceprobe.errors import DatasetError, LabelFormatError

FILES = (("fairface_label_train.csv", "train"), ("fairface_label_val.csv", "val"))
RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
         "Middle Eastern"]
COLUMNS = ("file", "age", "gender", "race")
_GENDER = {"Male": "male", "Female": "female"}
_AGES = frozenset(AGE_GROUPS)
_RACES = frozenset(RACES)


class FairFaceReader(DatasetReader):
    name = "fairface"
    description = "FairFace: age group, gender, race (7 classes), train/val split"
    tasks = ("age_group", "gender", "race")

    def expected(self) -> str:
        return "fairface_label_train.csv and/or fairface_label_val.csv beside the train/ val/ folders"

    def _locate(self) -> None:
        self.files = [(os.path.join(self.root, f), split) for f, split in FILES
                      if os.path.isfile(os.path.join(self.root, f))]
        if not self.files:
            raise DatasetError(f"{self.root} has no fairface_label_train.csv or "
                               f"fairface_label_val.csv; expected {self.expected()}")

    def vocabularies(self) -> dict[str, list[str] | None]:
        return {"age_group": AGE_GROUPS, "gender": DEFAULT_VOCABULARIES["gender"], "race": RACES}

    def _iter_records(self) -> Iterator[FaceRecord]:
        rows = {}
        for label_file, split in self.files:
            header, table = self.read_csv(label_file)
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise LabelFormatError(label_file, 1, f"missing column(s) {','.join(missing)}; "
                                                      f"expected {','.join(COLUMNS)},service_test")
            index = [header.index(c) for c in COLUMNS]
            for line_no, row in table:
                rel, age, gender, race = (row[i].strip() for i in index)
                if not rel:
                    self.bad_line(label_file, line_no, "empty file name")
                    continue
                if age not in _AGES or gender not in _GENDER or race not in _RACES:
                    self.bad_line(label_file, line_no,
                                  f"age {age[:20]!r}, gender {gender[:20]!r} or race {race[:20]!r} "
                                  "is not a FairFace value")
                    continue
                path = self.inside_root(label_file, line_no, rel)
                if path is None:
                    continue
                if path in rows:
                    self.problem("duplicate_entry", file=label_file, line=line_no, path=path,
                                 message="image listed again; the first line is kept")
                    continue
                # untracked tuples only: dicts are built when the record is yielded
                rows[path] = (tuple(header), tuple(row), age, gender, race, split)
        for path in sorted(rows):
            header, row, age, gender, race, split = rows[path]
            raw = {h: v for h, v in zip(header, row, strict=True) if h}
            labels = {"age_group": age, "gender": _GENDER[gender], "race": race}
            self.check_exists(path)
            yield FaceRecord(path=path, dataset=self.name, labels=labels, raw=raw, split=split)
