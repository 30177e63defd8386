"""Readers and inspect on the real data in ../shared/data (skipped when it is absent).

The numbers are the exact contents of the shared subsets (see ../shared/data/README.md).
"""

from __future__ import annotations

import os
import time

import pytest

from faceprobe.data.inspect import inspect_dataset
from faceprobe.data.registry import get_reader

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def inspected(shared_data):
    cache = {}

    def run(name, folder):
        if name not in cache:
            cache[name] = inspect_dataset(name, shared_data / folder, progress=False)
        return cache[name]

    return run


def test_utkface(inspected):
    start = time.perf_counter()
    result = inspected("utkface", "utkface")
    assert time.perf_counter() - start < 30  # a few thousand images inspect in seconds
    assert result["images"] == result["records"] == 3850
    assert result["problem_counts"] == {"malformed_name": 3}
    malformed = sorted(os.path.basename(p["path"]) for p in result["problems"]["malformed_name"])
    assert malformed == ["14_0_0_2017011022340900.jpg.chip.jpg",
                         "61_1_20170109142408075.jpg.chip.jpg",
                         "61_3_20170109150557335.jpg.chip.jpg"]
    assert result["age"]["count"] == 3848
    assert result["labels"]["gender"] == {"male": 1719, "female": 2129}
    assert result["labels"]["race"] == {"White": 2056, "Black": 160, "Asian": 623,
                                        "Indian": 571, "Others": 438}
    assert result["duplicate_groups"] == 99 and result["conflicting_groups"] == 77
    assert sum(len(g["paths"]) for g in result["duplicates"]) == 204  # 93 pairs + 6 triples
    assert result["cross_split_groups"] == 0


def test_celeba(inspected):
    result = inspected("celeba", "celeba")
    assert result["images"] == result["records"] == 2940
    assert result["identities"] == 98 and result["landmarks"] == 84
    assert result["splits"] == {"test": 390, "train": 2130, "val": 420}
    assert result["problem_counts"] == {}
    assert result["labels"]["gender"] == {"male": 735, "female": 2205}
    assert result["labels"]["smiling"] == {"no": 1573, "yes": 1367}
    assert result["labels"]["eyeglasses"] == {"no": 2818, "yes": 122}
    assert len(result["labels"]) == 43
    assert result["duplicate_groups"] == 1 and result["conflicting_groups"] == 0
    assert [os.path.basename(p) for p in result["duplicates"][0]["paths"]] == ["186574.jpg",
                                                                               "197961.jpg"]


def test_celeba_landmarks_txt_and_csv_agree(shared_data, tmp_path):
    reader = get_reader("celeba", shared_data / "celeba")
    txt = {r.path: r.landmarks for r in reader.records() if r.landmarks is not None}
    for name in ("list_attr_celeba.txt", "list_landmarks_align_celeba.csv"):
        (tmp_path / name).symlink_to(shared_data / "celeba" / name)
    (tmp_path / "img_align_celeba").symlink_to(shared_data / "celeba" / "img_align_celeba")
    csv_reader = get_reader("celeba", tmp_path)
    csv = {os.path.basename(r.path): r.landmarks for r in csv_reader.records()
           if r.landmarks is not None}
    assert len(txt) == len(csv) == 84
    for path, points in txt.items():
        assert (csv[os.path.basename(path)] == points).all()


def test_lfw(inspected, shared_data):
    result = inspected("lfw", "lfw")
    assert result["images"] == result["records"] == 3074
    assert result["identities"] == 1664 and result["problem_counts"] == {}
    pairs = get_reader("lfw", shared_data / "lfw").pairs()
    assert len(pairs) == 2400 and sorted({p.fold for p in pairs}) == [1, 2, 3, 4]
    assert sum(p.same for p in pairs) == 1200
    assert all(sum(p.fold == f and p.same for p in pairs) == 300 for f in range(1, 5))
    assert all(os.path.isfile(p.path_a) and os.path.isfile(p.path_b) for p in pairs)


def test_mtfl(inspected):
    result = inspected("mtfl", "mtfl")
    assert result["images"] == result["records"] == result["landmarks"] == 3334
    assert result["problem_counts"] == {} and result["splits"] == {"train": 3334}
    assert result["labels"]["gender"] == {"male": 1925, "female": 1409}
    assert result["labels"]["smiling"] == {"no": 1445, "yes": 1889}
    assert result["labels"]["eyeglasses"] == {"no": 2874, "yes": 460}
    assert result["labels"]["pose"] == {"left_profile": 58, "left": 354, "frontal": 2480,
                                        "right": 371, "right_profile": 71}
    assert result["duplicate_groups"] == 0


def test_folder_reader_on_real_tree(shared_data):
    reader = get_reader("folder", shared_data / "lfw" / "lfw-deepfunneled")
    assert sum(1 for _ in reader.records()) == 3074
    assert len(reader.vocabularies()["class"]) == 1664
