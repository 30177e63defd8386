"""The upload reader's pure parts: what a client's file name may become."""

from __future__ import annotations

import pytest

pytest.importorskip("python_multipart")

from faceprobe.serve.uploads import display_name, megabytes  # noqa: E402


@pytest.mark.parametrize("raw, shown", [
    (b"photo.jpg", "photo.jpg"),
    (b"../../etc/passwd", "passwd"),
    (b"C:\\Users\\me\\face.png", "face.png"),
    (b"evil\x00\x1b[31m.jpg\n", "evil[31m.jpg"),
    ("caf\u00e9.jpg".encode(), "caf\u00e9.jpg"),
    (b"\xff\xfe.jpg", "\ufffd\ufffd.jpg"),
    (b"", "image 3"),
    (b"dir/", "image 3"),
])
def test_display_name_is_a_harmless_basename(raw, shown):
    assert display_name(raw, 2) == shown


def test_display_name_is_bounded():
    name = display_name(b"a" * 5000 + b".jpg", 0)
    assert len(name) <= 120 and name.endswith(".jpg")


def test_megabytes():
    assert megabytes(10 * 1024 * 1024) == "10 MB"
    assert megabytes(1.5 * 1024 * 1024) == "1.5 MB"
