"""Dataset readers: one per format, all yielding :class:`FaceRecord`."""

from faceprobe.data.records import LANDMARK_NAMES, FaceRecord

__all__ = ["FaceRecord", "LANDMARK_NAMES"]
