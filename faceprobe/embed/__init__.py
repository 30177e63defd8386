"""The embed stage: decode, detect (MTCNN), align, embed with a backbone, write a store.

Public API::

    from faceprobe.embed import create_backbone, list_backbones, embed_dataset, embed_images
    from faceprobe.embed.store import Store, StoreWriter

Submodules import torch lazily where they can, so ``import faceprobe.embed`` stays cheap.
"""

from __future__ import annotations

__all__ = ["create_backbone", "embed_dataset", "embed_images", "list_backbones", "load_image"]


def __getattr__(name: str):
    if name in ("create_backbone", "list_backbones"):
        from faceprobe.embed import backbones
        return getattr(backbones, name)
    if name in ("embed_dataset", "embed_images"):
        from faceprobe.embed import pipeline
        return getattr(pipeline, name)
    if name == "load_image":
        from faceprobe.embed.images import load_image
        return load_image
    raise AttributeError(f"module 'faceprobe.embed' has no attribute {name!r}")
