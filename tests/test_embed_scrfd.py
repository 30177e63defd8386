"""`--detector scrfd` in the embed pass: recorded in the recipe, replayed by image scoring,
refused on resume into an MTCNN store (real MTFL images, the real SCRFD model)."""

from pathlib import Path

import pytest
from image_scoring import assert_images_score_as_store

from faceprobe.cli import main
from faceprobe.data.registry import get_reader
from faceprobe.embed.pipeline import embed_dataset
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, StoreError
from faceprobe.files import file_sha256
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.train import train_store

pytest.importorskip("dlib")
SCRFD = Path(__file__).resolve().parents[2] / "shared" / "weights" / "scrfd_2.5g_bnkps.onnx"
pytestmark = pytest.mark.skipif(not SCRFD.is_file(), reason=f"needs the SCRFD model at {SCRFD}")


@pytest.fixture(scope="module")
def scrfd_store(fixtures_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scrfd")
    reader = get_reader("mtfl", fixtures_dir / "mtfl")
    records = list(reader.records())
    summary = embed_dataset(records, root / "s", "dlib.resnet", workers=1, show_progress=False,
                            vocabularies=reader.vocabularies(), detector="scrfd",
                            detector_weights=str(SCRFD))
    return root, records, reader, Store(root / "s"), summary


def test_scrfd_finds_every_face_and_is_recorded(scrfd_store):
    _, records, _, store, summary = scrfd_store
    assert summary["status"].get("no_face", 0) == 0 and summary["rows"] >= len(records)
    det = store.meta["recipe"]["detection"]
    assert det["detector"] == "scrfd" and det["detector_weights_sha256"] == file_sha256(SCRFD)
    assert "detector=scrfd" in store.meta["alignment"]


def test_scoring_images_replays_scrfd(scrfd_store, tmp_path):
    _, records, _, store, _ = scrfd_store
    res = train_store(store, "gender", "logreg", out=tmp_path / "m")
    assert_images_score_as_store(load_bundle(res.bundle), store, [r.path for r in records],
                                 tmp_path)


def test_resuming_with_another_detector_is_refused(scrfd_store):
    root, records, reader, _, _ = scrfd_store
    with pytest.raises(StoreError, match="recipe"):
        embed_dataset(records, root / "s", "dlib.resnet", workers=0, show_progress=False,
                      vocabularies=reader.vocabularies(), detector="mtcnn")


def test_auto_resumes_with_the_stores_detector(scrfd_store):
    # $FACEPROBE_HOME holds no SCRFD file here, yet auto keeps the store's detector
    root, records, reader, _, _ = scrfd_store
    again = embed_dataset(records, root / "s", "dlib.resnet", workers=0, show_progress=False,
                          vocabularies=reader.vocabularies(), detector_weights=str(SCRFD))
    assert again["detector"] == "scrfd" and again["shards_written"] == 0


def test_detector_errors_are_one_line(fixtures_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown detector 'yolo'"):
        embed_dataset([], tmp_path / "x", "dlib.resnet", detector="yolo")
    code = main(["embed", "mtfl", "--root", str(fixtures_dir / "mtfl"), "--out",
                 str(tmp_path / "y"), "--backbone", "dlib.resnet", "--detector", "scrfd",
                 "--detector-weights", str(tmp_path / "missing.onnx"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "missing.onnx" in err and err.count("\n") == 1
