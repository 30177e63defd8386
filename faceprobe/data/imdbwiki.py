"""IMDB-WIKI: ``imdb.mat`` / ``wiki.mat`` MATLAB structs beside the ``NN/`` image folders.

The root may hold the ``.mat`` file(s) directly or the ``imdb_crop/`` and ``wiki_crop/``
folders; both sources found under one root are read together (``raw["source"]`` tells them
apart). ``full_path`` is relative to the folder of its ``.mat``.

Decisions:
- age = photo_taken - birth year, the dataset's own definition (the authors' mid-year rounding is
  not applied; ``raw`` keeps ``dob`` and ``photo_taken`` to recompute it). ``dob`` is a MATLAB
  serial date: day 1 is 0000-01-01 and year 0 is a leap year, so the date is
  ``date.fromordinal(dob - 366)``. A dob that is no date, or an age outside 0..100, is an
  ``implausible_age`` problem and the row keeps its other labels without ``age``/``age_group``.
- gender 1 male / 0 female / NaN unknown (absent). identity = ``name`` when present.
- Rows are never dropped for face scores: ``face_score`` (-inf = no face found),
  ``second_face_score`` (NaN = one face) and ``face_location`` stay in ``raw`` for the embed stage
  to use. Only a row without ``full_path`` or with another gender code is a bad line ("line" = row
  number, 1-based).
- Only MATLAB v5 files (the published ones); a v7.3 (HDF5) file is a DatasetError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import date

import numpy as np

from faceprobe.data.base import DatasetReader
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import age_group
from faceprobe.errors import DatasetError

SOURCES = ("imdb", "wiki")
FIELDS = ("dob", "photo_taken", "full_path", "gender", "face_score")
MAX_AGE = 100
_MATLAB_DAY_OFFSET = 366  # MATLAB datenum of 0001-01-01 is 367; Python's ordinal is 1
_MAX_ORDINAL = date.max.toordinal()


def matlab_datenum_to_date(dob: float) -> date | None:
    """The calendar date of a MATLAB serial date number, or None when it is no valid date."""
    if not math.isfinite(dob):
        return None
    ordinal = int(dob) - _MATLAB_DAY_OFFSET
    if not 1 <= ordinal <= _MAX_ORDINAL:
        return None
    return date.fromordinal(ordinal)


def _text(cell) -> str:
    """A MATLAB cell element (1-element char array, empty array, or str) as text."""
    if isinstance(cell, str):
        return cell
    arr = np.asarray(cell).ravel()
    if arr.size == 0:
        return ""
    if arr.dtype.kind == "U":
        return "".join(str(x) for x in arr)
    return str(arr[0])


def _num(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def _load_struct(path: str, source: str) -> dict[str, list]:
    """Field -> per-row list from a ``.mat`` file; DatasetError for anything unreadable."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # scipy says so for v7.3 / HDF5 files
        raise DatasetError(f"{path} is a MATLAB v7.3 file; save it with -v7 or use the "
                           "published imdb.mat/wiki.mat") from exc
    except Exception as exc:  # scipy raises many types (ValueError, TypeError, ...) on bad bytes
        raise DatasetError(f"{path} is not a readable MATLAB .mat file ({type(exc).__name__})") from exc
    key = source if source in mat else next((k for k in SOURCES if k in mat), None)
    struct = mat.get(key) if key else None
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size < 1:
        raise DatasetError(f"{path} has no '{source}' struct; expected the IMDB-WIKI metadata")
    struct = struct.ravel()[0]
    missing = [f for f in FIELDS if f not in struct.dtype.names]
    if missing:
        raise DatasetError(f"{path}: the '{source}' struct lacks field(s) {', '.join(missing)}")
    out: dict[str, list] = {}
    try:
        for name in struct.dtype.names:
            column = np.asarray(struct[name])
            if name in ("full_path", "name"):
                out[name] = [_text(c) for c in column.ravel()]
            elif name == "face_location":
                out[name] = [np.asarray(c, dtype=float).ravel() for c in column.ravel()]
            elif name in FIELDS or name in ("second_face_score", "celeb_id"):
                out[name] = column.astype(float).ravel().tolist()
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: field '{name}' has an unexpected type") from exc
    n = len(out["full_path"])
    uneven = [f for f, v in out.items() if len(v) != n]
    if uneven:
        raise DatasetError(f"{path}: field(s) {', '.join(uneven)} do not have {n} entries "
                           "like full_path")
    return out


class IMDBWikiReader(DatasetReader):
    name = "imdbwiki"
    description = "IMDB-WIKI: age (photo year - birth year), gender, identity from imdb.mat/wiki.mat"
    tasks = ("age", "age_group", "gender")

    def expected(self) -> str:
        return "imdb.mat and/or wiki.mat (or imdb_crop/imdb.mat, wiki_crop/wiki.mat)"

    def _locate(self) -> None:
        self.files = []
        for source in SOURCES:
            for candidate in (os.path.join(self.root, f"{source}.mat"),
                              os.path.join(self.root, f"{source}_crop", f"{source}.mat")):
                if os.path.isfile(candidate):
                    self.files.append((candidate, source))
                    break
        if not self.files:
            raise DatasetError(f"{self.root} has no imdb.mat or wiki.mat; expected {self.expected()}")

    def _iter_records(self) -> Iterator[FaceRecord]:
        # First pass: validate rows in file order (strict mode stops at the first bad row) and
        # keep (source index, row, age) per path -- untracked tuples, no GC churn at 460k rows.
        sources = []
        rows: dict[str, tuple[int, int, float | None]] = {}
        for mat_path, source in self.files:
            data = _load_struct(mat_path, source)
            sources.append((mat_path, source, data))
            base = os.path.dirname(mat_path)
            for i, rel in enumerate(data["full_path"]):
                if not rel.strip():
                    self.bad_line(mat_path, i + 1, "empty full_path")
                    continue
                gender_code = data["gender"][i]
                if not math.isnan(gender_code) and gender_code not in (0.0, 1.0):
                    self.bad_line(mat_path, i + 1, f"gender {gender_code!r} is not 1, 0 or NaN")
                    continue
                path = self.inside_root(mat_path, i + 1, rel, base)
                if path is None:
                    continue
                if path in rows:
                    self.problem("duplicate_entry", file=mat_path, line=i + 1, path=path,
                                 message="image listed again; the first row is kept")
                    continue
                dob, taken = data["dob"][i], data["photo_taken"][i]
                born = matlab_datenum_to_date(dob)
                age = taken - born.year if born is not None and math.isfinite(taken) else None
                if age is None or not 0 <= age <= MAX_AGE:
                    why = (f"age {age:g} is not in 0..{MAX_AGE}" if age is not None else
                           "dob is no date" if born is None else "photo_taken is no year")
                    self.problem("implausible_age", file=mat_path, line=i + 1, path=path,
                                 message=f"dob {_num(dob)}, photo_taken {_num(taken)}: {why}; "
                                         "age left unlabelled")
                    age = None
                rows[path] = (len(sources) - 1, i, age)
        for path in sorted(rows):
            k, i, age = rows[path]
            _, source, data = sources[k]
            yield self._record(path, source, data, i, age)

    def _record(self, path: str, source: str, data: dict, i: int, age: float | None) -> FaceRecord:
        gender_code = data["gender"][i]
        raw = {"source": source, "full_path": data["full_path"][i], "dob": _num(data["dob"][i]),
               "photo_taken": _num(data["photo_taken"][i]), "gender": _num(gender_code),
               "face_score": _num(data["face_score"][i])}
        if "second_face_score" in data:
            raw["second_face_score"] = _num(data["second_face_score"][i])
        if "face_location" in data:
            raw["face_location"] = " ".join(_num(v) for v in data["face_location"][i])
        if "celeb_id" in data:
            raw["celeb_id"] = _num(data["celeb_id"][i])
        labels: dict = {}
        if age is not None:
            labels["age"] = float(age)
            labels["age_group"] = age_group(age)
        if gender_code == 1.0:
            labels["gender"] = "male"
        elif gender_code == 0.0:
            labels["gender"] = "female"
        identity = None
        if "name" in data and data["name"][i].strip():
            identity = raw["name"] = data["name"][i].strip()
        self.check_exists(path)
        return FaceRecord(path=path, dataset=self.name, labels=labels, raw=raw, identity=identity)
