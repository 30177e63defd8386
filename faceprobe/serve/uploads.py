"""Streaming reader for ``multipart/form-data`` uploads, with the limits enforced as bytes arrive.

Decisions:
- The body is parsed here with python-multipart rather than through Starlette's form parser,
  because that parser spools every file over 1 MB into the system temporary directory and keeps
  it until the request is over. Here every byte lands in the directory the caller owns (a
  ``TemporaryDirectory`` removed after the response), and a file over the size limit or a part
  beyond the count limit stops the transfer the moment it is crossed, not after it was stored.
- A client's filename is never used as a path: files are named ``upload-000``, ... The original
  name (basename only, control characters dropped, truncated) is kept for messages and display.
- After a limit is crossed the rest of the body is read and discarded (up to ``drain_bytes``), so
  a browser still sending gets the JSON error instead of a connection reset; a body declared
  larger than the request limit is refused from its Content-Length without reading it.
- File data is written with plain blocking writes from the event loop: parts arrive in chunks of
  at most 64 KB into a local temporary directory, cheaper than a thread hop per chunk.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 64 * 1024  # non-file form fields: small options at most


class UploadError(Exception):
    """A request the client must change: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    name: str   # the client's file name, for display only
    path: Path  # where its bytes are, inside the request's temporary directory
    size: int = 0


def megabytes(n: int | float) -> str:
    mb = n / (1024 * 1024)
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.1f} MB"


def display_name(raw: bytes | str, position: int) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip()
    if len(text) > 120:
        text = text[:80] + "…" + text[-39:]
    return text or f"image {position + 1}"


class _Collector:
    """python-multipart callbacks: one file per part that carries a filename."""

    def __init__(self, directory: Path, max_files: int, max_file_bytes: int):
        self.directory, self.max_files, self.max_file_bytes = directory, max_files, max_file_bytes
        self.uploads: list[Upload] = []
        self._name = self._value = self._disposition = b""
        self._file: IO[bytes] | None = None
        self._upload: Upload | None = None
        self._field_bytes = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._upload = None
        self._field_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" not in options:
            return
        if len(self.uploads) >= self.max_files:
            raise UploadError(400, f"more than {self.max_files} images in one request; send at "
                                   f"most {self.max_files} at a time")
        k = len(self.uploads)
        self._upload = Upload(display_name(options[b"filename"], k),
                              self.directory / f"upload-{k:03d}")
        self.uploads.append(self._upload)
        self._file = open(self._upload.path, "wb")  # noqa: SIM115 - closed in on_part_end/close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._upload is None:
            self._field_bytes += n
            if self._field_bytes > MAX_FIELD_BYTES:
                raise UploadError(400, "a form field other than an image is larger than "
                                       f"{MAX_FIELD_BYTES // 1024} KB; send only images")
            return
        if self._upload.size + n > self.max_file_bytes:
            raise UploadError(413, f"{self._upload.name} is larger than "
                                   f"{megabytes(self.max_file_bytes)}, the limit per image")
        self._file.write(data[start:end])
        self._upload.size += n

    def on_part_end(self) -> None:
        self.close()
        self._upload = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def _drain(receive, more_body: bool, budget: int) -> None:
    while more_body and budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        more_body = message.get("more_body", False)


async def receive_uploads(request, directory: Path, *, max_files: int, max_file_bytes: int,
                          max_total_bytes: int, drain_bytes: int | None = None) -> list[Upload]:
    """Stream the files of a multipart request into ``directory``; raise UploadError on a
    request that breaks the limits or is not multipart."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(400, "send the images as multipart/form-data, one part per image "
                               "(field name 'files')")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_total_bytes:
        raise UploadError(413, f"request of {megabytes(int(length))} is over the limit of "
                               f"{megabytes(max_total_bytes)} ({max_files} images of at most "
                               f"{megabytes(max_file_bytes)} each)")
    collector = _Collector(directory, max_files, max_file_bytes)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received, more_body = 0, True
    try:
        while more_body:
            message = await request.receive()
            if message["type"] != "http.request":
                raise UploadError(400, "the client closed the connection during the upload")
            chunk = message.get("body", b"")
            more_body = message.get("more_body", False)
            received += len(chunk)
            if received > max_total_bytes:
                raise UploadError(413, f"request is over the limit of "
                                       f"{megabytes(max_total_bytes)}")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        collector.close()
        await _drain(request.receive, more_body,
                     max_total_bytes if drain_bytes is None else drain_bytes)
        raise
    except FormParserError as exc:
        collector.close()
        await _drain(request.receive, more_body,
                     max_total_bytes if drain_bytes is None else drain_bytes)
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    finally:
        collector.close()
    return collector.uploads
