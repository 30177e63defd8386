"""CelebA (aligned): 40 binary attributes, identities, the official split and 5 landmarks.

Files (original ``.txt`` or the Kaggle ``.csv`` variant, CRLF or LF): ``list_attr_celeba`` (required),
``identity_CelebA.txt``, ``list_eval_partition`` (0/1/2 = train/val/test) and
``list_landmarks_align_celeba`` (optional). Images: ``img_align_celeba/`` (also the Kaggle
``img_align_celeba/img_align_celeba/`` nesting).

Decisions:
- One record per image file on disk (one directory listing), because partial downloads are common
  and the label files always describe all 202,599 images. Label lines whose image is absent are
  reported as ONE ``missing_file`` problem per label file ({count, examples}) instead of one per
  line; an image on disk that the attribute file does not list is yielded unlabelled and reported
  as ``unlisted_file``. ``images=False`` skips the listing and yields one record per listed file
  (used by the parsing benchmark and for images kept elsewhere).
- Labels: every attribute by its CelebA name as ``yes``/``no``, plus the shared tasks ``gender``
  (Male), ``smiling`` (Smiling) and ``eyeglasses`` (Eyeglasses). ``raw`` keeps ``1``/``-1`` and
  the identity and partition codes.
- The count on line 1 of the ``.txt`` files is checked against the rows read (``count_mismatch``);
  a repeated file name keeps its first line (``duplicate_entry``).
- Parsing is ``str.split`` per line and a set check of the values; no regex, no pandas.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from faceprobe.data.base import DatasetReader, find_file, is_image_name
from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES, YES_NO
from faceprobe.errors import DatasetError, LabelFormatError

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
ATTR_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
IDENTITY_FILES = ("identity_CelebA.txt",)
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
LANDMARK_FILES = ("list_landmarks_align_celeba.txt", "list_landmarks_align_celeba.csv")
IMAGE_DIR = "img_align_celeba"
SPLITS = {"0": "train", "1": "val", "2": "test"}
# shared task -> (CelebA attribute, value for +1, value for -1)
SHARED = {"gender": ("Male", "male", "female"), "smiling": ("Smiling", "yes", "no"),
          "eyeglasses": ("Eyeglasses", "yes", "no")}
_YES_NO = {"1": "yes", "-1": "no"}
_VALID = frozenset(_YES_NO)
_EXAMPLES = 5


def _points(values: list[str]) -> np.ndarray:
    """lx ly rx ry nx ny lmx lmy rmx rmy -> (5, 2) float32 (already LANDMARK_NAMES order)."""
    try:
        points = np.array([float(v) for v in values], dtype=np.float32)
    except ValueError:
        points = None
    if points is None or not np.isfinite(points).all():
        raise ValueError("landmarks are not 10 finite numbers")
    return points.reshape(5, 2)


class CelebAReader(DatasetReader):
    name = "celeba"
    description = ("CelebA aligned: 40 yes/no attributes (plus gender, smiling, eyeglasses), "
                   "identity, official train/val/test split, 5 landmarks")
    tasks = ("gender", "smiling", "eyeglasses", *ATTRIBUTES)

    def __init__(self, root, strict: bool = False, images: bool = True):
        self.images = images
        super().__init__(root, strict)

    def expected(self) -> str:
        return f"{ATTR_FILES[0]} (or {ATTR_FILES[1]}) and {IMAGE_DIR}/"

    def _locate(self) -> None:
        self.attr_file = find_file(self.root, ATTR_FILES)
        if self.attr_file is None:
            raise DatasetError(f"{self.root} has no {ATTR_FILES[0]} or {ATTR_FILES[1]}; "
                               f"expected a CelebA directory with {self.expected()}")
        self.identity_file = find_file(self.root, IDENTITY_FILES)
        self.partition_file = find_file(self.root, PARTITION_FILES)
        self.landmark_file = find_file(self.root, LANDMARK_FILES)
        self.image_dir = os.path.join(self.root, IMAGE_DIR)
        nested = os.path.join(self.image_dir, IMAGE_DIR)
        if os.path.isdir(nested):
            self.image_dir = nested
        if self.images and not os.path.isdir(self.image_dir):
            raise DatasetError(f"{self.root} has no {IMAGE_DIR}/ folder; expected a CelebA "
                               f"directory with {self.expected()}")

    def vocabularies(self) -> dict[str, list[str] | None]:
        vocab = {t: DEFAULT_VOCABULARIES[t] for t in SHARED}
        vocab.update((a, YES_NO) for a in getattr(self, "attribute_names", ATTRIBUTES))
        return vocab

    # --- label files ------------------------------------------------------------------------
    # Rows are kept as their line text (strings are not tracked by the garbage collector; 200k
    # retained lists of 41 strings made the cyclic GC dominate parsing, 5x slower) and split
    # again when the record is built.
    def _table(self, path: str, header_lines: int) -> tuple[list[str], list[str], int, str | None]:
        """(header fields, lines, index of the first row, separator) of a .txt or .csv table."""
        lines = self.read_lines(path)
        sep = "," if path.endswith(".csv") else None
        if sep:
            header_lines = 1
        if len(lines) < header_lines:
            raise LabelFormatError(path, len(lines) + 1, f"expected {header_lines} header line(s)")
        header: list[str] = []
        if header_lines:
            header = [h.strip() for h in lines[header_lines - 1].split(sep)]
        if header_lines == 2 and not sep:
            self._check_count(path, lines[0], sum(1 for ln in lines[2:] if ln.strip()))
        return header, lines, header_lines, sep

    def _check_count(self, path: str, line: str, n_rows: int) -> None:
        text = line.strip()
        if not (text.isdigit() and text.isascii()):
            self.bad_line(path, 1, f"expected the number of images, got {text[:40]!r}")
        elif int(text) != n_rows:
            message = f"line 1 says {int(text)} images but {n_rows} lines follow"
            if self.strict:
                raise LabelFormatError(path, 1, message)
            self.problem("count_mismatch", file=path, line=1, message=message)

    def _keyed(self, path: str, table, n_values: int, valid=None, convert=None,
               as_row: bool = False) -> dict:
        """file -> stored row for rows of exactly 1 + n_values fields; bad rows reported.

        Stored: the value (one value, unless ``as_row``), ``convert(values)`` (raising ValueError
        for a bad row), or the row as whitespace-separated text. ``valid``: the allowed value
        strings.
        """
        _, lines, first, sep = table
        n_fields = n_values + 1
        out: dict = {}
        for i in range(first, len(lines)):
            line = lines[i]
            fields = line.split(sep)
            if sep:
                fields = [f.strip() for f in fields]
                line = " ".join(fields)
            if len(fields) != n_fields:
                if fields and any(fields):
                    self.bad_line(path, i + 1, f"expected a file name and {n_values} value(s), "
                                               f"got {len(fields)} field(s)")
                    self._skipped.add(fields[0])
                continue
            fname = fields[0]
            if self.inside_root(path, i + 1, fname, self.image_dir) is None:
                self._skipped.add(fname)
                continue
            if valid is not None and (sum(fields.count(v) for v in valid) - (fname in valid)
                                      != n_values):
                bad = next(v for v in fields[1:] if v not in valid)
                self.bad_line(path, i + 1, f"value {bad[:20]!r} is not one of {sorted(valid)}")
                self._skipped.add(fname)
                continue
            if fname in out:
                self.problem("duplicate_entry", file=path, line=i + 1, path=fname,
                             message="file listed again; the first line is kept")
                continue
            if convert is not None:
                try:
                    out[fname] = convert(fields[1:])
                except ValueError as exc:
                    self.bad_line(path, i + 1, str(exc))
                    self._skipped.add(fname)
            elif n_values == 1 and not as_row:
                out[fname] = fields[1]
            else:
                out[fname] = line
        return out

    def read_labels(self) -> dict:
        """Parse the label files alone (no image listing): a dict with ``attributes`` (names),
        ``attr`` (file -> row text: name and +1/-1 values), ``identity``/``partition``
        (file -> value) and ``landmarks`` (file -> (5, 2) float32)."""
        self._skipped: set[str] = set()  # file names of bad lines: no extra unlisted_file for them
        table = self._table(self.attr_file, 2)
        csv = table[3] is not None
        names = table[0][1:] if csv else table[0]
        if not names or len(set(names)) != len(names):
            raise LabelFormatError(self.attr_file, 1 if csv else 2,
                                   "expected a header of distinct attribute names")
        self.attribute_names = tuple(names)
        # as_row: records split the row again, also when the file has a single attribute
        attr = self._keyed(self.attr_file, table, len(names), _VALID, as_row=True)
        identity: dict[str, str] = {}
        if self.identity_file:
            identity = self._keyed(self.identity_file, self._table(self.identity_file, 0), 1)
        partition: dict[str, str] = {}
        if self.partition_file:
            partition = self._keyed(self.partition_file, self._table(self.partition_file, 0), 1,
                                    frozenset(SPLITS))
        landmarks: dict[str, np.ndarray] = {}
        if self.landmark_file:
            landmarks = self._keyed(self.landmark_file, self._table(self.landmark_file, 2), 10,
                                    convert=_points)
        return {"attributes": self.attribute_names, "attr": attr, "identity": identity,
                "partition": partition, "landmarks": landmarks}

    # --- records ----------------------------------------------------------------------------
    def _iter_records(self) -> Iterator[FaceRecord]:
        parsed = self.read_labels()
        names = parsed["attributes"]
        attr, identity, partition, landmarks = (
            parsed["attr"], parsed["identity"], parsed["partition"], parsed["landmarks"])
        if self.images:
            files = sorted(n for n in self.listing(self.image_dir) if is_image_name(n))
            on_disk = set(files)
            for label_file, table in ((self.attr_file, attr), (self.identity_file, identity),
                                      (self.partition_file, partition),
                                      (self.landmark_file, landmarks)):
                absent = [f for f in table if f not in on_disk]
                if absent:
                    self.problem("missing_file", file=label_file, count=len(absent),
                                 examples=sorted(absent)[:_EXAMPLES],
                                 message=f"{len(absent)} listed image(s) are not in "
                                         f"{self.image_dir} (partial download?); no record for them")
        else:
            files = sorted(set(attr) | set(identity) | set(partition))
        shared = [(task, names.index(a) + 1, pos, neg) for task, (a, pos, neg) in SHARED.items()
                  if a in names]
        to_yes_no = _YES_NO.__getitem__
        image_dir = self.image_dir
        dataset = self.name
        for fname in files:
            path = os.path.join(image_dir, fname)
            row = attr.get(fname)
            if row is None:
                labels: dict = {}
                raw: dict = {}
                if self.images and fname not in self._skipped:
                    self.problem("unlisted_file", path=path,
                                 message=f"not in {os.path.basename(self.attr_file)}; unlabelled")
            else:
                fields = row.split()
                values = fields[1:]
                labels = dict(zip(names, map(to_yes_no, values), strict=True))
                raw = dict(zip(names, values, strict=True))
                for task, index, pos, neg in shared:
                    labels[task] = pos if fields[index] == "1" else neg
            ident = identity.get(fname)
            if ident is not None:
                raw["identity"] = ident
            part = partition.get(fname)
            if part is not None:
                raw["partition"] = part
            yield FaceRecord(
                path=path, dataset=dataset, labels=labels, raw=raw,
                landmarks=landmarks.get(fname), identity=ident,
                split=SPLITS[part] if part is not None else None,
            )
