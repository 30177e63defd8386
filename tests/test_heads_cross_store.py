"""Evaluating a bundle on a store it was not trained on (issue 17, items 2 and 8): every labelled
row of another store is used (and said so); a task whose class vocabulary differs is skipped with
the reason, or evaluated through a declared label map; nothing ends in a traceback."""

import json
from pathlib import Path

import numpy as np
import pytest

from faceprobe.cli import main
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed.store import Store, StoreWriter
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.evaluate import align_tasks, evaluate_bundle, parse_label_map
from faceprobe.heads.synthetic import synthetic_arrays, write_synthetic_store

FAIRFACE_RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
                  "Middle Eastern"]
RACE_MAP = "race=East Asian:Asian,Southeast Asian:Asian,Latino_Hispanic:Others,Middle Eastern:Others"


def _fairface_like(path: Path, n: int, dim: int, seed: int) -> Path:
    """The synthetic store of (n, dim, seed) with FairFace's 7 race classes: Asian split into
    East/Southeast Asian and Others into Latino_Hispanic/Middle Eastern by row parity, so that
    RACE_MAP gives back exactly the 5-class labels of ``write_synthetic_store(n, dim, seed)``."""
    a = synthetic_arrays(n, dim, seed=seed)
    five = DEFAULT_VOCABULARIES["race"]
    split = {"Asian": ("East Asian", "Southeast Asian"), "Others": ("Latino_Hispanic",
                                                                    "Middle Eastern")}
    vocab = {"gender": DEFAULT_VOCABULARIES["gender"], "race": FAIRFACE_RACES, "age": None}
    meta = {"backbone": "test.synthetic", "features": {"embedding": dim}, "vocabularies": vocab,
            "shard_size": n, "weights_sha256": "synthetic", "alignment": "none",
            "precision": "fp32", "records_sha256": f"fairface-like-{n}-{seed}",
            "num_shards": 1, "dataset": "fairface-like"}
    rows = []
    for i in range(n):
        race = five[a["race"][i]]
        race = split[race][i % 2] if race in split else race
        rows.append({"path": f"/ff/{i}.jpg", "dataset": "fairface-like", "split": None,
                     "identity": f"p{int(a['identity'][i])}", "status": "ok", "error": "",
                     "labels": {"gender": vocab["gender"][a["gender"][i]], "race": race,
                                "age": float(a["age"][i])},
                     "features": {"embedding": a["X"][i]}})
    with StoreWriter.open(path, meta, overwrite=True) as w:
        w.write_shard(0, rows)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    train = write_synthetic_store(root / "train", 600, 8, seed=0, shard_size=256,
                                  failed_every=25)
    other = write_synthetic_store(root / "other", 300, 8, seed=7, shard_size=128,
                                  failed_every=30)
    fair = _fairface_like(root / "fair", 300, 8, seed=7)
    assert main(["train", str(train), "--tasks", "gender,race,age", "--head", "logreg",
                 "--out", str(root / "model"), "--no-progress"]) == 0
    return root, train, other, fair, root / "model"


def _json(capsys, *args):
    capsys.readouterr()
    assert main(["evaluate", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_other_store_is_evaluated_on_every_labelled_row(stores, capsys):
    root, train, other, _, model = stores
    res = _json(capsys, model, other)
    usable = len(Store(other).load(tasks=["gender"]))
    assert usable == 290  # 300 rows, every 30th failed
    assert res["rows_used"] == res["rows"] == usable
    assert res["split"] == "all" and res["training_store"] is False
    assert "not the bundle's training store" in res["split_description"]
    assert "every usable row labelled" in res["split_description"]
    assert {t: m["n"] for t, m in res["tasks"].items()} == {"gender": 290, "race": 290, "age": 290}
    assert res["skipped"] == {}
    # the text output says which rows and why
    assert main(["evaluate", str(model), str(other)]) == 0
    out = capsys.readouterr().out
    assert "rows used: 290, split all: not the bundle's training store" in out
    # so does --report
    assert main(["evaluate", str(model), str(other), "--report", str(root / "rep")]) == 0
    rep = json.loads((root / "rep" / "metrics.json").read_text())
    assert rep["rows_used"] == 290 and rep["split"] == "all" and rep["training_store"] is False


def test_training_store_still_uses_the_recorded_test_split(stores, capsys):
    _, train, _, _, model = stores
    res = _json(capsys, model, train)
    recorded = load_bundle(model).meta["split"]["counts"]["test"]
    assert res["split"] == "test" and res["training_store"] is True
    assert res["rows_used"] == recorded < 576
    assert "the bundle's training store" in res["split_description"]
    assert res["tasks"]["gender"]["n"] == recorded


def test_other_store_explicit_test_split_is_said(stores, capsys):
    _, _, other, _, model = stores
    res = _json(capsys, model, other, "--split", "test")
    assert res["split"] == "test" and 0 < res["rows_used"] < 290
    assert "seeded split re-derived on it" in res["split_description"]


def test_differing_vocabulary_is_skipped_with_the_reason(stores, capsys):
    _, _, _, fair, model = stores
    res = _json(capsys, model, fair)
    assert set(res["tasks"]) == {"gender", "age"}
    assert res["tasks"]["gender"]["n"] == 300 and res["age"]["n"] == 300
    why = res["skipped"]["race"]
    assert "Latino_Hispanic" in why and "--map race=" in why
    assert "race" not in res["fairness"]
    capsys.readouterr()
    assert main(["evaluate", str(model), str(fair)]) == 0
    out = capsys.readouterr().out
    assert "race: skipped: the store's race classes (7: White" in out
    rep = fair.parent / "fair-report"
    assert main(["evaluate", str(model), str(fair), "--report", str(rep)]) == 0
    assert "race" in json.loads((rep / "metrics.json").read_text())["skipped"]
    page = (rep / "index.html").read_text()
    assert "Rows and tasks" in page and "skipped: the store&#x27;s race classes" in page
    assert main(["score", str(model), str(fair), "--out", str(fair.parent / "p.csv"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: race: the store's labels are not comparable" in out
    assert "300 rows (300 scored" in out


def test_declared_map_evaluates_the_task(stores, capsys, tmp_path):
    root, _, other, fair, model = stores
    res = _json(capsys, model, fair, "--map", RACE_MAP)
    assert res["skipped"] == {}
    assert res["tasks"]["race"]["classes"] == DEFAULT_VOCABULARIES["race"]
    assert "mapped onto the bundle's as declared" in res["tasks"]["race"]["labels"]
    # the mapped labels are exactly those of the 5-class store with the same embeddings
    same = evaluate_bundle(load_bundle(model), write_synthetic_store(tmp_path / "s", 300, 8,
                                                                     seed=7))
    assert res["tasks"]["race"]["n"] == same["tasks"]["race"]["n"] == 300
    assert res["tasks"]["race"]["accuracy"] == pytest.approx(same["tasks"]["race"]["accuracy"])
    # fairness is still broken down by the store's own 7 classes
    assert "Middle Eastern" in res["fairness"]["gender"]["by"]["race"]["groups"]
    # a JSON file works too; a class left out (null) drops its rows from the task
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"race": {"East Asian": "Asian", "Southeast Asian": "Asian",
                                      "Latino_Hispanic": "Others", "Middle Eastern": None}}))
    res2 = _json(capsys, model, fair, "--map", f, "--report", tmp_path / "rep")
    assert 0 < res2["tasks"]["race"]["n"] < 300
    assert "race" in json.loads((tmp_path / "rep" / "metrics.json").read_text())["tasks"]


def test_bad_maps_are_one_line_errors(stores, capsys):
    _, _, _, fair, model = stores
    for bad, msg in (("race=East Asian:Asian", "have no bundle class"),
                     ("race=Martian:Asian", "not among the store's race classes"),
                     ("race=East Asian:Martian", "not among the bundle's race classes"),
                     ("smiling=a:b", "does not predict"),
                     ("race", "neither")):
        capsys.readouterr()
        assert main(["evaluate", str(model), str(fair), "--map", bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("faceprobe: error:") and msg in err, (bad, err)


def test_align_by_name_and_parse():
    class B:
        path, tasks = "b", ["race", "gender", "age_group"]
        vocabularies = {"race": ["A", "B", "C"], "gender": ["male", "female"],
                        "age_group": DEFAULT_VOCABULARIES["age_group"]}

    al = align_tasks(B(), {"race": ["C", "A"], "gender": ["female", "male"], "age": None})
    assert al.skipped == {}
    assert al.truth("race", {"race": np.array([0, 1, -1])}).tolist() == [2, 0, -1]
    assert al.truth("gender", {"gender": np.array([0, 1])}).tolist() == [1, 0]
    assert "age_group" in al.tables  # derived from age, AGE_GROUPS either side
    assert parse_label_map(["race=a:b, c:-", "gender=x:"]) == {"race": {"a": "b", "c": None},
                                                               "gender": {"x": None}}
