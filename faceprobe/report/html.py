"""A self-contained HTML report (images embedded as data URIs), metrics.json and summary.md."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from faceprobe.jsonable import json_default

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:4px;border:1px solid #eee}.figs{display:flex;flex-wrap:wrap}
.muted{color:#777;font-size:.9em}h2{border-bottom:2px solid #ddd;padding-bottom:3px}
"""


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def fmt_ci(value: float, ci) -> str:
    if ci and all(isinstance(c, float) and c == c for c in ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return fmt(value)


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else fmt(c)}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """Text already escaped (e.g. a formatted CI)."""


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


class ReportWriter:
    """Collects sections, then writes index.html, metrics.json and summary.md into a directory."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[tuple[str, str]] = []
        self.md: list[str] = [f"# {title}", "", subtitle, ""]

    def section(self, heading: str, body_html: str, markdown: str = "") -> None:
        self.sections.append((heading, body_html))
        if markdown:
            self.md += [f"## {heading}", "", markdown, ""]

    def write(self, out_dir: str | Path, metrics: dict) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        toc = "".join(f'<li><a href="#s{i}">{html.escape(h)}</a></li>'
                      for i, (h, _) in enumerate(self.sections))
        body = "".join(f'<h2 id="s{i}">{html.escape(h)}</h2>{b}'
                       for i, (h, b) in enumerate(self.sections))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='muted'>{html.escape(self.subtitle)}</p><ul>{toc}</ul>{body}"
                "</body></html>")
        (out / "index.html").write_text(page, encoding="utf-8")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=json_default))
        (out / "summary.md").write_text("\n".join(self.md))
        return out / "index.html"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |"
              for r in rows]
    return "\n".join(lines)
