"""Fuzzing the two reader inputs tests/test_data_fuzz.py does not cover: file *names* (the folder
reader) and label-file paths against the escape-the-root rule."""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import FIXTURES

from faceprobe.data.registry import get_reader
from faceprobe.errors import FaceprobeError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# any bytes a Linux file name may hold (no "/" or NUL), with an image extension half the time
name = st.tuples(
    st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")),
    st.sampled_from([b".jpg", b".PNG", b".jpeg", b"", b".txt"]),
).map(lambda t: t[0] + t[1]).filter(lambda b: b not in (b".", b"..") and len(b) <= 255)


@FUZZ
@given(names=st.lists(name, min_size=1, max_size=8, unique=True))
def test_folder_reader_takes_any_file_name(names):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        for n in names:
            with open(os.path.join(root, n), "wb") as f:
                f.write(b"x")
        try:
            reader = get_reader("folder", tmp)
        except FaceprobeError:  # no image names among them
            return
        paths = [r.path for r in reader.records()]
        assert paths == sorted(paths) and len(set(paths)) == len(paths)
        assert all(os.path.exists(os.fsencode(p)) for p in paths)


segment = st.sampled_from(["..", ".", "lfw_5590", "a.jpg", "", "x", "..\\..", "/", "\\"])
rel_path = st.lists(segment, min_size=1, max_size=6).map("/".join)


@FUZZ
@given(rels=st.lists(rel_path, min_size=1, max_size=5))
def test_mtfl_never_yields_a_path_outside_its_root(rels):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "deep", "mtfl")
        shutil.copytree(FIXTURES / "mtfl", root, ignore=shutil.ignore_patterns("*.jpg"))
        with open(os.path.join(root, "training.txt"), "a") as f:
            for rel in rels:
                f.write(f"\r\n{rel} 1 2 3 4 5 1 2 3 4 5 1 2 2 3")
        reader = get_reader("mtfl", root)
        for r in reader.records():
            assert os.path.commonpath([root, r.path]) == root, r.path
