"""Shared check: scoring image files with a bundle (its recipe replayed) gives what scoring the
bundle's store gives, row for row."""

import csv

from faceprobe.heads.score import score_images, score_store


def _read(path) -> dict:
    with open(path, newline="") as f:
        return {(r["path"], r["face"]): r for r in csv.DictReader(f)}


def assert_images_score_as_store(bundle, store, paths, tmp_path, task: str = "gender",
                                 min_rows: int = 20, tol: float = 1e-4) -> None:
    """Every labelled store row is scored from its image too, with the same ``task`` label and
    every probability within ``tol``."""
    score_store(bundle, store, tmp_path / "store.csv")
    score_images(bundle, sorted(set(paths)), tmp_path / "images.csv")
    a, b = _read(tmp_path / "store.csv"), _read(tmp_path / "images.csv")
    usable = [k for k, r in a.items() if r[task]]
    assert len(usable) >= min_rows and set(usable) <= set(b)
    for k in usable:
        assert a[k][task] == b[k][task], k
        for col in (c for c in a[k] if "_p_" in c):
            assert abs(float(a[k][col]) - float(b[k][col])) <= tol, (k, col)
