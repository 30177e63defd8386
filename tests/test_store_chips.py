"""The ``chips`` group: the aligned faces a store keeps for later training (real LFW images)."""

import numpy as np
import pytest

from faceprobe.data.registry import get_reader
from faceprobe.embed.add_features import add_features
from faceprobe.embed.align import align_face
from faceprobe.embed.images import load_image
from faceprobe.embed.pipeline import embed_dataset
from faceprobe.embed.store import Store
from faceprobe.errors import StoreError

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def chipped(fixtures_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("chips")
    reader = get_reader("mtfl", fixtures_dir / "mtfl")
    records = list(reader.records())[:12]
    embed_dataset(records, root / "s", "dlib.resnet", features=("embedding", "chips"),
                  workers=0, shard_size=5, show_progress=False,
                  vocabularies=reader.vocabularies())
    return root / "s", records


def test_chips_are_the_aligned_faces_the_backbone_embedded(chipped):
    path, records = chipped
    store = Store(path)
    chips, rows = store.load_chips(tasks=("gender",))
    assert chips.dtype == np.uint8 and chips.shape == (len(rows), 150, 150, 3)
    assert store.meta["chips"]["size"] == 150 and store.meta["chips"]["backbone"] == "dlib.resnet"
    assert "chips" not in store.feature_dims  # never a head's input by default
    assert len(rows) >= 10 and rows.y["gender"].shape == (len(rows),)
    # each stored chip is the one alignment cuts from the image at the stored points
    from faceprobe.embed.backbones import create_backbone
    cfg = create_backbone("dlib.resnet").config
    for k in (0, len(rows) - 1):
        img = load_image(rows.path[k])
        again = align_face(img, cfg, rows.landmarks_detected[k], rows.box[k])
        assert np.abs(again.astype(int) - chips[k].astype(int)).mean() < 1.0
    # and the chip embeds to the stored embedding
    emb = create_backbone("dlib.resnet").embed(chips[:3])
    assert np.allclose(emb, rows.X["embedding"][:3], atol=1e-4)


def test_chips_survive_adding_a_group(chipped, tmp_path):
    import shutil
    path, _ = chipped
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    before, _ = Store(copy).load_chips()
    add_features(copy, ["geometry5"], show_progress=False)
    after, rows = Store(copy).load_chips(features=("embedding", "geometry5"))
    assert np.array_equal(before, after) and "geometry5" in rows.X


def test_a_store_without_chips_says_how_to_get_them(fixtures_dir, tmp_path):
    reader = get_reader("mtfl", fixtures_dir / "mtfl")
    embed_dataset(list(reader.records())[:3], tmp_path / "s", "dlib.resnet", workers=0,
                  show_progress=False)
    with pytest.raises(StoreError, match="--features embedding,chips"):
        Store(tmp_path / "s").load_chips()


def test_resuming_without_chips_is_refused(chipped, fixtures_dir):
    path, records = chipped
    from faceprobe.errors import StoreError as E
    with pytest.raises(E, match="chips"):
        embed_dataset(records, path, "dlib.resnet", workers=0, shard_size=5,
                      show_progress=False, vocabularies=get_reader(
                          "mtfl", fixtures_dir / "mtfl").vocabularies())
