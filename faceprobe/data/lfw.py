"""LFW: ``<Name>/<Name>_<NNNN>.jpg`` images (identity = Name) and the verification pairs.

The root may hold ``lfw-deepfunneled/`` (preferred), ``lfw-funneled/``/``lfw_funneled/`` or
``lfw/``, or be the image folder itself. Records have no labels and split None: LFW's protocol
is pairs in folds, read with :func:`read_pairs` (``LFWReader.pairs()`` for the root's
``pairs.txt`` with absolute paths).

``pairs.txt``: first line ``folds<TAB>per_fold`` (or only ``per_fold``, as in the View 1
``pairsDevTrain.txt``/``pairsDevTest.txt``: one fold); then per fold ``per_fold`` lines
``name i j`` (same person) and ``per_fold`` lines ``name1 i name2 j`` (different people).
``same`` is taken from the field count; a line count that disagrees with the header, or any bad
line, raises LabelFormatError: silently dropping pairs would shift every later fold.
A CSV of pairs is also read: header ``path_a,path_b,same`` and an optional ``fold`` column.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

from faceprobe.data.base import DatasetReader, is_image_name
from faceprobe.data.records import FaceRecord
from faceprobe.errors import DatasetError, LabelFormatError

IMAGE_DIRS = ("lfw-deepfunneled", "lfw-funneled", "lfw_funneled", "lfw")
_TRUE = frozenset({"1", "true", "yes", "same", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "different", "diff", "n", "f"})


@dataclass(frozen=True, slots=True)
class Pair:
    """One verification pair. Paths are relative to the LFW image folder unless made absolute."""

    fold: int
    path_a: str
    path_b: str
    same: bool


def _is_int(text: str) -> bool:
    return text.isascii() and text.isdigit()


def lfw_path(name: str, number: str) -> str:
    if not _is_int(number):
        raise ValueError(f"image number {number[:20]!r} is not a whole number")
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Pair]:
    """Pairs from an LFW ``pairs.txt`` (any number of folds) or a ``path_a,path_b,same`` CSV.

    Relative paths are joined onto ``image_root`` when it is given. Raises DatasetError when the
    file is unreadable and LabelFormatError (file and line) for a bad line.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read pairs file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise LabelFormatError(path, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from exc
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelFormatError(path, 1, "empty pairs file")
    first = lines[0].replace(",", " ").split()
    if first and not all(_is_int(f) for f in first):
        pairs = _read_pairs_csv(path, text)
    else:
        pairs = _read_pairs_txt(path, lines)
    if image_root is not None:
        root = os.path.abspath(os.fspath(image_root))
        pairs = [Pair(p.fold, os.path.join(root, p.path_a), os.path.join(root, p.path_b), p.same)
                 for p in pairs]
    return pairs


def _read_pairs_txt(path: str, lines: list[str]) -> list[Pair]:
    header = lines[0].split()
    if not all(_is_int(h) for h in header):
        raise LabelFormatError(path, 1, "expected 'folds per_fold' or 'per_fold' (whole numbers)")
    if len(header) == 1:
        folds, per_fold = 1, int(header[0])
    elif len(header) == 2:
        folds, per_fold = int(header[0]), int(header[1])
    else:
        raise LabelFormatError(path, 1, "expected 'folds per_fold' or 'per_fold'")
    if folds < 1 or per_fold < 1:
        raise LabelFormatError(path, 1, "folds and pairs per fold must be positive")
    if len(lines) - 1 != 2 * folds * per_fold:
        raise LabelFormatError(
            path, 1, f"header says {folds} fold(s) of {per_fold} same + {per_fold} different "
                     f"pairs ({2 * folds * per_fold} lines) but {len(lines) - 1} lines follow")
    pairs = []
    for i in range(1, len(lines)):
        fields = lines[i].split()
        try:
            if len(fields) == 3:
                a, b, same = lfw_path(fields[0], fields[1]), lfw_path(fields[0], fields[2]), True
            elif len(fields) == 4:
                a, b, same = lfw_path(fields[0], fields[1]), lfw_path(fields[2], fields[3]), False
            else:
                raise ValueError(f"expected 'name i j' or 'name1 i name2 j', got "
                                 f"{len(fields)} field(s)")
        except ValueError as exc:
            raise LabelFormatError(path, i + 1, str(exc)) from None
        pairs.append(Pair((i - 1) // (2 * per_fold) + 1, a, b, same))
    return pairs


def _read_pairs_csv(path: str, text: str) -> list[Pair]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise LabelFormatError(path, 1, f"not a CSV file: {exc}") from None
    if not rows:
        raise LabelFormatError(path, 1, "empty pairs file")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("path_a", "path_b", "same") if c not in header]
    if missing:
        raise LabelFormatError(path, 1, f"pairs CSV needs columns path_a,path_b,same "
                                        f"(optional fold); missing {','.join(missing)}")
    ia, ib, isame = header.index("path_a"), header.index("path_b"), header.index("same")
    ifold = header.index("fold") if "fold" in header else None
    pairs = []
    for i, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LabelFormatError(path, i, f"expected {len(header)} fields, got {len(row)}")
        same = row[isame].strip().lower()
        if same not in _TRUE and same not in _FALSE:
            raise LabelFormatError(path, i, f"same {row[isame][:20]!r} is not 1/0 or true/false")
        fold = 1
        if ifold is not None:
            if not _is_int(row[ifold].strip()):
                raise LabelFormatError(path, i, f"fold {row[ifold][:20]!r} is not a whole number")
            fold = int(row[ifold])
        a, b = row[ia].strip(), row[ib].strip()
        if not a or not b:
            raise LabelFormatError(path, i, "empty path")
        pairs.append(Pair(fold, a, b, same in _TRUE))
    return pairs


class LFWReader(DatasetReader):
    name = "lfw"
    description = "LFW: <Name>/<Name>_NNNN.jpg images with identities; verification pairs in folds"
    tasks = ()

    def expected(self) -> str:
        return "lfw-deepfunneled/ (or lfw/) with <Name>/<Name>_NNNN.jpg images"

    def _locate(self) -> None:
        for name in IMAGE_DIRS:
            candidate = os.path.join(self.root, name)
            if os.path.isdir(candidate) and _looks_like_lfw(candidate):
                self.image_dir = candidate
                return
        if _looks_like_lfw(self.root):
            self.image_dir = self.root
            return
        raise DatasetError(f"{self.root} is not an LFW directory; expected {self.expected()}")

    def pairs(self, path: str | os.PathLike | None = None) -> list[Pair]:
        """The verification pairs of ``path`` (default: ``pairs.txt`` in the root or beside the
        image folder), with absolute image paths."""
        if path is None:
            for directory in (self.root, os.path.dirname(self.image_dir)):
                candidate = os.path.join(directory, "pairs.txt")
                if os.path.isfile(candidate):
                    path = candidate
                    break
            else:
                raise DatasetError(f"no pairs.txt in {self.root}; pass the pairs file")
        return read_pairs(path, self.image_dir)

    def _iter_records(self) -> Iterator[FaceRecord]:
        with os.scandir(self.image_dir) as it:
            people = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        for person in people:
            directory = os.path.join(self.image_dir, person)
            for fname in sorted(n for n in self.listing(directory) if is_image_name(n)):
                path = os.path.join(directory, fname)
                stem, _ = os.path.splitext(fname)
                number = stem[len(person) + 1:]
                if not (stem.startswith(person + "_") and _is_int(number)):
                    message = f"expected {person}_NNNN.jpg in folder {person}"
                    if self.strict:
                        raise DatasetError(f"{path}: malformed LFW name: {message}")
                    self.problem("malformed_name", path=path, message=message)
                yield FaceRecord(path=path, dataset=self.name, raw={"name": person},
                                 identity=person)


def _looks_like_lfw(directory: str) -> bool:
    """Some subfolder ``X`` holds an ``X_<digits>`` image (checks at most a few folders)."""
    try:
        with os.scandir(directory) as it:
            subdirs = [e for e in it if e.is_dir()]
    except OSError:
        return False
    for entry in subdirs[:20]:
        prefix = entry.name + "_"
        try:
            names = os.listdir(entry.path)
        except OSError:
            continue
        for n in names:
            stem = os.path.splitext(n)[0]
            if is_image_name(n) and stem.startswith(prefix) and _is_int(stem[len(prefix):]):
                return True
    return False
