"""Any folder of images (reader name ``folder``): unlabelled, or one class per subfolder.

Decisions:
- Images are files with a known image extension (case-insensitive) anywhere below the root;
  hidden files and folders are skipped. The tree is walked once, when the reader is created.
- When every image sits exactly one level down (``root/<class>/<image>``) the subfolder name is
  the label of task ``class`` (vocabulary: the sorted folder names). A mixed layout (images at the
  root, or nested deeper) is yielded unlabelled rather than guessing which level means a class.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from faceprobe.data.base import IMAGE_EXTENSIONS, DatasetReader, is_image_name
from faceprobe.data.records import FaceRecord
from faceprobe.errors import DatasetError


class FolderReader(DatasetReader):
    name = "folder"
    description = "Any folder of images: unlabelled, or task 'class' = subfolder name"
    tasks = ("class",)  # per instance: () when the images are not all in class subfolders

    def expected(self) -> str:
        return f"a folder with images ({', '.join(sorted(IMAGE_EXTENSIONS))})"

    def _locate(self) -> None:
        paths: list[str] = []
        depths: set[int] = set()
        for directory, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(directory, self.root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            for name in files:
                if is_image_name(name) and not name.startswith("."):
                    paths.append(os.path.join(directory, name))
                    depths.add(depth)
        if not paths:
            raise DatasetError(f"no images under {self.root}; expected {self.expected()}")
        self.paths = sorted(paths)
        self.by_class = depths == {1}
        self.tasks = ("class",) if self.by_class else ()

    def vocabularies(self) -> dict[str, list[str] | None]:
        if not self.by_class:
            return {}
        return {"class": sorted({self._class_of(p) for p in self.paths})}

    def _class_of(self, path: str) -> str:
        return os.path.basename(os.path.dirname(path))

    def _iter_records(self) -> Iterator[FaceRecord]:
        for path in self.paths:
            if self.by_class:
                label = self._class_of(path)
                yield FaceRecord(path=path, dataset=self.name, labels={"class": label},
                                 raw={"folder": label})
            else:
                yield FaceRecord(path=path, dataset=self.name)
