"""Each dataset reader on the committed fixtures (tests/data), and each reader's error paths."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from faceprobe.data.celeba import ATTRIBUTES
from faceprobe.data.fairface import RACES
from faceprobe.data.imdbwiki import matlab_datenum_to_date
from faceprobe.data.inspect import format_summary, inspect_dataset
from faceprobe.data.lfw import Pair, read_pairs
from faceprobe.data.records import FaceRecord
from faceprobe.data.registry import READERS, get_reader, list_readers
from faceprobe.data.utkface import parse_name
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.errors import DatasetError, FaceprobeError, LabelFormatError

FIXTURE_ROOTS = {
    "utkface": "utkface",
    "celeba": "celeba",
    "fairface": "fairface",
    "mtfl": "mtfl",
    "lfw": "lfw",
    "imdbwiki": "imdbwiki",
    "csv": "csv",
    "folder": "lfw/lfw-deepfunneled",
}


def read(name, root, strict=False, **options):
    reader = get_reader(name, root, strict=strict, **options)
    return reader, list(reader.records())


def copy_fixture(fixtures_dir: Path, name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(fixtures_dir / name, dest)
    return dest


def by_name(records):
    return {os.path.basename(r.path): r for r in records}


# --- all readers ----------------------------------------------------------------------------

def test_registry_lists_every_reader():
    infos = {info.name: info for info in list_readers()}
    assert set(infos) == set(FIXTURE_ROOTS) == set(READERS)
    assert "race" in infos["utkface"].tasks and "Smiling" in infos["celeba"].tasks
    assert all(info.description for info in infos.values())


def test_unknown_reader_lists_known_names(tmp_path):
    with pytest.raises(FaceprobeError, match="known: utkface, celeba"):
        get_reader("nope", tmp_path)


def test_unknown_option_is_a_user_error(fixtures_dir):
    with pytest.raises(FaceprobeError, match="does not take"):
        get_reader("mtfl", fixtures_dir / "mtfl", images=False)


@pytest.mark.parametrize("name", sorted(FIXTURE_ROOTS))
def test_records_sorted_absolute_and_typed(fixtures_dir, name):
    reader, records = read(name, fixtures_dir / FIXTURE_ROOTS[name])
    assert records
    paths = [r.path for r in records]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)
    vocab = reader.vocabularies()
    for r in records:
        assert isinstance(r, FaceRecord) and r.dataset == name and os.path.isabs(r.path)
        assert os.path.isfile(r.path)
        if r.landmarks is not None:
            assert r.landmarks.shape == (5, 2) and r.landmarks.dtype == np.float32
        for task, value in r.labels.items():
            assert value is not None
            if task == "age":
                assert isinstance(value, float)
            else:
                assert value in vocab[task], (task, value)
    assert [r.path for r in reader.records()] == paths  # re-iterable, same order


@pytest.mark.parametrize("name", sorted(FIXTURE_ROOTS))
def test_missing_root(tmp_path, name):
    with pytest.raises(DatasetError, match="does not exist"):
        get_reader(name, tmp_path / "absent")


@pytest.mark.parametrize("name", sorted(set(FIXTURE_ROOTS) - {"folder"}))
def test_wrong_directory_names_expected_files(fixtures_dir, name):
    other = "celeba" if name == "mtfl" else "mtfl"
    expected = {"utkface": "UTKFace", "celeba": "list_attr_celeba.txt", "fairface":
                "fairface_label_train.csv", "mtfl": "training.txt", "lfw": "lfw-deepfunneled",
                "imdbwiki": "wiki.mat", "csv": "labels.csv"}[name]
    with pytest.raises(DatasetError, match=expected):
        get_reader(name, fixtures_dir / other)


# --- UTKFace --------------------------------------------------------------------------------

def test_utkface_labels_and_malformed_names(fixtures_dir):
    reader, records = read("utkface", fixtures_dir / "utkface")
    assert len(records) == 10
    r = by_name(records)["23_1_1_20170102233446754.jpg.chip.jpg"]
    assert r.labels == {"age": 23.0, "age_group": "20-29", "gender": "female", "race": "Black"}
    assert r.raw["date"] == "20170102233446754" and r.split is None and r.identity is None
    malformed = {os.path.basename(p["path"]): p for p in reader.problems["malformed_name"]}
    assert set(malformed) == {"61_1_20170109142408075.jpg.chip.jpg",
                              "14_0_0_2017011022340900.jpg.chip.jpg"}
    # fields missing: unlabelled but yielded; only the date short: labels kept
    assert by_name(records)["61_1_20170109142408075.jpg.chip.jpg"].labels == {}
    assert by_name(records)["14_0_0_2017011022340900.jpg.chip.jpg"].labels["age"] == 14.0
    assert set(reader.problems) == {"malformed_name"}


def test_utkface_strict_names_the_file(fixtures_dir):
    reader = get_reader("utkface", fixtures_dir / "utkface", strict=True)
    with pytest.raises(DatasetError, match="14_0_0_2017011022340900.jpg.chip.jpg"):
        list(reader.records())


@pytest.mark.parametrize("name, ok", [
    ("26_1_2_20170116184028385.jpg.chip.jpg", True),
    ("26_1_2_20170116184028385.jpg", True),
    ("26_2_2_20170116184028385.jpg.chip.jpg", False),
    ("26_1_5_20170116184028385.jpg.chip.jpg", False),
    ("x_1_2_20170116184028385.jpg.chip.jpg", False),
    ("130_1_2_20170116184028385.jpg.chip.jpg", False),
    ("26__2_20170116184028385.jpg.chip.jpg", False),
    ("26_1_2_20170116184028385.png", False),
])
def test_utkface_parse_name(name, ok):
    labels, _, error = parse_name(name)
    assert (error is None) == ok
    assert bool(labels) == ok


def test_utkface_images_directly_in_root(fixtures_dir):
    _, records = read("utkface", fixtures_dir / "utkface" / "crop_part1")
    assert len(records) == 10


# --- CelebA ---------------------------------------------------------------------------------

def test_celeba_fixture(fixtures_dir):
    reader, records = read("celeba", fixtures_dir / "celeba")
    assert len(records) == 8 and reader.problems == {}
    assert {r.identity for r in records} == {"2937", "4087", "2411", "9162", "7567"}
    assert [r.split for r in records].count("train") == 4
    assert {r.split for r in records} == {"train", "val", "test"}
    r = by_name(records)["000002.jpg"]
    assert r.labels["Smiling"] == "yes" and r.labels["smiling"] == "yes"
    assert r.labels["Male"] == "no" and r.labels["gender"] == "female"
    assert r.labels["eyeglasses"] == "no" and r.raw["Bags_Under_Eyes"] == "1"
    assert r.raw["Male"] == "-1" and r.raw["identity"] == "2937" and r.raw["partition"] == "0"
    assert set(ATTRIBUTES) <= set(r.labels)
    np.testing.assert_array_equal(r.landmarks, [[69, 110], [107, 112], [81, 135], [70, 151],
                                                [108, 153]])
    assert reader.vocabularies()["Smiling"] == ["no", "yes"]


def test_celeba_fixture_keeps_crlf(fixtures_dir):
    assert b"\r\n" in (fixtures_dir / "celeba" / "list_attr_celeba.txt").read_bytes()


def test_celeba_landmarks_csv_only_and_kaggle_attr_csv(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "celeba", tmp_path)
    _, before = read("celeba", root)
    (root / "list_landmarks_align_celeba.txt").unlink()
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    csv_lines = ["image_id," + ",".join(lines[1].split())]
    csv_lines += [",".join(line.split()) for line in lines[2:]]
    (root / "list_attr_celeba.csv").write_text("\n".join(csv_lines) + "\n")
    (root / "list_attr_celeba.txt").unlink()
    reader, after = read("celeba", root)
    assert reader.problems == {}
    for a, b in zip(before, after, strict=True):
        assert a.labels == b.labels and a.split == b.split
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_celeba_bad_line_strict_and_not(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "celeba", tmp_path)
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_bytes().split(b"\r\n")
    lines[3] = lines[3].replace(b" 1", b" 7", 1)
    attr.write_bytes(b"\r\n".join(lines))
    reader, records = read("celeba", root)
    assert len(records) == 8
    (bad,) = reader.problems["bad_line"]
    assert bad["line"] == 4 and bad["file"].endswith("list_attr_celeba.txt")
    assert "unlisted_file" not in reader.problems
    assert sum(1 for r in records if not r.labels) == 1
    with pytest.raises(LabelFormatError, match=r"list_attr_celeba.txt:4: .*'7'") as info:
        read("celeba", root, strict=True)
    assert info.value.line_no == 4


def test_celeba_missing_and_unlisted_images(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "celeba", tmp_path)
    (root / "img_align_celeba" / "016232.jpg").unlink()
    shutil.copy(root / "img_align_celeba" / "000002.jpg", root / "img_align_celeba" / "999999.jpg")
    reader, records = read("celeba", root)
    assert len(records) == 8
    missing = reader.problems["missing_file"]
    assert {p["count"] for p in missing} == {1}
    assert missing[0]["examples"] == ["016232.jpg"]
    (unlisted,) = reader.problems["unlisted_file"]
    assert unlisted["path"].endswith("999999.jpg")
    assert by_name(records)["999999.jpg"].labels == {}


def test_celeba_count_mismatch_and_label_files_only(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "celeba", tmp_path)
    attr = root / "list_attr_celeba.txt"
    attr.write_bytes(attr.read_bytes().replace(b"8\r\n", b"9\r\n", 1))
    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(DatasetError, match="img_align_celeba"):
        get_reader("celeba", root)
    reader, records = read("celeba", root, images=False)
    assert len(records) == 8 and set(reader.problems) == {"count_mismatch"}
    with pytest.raises(LabelFormatError, match="list_attr_celeba.txt:1"):
        read("celeba", root, strict=True, images=False)


# --- MTFL -----------------------------------------------------------------------------------

def test_mtfl_fixture(fixtures_dir):
    reader, records = read("mtfl", fixtures_dir / "mtfl")
    assert len(records) == 28 and reader.problems == {}
    assert {r.split for r in records} == {"train"}
    r = by_name(records)["Aaron_Eckhart_0001.jpg"]
    assert r.path.endswith(os.path.join("lfw_5590", "Aaron_Eckhart_0001.jpg"))
    assert r.labels == {"gender": "male", "smiling": "no", "eyeglasses": "no", "pose": "frontal"}
    np.testing.assert_allclose(r.landmarks[0], [107.25, 108.75])  # left eye: x1, y1
    np.testing.assert_allclose(r.landmarks[4], [140.75, 162.75])  # right mouth corner: x5, y5
    assert r.raw["path"] == "lfw_5590\\Aaron_Eckhart_0001.jpg"
    assert {r.labels["pose"] for r in records} == set(DEFAULT_VOCABULARIES["pose"])


def test_mtfl_fixture_keeps_quirks(fixtures_dir):
    data = (fixtures_dir / "mtfl" / "training.txt").read_bytes()
    assert b"\r\n" in data and b"\\" in data and b"\r\n lfw_5590\\" in data


def test_mtfl_bad_line_missing_file_and_testing_split(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "mtfl", tmp_path)
    lines = (root / "training.txt").read_bytes().split(b"\r\n")
    lines[4] = b" lfw_5590\\x.jpg 1 2 3"
    lines[6] = lines[6][:-1] + b"9"  # pose 9
    (root / "training.txt").write_bytes(b"\r\n".join(lines))
    reader, records = read("mtfl", root)
    assert len(records) == 26
    assert [p["line"] for p in reader.problems["bad_line"]] == [5, 7]
    with pytest.raises(LabelFormatError, match=r"training.txt:5: expected a path and 14 values"):
        read("mtfl", root, strict=True)
    (root / "training.txt").rename(root / "testing.txt")
    (root / "lfw_5590" / "Aaron_Eckhart_0001.jpg").unlink()
    reader, records = read("mtfl", root)
    assert {r.split for r in records} == {"test"} and len(records) == 26
    (missing,) = reader.problems["missing_file"]
    assert missing["path"].endswith("Aaron_Eckhart_0001.jpg")


# --- LFW ------------------------------------------------------------------------------------

def test_lfw_fixture_and_pairs(fixtures_dir):
    reader, records = read("lfw", fixtures_dir / "lfw")
    assert len(records) == 15 and reader.problems == {}
    assert len({r.identity for r in records}) == 7
    assert all(r.split is None and r.labels == {} for r in records)
    pairs = read_pairs(fixtures_dir / "lfw" / "pairs.txt")
    assert len(pairs) == 8 and {p.fold for p in pairs} == {1, 2}
    assert pairs[0] == Pair(1, "Abel_Pacheco/Abel_Pacheco_0001.jpg",
                            "Abel_Pacheco/Abel_Pacheco_0004.jpg", True)
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert pairs[2].path_b == "Al_Pacino/Al_Pacino_0002.jpg"
    absolute = reader.pairs()
    assert all(os.path.isfile(p.path_a) and os.path.isfile(p.path_b) for p in absolute)


@pytest.mark.parametrize("layout", ["lfw", "direct"])
def test_lfw_other_layouts(fixtures_dir, tmp_path, layout):
    src = fixtures_dir / "lfw" / "lfw-deepfunneled"
    root = tmp_path / "data"
    shutil.copytree(src, root / "lfw" if layout == "lfw" else root)
    _, records = read("lfw", root)
    assert len(records) == 15


def test_lfw_malformed_name(fixtures_dir, tmp_path):
    root = tmp_path / "lfw"
    shutil.copytree(fixtures_dir / "lfw" / "lfw-deepfunneled", root)
    shutil.copy(root / "Al_Pacino" / "Al_Pacino_0001.jpg", root / "Al_Pacino" / "pacino.jpg")
    reader, records = read("lfw", root)
    assert len(records) == 16 and len(reader.problems["malformed_name"]) == 1
    with pytest.raises(DatasetError, match="pacino.jpg"):
        read("lfw", root, strict=True)


def test_read_pairs_view1_and_csv(tmp_path):
    view1 = tmp_path / "pairsDevTrain.txt"
    view1.write_text("1\r\nA\t1\t2\r\nA\t1\tB\t3\r\n")
    assert read_pairs(view1) == [Pair(1, "A/A_0001.jpg", "A/A_0002.jpg", True),
                                 Pair(1, "A/A_0001.jpg", "B/B_0003.jpg", False)]
    pairs_csv = tmp_path / "pairs.csv"
    pairs_csv.write_text("path_a,path_b,same,fold\nx/a.jpg,x/b.jpg,1,2\nx/a.jpg,y/c.jpg,false,3\n")
    pairs = read_pairs(pairs_csv, image_root=tmp_path)
    assert [(p.fold, p.same) for p in pairs] == [(2, True), (3, False)]
    assert pairs[0].path_a == str(tmp_path / "x" / "a.jpg")


@pytest.mark.parametrize("text, line", [
    ("2\t1\nA\t1\t2\nA\t1\tB\t1\n", 1),          # header says 4 lines, 2 follow
    ("1\t2\nA\t1\t2\nA\t1\t3\nA\t1\tB\nB\t1\tC\t2\n", 4),
    ("1\t1\nA\tone\t2\nA\t1\tB\t1\n", 2),
    ("x y\n", 1),
    ("path_a,path_b,same\na,b,maybe\n", 2),
])
def test_read_pairs_bad_lines(tmp_path, text, line):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(LabelFormatError, match=rf"pairs.txt:{line}: ") as info:
        read_pairs(path)
    assert info.value.line_no == line


def test_read_pairs_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read pairs file"):
        read_pairs(tmp_path / "absent.txt")


# --- FairFace -------------------------------------------------------------------------------

def test_fairface_fixture(fixtures_dir):
    reader, records = read("fairface", fixtures_dir / "fairface")
    assert len(records) == 5 and reader.problems == {}
    assert reader.vocabularies()["race"] == RACES and len(RACES) == 7
    r = next(r for r in records if r.path.endswith(os.path.join("train", "1.jpg")))
    assert r.labels == {"age_group": "20-29", "gender": "male", "race": "East Asian"}
    assert r.split == "train" and r.raw["service_test"] == "True" and "age" not in r.labels
    assert sorted(r.split for r in records) == ["train"] * 3 + ["val"] * 2


def test_fairface_bad_line_and_missing_column(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "fairface", tmp_path)
    train = root / "fairface_label_train.csv"
    train.write_text(train.read_text().replace("Female,Black", "Female,Martian"))
    reader, records = read("fairface", root)
    assert len(records) == 4
    assert reader.problems["bad_line"][0]["line"] == 3
    with pytest.raises(LabelFormatError, match=r"fairface_label_train.csv:3: .*Martian"):
        read("fairface", root, strict=True)
    train.write_text("file,age,sex,race\ntrain/1.jpg,3-9,Male,White\n")
    with pytest.raises(LabelFormatError, match="missing column.*gender"):
        read("fairface", root)


# --- IMDB-WIKI ------------------------------------------------------------------------------

def test_matlab_datenum():
    assert matlab_datenum_to_date(719529) == date(1970, 1, 1)  # datenum(1970,1,1) in MATLAB
    assert matlab_datenum_to_date(723671.5) == date(1981, 5, 5)
    assert matlab_datenum_to_date(12) is None and matlab_datenum_to_date(float("nan")) is None


def test_imdbwiki_fixture(fixtures_dir):
    reader, records = read("imdbwiki", fixtures_dir / "imdbwiki")
    assert len(records) == 5
    r = by_name(records)["10000217_1981-05-05_2009.jpg"]
    assert r.labels == {"age": 28.0, "age_group": "20-29", "gender": "male"}
    assert r.identity == "Sami Jauhojärvi" and r.raw["source"] == "wiki"
    no_face = by_name(records)["100012_1948-07-03_2008.jpg"]
    assert no_face.raw["face_score"] == "-inf" and "gender" not in no_face.labels
    implausible = reader.problems["implausible_age"]
    assert [p["line"] for p in implausible] == [4, 5]
    assert "age" not in by_name(records)["10001965_2030-05-23_2009.jpg"].labels
    assert set(reader.problems) == {"implausible_age"}


def test_imdbwiki_generated_imdb_mat(tmp_path):
    cells = np.empty((1, 2), dtype=object)
    cells[0, :] = ["01/a.jpg", "02/b.jpg"]
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["Fred Astaire", "Lauren Bacall"]
    struct = {"dob": np.array([[693726.0, 697841.0]]), "photo_taken": np.array([[1968.0, 2004.0]]),
              "full_path": cells, "gender": np.array([[1.0, 7.0]]), "name": names,
              "face_score": np.array([[1.5, 2.5]]), "celeb_id": np.array([[6488.0, 11516.0]])}
    (tmp_path / "imdb_crop").mkdir()
    scipy.io.savemat(tmp_path / "imdb_crop" / "imdb.mat", {"imdb": struct})
    reader, records = read("imdbwiki", tmp_path)
    assert len(records) == 1 and records[0].labels["age"] == 1968 - 1899
    assert records[0].raw["source"] == "imdb" and records[0].identity == "Fred Astaire"
    assert reader.problems["bad_line"][0]["line"] == 2
    assert reader.problems["missing_file"][0]["path"].endswith("a.jpg")
    with pytest.raises(LabelFormatError, match=r"imdb.mat:2: gender"):
        read("imdbwiki", tmp_path, strict=True)


def test_imdbwiki_garbage_mat(tmp_path):
    (tmp_path / "wiki.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really" * 10)
    with pytest.raises(DatasetError, match="wiki.mat"):
        read("imdbwiki", tmp_path)


# --- CSV and folder -------------------------------------------------------------------------

def test_csv_fixture(fixtures_dir):
    reader, records = read("csv", fixtures_dir / "csv")
    assert len(records) == 4 and reader.problems == {}
    assert reader.tasks == ("age", "gender", "smiling", "age_group")
    r = by_name(records)["21_0_2_20170107213417643.jpg.chip.jpg"]
    assert r.labels == {"age": 21.0, "age_group": "20-29", "gender": "male"}
    assert r.split == "train" and r.identity == "p1"
    celeb = by_name(records)["000002.jpg"]
    assert "age" not in celeb.labels and celeb.identity is None
    vocab = reader.vocabularies()
    assert vocab["gender"] == ["male", "female"] and vocab["age"] is None
    assert vocab["smiling"] == ["no", "yes"]
    _, same = read("csv", fixtures_dir / "csv" / "labels.csv")  # root may be the file
    assert [r.path for r in same] == [r.path for r in records]


def test_csv_errors(tmp_path):
    (tmp_path / "labels.csv").write_text("path,age,mood\na.jpg,3,happy\nb.jpg,old,sad\n"
                                         "c.jpg,4\n/abs/d.jpg,,calm\n")
    with pytest.raises(LabelFormatError, match=r"labels.csv:3: age 'old'"):
        read("csv", tmp_path, strict=True)
    reader, records = read("csv", tmp_path)
    assert [os.path.basename(r.path) for r in records] == ["d.jpg", "a.jpg"]
    assert records[0].path == os.path.normpath("/abs/d.jpg")
    assert [p["line"] for p in reader.problems["bad_line"]] == [3, 4]
    assert len(reader.problems["missing_file"]) == 2
    (tmp_path / "labels.csv").write_text("path,age,mood\na.jpg,3\nb.jpg,old,sad\n")
    with pytest.raises(LabelFormatError, match=r"labels.csv:2: expected 3 fields"):
        read("csv", tmp_path, strict=True)
    (tmp_path / "labels.csv").write_text("file,age\na.jpg,3\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        get_reader("csv", tmp_path)


def test_folder_reader(fixtures_dir, tmp_path):
    reader, records = read("folder", fixtures_dir / "lfw" / "lfw-deepfunneled")
    assert len(records) == 15 and reader.tasks == ("class",)
    assert records[0].labels == {"class": "Aaron_Patterson"}
    assert len(reader.vocabularies()["class"]) == 7
    flat = tmp_path / "flat"
    flat.mkdir()
    src = fixtures_dir / "celeba" / "img_align_celeba" / "000002.jpg"
    for name in ("a.JPG", "b.Png", "c.tiff", "notes.txt", ".hidden.jpg"):
        shutil.copy(src, flat / name)
    (flat / "deep" / "er").mkdir(parents=True)
    shutil.copy(src, flat / "deep" / "er" / "d.jpeg")
    reader, records = read("folder", flat)
    assert [os.path.basename(r.path) for r in records] == ["a.JPG", "b.Png", "c.tiff", "d.jpeg"]
    assert reader.tasks == () and all(r.labels == {} for r in records)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        get_reader("folder", tmp_path / "empty")


# --- inspect ------------------------------------------------------------------------------

def test_inspect_utkface_fixture(fixtures_dir):
    result = inspect_dataset("utkface", fixtures_dir / "utkface", progress=False)
    assert result["images"] == result["records"] == 10
    assert result["problem_counts"] == {"malformed_name": 2}
    assert result["duplicate_groups"] == 2 and result["conflicting_groups"] == 1
    assert result["labels"]["gender"] == {"male": 7, "female": 2}
    assert "age" not in result["labels"] and result["age"]["count"] == 9
    assert sum(result["labels"]["age_group"].values()) == 9
    text = format_summary(result)
    assert "malformed_name: 2" in text and "2 groups" in text


def test_inspect_finds_unreadable_truncated_and_missing(fixtures_dir, tmp_path):
    root = copy_fixture(fixtures_dir, "mtfl", tmp_path)
    (root / "lfw_5590" / "Aaron_Eckhart_0001.jpg").write_bytes(b"not an image")
    image = root / "lfw_5590" / "Aaron_Pena_0001.jpg"
    image.write_bytes(image.read_bytes()[:-500])
    (root / "lfw_5590" / "Abba_Eban_0001.jpg").unlink()
    result = inspect_dataset("mtfl", root, progress=False)
    assert result["records"] == 28 and result["images"] == 27
    assert result["problem_counts"] == {"missing_file": 1, "truncated": 1, "unreadable": 1}
    assert result["landmarks"] == 28 and result["splits"] == {"train": 28}
