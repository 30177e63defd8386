"""`faceprobe serve`: JSON API (FastAPI TestClient) and both pages in headless Chromium.

One small store is built for the whole module: 48 bundled MTFL faces copied into a temporary
dataset root (with their dataset landmarks, so no detector runs at build time) plus a corrupt and
a missing file, and a logreg bundle for gender and smiling trained on it.

The browser test starts the real command (`python -m faceprobe serve`) on a free loopback port
and drives Debian's chromium through Playwright; it is skipped when either is absent. Set
FACEPROBE_SCREENSHOTS=docs/img to write the README screenshots (serve-score.png, serve-store.png).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from faceprobe.embed.store import Store, StoreWriter  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "faceprobe" / "sample" / "mtfl"
FACE = SAMPLE / "lfw_5590" / "Abba_Eban_0001.jpg"
TWO_FACES = SAMPLE / "lfw_5590" / "Chawki_Armali_0001.jpg"  # a second face in the background
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
N_FACES = 48
TASKS = ["gender", "smiling"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(bundle dir, store dir, dataset root) on bundled faces copied into a temporary root."""
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.pipeline import embed_dataset
    from faceprobe.heads.train import train_store

    base = tmp_path_factory.mktemp("serve")
    root = base / "data"
    (root / "faces").mkdir(parents=True)
    reader = get_reader("mtfl", SAMPLE)
    records = []
    for rec in list(reader.records())[:N_FACES]:
        dst = root / "faces" / Path(rec.path).name
        shutil.copyfile(rec.path, dst)
        records.append(dataclasses.replace(rec, path=str(dst)))
    (root / "faces" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for name in ("corrupt.jpg", "gone.jpg"):
        records.append(dataclasses.replace(records[0], path=str(root / "faces" / name),
                                           landmarks=None))
    store = base / "store"
    embed_dataset(records, store, "dlib.resnet", shard_size=20, workers=0, landmarks="dataset",
                  vocabularies=reader.vocabularies(), dataset="mtfl", root=str(root),
                  show_progress=False)
    bundle = base / "model"
    train_store(Store(store), TASKS, "logreg", out=bundle)
    return bundle, store, root


@pytest.fixture(scope="module")
def client(trained):
    from faceprobe.serve.app import create_app

    bundle, store, _ = trained
    app = create_app(bundle, store=store, gallery=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _expected_misclassified(trained, task: str, split: str) -> int:
    """Off-diagonal sum of the report's confusion matrix on the same rows."""
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.report import evaluate

    bundle, store, _ = trained
    metrics, _ = evaluate(load_bundle(bundle), Store(store), split=split, n_boot=10)
    cm = np.asarray(metrics["tasks"][task]["confusion_matrix"])
    return int(cm.sum() - np.trace(cm))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def _score(client, *files):
    return client.post("/api/score", files=[("files", f) for f in files])


def _face(name: str = "face.jpg"):
    return (name, FACE.read_bytes(), "image/jpeg")


def _our_tempdirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("faceprobe-serve-*")}


# -- scoring -----------------------------------------------------------------------------------

def test_score_one_photo_gives_box_landmarks_predictions_and_identities(client):
    before = _our_tempdirs()
    r = _score(client, _face())
    assert r.status_code == 200, r.text
    body = r.json()
    (image,) = body["images"]
    assert image["name"] == "face.jpg" and image["status"] == "ok"
    assert (image["width"], image["height"]) == (250, 250)
    assert image["preview"].startswith("data:image/jpeg;base64,")
    face = image["faces"][0]
    x1, y1, x2, y2 = face["box"]
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
    assert np.asarray(face["landmarks"]).shape == (5, 2)
    for task in TASKS:
        pred = face["predictions"][task]
        assert pred["label"] in pred["probabilities"]
        assert 0.5 <= pred["p"] <= 1 and abs(sum(pred["probabilities"].values()) - 1) < 1e-3
    # the gallery is the store itself, which holds this very photo
    best = face["identities"][0]
    assert best["identity"] == "Abba_Eban_0001" and best["similarity"] > 0.99
    assert _our_tempdirs() <= before  # the upload directory is gone after the request


def test_batch_is_scored_in_one_embed_call_and_keeps_order(client, monkeypatch):
    import faceprobe.embed.pipeline as pipeline

    calls = []
    real = pipeline.embed_images
    monkeypatch.setattr(pipeline, "embed_images",
                        lambda paths, *a, **k: calls.append(list(paths)) or real(paths, *a, **k))
    r = client.post("/api/score?preview=false",
                    files=[("files", _face("a.jpg")), ("files", ("bad.png", b"nope", "image/png")),
                           ("files", _face("c.jpg"))])
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert [im["name"] for im in images] == ["a.jpg", "bad.png", "c.jpg"]
    assert len(calls) == 1 and len(calls[0]) == 2  # both good photos, one pass
    assert images[1]["status"] == "unreadable" and "bad.png" in images[1]["error"]
    assert "upload-" not in images[1]["error"]  # the server's temporary name never leaks
    assert all("preview" not in im for im in images)


def test_photo_without_face_reports_no_face(client):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (120, 90), (200, 180, 160)).save(buf, "PNG")
    r = _score(client, ("wall.png", buf.getvalue(), "image/png"))
    assert r.status_code == 200
    (image,) = r.json()["images"]
    assert image["faces"] == [] and image["status"] == "no_face" and image["error"]


# -- hostile input -----------------------------------------------------------------------------

def test_corrupt_file_is_a_clear_400(client):
    r = _score(client, ("broken.jpg", b"\xff\xd8\xff\xe0 truncated garbage", "image/jpeg"))
    assert r.status_code == 400
    assert r.json()["error"].startswith("broken.jpg: ")


def test_decompression_bomb_header_is_refused_before_decoding(client):
    r = _score(client, ("huge.png", _png_header(20_000, 20_000), "image/png"))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err.startswith("huge.png: ") and "decompression bomb" in err


def test_thousand_files_are_refused_and_the_server_keeps_serving(client):
    files = [("files", (f"f{i}.jpg", b"x" * 64, "image/jpeg")) for i in range(1000)]
    r = client.post("/api/score", files=files)
    assert r.status_code == 400
    assert "more than 32 images" in r.json()["error"]
    assert _score(client, _face()).status_code == 200


def test_oversized_upload_is_413(client):
    r = _score(client, ("big.jpg", b"\xff" * (10 * 1024 * 1024 + 1), "image/jpeg"))
    assert r.status_code == 413 and "big.jpg is larger than 10 MB" in r.json()["error"]
    r = client.post("/api/score", content=b"", headers={
        "content-type": "multipart/form-data; boundary=x", "content-length": str(10 ** 10)})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_requests_that_are_not_photos_are_400(client):
    r = client.post("/api/score", json={"files": []})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]
    r = client.post("/api/score", data={"note": "hello"},
                    files=[("other", ("", b"", "application/octet-stream"))])
    assert r.status_code == 400
    r = client.post("/api/score", content=b"--x\r\ngarbage",
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and r.json()["error"]


def test_an_internal_error_is_json_and_the_next_request_works(client, monkeypatch):
    scorer = client.app.state.scorer

    def boom(*a, **k):
        raise RuntimeError("simulated\nfailure")
    monkeypatch.setattr(scorer, "score", boom)
    r = _score(client, _face())
    assert r.status_code == 500 and "RuntimeError: simulated failure" in r.json()["error"]
    monkeypatch.undo()
    assert _score(client, _face()).status_code == 200


# -- store rows --------------------------------------------------------------------------------

def test_rows_filters_and_paging(client):
    r = client.get("/api/rows", params={"page_size": 10})
    body = r.json()
    assert body["total"] == N_FACES + 2 and body["pages"] == 5 and len(body["rows"]) == 10
    failed = client.get("/api/rows", params={"status": "failed"}).json()
    assert {row["status"] for row in failed["rows"]} == {"unreadable", "missing"}
    assert failed["total"] == 2
    missing = client.get("/api/rows", params={"status": "missing"}).json()["rows"][0]
    assert missing["path"].endswith("gone.jpg") and "not found" in missing["error"]
    female = client.get("/api/rows", params={"task": "gender", "true": "female"}).json()
    assert female["total"] > 0 and all(r["labels"]["gender"] == "female" for r in female["rows"])
    pred = client.get("/api/rows", params={"task": "smiling", "pred": "yes"}).json()
    assert all(r["predictions"]["smiling"]["label"] == "yes" for r in pred["rows"])
    last = client.get("/api/rows", params={"page": 99}).json()
    assert last["rows"] == [] and last["total"] == N_FACES + 2


@pytest.mark.parametrize("split", ["all", "test"])
def test_misclassified_count_matches_the_report(client, trained, split):
    for task in TASKS:
        got = client.get("/api/rows", params={"task": task, "misclassified": "true",
                                              "split": split, "page_size": 200}).json()
        assert got["total"] == _expected_misclassified(trained, task, split)
        assert all(r["misclassified"][task] for r in got["rows"])


def test_bad_filters_are_400_with_the_accepted_values(client):
    cases = [({"status": "sleeping"}, "usable, failed"), ({"split": "holdout"}, "train"),
             ({"misclassified": "true"}, "need task"), ({"task": "hair"}, "gender"),
             ({"task": "gender", "true": "robot"}, "male"),
             ({"task": "pose", "misclassified": "true"}, "does not predict"),
             ({"page_size": 1000}, "page_size")]
    for params, hint in cases:
        r = client.get("/api/rows", params=params)
        assert r.status_code in (400, 422), params
        assert hint in r.json()["error"], (params, r.json())


def test_row_details_and_thumbnails(client):
    row = client.get("/api/rows/0/3").json()
    assert row["path"].endswith(".jpg") and row["status"] == "dataset_landmarks"
    assert np.asarray(row["landmarks_dataset"]).shape == (5, 2)
    assert row["image_size"] == [250, 250] and set(row["predictions"]) == set(TASKS)
    thumb = client.get("/api/thumb/0/3")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    assert client.get("/api/thumb/0/3?full=true").status_code == 200
    assert client.get("/api/rows/0/999").status_code == 404
    assert client.get("/api/thumb/7/0").status_code == 404
    bad = client.get("/api/rows", params={"status": "unreadable"}).json()["rows"][0]
    r = client.get(bad["thumb"])
    assert r.status_code == 404 and "corrupt.jpg" in r.json()["error"]


def test_thumbnails_never_leave_the_dataset_root(trained, tmp_path):
    from faceprobe.serve.app import create_app

    _, store, root = trained
    meta = {k: v for k, v in Store(store).meta.items()
            if k not in ("format", "format_version", "faceprobe_version", "created")}
    secret = tmp_path / "secret.jpg"
    shutil.copyfile(FACE, secret)
    inner = tmp_path / "root"
    inner.mkdir()
    (inner / "link.jpg").symlink_to(secret)
    shutil.copyfile(FACE, inner / "fine.jpg")
    rows = [{"path": p, "status": "no_face", "error": "x"} for p in
            (str(inner / ".." / "secret.jpg"), str(inner / "link.jpg"), str(secret),
             "../secret.jpg", "fine.jpg")]
    evil = tmp_path / "evil-store"
    with StoreWriter.open(evil, {**meta, "root": str(inner), "num_shards": 1}) as w:
        w.write_shard(0, rows)
    app = create_app(trained[0], store=evil, warm_up=False)
    with TestClient(app) as c:
        for i in range(4):
            r = c.get(f"/api/thumb/0/{i}")
            assert r.status_code == 403, (i, r.text)
            assert "outside the dataset root" in r.json()["error"]
            assert c.get(f"/api/rows/0/{i}").json()["image_size"] is None
        assert c.get("/api/thumb/0/4").status_code == 200  # relative to the root: allowed


def test_pages_static_files_and_openapi(client):
    for path in ("/", "/store"):
        r = client.get(path)
        assert r.status_code == 200 and "<script" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/score.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/score", "/api/rows", "/api/thumb/{shard}/{index}"} <= set(spec["paths"])
    body = spec["paths"]["/api/score"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    params = {p["name"] for p in spec["paths"]["/api/rows"]["get"]["parameters"]}
    assert {"status", "task", "true", "pred", "misclassified", "split", "page",
            "page_size"} <= params
    assert client.get("/docs").status_code == 200


def test_without_a_store_the_store_api_says_how_to_get_one(trained):
    from faceprobe.serve.app import create_app

    with TestClient(create_app(trained[0], warm_up=False)) as c:
        r = c.get("/api/rows")
        assert r.status_code == 404 and "--store" in r.json()["error"]
        assert c.get("/api/info").json()["store"] is None


# -- the real command in a real browser --------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    bundle, store, _ = trained
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "faceprobe", "serve", str(bundle), "--store", str(store),
             "--gallery", str(store), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"faceprobe serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"faceprobe serve did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("FACEPROBE_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_browser_score_and_store_pages(server, browser, trained, tmp_path):
    shots = _screenshot_dir(tmp_path)
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    page.set_default_timeout(60_000)  # two shared cores: be patient, not flaky
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # console errors other than failed loads, which are checked by URL below
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 else None)

    page.goto(server + "/")
    page.wait_for_selector("#model-info:not(:empty)")
    page.set_input_files("#file-input", [str(FACE), str(TWO_FACES)])
    page.wait_for_selector("body[data-state=done]")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.locator(".result").count() == 2
    assert page.locator(".result").nth(1).locator(".face-box").count() >= 2
    first = page.locator(".result").first
    assert first.locator(".face-box").count() == 1
    assert first.locator("g.face-overlay[data-face='0'] circle.landmark").count() == 5
    for task in TASKS:
        row = first.locator(f".face[data-face='0'] tr.prediction[data-task='{task}']")
        assert row.get_attribute("data-label") in {"male", "female", "yes", "no"}
        assert "%" in row.inner_text()
    assert first.locator(".face[data-face='0'] li.identity").count() == 5
    page.screenshot(path=str(shots / "serve-score.png"), full_page=True)

    expected = _expected_misclassified(trained, "smiling", "all")
    assert expected > 0  # otherwise the check below proves nothing
    page.goto(server + "/store")
    page.wait_for_selector("#row-count[data-state=ready]")
    assert page.get_attribute("#row-count", "data-total") == str(N_FACES + 2)
    page.select_option("#f-task", "smiling")
    page.check("#f-misclassified")
    page.wait_for_selector("#row-count[data-state=ready][data-query*='misclassified=true']")
    assert int(page.get_attribute("#row-count", "data-total")) == expected
    assert page.locator("#grid .card").count() == min(expected, 48)
    assert page.locator("#grid .card.wrong").count() == min(expected, 48)
    # thumbnails load lazily: wait for the first few, which are in view, before the screenshot
    page.wait_for_function("Array.from(document.querySelectorAll('#grid img')).slice(0, 6)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "serve-store.png"), full_page=False)

    page.locator("#grid .card").first.click()
    page.wait_for_selector("#details-body table.details")
    details = page.inner_text("#details-body")
    assert "landmarks (dataset)" in details and "smiling" in details
    assert page.locator("#details-body .landmark-dataset").count() == 5
    assert not problems, problems
    page.close()
