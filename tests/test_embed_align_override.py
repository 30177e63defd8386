"""--align overrides the backbone's alignment, is recorded in the manifest, and is validated."""

import numpy as np
import pytest

from faceprobe.data.registry import get_reader
from faceprobe.embed.backbones import create_backbone
from faceprobe.embed.pipeline import embed_dataset
from faceprobe.embed.prepare import with_alignment
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError


def test_dlib_alignment_override_is_recorded_and_changes_chips(fixtures_dir, tmp_path):
    recs = list(get_reader("mtfl", fixtures_dir / "mtfl").records())[:4]
    embed_dataset(recs, tmp_path / "a", "dlib.resnet", workers=0, show_progress=False)
    embed_dataset(recs, tmp_path / "b", "dlib.resnet", workers=0, show_progress=False,
                  align="similarity")
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.meta["alignment"].startswith("dlib5") and b.meta["alignment"].startswith("similarity")
    ea, eb = a.load().X["embedding"], b.load().X["embedding"]
    cos = (ea * eb).sum(axis=1)
    assert np.all(cos > 0.85) and not np.allclose(ea, eb)  # same faces, other chips


def test_invalid_alignments_are_refused():
    facenet = create_backbone("facenet.vggface2", weights="random", device="cpu").config
    with pytest.raises(ConfigError, match="dlib.resnet only"):
        with_alignment(facenet, "dlib5")
    with pytest.raises(ConfigError, match="choose one of"):
        with_alignment(facenet, "warp")
    sim = with_alignment(facenet, "similarity")
    assert sim.alignment == "similarity" and len(sim.template) == 5
