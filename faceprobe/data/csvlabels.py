"""Generic CSV (reader name ``csv``): a ``path`` column plus any label columns.

The root is the CSV file itself, or a directory holding ``labels.csv`` (or exactly one ``.csv``).
Relative paths are resolved against the CSV's folder; absolute paths are kept.

Decisions:
- Optional columns ``split`` and ``identity`` fill the record fields; every other column is a
  task. A column named ``age`` is years (float) and also gives ``age_group`` unless the file has
  its own ``age_group`` column; all other columns are categorical text.
- An empty cell means "no label" for that task. An ``age`` that is not a finite number makes the
  line bad (skipped, or LabelFormatError in strict mode).
- A categorical task named like a shared task (``gender``, ``race``...) uses the shared
  vocabulary when all its values belong to it, so its codes line up with other datasets;
  otherwise its vocabulary is the sorted values seen.
- A listed image not on disk is yielded and reported as ``missing_file``; a path listed twice
  keeps its first line.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from collections.abc import Iterator

from faceprobe.data.base import DatasetReader
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import AGE, AGE_GROUPS, DEFAULT_VOCABULARIES, age_group
from faceprobe.errors import DatasetError, LabelFormatError

META_COLUMNS = ("path", "split", "identity")


class CSVReader(DatasetReader):
    name = "csv"
    description = ("Generic CSV: a path column plus any label columns (age in years, others "
                   "categorical); optional split and identity columns")
    tasks = ()

    def __init__(self, root, strict: bool = False):
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.csv_file: str | None = root if os.path.isfile(root) else None
        super().__init__(os.path.dirname(root) if self.csv_file else root, strict)

    def expected(self) -> str:
        return "a CSV file with a 'path' column, or a directory holding labels.csv"

    def _locate(self) -> None:
        if self.csv_file is None:
            candidate = os.path.join(self.root, "labels.csv")
            found = [candidate] if os.path.isfile(candidate) else sorted(
                glob.glob(os.path.join(glob.escape(self.root), "*.csv")))
            if len(found) != 1:
                state = "no .csv file" if not found else f"{len(found)} .csv files and no labels.csv"
                raise DatasetError(f"{self.root} has {state}; expected {self.expected()}")
            self.csv_file = found[0]
        header = self._header()
        if "path" not in header:
            raise DatasetError(f"{self.csv_file} has no 'path' column (columns: "
                               f"{','.join(header)[:80]}); expected {self.expected()}")
        tasks = [h for h in header if h and h not in META_COLUMNS]
        if AGE in tasks and "age_group" not in tasks:
            tasks.append("age_group")
        self.tasks = tuple(tasks)

    def _header(self) -> list[str]:
        """The first line's columns (reading only that line: the file may have 460k rows)."""
        try:
            with open(self.csv_file, "rb") as fh:
                first = fh.readline(1 << 20)
        except OSError as exc:
            raise DatasetError(f"cannot read {self.csv_file}: {exc.strerror or exc}") from exc
        text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
        try:
            return [h.strip() for h in next(csv.reader([text]), [])]
        except csv.Error as exc:
            raise LabelFormatError(self.csv_file, 1, f"not valid CSV: {exc}") from None

    def vocabularies(self) -> dict[str, list[str] | None]:
        saved = self.problems
        seen: dict[str, set[str]] = {t: set() for t in self.tasks}
        try:
            for record in self.records():
                for task, value in record.labels.items():
                    if isinstance(value, str):
                        seen[task].add(value)
        finally:
            self.problems = saved
        vocab: dict[str, list[str] | None] = {}
        for task in self.tasks:
            default = DEFAULT_VOCABULARIES.get(task)
            if task == AGE:
                vocab[task] = None
            elif task == "age_group" and seen[task] <= set(AGE_GROUPS):
                vocab[task] = AGE_GROUPS
            elif default is not None and seen[task] <= set(default):
                vocab[task] = default
            else:
                vocab[task] = sorted(seen[task])
        return vocab

    def _iter_records(self) -> Iterator[FaceRecord]:
        header, table = self.read_csv(self.csv_file)
        if "path" not in header:
            raise LabelFormatError(self.csv_file, 1, "no 'path' column")
        ipath = header.index("path")
        isplit = header.index("split") if "split" in header else None
        iident = header.index("identity") if "identity" in header else None
        label_cols = [(i, h) for i, h in enumerate(header) if h and h not in META_COLUMNS]
        derive_group = AGE in header and "age_group" not in header
        base = os.path.dirname(self.csv_file)
        rows = {}  # path -> tuple of untracked objects (no GC churn at 100k+ rows)
        for line_no, row in table:
            rel = row[ipath].strip()
            if not rel:
                self.bad_line(self.csv_file, line_no, "empty path")
                continue
            values = []
            bad = None
            for i, task in label_cols:
                value = row[i].strip()
                if task == AGE and value:
                    try:
                        years = float(value)
                    except ValueError:
                        years = math.nan
                    if not math.isfinite(years):
                        bad = f"age {value[:20]!r} is not a number of years"
                        break
                    values.append(years)
                else:
                    values.append(value or None)
            if bad is not None:
                self.bad_line(self.csv_file, line_no, bad)
                continue
            path = os.path.normpath(os.path.join(base, rel))
            if path in rows:
                self.problem("duplicate_entry", file=self.csv_file, line=line_no, path=path,
                             message="image listed again; the first line is kept")
                continue
            rows[path] = (tuple(row), tuple(values))
        tasks = [task for _, task in label_cols]
        for path in sorted(rows):
            row, values = rows[path]
            labels = {t: v for t, v in zip(tasks, values, strict=True) if v is not None}
            if derive_group and AGE in labels:
                labels["age_group"] = age_group(labels[AGE])
            split = row[isplit].strip() or None if isplit is not None else None
            identity = row[iident].strip() or None if iident is not None else None
            raw = {h: v for h, v in zip(header, row, strict=True) if h}
            self.check_exists(path)
            yield FaceRecord(path=path, dataset=self.name, labels=labels, raw=raw,
                             identity=identity, split=split)
