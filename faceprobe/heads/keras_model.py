"""The Keras side of ``KerasHead``: the functional model it saves, the copy of the torch-trained
weights into it, and the folded arithmetic ``predict_outputs`` runs instead of calling it.

Decisions:
- The artifact is a Keras 3 functional model on the torch backend (``import faceprobe`` sets
  KERAS_BACKEND): one ``Input`` per feature group, each standardised by a ``Normalization`` layer
  fixed from the training rows, a trunk of Dense -> BatchNorm/LayerNorm -> ReLU -> Dropout, and one
  softmax output per categorical task plus a linear unit for age. ``model.keras`` is
  self-contained, loads with ``safe_mode=True`` and is what ``predict`` runs. ``scalers_`` keeps
  the same numbers for ``bundle.json``.
- ``head`` is a ``KerasHead``, read for its parameters and fitted attributes only: this module
  imports nothing of ``keras_head``, which imports it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.heads.common import fold_scaler


def _layer_name(prefix: str, task: str) -> str:
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', task)}"


def _build_model(head: Any):
    """The Keras functional model of a head whose fit has set its shapes and scalers (weights
    are then copied in by ``_copy_weights``)."""
    import keras
    from keras import layers

    inputs, parts = {}, []
    for g, dim in head.feature_groups_.items():
        inp = keras.Input((dim,), name=g)
        s = head.scalers_[g]
        norm = layers.Normalization(mean=np.asarray(s["mean"]),
                                    variance=np.square(np.asarray(s["std"])),
                                    name=_layer_name("scale", g))
        inputs[g] = inp
        parts.append(norm(inp))
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name="features")(parts)
    reg = keras.regularizers.L2(float(head.weight_decay)) if head.weight_decay else None
    for i, width in enumerate(head.hidden):
        x = layers.Dense(int(width), kernel_regularizer=reg, name=f"dense_{i}")(x)
        if head.norm == "batch":
            x = layers.BatchNormalization(name=f"bn_{i}")(x)
        elif head.norm == "layer":
            x = layers.LayerNormalization(name=f"ln_{i}")(x)
        x = layers.Activation("relu", name=f"relu_{i}")(x)
        if head.dropout:
            x = layers.Dropout(float(head.dropout), name=f"dropout_{i}")(x)
    outputs = {}
    for t in head.outputs_:
        if t == AGE:
            outputs[t] = layers.Dense(1, kernel_regularizer=reg, name=_layer_name("out", t))(x)
        else:
            outputs[t] = layers.Dense(len(head.vocabularies_[t]), activation="softmax",
                                      kernel_regularizer=reg, name=_layer_name("out", t))(x)
    return keras.Model(inputs, outputs, name="faceprobe_head")


def _copy_weights(net, model, head: Any) -> None:
    """torch module -> the Keras functional model (Dense kernels are transposed)."""
    from torch import nn

    def np_(t):
        return t.detach().cpu().numpy()

    mods = list(net.trunk)
    i = 0
    for m in mods:
        if isinstance(m, nn.Linear):
            model.get_layer(f"dense_{i}").set_weights([np_(m.weight).T, np_(m.bias)])
        elif isinstance(m, nn.BatchNorm1d):
            model.get_layer(f"bn_{i}").set_weights(
                [np_(m.weight), np_(m.bias), np_(m.running_mean), np_(m.running_var)])
        elif isinstance(m, nn.LayerNorm):
            model.get_layer(f"ln_{i}").set_weights([np_(m.weight), np_(m.bias)])
        elif isinstance(m, nn.ReLU):
            i += 1
    for t, lin in zip(head.outputs_, net.heads, strict=True):
        model.get_layer(_layer_name("out", t)).set_weights([np_(lin.weight).T, np_(lin.bias)])


def _fused_layers(head: Any):
    """The Keras model's inference arithmetic with the input standardisation and each
    BatchNorm folded into the adjacent Dense, and all output heads in one matrix: half the
    elementwise passes and none of Keras' per-layer call overhead, which made scoring
    compute-bound at ~80k rows/s."""
    import torch

    if getattr(head, "_fused", None) is not None:
        return head._fused
    layers = []
    first = True
    for i in range(len(head.hidden)):
        W, b = (np.asarray(a, np.float64) for a in head.model_.get_layer(f"dense_{i}").get_weights())
        if first:
            W, b = fold_scaler(head.scalers_, head.feature_groups_, W, b)
            first = False
        if head.norm == "batch":
            bn = head.model_.get_layer(f"bn_{i}")
            gamma, beta, mu, var = (np.asarray(a, np.float64) for a in bn.get_weights())
            a = gamma / np.sqrt(var + bn.epsilon)
            W, b = W * a, (b - mu) * a + beta
        layers.append((W, b))
    heads = [head.model_.get_layer(_layer_name("out", t)).get_weights() for t in head.outputs_]
    W = np.concatenate([np.asarray(h[0], np.float64) for h in heads], axis=1)
    b = np.concatenate([np.asarray(h[1], np.float64) for h in heads])
    if first:
        W, b = fold_scaler(head.scalers_, head.feature_groups_, W, b)
    layers.append((W, b))
    sizes = [np.asarray(h[1]).shape[0] for h in heads]
    head._fused = ([(torch.from_numpy(W.astype(np.float32)), torch.from_numpy(b.astype(np.float32)))
                    for W, b in layers], np.cumsum([0, *sizes]))
    return head._fused


def _run_fused(head: Any, fused, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    layers, bounds = fused
    groups = list(head.feature_groups_)
    x = torch.from_numpy(np.ascontiguousarray(
        batch[groups[0]] if len(groups) == 1 else np.concatenate([batch[g] for g in groups], 1),
        dtype=np.float32))
    for W, b in layers[:-1]:
        x = torch.relu_(torch.addmm(b, x, W))
    z = torch.addmm(layers[-1][1], x, layers[-1][0])
    res = {}
    for k, t in enumerate(head.outputs_):
        part = z[:, bounds[k]:bounds[k + 1]]
        res[t] = (part if t == AGE else torch.softmax(part, dim=1)).numpy()
    return res
