"""UTKFace: labels live in the file names, ``[age]_[gender]_[race]_[date&time].jpg(.chip.jpg)``.

Decisions:
- The images are the ``.jpg`` files directly in the root, or else in its immediate subfolders
  (``crop_part1/``, ``UTKFace/``, ``part1/``...); one directory listing each.
- A name that does not follow the pattern is a ``malformed_name`` problem and the image is still
  yielded (so the embed stage gives every image a row). It stays unlabelled when any of age,
  gender or race cannot be read unambiguously (``61_1_2017...``: gender or race missing?); when
  only the date field is off (16 digits instead of 17) the three labels are kept.
- Ages outside 0..120 make the name malformed. Gender 0 male / 1 female; race 0..4 as in
  ``DEFAULT_VOCABULARIES["race"]``. No split, no identity.
- In strict mode a malformed name raises DatasetError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from faceprobe.data.base import DatasetReader
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES, age_group
from faceprobe.errors import DatasetError

_SUFFIXES = (".jpg.chip.jpg", ".jpg")
_GENDERS = {"0": "male", "1": "female"}
_RACES = {str(i): name for i, name in enumerate(DEFAULT_VOCABULARIES["race"])}
MAX_AGE = 120


def parse_name(name: str) -> tuple[dict, dict, str | None]:
    """(labels, raw, error) for a UTKFace file name; error is None for a well-formed name.

    Labels are empty when age, gender or race cannot be read.
    """
    stem = name
    for suffix in _SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        return {}, {}, "does not end in .jpg.chip.jpg or .jpg"
    parts = stem.split("_")
    raw = {"name": name}
    if len(parts) != 4:
        return {}, raw, f"has {len(parts)} '_'-separated fields, expected 4 (age_gender_race_date)"
    age_s, gender_s, race_s, date_s = parts
    raw.update(age=age_s, gender=gender_s, race=race_s, date=date_s)
    if not (age_s.isdigit() and age_s.isascii()) or int(age_s) > MAX_AGE:
        return {}, raw, f"age {age_s!r} is not a whole number of years in 0..{MAX_AGE}"
    if gender_s not in _GENDERS:
        return {}, raw, f"gender {gender_s!r} is not 0 (male) or 1 (female)"
    if race_s not in _RACES:
        return {}, raw, f"race {race_s!r} is not one of 0..4"
    age = float(age_s)
    labels = {"age": age, "age_group": age_group(age), "gender": _GENDERS[gender_s],
              "race": _RACES[race_s]}
    if not (len(date_s) == 17 and date_s.isdigit() and date_s.isascii()):
        return labels, raw, f"date {date_s!r} is not 17 digits (yyyymmddHHMMSSFFF); labels kept"
    return labels, raw, None


class UTKFaceReader(DatasetReader):
    name = "utkface"
    description = "UTKFace: age, gender and race in the file names ([age]_[gender]_[race]_[date].jpg.chip.jpg)"
    tasks = ("age", "age_group", "gender", "race")

    def expected(self) -> str:
        return ("UTKFace images named [age]_[gender]_[race]_[date].jpg.chip.jpg in the directory "
                "or a subfolder such as crop_part1/ or UTKFace/")

    def _locate(self) -> None:
        self.image_dirs = self._find_image_dirs()
        if not self.image_dirs:
            raise DatasetError(f"no .jpg images in {self.root}; expected {self.expected()}")
        for directory in self.image_dirs:
            if any(parse_name(n)[2] is None for n in os.listdir(directory)):
                return
        raise DatasetError(f"no file name in {self.root} follows the UTKFace pattern; "
                           f"expected {self.expected()}")

    def _find_image_dirs(self) -> list[str]:
        with os.scandir(self.root) as it:
            entries = sorted(it, key=lambda e: e.name)
        if any(e.name.lower().endswith(".jpg") and e.is_file() for e in entries):
            return [self.root]
        dirs = []
        for e in entries:
            if e.is_dir() and not e.name.startswith("."):
                with os.scandir(e.path) as sub:
                    if any(s.name.lower().endswith(".jpg") for s in sub):
                        dirs.append(e.path)
        return dirs

    def _iter_records(self) -> Iterator[FaceRecord]:
        paths = []
        for directory in self.image_dirs:
            names = self.listing(directory)
            paths.extend(os.path.join(directory, n) for n in names if n.lower().endswith(".jpg"))
        paths.sort()
        for path in paths:
            labels, raw, error = parse_name(os.path.basename(path))
            if error is not None:
                if self.strict:
                    raise DatasetError(f"{path}: malformed UTKFace name: {error}")
                self.problem("malformed_name", path=path, message=error, labelled=bool(labels))
            yield FaceRecord(path=path, dataset=self.name, labels=labels, raw=raw)
