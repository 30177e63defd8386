"""The reader base class and the small text helpers every format shares.

Decisions:
- ``records()`` re-reads the files on every call and yields lazily (a 460k-row dataset with 40
  attributes per row would cost gigabytes as a cached list); ``problems`` is reset when iteration
  starts and is complete once the iterator is exhausted.
- Label files are split on ``\\n`` with a trailing ``\\r`` stripped, so CRLF files keep true
  1-based line numbers (``str.splitlines`` also splits on form feeds and other separators).
- Text that is not UTF-8 is a bad line in strict mode; otherwise it is decoded as Latin-1 (which
  never fails) and reported once as an ``encoding`` problem.
- File existence is checked against one cached directory listing per folder, never per image.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from typing import Any

from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES, YES_NO
from faceprobe.errors import DatasetError, LabelFormatError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_root(root: str | os.PathLike, what: str) -> str:
    """Absolute path of an existing directory, or DatasetError saying what was expected."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(path):
        state = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DatasetError(f"{path} {state}; expected {what}")
    return path


class DatasetReader:
    """A dataset on disk. Subclasses set the class attributes and implement ``_iter_records``."""

    name: str = ""
    description: str = ""
    tasks: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike, strict: bool = False):
        self.strict = strict
        self.problems: dict[str, list[dict[str, Any]]] = {}
        self._listings: dict[str, frozenset[str]] = {}
        self.root = check_root(root, self.expected())
        self._locate()

    # --- for subclasses ---------------------------------------------------------------------
    def expected(self) -> str:
        """What the root directory should hold, for error messages."""
        return f"a {self.name} dataset directory"

    def _locate(self) -> None:
        """Find the format's files under ``self.root``; raise DatasetError when they are absent."""

    def _iter_records(self) -> Iterator[FaceRecord]:
        raise NotImplementedError

    # --- public -----------------------------------------------------------------------------
    def records(self) -> Iterator[FaceRecord]:
        """Every record, sorted by path; fills ``problems`` while iterating."""
        self.problems = {}
        self._listings = {}
        yield from self._iter_records()

    def vocabularies(self) -> dict[str, list[str] | None]:
        return {t: DEFAULT_VOCABULARIES.get(t, YES_NO) for t in self.tasks}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r}, strict={self.strict})"

    # --- helpers ----------------------------------------------------------------------------
    def problem(self, kind: str, **info: Any) -> None:
        self.problems.setdefault(kind, []).append({"kind": kind, **info})

    def bad_line(self, file: str, line_no: int, message: str) -> None:
        """Strict: raise LabelFormatError. Otherwise record a ``bad_line`` problem (line skipped)."""
        if self.strict:
            raise LabelFormatError(file, line_no, message)
        self.problem("bad_line", file=str(file), line=line_no, message=message)

    def inside_root(self, file: str, line_no: int, rel: str, base: str | None = None) -> str | None:
        """The normalised path of ``rel`` (relative to ``base``, default the root), or None after
        reporting a bad line when it leaves the dataset root (``../``, an absolute path): a label
        file is data from whoever shipped the dataset and must not point the toolkit at files
        elsewhere on the machine."""
        if "/" not in rel and rel not in (".", ".."):  # a plain name: the common, hot case
            return os.path.join(base or self.root, rel)
        path = os.path.normpath(os.path.join(base or self.root, rel))
        if os.path.commonpath([self.root, path]) != self.root:
            self.bad_line(file, line_no, f"path {rel[:80]!r} leaves the dataset root {self.root}; "
                                         "refused")
            return None
        return path

    def read_lines(self, path: str) -> list[str]:
        """The lines of a text file (CRLF/LF, BOM stripped), numbered from 1 by list index + 1."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line_no = data.count(b"\n", 0, exc.start) + 1
            if self.strict:
                raise LabelFormatError(path, line_no, "not UTF-8 text") from exc
            self.problem("encoding", file=path, line=line_no,
                         message="not UTF-8 text; decoded as Latin-1")
            text = data.decode("latin-1")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]

    def read_csv(self, path: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
        """(header, iterator of (line_no, row)) of a CSV file. Blank rows are dropped; rows with
        a field count other than the header's are reported as bad lines as they are reached, so
        strict mode stops at the first bad line in file order."""
        reader = csv.reader(self.read_lines(path))
        header = None
        for _, row in self._csv_rows(path, reader):
            header = [field.strip() for field in row]
            break
        if header is None:
            raise LabelFormatError(path, 1, "empty CSV file; expected a header line")
        return header, self._csv_body(path, reader, header)

    def _csv_rows(self, path: str, reader) -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.bad_line(path, reader.line_num, f"not valid CSV: {exc}")
                continue
            if any(field.strip() for field in row):
                yield reader.line_num, row

    def _csv_body(self, path: str, reader, header: list[str]) -> Iterator[tuple[int, list[str]]]:
        for line_no, row in self._csv_rows(path, reader):
            if len(row) != len(header):
                self.bad_line(path, line_no, f"expected {len(header)} fields "
                                             f"({','.join(header)[:60]}), got {len(row)}")
                continue
            yield line_no, row

    def listing(self, directory: str) -> frozenset[str]:
        """Names in a directory (empty when it is missing), listed once per ``records()`` pass."""
        names = self._listings.get(directory)
        if names is None:
            try:
                names = frozenset(os.listdir(directory))
            except (OSError, ValueError):  # ValueError: a NUL in a path read from a label file
                names = frozenset()
            self._listings[directory] = names
        return names

    def exists(self, path: str) -> bool:
        directory, name = os.path.split(path)
        return name in self.listing(directory)

    def check_exists(self, path: str, **info: Any) -> None:
        if not self.exists(path):
            self.problem("missing_file", path=path, message="listed but not on disk", **info)


def find_file(directory: str, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a file in ``directory``."""
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
