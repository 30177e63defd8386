"""A search directory on disk: the fingerprint that keeps incomparable searches apart, and the
repairs that keep an interrupted one loadable.

Decisions:
- ``DIR/faceprobe-search.json`` fingerprints the search: head, tuner, space, tasks, features,
  seed, the store's backbone/weights/records and the split's row hash, and how each trial of the
  heads with epochs trains. A run whose fingerprint differs from the directory's is refused with
  the keys that differ: its trials would not be comparable with the recorded ones. ``--trials``
  is not part of it, so it can grow on resume. The file is created atomically (first writer
  wins), so a chief and workers starting together agree on it.
- KerasTuner writes its JSON files in place; its writer is routed through tmp + rename, and a
  trial.json that an older, killed run left unreadable is removed so the oracle re-runs it.
- A trial a killed run left running is run again (:func:`requeue_unfinished`). KerasTuner
  requeues the trials its oracle.json calls ongoing, but it writes a new trial's trial.json
  before oracle.json, so a kill between the two leaves a trial that is RUNNING on disk, counts
  towards ``--trials`` and is never run: the search would end one score short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from faceprobe.errors import ConfigError
from faceprobe.heads.baselines import make_head
from faceprobe.heads.bundle import store_provenance
from faceprobe.heads.tune_trial import SearchSetup

FINGERPRINT = "faceprobe-search.json"
PROJECT = "search"


def search_fingerprint(s: SearchSetup, tuner: str, space: list[dict[str, Any]]
                       ) -> dict[str, Any]:
    """What makes two searches' trials comparable (see the module docstring)."""
    head, split = s.head, s.split
    prov = store_provenance(s.store)
    fp = {"head": head, "tuner": tuner, "space": space, "tasks": s.tasks, "features": s.groups,
          "class_weighting": s.class_weighting, "seed": s.seed, "max_epochs": s.max_epochs,
          "store": {k: prov[k] for k in ("backbone", "weights_sha256", "records_sha256",
                                         "features")},
          "split_test_sha256": split.description["test_sha256"],
          "split_counts": split.description["counts"]}
    if head == "mlp":  # how each trial trains (and the refit), so older searches are refused
        fp["fit"] = {k: make_head("mlp").get_params()[k] for k in ("batch_size", "patience")}
    elif head == "margin":
        from faceprobe.heads.margin import MarginHead

        fp["fit"] = {k: MarginHead().get_params()[k]
                     for k in ("batch_size", "patience", "lr", "val_fraction", "weight_decay")}
    return fp


def _atomic_json_writes() -> None:
    """KerasTuner writes trial.json / oracle.json in place, so a kill mid-write leaves an empty
    file that makes the next run crash on reload. Route its writer through tmp + rename."""
    from keras_tuner.src import utils as kt_utils

    if getattr(kt_utils.save_json, "_faceprobe_atomic", False):
        return

    def save_json(path, obj):
        text = json.dumps(obj)
        tmp = f"{path}.{os.getpid()}.tmp"  # chief and workers share the directory
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return text

    save_json._faceprobe_atomic = True
    kt_utils.save_json = save_json


def _drop_unreadable_trials(directory: Path) -> list[str]:
    """Trials whose trial.json a kill left unreadable (runs before atomic writes) are removed so
    the oracle re-runs them instead of the reload crashing."""
    import shutil

    dropped = []
    for tj in sorted((directory / PROJECT).glob("trial_*/trial.json")):
        try:
            json.loads(tj.read_text())
        except (OSError, ValueError):
            shutil.rmtree(tj.parent, ignore_errors=True)
            dropped.append(tj.parent.name)
    return dropped


def _check_fingerprint(directory: Path, fp: dict[str, Any]) -> None:
    path = directory / FINGERPRINT
    project = directory / PROJECT
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            raise ConfigError(
                f"search directory {directory} holds a search with another {', '.join(diff)}; "
                "its trials cannot be mixed with this one: use a new --dir, or delete that one "
                "to start over")
    elif project.exists():
        raise ConfigError(f"{project} exists without {FINGERPRINT}; use a new --dir")
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # chief and workers may start together: create-if-absent atomically, then compare
        tmp = directory / f".{FINGERPRINT}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(fp, indent=1, sort_keys=True))
        try:
            os.link(tmp, path)
        except FileExistsError:
            _check_fingerprint(directory, fp)
        finally:
            tmp.unlink()


def requeue_unfinished(oracle, log) -> list[str]:
    """Send every trial that is not finished and not already queued for a retry back to the
    oracle's retry queue (see the module's notes): the ones its saved state calls ongoing (a
    starting oracle has no tuner running them yet) and the RUNNING ones it does not know of."""
    from keras_tuner.src.engine.trial import TrialStatus

    queued = set(oracle._retry_queue)
    ongoing = {t.trial_id for t in oracle.ongoing_trials.values()}
    oracle.ongoing_trials.clear()
    stale = sorted(t.trial_id for t in oracle.trials.values()
                   if t.trial_id not in queued
                   and (t.trial_id in ongoing or t.status == TrialStatus.RUNNING))
    if stale:
        oracle._retry_queue.extend(stale)
        log(f"re-running {len(stale)} trial(s) a stopped run left unfinished: {', '.join(stale)}")
    return stale
