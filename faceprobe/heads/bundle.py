"""Model bundles: one directory a trained head can be scored and evaluated from.

Layout::

    MODEL/bundle.json      format version, head kind, tasks, vocabularies, backbone, feature groups
                           and dims, store provenance, split, validation metrics, history, scalers
    MODEL/model.keras      the Keras head (loaded with safe_mode=True, no compile state)
    MODEL/model-0.skops    or one scikit-learn pipeline per task (skops)
    MODEL/weights.npz      or the matrices of an identity-space (ArcFace, kind "margin") head
    MODEL/checksums.json   sha256 of every other file, verified before anything is parsed

Decisions:
- Nothing that executes code on load: ``.keras`` in safe mode (no lambdas), scikit-learn models
  through skops with an allow-list of scikit-learn/numpy types (any other type in the file is
  refused, not trusted). A bundle claiming joblib (pickle) serialization is refused outright: a
  forger can recompute the checksum manifest, so checksums are no protection against pickle.
- The checksum manifest catches a bundle modified or partly copied after saving; it is checked
  before bundle.json is even parsed. It is no defence against someone rewriting the manifest too:
  that is what safe mode and skops are for.
- A bundle is written to a temporary sibling directory and renamed into place, so an interrupted
  save never leaves a half bundle under the final name.
- A bundle records the store's backbone, weights hash and feature dims; using it on a store that
  differs in any of these is refused, because its inputs would be other numbers entirely.
- An identity-space head (kind ``margin``, heads/margin.py) predicts no attributes: it maps
  embeddings into a learned space (``Bundle.transform``). Its network is a few float32 matrices
  in ``weights.npz``, read with ``allow_pickle=False`` (no code runs on load); bundle.json says
  ``out_dim`` and the input feature groups and dims, and ``transform`` refuses input of another
  width in one line naming the bundle and the expected size.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe import __version__
from faceprobe.embed.recipe import recipe_of
from faceprobe.errors import BundleError
from faceprobe.files import file_sha256
from faceprobe.jsonable import jsonable

FORMAT = "faceprobe-bundle"
FORMAT_VERSION = 1
META = "bundle.json"
CHECKSUMS = "checksums.json"
KERAS_FILE = "model.keras"
MARGIN_FILE = "weights.npz"
MARGIN_KIND = "margin"
_SAFE_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.sparse.")


def store_provenance(store: Any) -> dict[str, Any]:
    m = store.meta
    return {"path": str(Path(store.path).resolve()), "backbone": m.get("backbone"),
            "weights_sha256": m.get("weights_sha256"), "alignment": m.get("alignment"),
            "precision": m.get("precision"), "dataset": m.get("dataset"),
            "records_sha256": m.get("records_sha256"), "features": store.feature_dims,
            "recipe": recipe_of(m), "feature_provenance": m.get("feature_provenance")}


@dataclass
class Bundle:
    """A loaded bundle: its metadata and the fitted head."""

    path: Path
    meta: dict[str, Any]
    model: Any

    @property
    def kind(self) -> str:
        return self.meta["head"]

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    @property
    def vocabularies(self) -> dict[str, list[str] | None]:
        return dict(self.meta["vocabularies"])

    @property
    def features(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.meta["features"].items()}

    @property
    def backbone(self) -> str | None:
        return self.meta.get("backbone")

    @property
    def recipe(self) -> dict[str, Any]:
        """How the training store turned images into features (see faceprobe.embed.recipe);
        rebuilt from the provenance of bundles saved before recipes were recorded."""
        return recipe_of(self.meta.get("store") or {"backbone": self.backbone})

    def predict_outputs(self, X: Any) -> dict[str, np.ndarray]:
        return self.model.predict_outputs(X)

    @property
    def is_identity_space(self) -> bool:
        """True for a head that maps embeddings into a new space (``transform``)."""
        return self.kind == MARGIN_KIND

    @property
    def out_dim(self) -> int | None:
        """Width of ``transform``'s output (None for an attribute head)."""
        return int(self.meta["out_dim"]) if self.is_identity_space else None

    def check_input(self, X: Any) -> None:
        """Refuse embeddings whose size is not the one the head was trained on (one line)."""
        feats = self.features
        if isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and X
                                         and not isinstance(X[0], Mapping)):
            shape = np.shape(X)
            width = sum(feats.values())
            if len(shape) != 2 or shape[1] != width:
                got = shape[1] if len(shape) == 2 else f"an array of shape {shape}"
                raise BundleError(
                    f"bundle {self.path} expects embeddings of dimension {width} ("
                    + ", ".join(f"{g!r} {d}" for g, d in feats.items())
                    + f") but the input has {got}; use embeddings from the bundle's backbone "
                    f"({self.backbone})")
            return
        groups = X.X if hasattr(X, "X") and hasattr(X, "identity") else X
        for g, dim in feats.items():
            if g not in groups:
                raise BundleError(f"bundle {self.path} needs feature group {g!r}, which the "
                                  f"input lacks (it has {', '.join(map(str, groups))})")
            got = np.shape(groups[g])
            if len(got) != 2 or got[1] != dim:
                raise BundleError(
                    f"bundle {self.path} expects {g!r} of dimension {dim} but the input has "
                    f"{got[1] if len(got) == 2 else got}; use embeddings from the bundle's "
                    f"backbone ({self.backbone})")

    def transform(self, X: Any) -> np.ndarray:
        """Map embeddings ((n, dim) array, feature-group dict or StoreData) into the bundle's
        identity space: (n, out_dim) unit rows. Only for identity-space (``margin``) bundles."""
        if not self.is_identity_space:
            raise BundleError(f"bundle {self.path} holds a {self.kind!r} head, which predicts "
                              "attributes and has no identity space; train one with "
                              "`faceprobe train --head arcface --tasks identity`")
        self.check_input(X)
        return self.model.transform(X)

    def check_store(self, store: Any) -> None:
        """Refuse a store whose embeddings are not what this head was trained on."""
        prov = self.meta.get("store", {})
        name = self.path
        if store.meta.get("backbone") != self.backbone:
            raise BundleError(
                f"bundle {name} was trained on {self.backbone!r} embeddings but store "
                f"{store.path} holds {store.meta.get('backbone')!r}; embed with that backbone "
                "or train a bundle on this store")
        dims = store.feature_dims
        for g, dim in self.features.items():
            if g not in dims:
                raise BundleError(
                    f"bundle {name} needs feature group {g!r}, which store {store.path} lacks "
                    f"(it has {', '.join(dims)}); add it with `faceprobe embed --add-features {g}`")
            if dims[g] != dim:
                raise BundleError(
                    f"bundle {name} expects {g!r} of dimension {dim} but store {store.path} has "
                    f"{dims[g]}; use a store embedded with the bundle's backbone settings")
        ws, ours = store.meta.get("weights_sha256"), prov.get("weights_sha256")
        if ws and ours and ws != ours:
            raise BundleError(
                f"bundle {name} was trained with other {self.backbone} weights (sha256 "
                f"{ours[:12]}) than store {store.path} ({ws[:12]}); re-embed or retrain")
        theirs = {b["group"]: b for b in recipe_of(store.meta)["backbones"]}
        for b in self.recipe["backbones"]:
            t = theirs.get(b["group"])
            if b["group"] not in self.features or t is None:
                continue
            if t["name"] != b["name"] or (b.get("weights_sha256") and t.get("weights_sha256")
                                          and t["weights_sha256"] != b["weights_sha256"]):
                raise BundleError(
                    f"bundle {name} was trained on group {b['group']!r} from {b['name']} "
                    f"(sha256 {str(b.get('weights_sha256'))[:12]}) but store {store.path} holds "
                    f"{t['name']} (sha256 {str(t.get('weights_sha256'))[:12]}); re-embed or retrain")


def check_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an unusable ``--out`` before any training time is spent."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not a bundle directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} exists and is not empty; use --overwrite to replace it or "
                          "choose another --out")
    return out


def save_bundle(model: Any, out: str | os.PathLike, *, store: Any = None,
                split: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (a fitted KerasHead, SklearnHead or MarginHead) as bundle directory
    ``out``."""
    out = check_out(out, overwrite)
    state = model.get_state()
    kind = getattr(model, "kind", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make a shared bundle unreadable
        files: dict[str, str] = {}
        if kind == "mlp":
            model.model_.save(tmp / KERAS_FILE)
            serialization, files["model"] = "keras", KERAS_FILE
        elif kind == MARGIN_KIND:
            with open(tmp / MARGIN_FILE, "wb") as f:
                np.savez(f, **model.get_arrays())
            serialization, files["model"] = "npz", MARGIN_FILE
        else:
            import skops.io as sio

            serialization = "skops"
            for i, (task, est) in enumerate(model.models_.items()):
                fname = f"model-{i}.skops"
                sio.dump(est, tmp / fname)
                files[task] = fname
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "faceprobe_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "head": kind, "tasks": state["tasks"], "vocabularies": state["vocabularies"],
            "backbone": store.meta.get("backbone") if store is not None else None,
            "features": state["feature_groups"],
            "store": store_provenance(store) if store is not None else None,
            "split": dict(split or {}), "metrics": dict(metrics or {}),
            "history": state.get("history", {}), "scalers": state.get("scalers", {}),
            "serialization": serialization, "files": files, "state": state,
            **({"out_dim": state["out_dim"]} if kind == MARGIN_KIND else {}),
            **dict(extra or {}),
        }
        (tmp / META).write_text(json.dumps(jsonable(meta), indent=1, sort_keys=True))
        sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify_checksums(path: Path) -> dict[str, str]:
    sums_path = path / CHECKSUMS
    try:
        sums = json.loads(sums_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is not a faceprobe model bundle (no {CHECKSUMS}); "
                          "create one with `faceprobe train`") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{sums_path} is damaged ({exc}); re-create the bundle with "
                          "`faceprobe train`") from None
    if not isinstance(sums, dict) or META not in sums:
        raise BundleError(f"{sums_path} does not list {META}; re-create the bundle")
    for name, digest in sums.items():
        f = path / name
        if Path(name).name != name or not f.is_file():
            raise BundleError(f"bundle {path} lacks {name} listed in {CHECKSUMS}; copy the whole "
                              "bundle directory or re-create it")
        if file_sha256(f) != digest:
            raise BundleError(f"bundle {path}: {name} does not match its checksum (modified "
                              "after saving); refusing to load it; re-create the bundle")
    return sums


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Verify checksums, then metadata, then load the model (safe mode / skops allow-list)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist; create it with `faceprobe train`")
    sums = verify_checksums(path)
    try:
        meta = json.loads((path / META).read_text())
    except ValueError as exc:
        raise BundleError(f"{path / META} is not valid JSON ({exc}); re-create the bundle") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path / META} is not a faceprobe bundle manifest")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format {meta.get('format_version')}, newer than this faceprobe "
            f"({__version__}, format {FORMAT_VERSION}) reads; upgrade faceprobe")
    files = meta.get("files", {})
    for f in files.values():
        if f not in sums:
            raise BundleError(f"bundle {path}: {f} is not covered by {CHECKSUMS}; re-create it")
    state = meta["state"]
    if meta.get("head") == "mlp":
        import keras

        from faceprobe.heads.keras_head import KerasHead

        try:
            model = keras.saving.load_model(path / files["model"], safe_mode=True, compile=False)
        except Exception as exc:  # keras raises plain ValueError/TypeError on bad archives
            raise BundleError(f"bundle {path}: {files['model']} cannot be loaded safely "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        head = KerasHead.from_state(state, model)
    elif meta.get("head") == MARGIN_KIND:
        head = _load_margin(path, files.get("model", MARGIN_FILE), meta)
    else:
        from faceprobe.heads.baselines import SklearnHead

        models = {task: _load_sklearn(path, fname, meta.get("serialization"))
                  for task, fname in files.items()}
        head = SklearnHead.from_state(state, models)
    return Bundle(path=path, meta=meta, model=head)


def _load_margin(path: Path, fname: str, meta: Mapping[str, Any]) -> Any:
    """An identity-space head: its matrices from ``fname`` (no pickles), checked against the
    input dims bundle.json declares."""
    from faceprobe.errors import ConfigError
    from faceprobe.heads.margin import MarginHead

    if meta.get("serialization") != "npz":
        raise BundleError(f"bundle {path}: unknown serialization {meta.get('serialization')!r} "
                          "for a margin head; upgrade faceprobe")
    try:
        with np.load(path / fname, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {path}: {fname} cannot be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); re-create the bundle") from None
    state = meta["state"]
    declared = {str(k): int(v) for k, v in (meta.get("features") or {}).items()}
    if declared != {str(k): int(v) for k, v in state["feature_groups"].items()}:
        raise BundleError(f"bundle {path}: bundle.json's features {declared} disagree with the "
                          f"head's {state['feature_groups']}; re-create the bundle")
    try:
        return MarginHead.from_state(state, arrays)
    except (KeyError, ConfigError) as exc:
        raise BundleError(f"bundle {path}: {fname} does not match bundle.json ({exc}); "
                          "re-create the bundle") from None


def _load_sklearn(path: Path, fname: str, serialization: str | None) -> Any:
    f = path / fname
    if serialization == "skops":
        try:
            import skops.io as sio
        except ImportError:
            raise BundleError(f"bundle {path} stores scikit-learn models with skops, which is "
                              "not installed; pip install skops") from None
        untrusted = sio.get_untrusted_types(file=f)
        bad = [t for t in untrusted if not t.startswith(_SAFE_PREFIXES)]
        if bad:
            raise BundleError(f"bundle {path}: {fname} contains types outside scikit-learn "
                              f"({', '.join(bad[:3])}); refusing to load it")
        return sio.load(f, trusted=untrusted)
    if serialization == "joblib":
        # pickle-based: loading can run code, and a forger can recompute checksums.json
        raise BundleError(f"bundle {path} stores its models with joblib (pickle), which can run "
                          "code when loaded; faceprobe refuses it: retrain to get a skops bundle")
    raise BundleError(f"bundle {path}: unknown serialization {serialization!r}; upgrade faceprobe")
