"""faceprobe: embed faces once, then train, tune, evaluate and score attribute heads on a CPU."""

import os

# Keras reads its backend once, at first import: set it before anything can import keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

__version__ = "0.1.0"
