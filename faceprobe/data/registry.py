"""Reader lookup by name: ``get_reader(name, root)`` and ``list_readers()``.

Readers check their root when created, so a directory of another format fails here with a
DatasetError naming the expected file(s), before any record is read.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from faceprobe.data.base import DatasetReader
from faceprobe.data.celeba import CelebAReader
from faceprobe.data.csvlabels import CSVReader
from faceprobe.data.fairface import FairFaceReader
from faceprobe.data.folder import FolderReader
from faceprobe.data.imdbwiki import IMDBWikiReader
from faceprobe.data.lfw import LFWReader
from faceprobe.data.mtfl import MTFLReader
from faceprobe.data.utkface import UTKFaceReader
from faceprobe.errors import FaceprobeError

READERS: dict[str, type[DatasetReader]] = {
    cls.name: cls
    for cls in (UTKFaceReader, CelebAReader, FairFaceReader, MTFLReader, LFWReader,
                IMDBWikiReader, CSVReader, FolderReader)
}


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    description: str
    tasks: tuple[str, ...]


def list_readers() -> list[ReaderInfo]:
    """Every format, in registry order, with the label tasks it provides (csv/folder: per file)."""
    return [ReaderInfo(cls.name, cls.description, tuple(cls.tasks)) for cls in READERS.values()]


def get_reader(name: str, root: str | os.PathLike, strict: bool = False, **options) -> DatasetReader:
    """The reader for dataset format ``name`` at ``root``.

    ``strict``: a bad label line raises LabelFormatError instead of being skipped and recorded
    in ``reader.problems``. ``options`` go to the reader (``images=False`` for ``celeba``).
    """
    cls = READERS.get(str(name).lower())
    if cls is None:
        raise FaceprobeError(f"unknown dataset format {name!r}; known: {', '.join(READERS)}")
    unknown = set(options) - set(inspect.signature(cls.__init__).parameters)
    if unknown:
        raise FaceprobeError(f"dataset format {cls.name!r} does not take option(s) "
                             f"{', '.join(sorted(unknown))}")
    return cls(root, strict=strict, **options)
