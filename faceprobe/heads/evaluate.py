"""Evaluation of a bundle on a store: which rows, which tasks, and per-task metrics.

Decisions:
- Which rows (``choose_rows``). A store is the bundle's *training store* when its manifest's
  ``records_sha256`` equals the one recorded in the bundle's store provenance, or when it is the
  same directory (resolved path) as recorded; any other store is *another store*.
  - On the training store the default is the recorded split's test rows: the split is re-derived
    from the description recorded in the bundle, on the store's usable rows, and the test rows'
    id hash must match the recorded one, otherwise the store changed since training and the
    "test" rows could include training rows: that is refused rather than reported as a test
    score. ``--split all`` (every usable row, training rows included) is said so.
  - On another store none of its rows were trained on, so the default is every usable row that
    is labelled for at least one evaluated task (a 2,000-image held-out store is evaluated on
    its 2,000 rows, not on a seeded 15% of them). An explicit ``--split test|val|train`` there
    takes the store's own official split when its dataset defines one (CelebA's partition, LFW's
    folds, see ``heads.splits``), else the bundle's seeded split re-derived on this store.
  - When the other store is of the same dataset as the training store, a note says that the
    metrics are optimistic if its images overlap the training images (a bundle does not record
    its training images, so overlap cannot be checked).
  The result always says which rows and why (``rows_used``, ``split``, ``split_description``,
  ``store_relation``).
- Which tasks (``align_tasks``). Class codes are only comparable through class names: a task
  whose store vocabulary equals the bundle's is evaluated as is; one whose store classes all
  occur in the bundle's vocabulary (another order, or a subset) is evaluated by matching names;
  any other (UTKFace's 5 races against FairFace's 7) is skipped with a one-line reason, unless
  the user declares a mapping of the store's classes onto the bundle's (``--map``, see
  ``parse_label_map``). A task the store has no labels for is skipped likewise. Skipped tasks
  are listed under ``skipped`` (task -> reason) in the JSON and as lines in the text output.
- Age metrics are reported both under ``tasks.age`` and at the top level ``age``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, AGE_GROUPS, is_regression
from faceprobe.embed.store import Store, StoreData
from faceprobe.errors import BundleError, ConfigError
from faceprobe.heads.common import AGE_GROUP, present, task_labels

DROP = "-"  # in a label map: leave the store class's rows out of that task


def compute_metrics(y: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                    tasks: list[str]) -> dict[str, Any]:
    """Per-task metrics on the rows where the task is labelled (``y`` in the bundle's codes)."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    res: dict[str, Any] = {"tasks": {}}
    for t in tasks:
        if t not in outputs:
            continue
        try:
            yt = task_labels(t, y)
        except Exception:  # the store has no labels for it: nothing to score
            continue
        m = present(t, yt)
        if t == AGE:
            pred = np.asarray(outputs[t], np.float64)[m]
            entry = {"mae": float(np.abs(pred - yt[m]).mean()) if m.any() else None,
                     "n": int(m.sum())}
            res["tasks"][t] = entry
            res["age"] = entry
            continue
        pred = np.asarray(outputs[t]).argmax(axis=1)[m]
        truth = yt[m].astype(np.int64)
        with warnings.catch_warnings():  # a class predicted but absent from a small split
            warnings.simplefilter("ignore", UserWarning)
            res["tasks"][t] = {
                "accuracy": float(accuracy_score(truth, pred)) if m.any() else None,
                "balanced_accuracy": float(balanced_accuracy_score(truth, pred))
                if m.any() else None,
                "n": int(m.sum()),
            }
    return res


# --------------------------------------------------------------------------- label maps
def parse_label_map(values: Iterable[str] | None) -> dict[str, dict[str, str | None]]:
    """``--map`` values -> ``{task: {store_class: bundle_class | None}}`` (None: leave out).

    Each value is ``TASK=STORE_CLASS:BUNDLE_CLASS,STORE_CLASS:BUNDLE_CLASS,...`` (a bundle class
    of ``-`` or nothing leaves that store class's rows out of the task), or the path of a JSON
    file ``{"TASK": {"STORE_CLASS": "BUNDLE_CLASS" or null, ...}, ...}`` (for class names with
    commas or colons). Store classes not named keep their own name, so only the classes that
    differ need mapping."""
    out: dict[str, dict[str, str | None]] = {}
    for value in values or ():
        value = str(value).strip()
        path = Path(value)
        if "=" not in value or (value.lower().endswith(".json") and path.is_file()):
            try:
                loaded = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"--map {value!r} is neither TASK=STORE_CLASS:BUNDLE_CLASS,... "
                                  "nor an existing JSON file") from None
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--map file {value} is not readable JSON ({exc})") from None
            if not isinstance(loaded, dict) or not all(
                    isinstance(m, dict) and all(isinstance(k, str) and (v is None or isinstance(
                        v, str)) for k, v in m.items()) for m in loaded.values()):
                raise ConfigError(f"--map file {value} must hold {{\"TASK\": {{\"STORE_CLASS\": "
                                  "\"BUNDLE_CLASS\" or null, ...}, ...}")
            items = {str(t): {k: (None if v in (None, "", DROP) else v) for k, v in m.items()}
                     for t, m in loaded.items()}
        else:
            task, _, pairs = value.partition("=")
            task = task.strip()
            mapping: dict[str, str | None] = {}
            for pair in pairs.split(","):
                if not pair.strip():
                    continue
                src, sep, dst = pair.partition(":")
                if not sep or not src.strip():
                    raise ConfigError(f"--map {task}: {pair.strip()!r} is not "
                                      "STORE_CLASS:BUNDLE_CLASS (use a JSON file for class names "
                                      "with ',' or ':')")
                dst = dst.strip()
                mapping[src.strip()] = None if dst in ("", DROP) else dst
            if not task or not mapping:
                raise ConfigError(f"--map {value!r} must be TASK=STORE_CLASS:BUNDLE_CLASS,...")
            items = {task: mapping}
        for task, mapping in items.items():
            if task in out:
                raise ConfigError(f"--map gives task {task!r} twice; give each task once")
            out[task] = mapping
    return out


# --------------------------------------------------------------------------- tasks
@dataclass
class TaskAlignment:
    """How each bundle task's true labels are read from a store.

    ``tables[task]``: store code -> bundle code (-1: left out), or None when the codes are
    already the bundle's. ``skipped``: task -> why it cannot be evaluated. ``notes``: task ->
    how its labels were matched when not identically."""

    tables: dict[str, np.ndarray | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)  # skipped: other vocabulary
    notes: dict[str, str] = field(default_factory=dict)
    maps: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.tables)

    def truth(self, task: str, y: Mapping[str, np.ndarray]) -> np.ndarray:
        """A task's true labels in the bundle's codes (-1 / NaN missing)."""
        yt = task_labels(task, y)
        table = self.tables.get(task)
        if table is None:
            return yt
        yt = np.asarray(yt, np.int64)
        out = np.full(len(yt), -1, np.int64)
        ok = yt >= 0
        out[ok] = table[yt[ok]]
        return out


def _classes(vocab: list[str], limit: int = 8) -> str:
    shown = ", ".join(map(str, vocab[:limit]))
    return f"{len(vocab)}: {shown}" + (", ..." if len(vocab) > limit else "")


def align_tasks(bundle: Any, store_vocabularies: Mapping[str, list[str] | None],
                label_map: Mapping[str, Mapping[str, str | None]] | None = None
                ) -> TaskAlignment:
    """Match each bundle task to the store's labels by class name (see the module docstring)."""
    label_map = dict(label_map or {})
    unknown = [t for t in label_map if t not in bundle.tasks]
    if unknown:
        raise ConfigError(f"--map names task(s) {', '.join(unknown)} that bundle {bundle.path} "
                          f"does not predict (it predicts {', '.join(bundle.tasks)})")
    al = TaskAlignment()
    bvocs = bundle.vocabularies
    for t in bundle.tasks:
        if is_regression(t):
            if t in label_map:
                raise ConfigError(f"--map {t}: {t} is not a categorical task; nothing to map")
            if t in store_vocabularies:
                al.tables[t] = None
            else:
                al.skipped[t] = f"the store has no {t} labels"
            continue
        bvoc = [str(c) for c in (bvocs.get(t) or [])]
        if t in store_vocabularies:
            svoc = store_vocabularies[t]
            where = f"the store's {t} classes"
        elif t == AGE_GROUP and AGE in store_vocabularies:
            svoc, where = list(AGE_GROUPS), f"{t} derived from the store's ages"
        else:
            if t in label_map:
                raise ConfigError(f"--map {t}: the store has no {t} labels to map")
            al.skipped[t] = f"the store has no {t} labels"
            continue
        if not svoc:
            al.skipped[t] = f"the store's {t} labels are not categorical"
            continue
        svoc = [str(c) for c in svoc]
        if t in label_map:
            mapping = dict(label_map[t])
            bad = [c for c in mapping if c not in svoc]
            if bad:
                raise ConfigError(f"--map {t}: {', '.join(map(repr, bad))} not among the store's "
                                  f"{t} classes ({_classes(svoc, 50)})")
            bad = [v for v in mapping.values() if v is not None and v not in bvoc]
            if bad:
                raise ConfigError(f"--map {t}: {', '.join(map(repr, bad))} not among the bundle's "
                                  f"{t} classes ({_classes(bvoc, 50)})")
            unmapped = [c for c in svoc if c not in mapping and c not in bvoc]
            if unmapped:
                raise ConfigError(
                    f"--map {t}: store class(es) {', '.join(map(repr, unmapped))} have no bundle "
                    f"class; map each to one of {', '.join(bvoc)} (CLASS:BUNDLE_CLASS) or leave "
                    f"its rows out (CLASS:{DROP})")
            full = {c: mapping.get(c, c) for c in svoc}
            al.tables[t] = np.array([-1 if full[c] is None else bvoc.index(full[c])
                                     for c in svoc], np.int64)
            al.maps[t] = full
            changed = [f"{c}->{full[c] or 'left out'}" for c in svoc if full[c] != c]
            al.notes[t] = f"{where} mapped onto the bundle's as declared ({', '.join(changed)})"
            continue
        if svoc == bvoc:
            al.tables[t] = None
            continue
        missing = [c for c in svoc if c not in bvoc]
        if missing:
            al.mismatched[t] = (f"{where} ({_classes(svoc)}) are not the bundle's "
                                f"({_classes(bvoc)}): {', '.join(missing)} have no counterpart")
            al.skipped[t] = (f"{al.mismatched[t]}; declare a mapping with "
                             f"--map {t}=STORE_CLASS:BUNDLE_CLASS,...")
            continue
        al.tables[t] = np.array([bvoc.index(c) for c in svoc], np.int64)
        al.notes[t] = (f"{where} matched to the bundle's by name "
                       + ("(another order)" if len(svoc) == len(bvoc) else
                          f"({len(svoc)} of its {len(bvoc)} classes)"))
    return al


# --------------------------------------------------------------------------- rows
def store_relation(bundle: Any, store: Store) -> tuple[bool, str]:
    """(is the bundle's training store, a phrase saying why)."""
    prov = bundle.meta.get("store") or {}
    if not prov:
        return True, ("the bundle records no training store, so its recorded split is used "
                      "as on a training store")
    theirs, ours = prov.get("records_sha256"), store.meta.get("records_sha256")
    try:
        same_path = bool(prov.get("path")) and \
            Path(prov["path"]).resolve() == Path(store.path).resolve()
    except OSError:
        same_path = False
    if theirs and ours and theirs == ours:
        return True, "the bundle's training store (same records_sha256)"
    if same_path:
        why = "records_sha256 changed since training" if theirs and ours else \
            "records_sha256 not recorded"
        return True, f"the bundle's training store (same path; {why})"
    why = "other records_sha256" if theirs and ours else "records_sha256 not recorded"
    return False, f"not the bundle's training store ({why}, other path)"


@dataclass
class RowChoice:
    """The rows a bundle is evaluated on and why; ``data`` keeps every store task's labels (in
    the store's codes; ``alignment.truth`` gives a bundle task's labels in the bundle's)."""

    data: StoreData
    split: str
    text: str
    training_store: bool
    relation: str
    alignment: TaskAlignment
    notes: list[str] = field(default_factory=list)

    def truth(self) -> dict[str, np.ndarray]:
        return {t: self.alignment.truth(t, self.data.y) for t in self.alignment.tasks}


def choose_rows(bundle: Any, store: Store, split: str | None = None,
                label_map: Mapping[str, Mapping[str, str | None]] | None = None) -> RowChoice:
    """The store rows and tasks a bundle is evaluated on (see the module docstring).

    ``split`` None chooses: ``test`` on the training store, ``all`` on another store. Labels of
    every task the store has are loaded (not only the bundle's), so reports can break metrics
    down by demographic labels the head was not trained on."""
    from faceprobe.heads.splits import SPLIT_NAMES, make_split, split_from_description

    if split is not None and split not in (*SPLIT_NAMES, "all"):
        raise ConfigError(f"split must be one of train, val, test, all, got {split!r}")
    bundle.check_store(store)
    alignment = align_tasks(bundle, store.vocabularies, label_map)
    if not alignment.tasks:
        raise ConfigError(
            f"no task of bundle {bundle.path} can be evaluated on store {store.path}: "
            + "; ".join(f"{t}: {why}" for t, why in alignment.skipped.items()))
    training, relation = store_relation(bundle, store)
    data = store.load(features=list(bundle.features), tasks=list(store.vocabularies))
    desc = bundle.meta.get("split") or {}
    notes: list[str] = []
    split = split or ("test" if training else "all")
    if split == "all":
        idx = np.arange(len(data))
        if training:
            text = "all usable rows"
            if desc:
                text += " (the rows the head was trained on included)"
        else:
            labelled = np.zeros(len(data), bool)
            for t in alignment.tasks:
                labelled |= present(t, alignment.truth(t, data.y))
            idx = idx[labelled]
            text = (f"every usable row labelled for at least one of {', '.join(alignment.tasks)} "
                    "(none of this store's rows were trained on)")
            if (~labelled).any():
                text += f"; {int((~labelled).sum())} usable rows without such labels left out"
    elif training:
        sp = split_from_description(data, desc)
        idx = sp.indices(split)
        text = f"the recorded {split} split: {sp.description['text']}"
        if split in ("val", "train") and desc.get("refit") == "train+val":
            text += "; note: the head was refitted on train+val, so these rows were trained on"
        if split == "test" and desc.get("test_sha256") \
                and sp.description["test_sha256"] != desc["test_sha256"]:
            raise BundleError(
                f"store {store.path} has other usable rows than when bundle {bundle.path} was "
                "trained, so its test split would mix in training rows; retrain, or evaluate "
                "with --split all")
    else:
        stratify = desc.get("stratify")
        if stratify not in data.y or is_regression(stratify or AGE):
            stratify = None
        sp = make_split(data, seed=int(desc.get("seed", 0)),
                        val_fraction=float(desc.get("val_fraction", 0.15)),
                        test_fraction=float(desc.get("test_fraction", 0.15)),
                        stratify=stratify, official=True)
        idx = sp.indices(split)
        kind = "its official" if sp.description.get("official") else \
            "the bundle's seeded split re-derived on it,"
        text = f"{split} rows of this store by {kind} {sp.description['text']}"
    prov = bundle.meta.get("store") or {}
    if not training and prov.get("dataset") and prov.get("dataset") == store.meta.get("dataset"):
        notes.append(f"this store is of the training store's dataset ({prov['dataset']}): if "
                     "its images overlap the training images, these metrics are optimistic")
    if not len(idx):
        raise BundleError(f"split {split!r} of store {store.path} has no rows ({text})")
    return RowChoice(data.subset(idx), split, f"{relation}: {text}", training, relation,
                     alignment, notes)


def select_rows(bundle: Any, store: Store, split: str | None = "test") -> tuple[Any, str]:
    """``choose_rows`` as (rows, description), for callers that need no more."""
    choice = choose_rows(bundle, store, split)
    return choice.data, choice.text


def describe_rows(res: Mapping[str, Any]) -> dict[str, Any]:
    """The keys every evaluation result carries about its rows and tasks."""
    return {k: res[k] for k in ("split", "rows_used", "split_description", "training_store",
                                "store_relation", "skipped", "notes") if k in res}


def evaluate_bundle(bundle: Any, store: Store | str, split: str | None = None,
                    label_map: Mapping[str, Mapping[str, str | None]] | None = None
                    ) -> dict[str, Any]:
    """``{"tasks": {task: {"accuracy", "balanced_accuracy", "n"} | {"mae", "n"}}, "age": ...,
    "rows_used", "split", "split_description", "skipped": {task: why}, ...}``"""
    store = store if isinstance(store, Store) else Store(store)
    choice = choose_rows(bundle, store, split, label_map)
    sub = choice.data
    outputs = bundle.predict_outputs({g: sub.X[g] for g in bundle.features})
    res = compute_metrics(choice.truth(), outputs, choice.alignment.tasks)
    res.update(result_header(choice, store, bundle))
    return res


def result_header(choice: RowChoice, store: Store, bundle: Any) -> dict[str, Any]:
    al = choice.alignment
    return {"split": choice.split, "rows": len(choice.data), "rows_used": len(choice.data),
            "split_description": choice.text, "rows_described": choice.text,
            "training_store": choice.training_store, "store_relation": choice.relation,
            "skipped": dict(al.skipped), "label_notes": dict(al.notes),
            "label_maps": {t: dict(m) for t, m in al.maps.items()}, "notes": list(choice.notes),
            "store": str(store.path), "bundle": str(bundle.path), "head": bundle.kind}


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A small fixed-width table: task, n, accuracy, balanced accuracy / MAE; then a line per
    skipped task and per task whose labels were matched other than identically."""
    lines = [f"{'task':<16}{'n':>8}{'accuracy':>10}{'bal.acc':>10}{'MAE':>8}"]
    for t, m in metrics.get("tasks", {}).items():
        if "mae" in m:
            mae = "-" if m.get("mae") is None else f"{m['mae']:.2f}"
            lines.append(f"{t:<16}{m.get('n', 0):>8}{'':>10}{'':>10}{mae:>8}")
        else:
            acc = "-" if m.get("accuracy") is None else f"{m['accuracy']:.4f}"
            bac = "-" if m.get("balanced_accuracy") is None else f"{m['balanced_accuracy']:.4f}"
            lines.append(f"{t:<16}{m.get('n', 0):>8}{acc:>10}{bac:>10}{'':>8}")
    for t, why in (metrics.get("label_notes") or {}).items():
        lines.append(f"{t}: {why}")
    for t, why in (metrics.get("skipped") or {}).items():
        lines.append(f"{t}: skipped: {why}")
    return "\n".join(lines)
