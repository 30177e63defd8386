"""The embed pass end to end on fixture images: determinism, resume, policies, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprobe.data.records import FaceRecord
from faceprobe.embed.pipeline import embed_dataset
from faceprobe.embed.store import Store

FIXTURES = Path(__file__).resolve().parent / "data"


def _lfw_records(n: int = 6) -> list[FaceRecord]:
    paths = sorted((FIXTURES / "lfw").rglob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip("not enough LFW fixture images")
    return [FaceRecord(path=str(p), dataset="lfw", identity=p.parent.name, labels={"gender": "male"})
            for p in paths]


@pytest.fixture(scope="module")
def facenet():
    from faceprobe.embed.backbones import create_backbone
    return create_backbone("facenet.vggface2", weights="random", device="cpu")


def test_two_fp32_runs_are_bitwise_identical(tmp_path, facenet):
    recs = _lfw_records(4)
    recs.append(FaceRecord(path=str(tmp_path / "gone.jpg"), dataset="lfw"))
    out = []
    for k in range(2):
        s = embed_dataset(recs, tmp_path / f"s{k}", facenet, shard_size=3, batch_size=2, workers=1,
                          features=("embedding", "pooled"), show_progress=False)
        assert s["rows"] == 5 and s["status"]["missing"] == 1
        out.append(Store(tmp_path / f"s{k}").load(features=("embedding", "pooled"), usable_only=False))
    a, b = out
    assert list(a.path) == list(b.path) == [r.path for r in recs]
    for g in ("embedding", "pooled"):
        ok = ~np.isnan(a.X[g][:, 0])
        assert ok.sum() == 4
        assert a.X[g][ok].tobytes() == b.X[g][ok].tobytes()
    assert list(a.status).count("missing") == 1
    assert np.isfinite(a.box[ok]).all() and np.isfinite(a.landmarks_detected[ok]).all()


def test_resume_skips_done_shards_and_refuses_other_settings(tmp_path, facenet):
    from faceprobe.errors import StoreError

    recs = _lfw_records(3)
    s1 = embed_dataset(recs[:2], tmp_path / "st", facenet, shard_size=1, workers=0,
                       show_progress=False)
    assert s1["shards_written"] == 2
    again = embed_dataset(recs[:2], tmp_path / "st", facenet, shard_size=1, workers=0,
                          show_progress=False)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 2
    with pytest.raises(StoreError, match="other settings"):
        embed_dataset(recs, tmp_path / "st", facenet, shard_size=1, workers=0, show_progress=False)
    s3 = embed_dataset(recs, tmp_path / "st", facenet, shard_size=1, workers=0,
                       show_progress=False, overwrite=True)
    assert s3["rows"] == 3 and Store(tmp_path / "st").info()["rows"] == 3


def test_no_face_policies_and_dataset_landmarks(tmp_path, facenet):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 100), (128, 128, 128)).save(blank)
    face = _lfw_records(1)[0]
    from faceprobe.embed.detect import FaceDetector
    from faceprobe.embed.images import load_image
    det = FaceDetector().locate([load_image(face.path)])[0]
    lm = det.faces[0].landmarks
    recs = [FaceRecord(path=str(blank), dataset="x"),
            FaceRecord(path=face.path, dataset="x", landmarks=lm)]
    skip = embed_dataset(recs, tmp_path / "a", facenet, workers=0, show_progress=False)
    assert skip["status"] == {"no_face": 1, "ok": 1}
    fb = embed_dataset(recs, tmp_path / "b", facenet, workers=0, no_face="whole_image",
                       landmarks="dataset", show_progress=False)
    assert fb["status"] == {"dataset_landmarks": 1, "no_face_fallback": 1}
    d = Store(tmp_path / "b").load(usable_only=False)
    # the box derived from landmarks is close to the one the detector drew
    assert np.abs(d.box[1] - det.faces[0].box).max() < 20
    e_det = Store(tmp_path / "a").load().X["embedding"][0]
    assert float(e_det @ d.X["embedding"][1]) > 0.99


def test_multi_face_all_gives_a_row_per_face(tmp_path, facenet):
    from PIL import Image

    paths = sorted((FIXTURES / "lfw").rglob("*.jpg"))[:2]
    if len(paths) < 2:
        pytest.skip("no LFW fixture images")
    a, b = (Image.open(p).convert("RGB") for p in paths)
    canvas = Image.new("RGB", (500, 250))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (250, 0))
    canvas.save(tmp_path / "two.jpg")
    recs = [FaceRecord(path=str(tmp_path / "two.jpg"), dataset="x")]
    s = embed_dataset(recs, tmp_path / "s", facenet, workers=0, multi_face="all",
                      show_progress=False)
    assert s["rows"] >= 2 and set(s["status"]) == {"ok"}
    d = Store(tmp_path / "s").load(usable_only=False)
    assert sorted(d.extra["face"].tolist())[:2] == [0, 1]
    one = embed_dataset(recs, tmp_path / "t", facenet, workers=0, show_progress=False)
    assert one["status"] == {"multi_face_chosen": 1}
