"""`faceprobe train | score | evaluate | tune` through faceprobe.cli.main."""

import json

import pytest

from faceprobe.cli import main
from faceprobe.heads.synthetic import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("cli") / "s", 800, 8, shard_size=256,
                                 failed_every=20)


def test_train_score_evaluate(store, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", str(store), "--tasks", "gender,age,race", "--head", "logreg",
                 "--out", str(model)]) == 0
    out = capsys.readouterr()
    assert "validation metrics" in out.out and "race" in out.out and "identity-disjoint" in out.err
    assert main(["score", str(model), str(store), "--out", str(tmp_path / "p.csv")]) == 0
    assert "800 rows (760 scored, 40 without a usable face)" in capsys.readouterr().out
    assert main(["evaluate", str(model), str(store), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["tasks"]) == {"gender", "age", "race"}
    assert 0 <= res["tasks"]["race"]["balanced_accuracy"] <= 1
    assert res["age"]["mae"] > 0 and res["tasks"]["age"]["mae"] == res["age"]["mae"]
    assert main(["evaluate", str(model), str(store)]) == 0
    assert "bal.acc" in capsys.readouterr().out


def test_mlp_train_and_errors_are_one_line(store, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", str(store), "--tasks", "gender", "--out", str(model), "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["train", str(store), "--tasks", "gender", "--out", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert "usable rows" not in err  # refused before the store is even read
    err = err.splitlines()[-1]
    assert err.startswith("faceprobe: error:") and "--overwrite" in err and "\n" not in err
    assert main(["train", str(store), "--tasks", "smiling", "--out", str(tmp_path / "x")]) == 1
    assert "no labels for task 'smiling'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nope"), str(store), "--out", "p.csv"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_tune_cli(store, tmp_path, capsys):
    assert main(["tune", str(store), "--tasks", "gender", "--head", "logreg", "--trials", "2",
                 "--dir", str(tmp_path / "d"), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    assert "2 trials (2 this run)" in out.out and "trial 0" in out.err


def test_every_argument_has_help():
    from faceprobe.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("train", "tune", "score", "evaluate"):
        p = sub.choices[name]
        for action in p._actions:
            assert action.help, f"{name} {action.dest} has no help"
