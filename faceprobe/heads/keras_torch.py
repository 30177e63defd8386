"""The torch training of ``KerasHead``: the same network as a torch module, its loss and the
training loop (``_train_torch``); ``keras_model._copy_weights`` then moves the weights into the
Keras model.

Decisions:
- The loss is written out: each categorical output's loss is
  ``sum_i w[y_i] * m_i * CE_i / max(sum_i m_i, 1)``, ``m`` masking rows whose label is missing
  (code -1) and ``w`` the task's class weights (common.class_weights). Dividing by the labelled
  count, not the batch size, keeps a task with many missing labels from being down-weighted. The
  total is ``sum_t loss_weights[t] * loss_t`` + ``weight_decay * sum(W**2)`` over every dense
  kernel, hidden and output layers alike (``_decayed_kernels``), and the saved model declares that
  same ``L2(weight_decay)`` on each of those Dense layers (a test checks the two agree), so
  ``model.keras`` says what was trained. Declaring it on the hidden layers only, as before,
  described a model trained without decay on its outputs; keeping the training as measured and
  fixing the declaration changes no number.
- Determinism: torch's RNG is seeded for initialisation, shuffling and dropout, and the loop runs
  on one thread, so two fits with the same seed give identical weights on a CPU.
- ``head`` is a ``KerasHead``, read for its parameters and fitted attributes only: this module
  imports nothing of ``keras_head``, which imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.heads.common import EarlyStopping, train_epoch

_HUBER_DELTA = 0.25


def _torch_net(head: Any):
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            width = sum(head.feature_groups_.values())
            layers: list[nn.Module] = []
            for h in head.hidden:
                lin = nn.Linear(width, int(h))
                layers.append(lin)
                # the same eps/momentum as Keras' layers, so copied statistics mean the same
                if head.norm == "batch":
                    layers.append(nn.BatchNorm1d(int(h), eps=1e-3, momentum=0.01))
                elif head.norm == "layer":
                    layers.append(nn.LayerNorm(int(h), eps=1e-3))
                layers.append(nn.ReLU())
                if head.dropout:
                    layers.append(nn.Dropout(float(head.dropout)))
                width = int(h)
            self.trunk = nn.Sequential(*layers)
            self.heads = nn.ModuleList(
                nn.Linear(width, 1 if t == AGE else len(head.vocabularies_[t]))
                for t in head.outputs_)
            for m in self.modules():
                if isinstance(m, nn.Linear):  # Keras' Dense initialisation
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            z = self.trunk(x)
            return [h(z) for h in self.heads]

    return Net()


def _standardised(head: Any, X: Mapping[str, np.ndarray]) -> np.ndarray:
    parts = []
    for g in head.feature_groups_:
        s = head.scalers_[g]
        parts.append((X[g] - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32))
    return np.concatenate(parts, axis=1).astype(np.float32) if len(parts) > 1 \
        else parts[0].astype(np.float32)


def _decayed_kernels(net) -> list:
    """The kernels the L2 term covers: every Linear's, trunk and output heads (``keras_model``
    declares the regulariser on each of their Dense layers)."""
    from torch import nn

    return [m.weight for m in net.modules() if isinstance(m, nn.Linear)]


def _train_torch(head, ds, val, targets, val_targets, lw, callbacks):
    import torch
    import torch.nn.functional as F

    seed = int(head.seed)
    torch.manual_seed(seed)
    net = _torch_net(head)
    gen = torch.Generator().manual_seed(seed)
    xtr = torch.from_numpy(_standardised(head, ds.X))
    xva = torch.from_numpy(_standardised(head, val.X)) if val is not None else None
    ytr = [torch.from_numpy(np.asarray(targets[t], np.float32)) for t in head.outputs_]
    yva = [torch.from_numpy(np.asarray(val_targets[t], np.float32)) for t in head.outputs_]
    cws = [torch.tensor(head.class_weights_[t]) if t != AGE else None for t in head.outputs_]
    weights = [lw[t] for t in head.outputs_]
    kernels = _decayed_kernels(net)
    opt = torch.optim.Adam(net.parameters(), lr=float(head.lr))

    def task_losses(outs, ys):
        losses = []
        for out, y, cw in zip(outs, ys, cws, strict=True):
            if cw is None:
                m = ~torch.isnan(y)
                err = (torch.where(m, y, 0.0) - out[:, 0]).abs()
                quad = err.clamp(max=_HUBER_DELTA)
                per = 0.5 * quad * quad + _HUBER_DELTA * (err - quad)
            else:
                m = y >= 0
                yi = y.clamp(min=0).long()
                per = F.cross_entropy(out, yi, reduction="none") * cw[yi]
            mf = m.float()
            losses.append((per * mf).sum() / mf.sum().clamp(min=1.0))
        return losses

    n, bs = len(xtr), int(head.batch_size)
    history: dict[str, list[float]] = {"loss": [], "val_loss": []}
    for t in head.outputs_:
        history[f"val_{t}_loss"] = []

    def batch_loss(idx):
        outs = net(xtr[idx])
        loss = sum(w * v for w, v in zip(weights, task_losses(outs, [y[idx] for y in ytr]),
                                           strict=True))
        if head.weight_decay:
            loss = loss + float(head.weight_decay) * sum((k * k).sum() for k in kernels)
        return loss

    min_batch = 2 if head.norm == "batch" else 1  # BatchNorm cannot normalise a batch of one
    stopper = EarlyStopping(head.patience, enabled=head.early_stopping)
    for epoch in range(int(head.epochs)):
        history["loss"].append(train_epoch(net, opt, n, bs, gen, batch_loss, min_batch))
        val_loss = float("nan")
        if xva is not None:
            net.eval()
            with torch.no_grad():
                vl = [float(v) for v in task_losses(net(xva), yva)]
            val_loss = sum(w * v for w, v in zip(weights, vl, strict=True))
            history["val_loss"].append(val_loss)
            for t, v in zip(head.outputs_, vl, strict=True):
                history[f"val_{t}_loss"].append(v)
        for cb in callbacks or ():
            cb(epoch, {k: v[-1] for k, v in history.items() if v})
        if head.verbose:
            print(f"epoch {epoch + 1}: loss {history['loss'][-1]:.4f} val_loss {val_loss:.4f}",
                  flush=True)
        if stopper.update(net, epoch, val_loss):
            break
    stopper.restore(net)
    net.eval()
    return net, history, stopper.best_epoch
