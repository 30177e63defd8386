"""`--detector auto` (the default): SCRFD when its file is on this machine, else MTCNN with one
warning naming the file and where it goes; a resumed store keeps its detector; scoring replays
the recorded detector by name, never auto."""

import warnings

import pytest

from faceprobe.embed.detect_scrfd import SCRFD_FILENAME
from faceprobe.embed.detectors import choose_detector, recorded_detector
from faceprobe.embed.recipe import detection_options
from faceprobe.errors import ConfigError


def empty_store(path, detection: dict):
    """A store with no shards whose recipe records ``detection``."""
    from faceprobe.embed.store import StoreWriter

    meta = {"backbone": "test.random", "features": {"embedding": 2}, "vocabularies": {},
            "shard_size": 1, "num_shards": 0, "dataset": "test", "records_sha256": "x",
            "recipe": {"detection": detection}}
    with StoreWriter.open(path, meta):
        pass
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home"


def test_auto_without_the_file_is_mtcnn_with_one_warning(home):
    with pytest.warns(UserWarning) as caught:
        assert choose_detector("auto") == ("mtcnn", None)
    msg = str(caught[0].message)
    assert len(caught) == 1 and SCRFD_FILENAME in msg and str(home / "weights") in msg
    assert "--detector mtcnn" in msg


def test_auto_with_the_file_is_scrfd(home):
    (home / "weights").mkdir(parents=True)
    (home / "weights" / SCRFD_FILENAME).write_bytes(b"onnx")  # resolved here, loaded later
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_detector("auto") == ("scrfd", str(home / "weights" / SCRFD_FILENAME))
    assert choose_detector("mtcnn") == ("mtcnn", None)  # a named detector is taken as named


def test_auto_keeps_the_detector_of_the_store_it_resumes(home, tmp_path):
    (home / "weights").mkdir(parents=True)
    (home / "weights" / SCRFD_FILENAME).write_bytes(b"onnx")
    store = empty_store(tmp_path / "store", {"detector": "mtcnn"})
    assert recorded_detector(store) == "mtcnn"
    assert choose_detector("auto", resume_from=store) == ("mtcnn", None)
    assert recorded_detector(tmp_path / "none") is None


def test_unknown_detector_is_one_line(home):
    with pytest.raises(ConfigError, match="unknown detector 'yolo'; choose one of mtcnn, scrfd"):
        choose_detector("yolo")


def test_replay_names_the_recorded_detector():
    assert detection_options({"detection": {"detector": "mtcnn"}})["detector"] == "mtcnn"
    assert detection_options({})["detector"] == "mtcnn"  # recipes before the registry


def test_auto_takes_scrfd_from_torchs_cache_where_it_found_it(home, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")  # found locally: never a download
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / SCRFD_FILENAME).write_bytes(b"onnx")
    assert choose_detector("auto") == ("scrfd", str(cache / SCRFD_FILENAME))


def test_auto_resumes_with_the_stores_own_scrfd_file(home, tmp_path, monkeypatch):
    from faceprobe.files import file_sha256

    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    own = tmp_path / "elsewhere" / "my-scrfd.onnx"
    own.parent.mkdir()
    own.write_bytes(b"my export")
    store = empty_store(tmp_path / "store", {
        "detector": "scrfd", "detector_weights": str(own),
        "detector_weights_sha256": file_sha256(own)})
    assert choose_detector("auto", resume_from=store) == ("scrfd", str(own))


def test_ray_refuses_scrfd_in_one_line(fixtures_dir, tmp_path, capsys):
    from faceprobe.cli import main

    code = main(["embed", "mtfl", "--root", str(fixtures_dir / "mtfl"), "--out",
                 str(tmp_path / "s"), "--backbone", "dlib.resnet", "--engine", "ray",
                 "--detector-weights", str(tmp_path / "x.onnx"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "MTCNN only" in err and err.count("\n") == 1
