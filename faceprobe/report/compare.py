"""``faceprobe compare``: several reports' headline metrics side by side."""

from __future__ import annotations

import json
from pathlib import Path

from faceprobe.errors import FaceprobeError

HEADLINES = ("accuracy", "balanced_accuracy", "roc_auc")


def load_metrics(report: str | Path) -> dict:
    p = Path(report)
    p = p / "metrics.json" if p.is_dir() else p
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FaceprobeError(f"{p} not found; point compare at a report directory written by "
                             "`faceprobe evaluate --report DIR`") from None
    except ValueError as exc:
        raise FaceprobeError(f"{p} is not valid JSON ({exc})") from None


def compare(reports: list[str | Path]) -> dict:
    """{"reports": [names], "rows": [[metric, v1, v2, ...]], "best": [index per row]}."""
    loaded = [load_metrics(r) for r in reports]
    keys: list[tuple[str, str]] = []
    for m in loaded:
        for task, tm in m.get("tasks", {}).items():
            for h in HEADLINES:
                if h in tm and (task, h) not in keys:
                    keys.append((task, h))
        if "age" in m and ("age", "mae") not in keys:
            keys.append(("age", "mae"))
    rows, best = [], []
    for task, metric in keys:
        vals = []
        for m in loaded:
            src = m.get("age", {}) if task == "age" else m.get("tasks", {}).get(task, {})
            v = src.get(metric)
            vals.append(v if isinstance(v, int | float) else None)
        rows.append([f"{task}.{metric}", *vals])
        present = [(v, i) for i, v in enumerate(vals) if v is not None and v == v]
        if present:
            best.append((min if metric == "mae" else max)(present)[1])
        else:
            best.append(None)
    names = [Path(r).name if Path(r).is_dir() else str(r) for r in reports]
    return {"reports": names, "rows": rows, "best": best}


def format_table(result: dict) -> str:
    names = result["reports"]
    width = max([len("metric")] + [len(r[0]) for r in result["rows"]])
    cols = [max(8, len(n)) for n in names]
    lines = ["metric".ljust(width) + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols,
                                                                                 strict=True))]
    for row, b in zip(result["rows"], result["best"], strict=True):
        cells = []
        for i, (v, c) in enumerate(zip(row[1:], cols, strict=True)):
            s = "-" if v is None else f"{v:.4f}" + ("*" if i == b and len(names) > 1 else " ")
            cells.append(s.rjust(c + 1))
        lines.append(row[0].ljust(width) + " " + " ".join(cells))
    return "\n".join(lines)
