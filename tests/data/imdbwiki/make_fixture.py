"""Regenerate wiki_crop/wiki.mat, the IMDB-WIKI fixture (run from anywhere; needs scipy).

Five hand-made rows in the layout of the published wiki.mat (a 1x1 struct of 1xN fields, cell
arrays for text); the images are copies of UTKFace fixture images. Rows cover a non-ASCII name,
NaN gender, a -inf face score (no face), a birth date after the photo (age < 0) and a dob that
is no date at all.
"""

from datetime import date
from pathlib import Path

import numpy as np
import scipy.io

HERE = Path(__file__).resolve().parent


def datenum(d: date) -> float:
    return float(d.toordinal() + 366)


ROWS = [  # full_path, dob, photo_taken, gender, name, face_score, second_face_score
    ("17/10000217_1981-05-05_2009.jpg", datenum(date(1981, 5, 5)), 2009, 1.0, "Sami Jauhojärvi", 4.30, np.nan),
    ("48/10000548_1925-04-04_1964.jpg", datenum(date(1925, 4, 4)), 1964, 0.0, "Dettmar Cramer", 2.65, 1.95),
    ("12/100012_1948-07-03_2008.jpg", datenum(date(1948, 7, 3)), 2008, np.nan, "", -np.inf, np.nan),
    ("65/10001965_2030-05-23_2009.jpg", datenum(date(2030, 5, 23)), 2009, 1.0, "Future Born", 3.10, np.nan),
    ("66/10002066_0000-00-00_1990.jpg", 12.0, 1990, 0.0, "No Date", 1.50, np.nan),
]


def cells(values):
    out = np.empty((1, len(values)), dtype=object)
    out[0, :] = values
    return out


def main() -> None:
    root = HERE / "wiki_crop"
    struct = {
        "dob": np.array([[r[1] for r in ROWS]]),
        "photo_taken": np.array([[float(r[2]) for r in ROWS]]),
        "full_path": cells([r[0] for r in ROWS]),
        "gender": np.array([[r[3] for r in ROWS]]),
        "name": cells([r[4] for r in ROWS]),
        "face_location": cells([np.array([[10.0 + i, 12.0, 150.0, 160.0]]) for i in range(len(ROWS))]),
        "face_score": np.array([[r[5] for r in ROWS]]),
        "second_face_score": np.array([[r[6] for r in ROWS]]),
    }
    root.mkdir(exist_ok=True)
    scipy.io.savemat(root / "wiki.mat", {"wiki": struct})
    images = sorted((HERE.parent / "utkface" / "crop_part1").glob("*.jpg"))
    for (rel, *_), src in zip(ROWS, images, strict=False):
        dest = root / rel
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(src.read_bytes())


if __name__ == "__main__":
    main()
