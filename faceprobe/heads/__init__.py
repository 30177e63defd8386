"""Attribute heads over stored embeddings: train, tune, bundle, score, evaluate.

Every module here reads data only through ``faceprobe.embed.store`` and imports torch, Keras and
scikit-learn lazily, so importing the package stays cheap for the CLI.
"""

from faceprobe.heads.baselines import KINDS, SklearnHead, make_head
from faceprobe.heads.bundle import Bundle, load_bundle, save_bundle
from faceprobe.heads.evaluate import compute_metrics, evaluate_bundle
from faceprobe.heads.keras_head import KerasHead
from faceprobe.heads.score import score_images, score_store
from faceprobe.heads.splits import Split, make_split
from faceprobe.heads.train import train_store
from faceprobe.heads.tune import tune_store

__all__ = [
    "KINDS", "Bundle", "KerasHead", "SklearnHead", "Split", "compute_metrics", "evaluate_bundle",
    "load_bundle", "make_head", "make_split", "save_bundle", "score_images", "score_store",
    "train_store", "tune_store",
]
