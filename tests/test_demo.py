"""`faceprobe demo`: the whole pipeline offline on the bundled sample, into a page that renders."""

import json

from browser import image_widths_in_chromium

from faceprobe.cli import main


def test_demo_writes_a_report_that_renders_with_every_image(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--trials", "2"]) == 0
    assert f"Report: {(out / 'index.html').resolve()}" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["demo"]["backbone"] == "dlib.resnet"
    assert m["demo"]["embed_summary"]["rows"] == 300
    assert m["tasks"]["gender"]["accuracy"] > 0.8  # real faces, real labels: not chance
    assert m["demo"]["landmarks"]["nme"] < 0.1
    for head in ("mlp", "logreg", "svm", "mlp-tuned"):
        assert (out / "heads" / head / "index.html").exists()
    widths = image_widths_in_chromium(out / "index.html")
    assert len(widths) >= 10 and all(w > 0 for w in widths), widths
