"""The torch side of ``MarginHead.fit``: the network, ArcFace logits, the training loop and the
export of the trained network to numpy matrices.

``faceprobe.heads.margin`` imports this module inside ``MarginHead.fit`` only, so loading a
bundle and ``transform`` never load torch; this module imports nothing of ``margin`` (``head`` is
a ``MarginHead``, read for its parameters only), so the dependency runs one way. The model and the
decisions behind its defaults are described in ``faceprobe.heads.margin``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceprobe.heads.common import EarlyStopping, train_epoch

_BN_EPS = 1e-3


def _torch_net(head: Any, width: int, n_classes: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers: list[nn.Module] = []
            w = width
            for h in head.hidden:
                layers += [nn.Linear(w, int(h)), nn.BatchNorm1d(int(h), eps=_BN_EPS, momentum=0.01),
                           nn.ReLU()]
                w = int(h)
            self.trunk = nn.Sequential(*layers)
            self.proj = nn.Linear(w, int(head.out_dim))
            self.classes = nn.Parameter(torch.empty(n_classes, int(head.out_dim)))
            for mod in self.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
            # a (semi-)orthogonal projection starts as a rotation of the input space, so the
            # head starts from the backbone's geometry (CelebA, 65 training people, unseen-person
            # top-1, 3 folds: xavier 0.902, orthogonal 0.932, raw 0.934; synthetic 128-d:
            # 0.888 -> 0.917)
            nn.init.orthogonal_(self.proj.weight)
            nn.init.normal_(self.classes, std=0.01)

        def embed(self, x):
            return nn.functional.normalize(self.proj(self.trunk(x)), dim=1)

        def forward(self, x):
            return self.embed(x) @ nn.functional.normalize(self.classes, dim=1).T

    return Net()


def arcface_logits(cos, y, s: float, m: float):
    """ArcFace logits from cosines ``cos`` (n, classes) and integer targets ``y``."""
    import math

    import torch

    cos = cos.clamp(-1.0, 1.0)
    c = cos.gather(1, y[:, None])
    sin = torch.sqrt((1.0 - c * c).clamp(min=1e-9))
    phi = c * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    # past theta = pi - m, cos(theta + m) would rise again: keep the target logit decreasing
    phi = torch.where(c > math.cos(math.pi - m), phi, c - math.sin(math.pi - m) * m)
    return s * cos.scatter(1, y[:, None], phi)


def _train(head: Any, xtr_np, ytr_np, xva_np, yva_np, n_classes, callbacks):
    import torch
    import torch.nn.functional as F
    from torch import nn

    seed = int(head.seed)
    torch.manual_seed(seed)
    net = _torch_net(head, xtr_np.shape[1], n_classes)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = torch.from_numpy(xtr_np), torch.from_numpy(ytr_np)
    has_val = xva_np is not None and len(yva_np)
    xva = torch.from_numpy(xva_np) if has_val else None
    yva = torch.from_numpy(np.asarray(yva_np, np.int64)) if has_val else None
    decay = [mod.weight for mod in net.modules() if isinstance(mod, nn.Linear)]
    rest = [p for p in net.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(head.weight_decay)},
                             {"params": rest, "weight_decay": 0.0}], lr=float(head.lr))
    s, m = float(head.s), float(head.m)

    def loss_of(x, y):
        return F.cross_entropy(arcface_logits(net(x), y, s, m), y)

    n, bs = len(xtr), int(head.batch_size)
    history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_accuracy": []}
    stopper = EarlyStopping(head.patience, enabled=bool(has_val))
    for epoch in range(int(head.epochs)):
        # min_batch 2: BatchNorm cannot normalise a batch of one
        history["loss"].append(train_epoch(net, opt, n, bs, gen,
                                           lambda idx: loss_of(xtr[idx], ytr[idx]), min_batch=2))
        logs = {"loss": history["loss"][-1]}
        if has_val:
            net.eval()
            with torch.no_grad():
                cos = net(xva)
                vl = float(F.cross_entropy(arcface_logits(cos, yva, s, m), yva))
                acc = float((cos.argmax(1) == yva).float().mean())
            history["val_loss"].append(vl)
            history["val_accuracy"].append(acc)
            logs.update(val_loss=vl, val_accuracy=acc)
        for cb in callbacks or ():
            cb(epoch, logs)
        if head.verbose:
            print(f"epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in logs.items()),
                  flush=True)
        if stopper.update(net, epoch, logs.get("val_loss")):
            break
    stopper.restore(net)
    net.eval()
    return history, stopper.best_epoch, _export(net)


def _export(net) -> list[tuple[np.ndarray, np.ndarray]]:
    """torch module -> [(W (in, out), b)] with each BatchNorm folded into its Linear."""
    from torch import nn

    def np_(t):
        return t.detach().cpu().numpy().astype(np.float64)

    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for mod in net.trunk:
        if isinstance(mod, nn.Linear):
            layers.append((np_(mod.weight).T, np_(mod.bias)))
        elif isinstance(mod, nn.BatchNorm1d):
            W, b = layers[-1]
            a = np_(mod.weight) / np.sqrt(np_(mod.running_var) + mod.eps)
            layers[-1] = (W * a, (b - np_(mod.running_mean)) * a + np_(mod.bias))
    layers.append((np_(net.proj.weight).T, np_(net.proj.bias)))
    return [(W.astype(np.float32), b.astype(np.float32)) for W, b in layers]
