"""Hostile inputs mixed into a copy of real fixture faces, for the reliability tests.

``make_mix(dst)`` writes a flat folder (read with the ``folder`` reader) holding real faces plus
files that break decoders, detectors or file-name handling, and returns what it wrote:

- ``good``: byte copies of real faces under ordinary names; the test compares their embeddings
  bit for bit with a clean run over ``clean_dir`` (the same files alone).
- ``renamed``: byte copies of real faces under hostile *names* (non-UTF-8, 250 bytes, a PNG
  named ``.jpg``): they must embed exactly as the original file does.
- ``bad``: files that cannot be a usable face; each must come back as a failed row with a
  message (``unreadable``/``missing``/``no_face``/``error``...).
- ``odd``: valid images in unusual encodings (16-bit, palette, CMYK, animated GIF, 1x1): each
  must come back as a row with a status (a usable status, or a failed one with a message); their
  pixels differ from the source after conversion, so no bitwise comparison applies.
- ``skipped``: cases this machine cannot produce, with the reason (chmod 000 does not stop
  root, which is how CI runs; a FIFO stands in as the entry that cannot be read).

Entry names are ``str`` as ``os.fsdecode`` gives them (surrogate escapes for non-UTF-8 bytes).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "data"


@dataclass
class Entry:
    name: str      # file name inside the mix folder (fsdecoded)
    kind: str      # what makes it hostile
    source: str | None = None  # the good file it is a byte copy of ("renamed" entries)


@dataclass
class Mix:
    root: Path
    clean_dir: Path
    good: list[Entry] = field(default_factory=list)
    renamed: list[Entry] = field(default_factory=list)
    bad: list[Entry] = field(default_factory=list)
    odd: list[Entry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def path(self, e: Entry) -> str:
        return os.path.join(str(self.root), e.name)

    @property
    def entries(self) -> list[Entry]:
        return self.good + self.renamed + self.bad + self.odd


def real_faces(n: int) -> list[Path]:
    """n fixture faces, deterministic order (LFW first, then MTFL)."""
    paths = sorted((FIXTURES / "lfw").rglob("*.jpg")) + sorted((FIXTURES / "mtfl").rglob("*.jpg"))
    return paths[:n]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (valid) header claims width x height, followed by a few bytes of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_claiming(face: bytes, width: int, height: int) -> bytes:
    """A real JPEG with its SOF0/SOF2 frame size rewritten to width x height."""
    data = bytearray(face)
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker found")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(root: Path, name: str, data: bytes) -> str:
    with open(os.path.join(os.fsencode(root), os.fsencode(name)), "wb") as f:
        f.write(data)
    return name


def make_mix(dst: str | os.PathLike, n_good: int = 30, seed: int = 0) -> Mix:
    """Write the mix folder ``dst/mix`` and the clean folder ``dst/clean``; see the module doc."""
    dst = Path(dst)
    root, clean = dst / "mix", dst / "clean"
    root.mkdir(parents=True)
    clean.mkdir()
    rng = random.Random(seed)
    mix = Mix(root, clean)
    faces = real_faces(n_good)
    if len(faces) < 4:
        raise RuntimeError(f"too few fixture faces under {FIXTURES}")
    for p in faces:
        name = f"{p.parent.name}__{p.name}"  # flat layout: the folder reader gives no labels
        shutil.copyfile(p, root / name)
        shutil.copyfile(p, clean / name)
        mix.good.append(Entry(name, "real face"))
    src = {e.name: (root / e.name).read_bytes() for e in mix.good}
    first, second, third = mix.good[0].name, mix.good[1].name, mix.good[2].name
    face = Image.open(root / first)
    face.load()

    def renamed(name, kind, source):
        mix.renamed.append(Entry(_write(root, name, src[source]), kind, source))

    renamed(os.fsdecode(b"caf\xe9-latin1-\xff.jpg"), "non-UTF-8 file name", first)
    renamed("x" * 246 + ".jpg", "250-byte file name", second)
    renamed("\u00e9" * 123 + ".jpg", "250-byte multibyte file name", third)
    png_face = Image.open(io.BytesIO(src[third])).convert("RGB")
    # PIL picks the decoder from the content, so a PNG named .jpg is a good PNG face
    mix.odd.append(Entry(_write(root, "png_named.jpg", _save(png_face, "PNG")), "PNG named .jpg"))

    def bad(name, kind, data):
        mix.bad.append(Entry(_write(root, name, data), kind))

    jpg = src[first]
    bad("truncated_half.jpg", "truncated JPEG (half)", jpg[: len(jpg) // 2])
    bad("truncated_header.jpg", "truncated JPEG (header only)", jpg[:300])
    body = bytearray(jpg)
    for k in range(len(body) // 3, len(body) - 2):
        body[k] = rng.randrange(256)
    bad("corrupt_scan.jpg", "JPEG with random entropy data", bytes(body[: len(body) - 2]))
    png = _save(face, "PNG")
    bad("truncated.png", "truncated PNG", png[: len(png) // 2])
    idat = png.index(b"IDAT")
    broken = bytearray(png)
    for k in range(idat + 8, min(len(broken) - 16, idat + 2000)):
        broken[k] ^= 0x5A
    bad("corrupt_idat.png", "PNG with a corrupt zlib stream", bytes(broken))
    bad("zero.jpg", "zero bytes", b"")
    bad("random.jpg", "random bytes named .jpg", rng.randbytes(4096))
    bad("html.jpg", "HTML error page named .jpg",
        b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")
    bad("huge_header.png", "PNG header claiming 30000x30000", png_claiming(30000, 30000))
    bad("huge_header.jpg", "JPEG frame claiming 30000x30000", jpeg_claiming(jpg, 30000, 30000))
    bad("blank.png", "blank image (no face)", _save(Image.new("RGB", (160, 160), (90, 90, 90)), "PNG"))

    def odd(name, kind, data):
        mix.odd.append(Entry(_write(root, name, data), kind))

    odd("one_pixel.png", "1x1 PNG", _save(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"))
    odd("one_pixel.jpg", "1x1 JPEG", _save(Image.new("RGB", (1, 1), (200, 150, 120)), "JPEG"))
    odd("tall_strip.png", "3x2000 strip", _save(Image.new("RGB", (3, 2000), (9, 9, 9)), "PNG"))
    gray16 = np.asarray(face.convert("L"), dtype=np.uint16) * 257
    odd("gray16.png", "16-bit grayscale PNG", _save(Image.fromarray(gray16), "PNG"))
    odd("rgba_palette.png", "palette PNG with transparency",
        _save(face.convert("RGB").quantize(64), "PNG", transparency=0))
    odd("palette.png", "palette PNG", _save(face.convert("RGB").quantize(256), "PNG"))
    odd("cmyk.jpg", "CMYK JPEG", _save(face.convert("CMYK"), "JPEG", quality=95))
    odd("la.png", "grayscale + alpha PNG", _save(face.convert("LA"), "PNG"))
    frames = [Image.open(io.BytesIO(src[n])).convert("RGB") for n in (first, second, third)]
    odd("animated.gif", "animated GIF (3 frames)",
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0))

    # entries that are not regular files
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    mix.bad += [Entry("loop_a.jpg", "symlink loop"), Entry("loop_b.jpg", "symlink loop")]
    os.symlink("does_not_exist.jpg", root / "dangling.jpg")
    mix.bad.append(Entry("dangling.jpg", "dangling symlink"))
    os.symlink(".", root / "dirloop")  # the walker must not descend into it forever
    os.mkfifo(root / "fifo.jpg")  # open() for reading would block forever without a writer
    mix.bad.append(Entry("fifo.jpg", "FIFO named .jpg (cannot be read)"))
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", root / "devzero.jpg")  # endless bytes if read naively
        mix.bad.append(Entry("devzero.jpg", "symlink to /dev/zero"))
    (root / "folder.jpg").mkdir()  # a directory with an image name
    _write(root / "folder.jpg", "inner.jpg", b"not an image")
    mix.bad.append(Entry(os.path.join("folder.jpg", "inner.jpg"), "text in a folder named .jpg"))

    locked = _write(root, "no_permission.jpg", src[first])
    os.chmod(root / locked, 0)
    try:
        with open(root / locked, "rb"):
            readable = True
    except PermissionError:
        readable = False
    if readable:  # root / CAP_DAC_OVERRIDE: the permission bits do not stop reads
        os.chmod(root / locked, stat.S_IRUSR | stat.S_IWUSR)
        os.unlink(root / locked)
        mix.skipped["unreadable permission (chmod 000)"] = (
            "running with CAP_DAC_OVERRIDE (root), which reads mode-000 files; the FIFO entry "
            "covers a file that cannot be read")
    else:
        mix.bad.append(Entry(locked, "unreadable permission (chmod 000)"))
    return mix


def restore_permissions(mix: Mix) -> None:
    """Make the mix deletable again (pytest's tmp cleanup)."""
    for e in mix.bad:
        p = os.fsencode(mix.path(e))
        if not os.path.islink(p) and os.path.exists(p):
            os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
