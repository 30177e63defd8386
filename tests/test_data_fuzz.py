"""Fuzz every text-format parser: random bytes or near-valid lines may only raise FaceprobeError.

Anything else escaping (ValueError, IndexError, UnicodeDecodeError...) would be a crash in the
CLI instead of a one-line message.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceprobe.data.lfw import read_pairs
from faceprobe.data.registry import get_reader
from faceprobe.data.utkface import parse_name
from faceprobe.errors import FaceprobeError

FIXTURES = Path(__file__).resolve().parent / "data"

TOKENS = ["1", "-1", "2", "0", "3", "9", "000002.jpg", "lfw_5590\\a.jpg", "1.5", "nan", "inf",
          "-", "", "path", "file", "age", "gender", "race", "Male", "White", "20-29", "x",
          "more than 70", "\"", "'", "\x00", "é", "²", "٣", "\t", "1e400"]
token = st.one_of(st.sampled_from(TOKENS), st.text(max_size=6))
line = st.tuples(st.lists(token, max_size=14), st.sampled_from([" ", "\t", ",", "  "])).map(
    lambda t: t[1].join(t[0]))
near_valid = st.tuples(st.lists(line, max_size=8), st.sampled_from(["\n", "\r\n", "\r"])).map(
    lambda t: t[1].join(t[0]).encode("utf-8", "surrogatepass"))
content = st.one_of(st.binary(max_size=300), near_valid)

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# (reader name, fixture folder, file to replace, reader options)
TARGETS = [
    ("celeba", "celeba", "list_attr_celeba.txt", {"images": False}),
    ("celeba", "celeba", "identity_CelebA.txt", {}),
    ("celeba", "celeba", "list_eval_partition.txt", {}),
    ("celeba", "celeba", "list_landmarks_align_celeba.txt", {}),
    ("celeba", "celeba", "list_landmarks_align_celeba.csv", {}),
    ("mtfl", "mtfl", "training.txt", {}),
    ("fairface", "fairface", "fairface_label_train.csv", {}),
    ("csv", "csv", "labels.csv", {}),
    ("imdbwiki", "imdbwiki", "wiki_crop/wiki.mat", {}),
]


def run_reader(name, root, strict, options):
    try:
        reader = get_reader(name, root, strict=strict, **options)
        for _ in reader.records():
            pass
        reader.vocabularies()
    except FaceprobeError:
        pass


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory):
    """A copy of a fixture folder (without images), made once per module and folder: each
    example only rewrites its target file, the other files stay the originals."""
    copies = {}

    def copy(folder):
        if folder not in copies:
            root = tmp_path_factory.mktemp("fuzz") / folder
            shutil.copytree(FIXTURES / folder, root, ignore=shutil.ignore_patterns("*.jpg"))
            copies[folder] = root
        return copies[folder]

    return copy


@pytest.mark.parametrize("name, folder, target, options", TARGETS,
                         ids=[f"{t[0]}-{t[2]}" for t in TARGETS])
@FUZZ
@given(data=content, strict=st.booleans())
def test_reader_only_raises_faceprobe_errors(fixture_copy, name, folder, target, options, data,
                                             strict):
    root = fixture_copy(folder)
    original = (FIXTURES / folder / target).read_bytes()
    try:
        (root / target).write_bytes(data)
        run_reader(name, root, strict, options)
    finally:
        (root / target).write_bytes(original)


@FUZZ
@given(data=content)
def test_read_pairs_only_raises_faceprobe_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.txt"
        path.write_bytes(data)
        try:
            pairs = read_pairs(path, image_root=tmp)
        except FaceprobeError:
            return
        assert all(isinstance(p.same, bool) and p.fold >= 1 for p in pairs)


@FUZZ
@given(name=st.text(max_size=60))
def test_utkface_parse_name_never_raises(name):
    labels, raw, error = parse_name(name)
    assert error is not None or set(labels) == {"age", "age_group", "gender", "race"}
