"""``faceprobe demo``: the whole pipeline on the bundled sample, offline, into one HTML report.

Steps: read the 300 bundled MTFL faces -> embed (plus landmark-geometry and HOG feature groups)
with the best backbone available offline (dlib;
FaceNet with random weights only when dlib is missing, and the report says so) -> train the Keras
multi-output head and two scikit-learn baselines -> a short KerasTuner search -> evaluate each on
the held-out split -> the detector's landmark error against MTFL's points -> ``OUT/index.html``.
Each step reuses what an earlier run left in OUT (the store resumes, bundles are kept), so a second
`make demo` takes seconds.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "mtfl"
TASKS = ("gender", "smiling", "eyeglasses", "pose")
HEADS = ("mlp", "logreg", "svm")
# identity embeddings ignore expression; landmark geometry and HOG carry smiling and pose
FEATURES = ("embedding", "geometry68", "hog")


def sample_dir() -> Path:
    return SAMPLE


def best_offline_backbone() -> tuple[str, str | None, str]:
    """(backbone name, weights argument, note for the report)."""
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        return "dlib.resnet", None, "dlib ResNet (pretrained, ships offline)"
    from faceprobe.embed.backbones import create_backbone
    from faceprobe.errors import WeightsError

    try:
        create_backbone("facenet.vggface2", device="cpu")
        return "facenet.vggface2", None, "FaceNet VGGFace2"
    except WeightsError:
        return ("facenet.vggface2", "random",
                "FaceNet with RANDOM weights (install the dlib extra or place the VGGFace2 "
                "weights for meaningful numbers)")


def run_demo(out: str | Path = "reports/demo", *, trials: int = 6, log=None) -> dict:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.pipeline import embed_dataset
    from faceprobe.embed.store import Store
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.report import evaluate
    from faceprobe.heads.train import train_store
    from faceprobe.heads.tune import tune_store
    from faceprobe.landmarks.evaluate import evaluate_landmarks
    from faceprobe.report.compare import compare
    from faceprobe.report.evaluation import write_report
    from faceprobe.report.html import table

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    backbone, weights, note = best_offline_backbone()
    log(f"[1/5] embedding {SAMPLE} with {backbone} ...")
    reader = get_reader("mtfl", SAMPLE)
    store_dir = out / "store"
    summary = embed_dataset(reader.records(), store_dir, backbone, weights=weights,
                            shard_size=100, features=FEATURES,
                            vocabularies=reader.vocabularies(), dataset="mtfl",
                            root=str(SAMPLE), show_progress=True)
    store = Store(store_dir)
    timings["embed"] = time.perf_counter() - t0

    log("[2/5] training heads ...")
    bundles = {}
    for head in HEADS:
        path = out / "models" / head
        if not (path / "bundle.json").exists():
            train_store(store, list(TASKS), head, out=path, overwrite=True)
        bundles[head] = path
    timings["train"] = time.perf_counter() - t0 - timings["embed"]

    log(f"[3/5] tuning the Keras head ({trials} trials) ...")
    tuned = out / "models" / "mlp-tuned"
    if not (tuned / "bundle.json").exists():
        tune_store(store, list(TASKS), head="mlp", tuner="random", trials=trials,
                   directory=out / "search", out=tuned, max_epochs=200, overwrite=True)
    bundles["mlp-tuned"] = tuned
    timings["tune"] = time.perf_counter() - t0 - timings["embed"] - timings["train"]

    log("[4/5] evaluating ...")
    results = {}
    for name, path in bundles.items():
        m, ctx = evaluate(load_bundle(path), store, split="test", n_boot=300)
        write_report(m, ctx, out / "heads" / name)
        results[name] = (m, ctx)
    cmp = compare([out / "heads" / n for n in bundles])

    det = {"mtcnn": "MTCNN", "scrfd": "SCRFD"}.get(summary["detector"], summary["detector"])
    log(f"[5/5] landmark error of {det} against MTFL's points ...")
    lm = evaluate_landmarks(store_dir, report_dir=out / "landmarks")

    best = max(results, key=lambda n: _mean_balanced(results[n][0]))
    metrics, ctx = results[best]
    rows = [[r[0], *r[1:]] for r in cmp["rows"]]
    extra = [
        ("Demo: what ran", table(["step", "result"], [
            ["data", f"{summary['rows']} faces of MTFL (bundled sample), statuses "
                     f"{summary.get('status')}"],
            ["backbone", note],
            ["heads", ", ".join(bundles) + f" (best on balanced accuracy: {best})"],
            ["time", ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())],
        ])),
        ("Heads compared (test split)", table(["metric", *cmp["reports"]], rows)
         + "<p class='muted'>Each head's own report: "
         + ", ".join(f"<a href='heads/{n}/index.html'>{n}</a>" for n in bundles) + "</p>"),
        (f"Landmarks: {det} vs. MTFL ground truth",
         table(["NME (inter-ocular)", "median", "failure rate (>0.10)", "evaluated", "missing"],
               [[lm["nme"], lm["median"], lm["failure_rate"], lm["evaluated"], lm["missing"]]])
         + "<p><a href='landmarks/index.html'>overlays and cumulative error curve</a></p>"),
    ]
    metrics["demo"] = {"backbone": backbone, "backbone_note": note, "best_head": best,
                       "compare": cmp, "landmarks": {k: lm[k] for k in
                                                     ("nme", "median", "failure_rate",
                                                      "evaluated", "missing")},
                       "embed_summary": {k: summary[k] for k in ("rows", "status")
                                         if k in summary},
                       "seconds": round(time.perf_counter() - t0, 1)}
    index = write_report(metrics, ctx, out, title="faceprobe demo", extra_sections=extra)
    log(f"done in {time.perf_counter() - t0:.0f}s. Report: {index.resolve()}")
    return {"report": str(index), **metrics["demo"]}


def _mean_balanced(m: dict) -> float:
    vals = [t["balanced_accuracy"] for t in m["tasks"].values() if "balanced_accuracy" in t]
    return sum(vals) / len(vals) if vals else 0.0
