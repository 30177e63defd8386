"""Decode one image file into an RGB uint8 array, or fail with a status the store can record.

Decisions:
- The pixel count is checked from the header (``Image.open`` is lazy) before any pixel is decoded,
  so a decompression bomb costs nothing; PIL's own bomb guard is kept as a second line.
- EXIF orientation is applied, because detectors and landmark files assume upright faces
  (a broken EXIF block is ignored rather than failing the image).
- 16-bit images are scaled to 8 bits (x/257), not clipped: clipping turns a 16-bit photo white.
- Transparent images are composited onto white, so transparent areas do not become whatever
  colour happens to sit under alpha=0 (often black).
- Truncated files fail (``LOAD_TRUNCATED_IMAGES`` is never set): a half-grey face embeds as a
  wrong face, which is worse than a row marked ``unreadable``.
- Every failure is an :class:`ImageLoadError` with ``status`` (``missing`` or ``unreadable``) and
  a one-line message.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceprobe.errors import ImageError

# 40 Mpx: larger than any camera photo a face dataset holds, far below what would exhaust RAM
# (an RGB 40 Mpx image is 120 MB decoded).
DEFAULT_MAX_PIXELS = 40_000_000


class ImageLoadError(ImageError):
    """An image that cannot be used; ``status`` is ``missing`` or ``unreadable``."""

    def __init__(self, message: str, status: str = "unreadable", path: str | None = None):
        super().__init__(" ".join(str(message).split()))  # one line, always
        self.status = status
        self.path = path


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<image bytes>"


def load_image(source: str | os.PathLike | bytes | BinaryIO,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``source`` (a path, bytes or a binary file object) as RGB uint8 (H, W, 3)."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ImageLoadError(f"{name}: file not found", "missing", name) from None
        except OSError as exc:
            raise ImageLoadError(f"{name}: cannot stat ({exc.strerror})", "unreadable", name) from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageLoadError(f"{name}: is a directory, not an image", "unreadable", name)
        if not stat.S_ISREG(st.st_mode):
            # a FIFO blocks open() forever and a device such as /dev/zero never ends
            raise ImageLoadError(f"{name}: not a regular file (FIFO, socket or device); not read",
                                 "unreadable", name)
        size = st.st_size
        if size == 0:
            raise ImageLoadError(f"{name}: empty file (0 bytes)", "unreadable", name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"{name}: empty (0 bytes)", "unreadable", name)
        source = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            # our own limit below replaces PIL's warning-level guard
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise ImageLoadError(f"{name}: image has size {w}x{h}", "unreadable", name)
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                        "(possible decompression bomb); raise max_pixels if the file is genuine",
                        "unreadable", name)
                img.load()
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: file not found", "missing", name) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (unrecognised format)",
                             "unreadable", name) from None
    except Image.DecompressionBombError:
        # raised by Image.open from the header alone, before our own pixel limit is reached
        raise ImageLoadError(
            f"{name}: header claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
            "(possible decompression bomb); refused", "unreadable", name) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            MemoryError, struct.error) as exc:
        # PIL signals truncation and corruption with all of these, depending on the codec
        reason = str(exc) or type(exc).__name__
        raise ImageLoadError(f"{name}: cannot decode ({reason})", "unreadable", name) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the image
        pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I" and arr.size and int(arr.max()) <= 255 and int(arr.min()) >= 0:
            gray = arr.astype(np.uint8)  # an 8-bit image stored in a 32-bit container
        else:
            gray = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the header without decoding, EXIF rotation applied; None if unreadable."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
