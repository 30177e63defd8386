"""Hostile image files: every one decodes properly or fails with a status and a one-line message."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprobe.embed.images import ImageLoadError, load_image
from faceprobe.errors import ImageError

FIXTURES = Path(__file__).resolve().parent / "data"


def _face_jpg() -> Path:
    found = sorted((FIXTURES / "lfw").rglob("*.jpg"))
    if not found:
        pytest.skip("no LFW fixture images")
    return found[0]


def _png_bomb(path: Path, w: int = 100_000, h: int = 100_000) -> None:
    """A tiny PNG whose header claims w x h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    src = Image.open(_face_jpg()).convert("RGB")
    raw = _face_jpg().read_bytes()
    files = {}

    def put(name, data: bytes):
        (d / name).write_bytes(data)
        files[name] = d / name
    put("zero.jpg", b"")
    put("text.jpg", b"this is not an image\n" * 10)
    put("truncated.jpg", raw[: len(raw) // 2])
    put("corrupt.jpg", raw[:200] + bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8))
        + raw[3200:])
    for name, img in {
        "gray.png": src.convert("L"), "cmyk.jpg": src.convert("CMYK"),
        "rgba.png": src.convert("RGBA"), "palette.png": src.convert("P"),
    }.items():
        buf = io.BytesIO()
        img.save(buf, format="PNG" if name.endswith("png") else "JPEG")
        put(name, buf.getvalue())
    g16 = (np.asarray(src.convert("L"), np.uint16) * 257)
    Image.fromarray(g16).save(d / "gray16.png")
    files["gray16.png"] = d / "gray16.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    src.save(d / "exif6.jpg", exif=exif)
    files["exif6.jpg"] = d / "exif6.jpg"
    _png_bomb(d / "bomb.png")
    files["bomb.png"] = d / "bomb.png"
    files["missing.jpg"] = d / "missing.jpg"
    put("face.jpg", raw)
    return files


@pytest.mark.parametrize("name,status", [
    ("zero.jpg", "unreadable"), ("text.jpg", "unreadable"), ("truncated.jpg", "unreadable"),
    ("bomb.png", "unreadable"), ("missing.jpg", "missing"),
])
def test_bad_files_fail_with_status(hostile, name, status):
    with pytest.raises(ImageError) as err:
        load_image(hostile[name])
    assert isinstance(err.value, ImageLoadError)
    assert err.value.status == status
    msg = str(err.value)
    assert "\n" not in msg and str(hostile[name]) in msg


def test_corrupt_jpeg_fails_or_decodes(hostile):
    # libjpeg recovers some corruptions; either outcome is fine, a crash is not
    try:
        arr = load_image(hostile["corrupt.jpg"])
        assert arr.dtype == np.uint8 and arr.shape[2] == 3
    except ImageLoadError as exc:
        assert exc.status == "unreadable"


@pytest.mark.parametrize("name", ["gray.png", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png",
                                  "face.jpg"])
def test_modes_become_rgb_uint8(hostile, name):
    arr = load_image(hostile[name])
    ref = load_image(hostile["face.jpg"])
    assert arr.dtype == np.uint8 and arr.shape == ref.shape
    # close to the original: conversion, not clipping or garbage
    assert np.abs(arr.astype(float).mean() - ref.astype(float).mean()) < 12


def test_sixteen_bit_is_scaled_not_clipped(hostile):
    arr = load_image(hostile["gray16.png"])
    gray = np.asarray(Image.open(hostile["gray.png"]).convert("L"))
    assert np.abs(arr[:, :, 0].astype(int) - gray).max() <= 1


def test_exif_rotation_applied(hostile):
    ref = load_image(hostile["face.jpg"])
    arr = load_image(hostile["exif6.jpg"])
    assert arr.shape == (ref.shape[1], ref.shape[0], 3)
    assert np.abs(arr.astype(float) - np.rot90(ref, k=-1).astype(float)).mean() < 8


def test_bomb_refused_before_decoding(hostile):
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(hostile["bomb.png"])


def test_bytes_source(hostile):
    arr = load_image(hostile["face.jpg"].read_bytes())
    assert arr.shape[2] == 3
    with pytest.raises(ImageLoadError):
        load_image(b"")


def test_pipeline_rows_for_hostile_files(hostile):
    from faceprobe.embed.pipeline import embed_images

    names = sorted(hostile)
    rows = embed_images([hostile[n] for n in names], "dlib.resnet", workers=0)
    assert len(rows) == len(names)
    by = {Path(r["path"]).name: r for r in rows}
    for n in ("zero.jpg", "text.jpg", "truncated.jpg", "bomb.png"):
        assert by[n]["status"] == "unreadable" and by[n]["error"] and by[n]["features"] is None
    assert by["missing.jpg"]["status"] == "missing"
    for n in ("gray.png", "cmyk.jpg", "rgba.png", "gray16.png", "exif6.jpg", "face.jpg"):
        r = by[n]
        assert r["status"] in ("ok", "multi_face_chosen"), (n, r["status"], r["error"])
        emb = r["features"]["embedding"]
        assert emb.shape == (128,) and abs(np.linalg.norm(emb) - 1) < 1e-4
