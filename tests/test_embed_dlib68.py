"""`--landmarks dlib68`: five alignment points from dlib's 68-point predictor on its own HOG
box (real MTFL fixture images), recorded in the recipe and replayed when images are scored."""


import numpy as np
import pytest
from image_scoring import assert_images_score_as_store

from faceprobe.data.registry import get_reader
from faceprobe.embed.features import dlib68_five
from faceprobe.embed.images import load_image
from faceprobe.embed.pipeline import embed_dataset, embed_images
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.train import train_store
from faceprobe.landmarks.evaluate import evaluate_landmarks

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def stores(fixtures_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dlib68")
    reader = get_reader("mtfl", fixtures_dir / "mtfl")
    records = list(reader.records())
    for lm in ("detect", "dlib68"):
        # a template-aligned backbone, so the points decide the chip (dlib.resnet aligns with
        # dlib's own 5-point predictor on the box and would not see them)
        embed_dataset(records, root / lm, "facenet.vggface2", weights="random", align="similarity",
                      workers=0, show_progress=False, vocabularies=reader.vocabularies(),
                      detector="mtcnn", landmarks=lm, features=("embedding", "chips"))
    return root, records


def test_dlib68_points_align_the_faces_and_are_recorded(stores):
    root, _ = stores
    mtcnn, dlib68 = Store(root / "detect"), Store(root / "dlib68")
    assert dlib68.meta["recipe"]["detection"]["landmarks"] == "dlib68"
    a = mtcnn.load(features=(), usable_only=False)
    b = dlib68.load(features=(), usable_only=False)
    assert len(b) == len(a) and (b.status == a.status).all()
    i = int(np.flatnonzero(b.status == "ok")[0])
    assert np.allclose(b.landmarks_detected[i], dlib68_five(load_image(b.path[i]), b.box[i]))
    assert not np.allclose(a.landmarks_detected[i], b.landmarks_detected[i], atol=0.5)
    (chips_a, _), (chips_b, _) = mtcnn.load_chips(), dlib68.load_chips()
    diff = np.abs(chips_a.astype(int) - chips_b.astype(int)).mean(axis=(1, 2, 3))
    assert np.median(diff) > 5  # other points, other chips (0-255 scale)
    # measured on these 28 faces: 0.049 against MTCNN's 0.055
    assert evaluate_landmarks(root / "dlib68")["nme"] < 0.06


def test_scoring_images_replays_dlib68(stores, tmp_path):
    root, records = stores
    store = Store(root / "dlib68")
    bundle = load_bundle(train_store(store, "gender", "logreg", out=tmp_path / "m").bundle)
    assert_images_score_as_store(bundle, store, [r.path for r in records], tmp_path)


def test_images_have_no_dataset_landmarks(fixtures_dir):
    with pytest.raises(ConfigError, match="images have no dataset landmarks"):
        embed_images([], "dlib.resnet", landmarks="dataset")
