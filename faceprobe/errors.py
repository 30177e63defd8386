"""The errors a user can cause. Each carries one line that names the thing and the fix.

The CLI prints ``str(error)`` and exits 1; anything else escaping is a bug in faceprobe.
"""


class FaceprobeError(Exception):
    """Base class: a problem the user can fix. The message is one line."""


class DatasetError(FaceprobeError):
    """A dataset directory or label file is missing, of another format, or malformed."""


class LabelFormatError(DatasetError):
    """A label file has a bad line. Carries the file and the 1-based line number."""

    def __init__(self, path, line_no, message):
        self.path = str(path)
        self.line_no = line_no
        super().__init__(f"{path}:{line_no}: {message}")


class ImageError(FaceprobeError):
    """An image cannot be decoded (corrupt, truncated, not an image, too large)."""


class WeightsError(FaceprobeError):
    """Pretrained weights are missing or do not match the model."""


class StoreError(FaceprobeError):
    """An embedding store is missing, damaged, locked, or incompatible with the request."""


class StoreLockedError(StoreError):
    """Another live process is writing the store."""


class BundleError(FaceprobeError):
    """A model bundle is missing, tampered with, from another version, or incompatible."""


class ConfigError(FaceprobeError):
    """A parameter has an invalid value (raised at fit/start, with the accepted values)."""
