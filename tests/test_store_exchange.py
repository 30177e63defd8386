"""Issue 19: `faceprobe store export|import` and `faceprobe score MODEL FILE.parquet`."""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

from faceprobe.cli import main  # noqa: E402
from faceprobe.embed.exchange import export_store, import_file  # noqa: E402
from faceprobe.embed.store import Store  # noqa: E402
from faceprobe.heads.bundle import load_bundle  # noqa: E402
from faceprobe.heads.evaluate import evaluate_bundle  # noqa: E402
from faceprobe.heads.synthetic import synthetic_arrays, write_synthetic_store  # noqa: E402
from faceprobe.heads.train import train_store  # noqa: E402


@pytest.fixture
def synth(tmp_path):
    return write_synthetic_store(tmp_path / "s", 400, 16, shard_size=128, failed_every=9,
                                 missing_every=7, split="official")


def _same_store(a_path, b_path):
    a = Store(a_path).load(tasks=None, usable_only=False)
    b = Store(b_path).load(tasks=None, usable_only=False)
    assert Store(a_path).vocabularies == Store(b_path).vocabularies
    for g in a.X:
        assert np.array_equal(a.X[g].view(np.uint32), b.X[g].view(np.uint32))  # bitwise
    for t in a.y:
        assert np.array_equal(a.y[t], b.y[t], equal_nan=True)
    for col in ("path", "status", "identity", "split", "dataset"):
        assert (getattr(a, col) == getattr(b, col)).all(), col


def test_export_import_roundtrip_bitwise_with_cli(synth, tmp_path, capsys):
    out = tmp_path / "e.parquet"
    assert main(["store", "export", str(synth), "--out", str(out)]) == 0
    meta = json.loads(pq.ParquetFile(out).schema_arrow.metadata[b"faceprobe"])
    assert meta["backbone"] == "test.synthetic" and meta["weights_sha256"] == "synthetic"
    assert "recipe" in meta and meta["vocabularies"]["gender"] == ["male", "female"]
    t = pq.read_table(out)
    assert len(t) == 400 and pa.types.is_fixed_size_list(t.schema.field("embedding").type)
    assert t.schema.field("embedding").type.value_type == pa.float32()
    assert t.schema.field("gender").type == pa.string()
    assert t.schema.field("age").type == pa.float32()
    assert t.column("race").null_count > 0  # missing labels are null
    assert t.column("embedding").null_count == 400 // 9  # failed rows
    assert main(["store", "import", str(out), "--out", str(tmp_path / "r")]) == 0
    assert "400 rows" in capsys.readouterr().out
    _same_store(synth, tmp_path / "r")
    assert Store(tmp_path / "r").meta["backbone"] == "test.synthetic"
    assert main(["store", "verify", str(tmp_path / "r")]) == 0


def test_npz_export(synth, tmp_path):
    export_store(synth, tmp_path / "e.npz")
    z = np.load(tmp_path / "e.npz")
    d = Store(synth).load(tasks=None, usable_only=False)
    assert z["embedding"].shape == (400, 16)
    assert np.array_equal(z["embedding"], d.X["embedding"], equal_nan=True)
    assert json.loads(str(z["faceprobe"]))["backbone"] == "test.synthetic"
    assert set(z["gender"].tolist()) <= {"male", "female", ""}


def test_train_evaluate_same_metrics_after_reimport(synth, tmp_path):
    export_store(synth, tmp_path / "e.parquet")
    import_file(tmp_path / "e.parquet", tmp_path / "r")
    res = []
    for name in ("s", "r"):
        store = synth if name == "s" else tmp_path / "r"
        tr = train_store(store, "gender,race,age", "logreg", out=tmp_path / f"m{name}", seed=3)
        ev = evaluate_bundle(load_bundle(tr.bundle), store)
        res.append((tr.metrics, ev))
    (m1, e1), (m2, e2) = res

    def strip(m):
        return json.loads(json.dumps({k: v for k, v in m.items()
                                      if k not in ("store", "bundle", "seconds", "model")},
                                     default=str))
    assert strip(m1) == strip(m2)
    for t in ("gender", "race", "age"):
        assert json.dumps(e1["tasks"][t], default=str) == json.dumps(e2["tasks"][t], default=str)


def test_pandas_pyarrow_duckdb_read_the_export(synth, tmp_path):
    out = tmp_path / "e.parquet"
    export_store(synth, out)
    d = Store(synth).load(tasks=None, usable_only=False)
    df = pd.read_parquet(out)
    t = pq.read_table(out)
    assert len(df) == len(t) == 400
    assert df["path"].iloc[5] == d.path[5] == t.column("path")[5].as_py()
    assert np.array_equal(np.asarray(df["embedding"].iloc[0], np.float32), d.X["embedding"][0])
    duckdb = pytest.importorskip("duckdb", reason="duckdb not installed (pip install duckdb)")
    con = duckdb.connect()
    n, = con.execute(f"select count(*) from read_parquet('{out}')").fetchone()
    assert n == 400
    p, e0, g = con.execute(f"select path, embedding[1], gender from read_parquet('{out}') "
                           "limit 1 offset 5").fetchone()
    assert p == d.path[5] and np.float32(e0) == d.X["embedding"][5, 0]
    assert g == df["gender"].iloc[5]


def test_pandas_written_parquet_imports_and_trains(tmp_path):
    a = synthetic_arrays(300, 12, seed=1)
    df = pd.DataFrame({"embedding": [list(map(float, x)) for x in a["X"]],
                       "gender": np.where(a["gender"] == 0, "male", "female")})
    df.to_parquet(tmp_path / "p.parquet")
    res = import_file(tmp_path / "p.parquet", tmp_path / "r")
    assert res["rows"] == 300 and res["tasks"] == {"gender": 2} and res["backbone"] == "imported"
    s = Store(tmp_path / "r")
    assert s.vocabularies == {"gender": ["female", "male"]}
    assert s.load().path[0] == "row-0"
    tr = train_store(tmp_path / "r", "gender", "logreg", out=tmp_path / "m", seed=0)
    assert tr.metrics["tasks"]["gender"]["accuracy"] > 0.8


def test_npy_with_labels_csv(tmp_path):
    a = synthetic_arrays(50, 8, seed=2)
    np.save(tmp_path / "x.npy", a["X"])
    pd.DataFrame({"path": [f"img{i}.jpg" for i in range(50)],
                  "gender": np.where(a["gender"] == 0, "male", "female"),
                  "age": a["age"]}).to_csv(tmp_path / "l.csv", index=False)
    assert main(["store", "import", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "l.csv"),
                 "--out", str(tmp_path / "r"), "--backbone-name", "mine"]) == 0
    s = Store(tmp_path / "r")
    d = s.load()
    assert s.meta["backbone"] == "mine" and s.vocabularies["age"] is None
    assert d.path[3] == "img3.jpg" and np.array_equal(d.X["embedding"], a["X"])


def test_bad_rows_reported_and_strict(tmp_path, capsys):
    rows = [[1.0, 2.0, 3.0]] * 10
    rows[2] = [1.0, 2.0]
    rows[5] = [1.0, float("nan"), 3.0]
    rows[7] = None
    pd.DataFrame({"embedding": rows, "gender": ["male", "female"] * 5}).to_parquet(
        tmp_path / "b.parquet")
    assert main(["store", "import", str(tmp_path / "b.parquet"), "--out",
                 str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 bad rows" in err and "row 2: " in err and "row 5" in err and "row 7" in err
    assert "length 2, expected 3" in err and "NaN or inf" in err
    assert Store(tmp_path / "r").info()["rows"] == 7
    assert main(["store", "import", str(tmp_path / "b.parquet"), "--out", str(tmp_path / "r2"),
                 "--strict"]) == 1
    err = capsys.readouterr().err
    assert "row 2 of b.parquet" in err and "\n" not in err.strip()
    pd.DataFrame({"embedding": ["a", "b"]}).to_parquet(tmp_path / "s.parquet")
    assert main(["store", "import", str(tmp_path / "s.parquet"), "--out",
                 str(tmp_path / "r3")]) == 1
    assert "cannot hold embeddings" in capsys.readouterr().err


def test_score_parquet_equals_score_store(synth, tmp_path, capsys):
    tr = train_store(synth, "gender,race,age", "logreg", out=tmp_path / "m", seed=0)
    export_store(synth, tmp_path / "e.parquet")
    assert main(["score", str(tr.bundle), str(synth), "--out", str(tmp_path / "a.parquet"),
                 "--no-progress"]) == 0
    assert main(["score", str(tr.bundle), str(tmp_path / "e.parquet"), "--out",
                 str(tmp_path / "b.parquet"), "--no-progress"]) == 0
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(a, b)
    # a bare pandas file: no provenance, no path column
    X = Store(synth).load().X["embedding"]
    pd.DataFrame({"embedding": list(X[:20])}).to_parquet(tmp_path / "bare.parquet")
    assert main(["score", str(tr.bundle), str(tmp_path / "bare.parquet"), "--out",
                 str(tmp_path / "c.csv"), "--no-progress"]) == 0
    c = pd.read_csv(tmp_path / "c.csv")
    assert c["path"].iloc[0] == "row-0" and len(c) == 20
    # other provenance, other dimension: one clear line each
    t = pq.read_table(tmp_path / "e.parquet")
    meta = json.loads(t.schema.metadata[b"faceprobe"])
    meta["backbone"] = "dlib.resnet"
    pq.write_table(t.replace_schema_metadata({"faceprobe": json.dumps(meta)}),
                   tmp_path / "o.parquet")
    capsys.readouterr()
    assert main(["score", str(tr.bundle), str(tmp_path / "o.parquet"), "--out",
                 str(tmp_path / "d.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert "'dlib.resnet'" in err and "test.synthetic" in err and "\n" not in err
    pd.DataFrame({"embedding": list(np.zeros((3, 7), np.float32))}).to_parquet(
        tmp_path / "w.parquet")
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(21, np.float32)), 7)}), tmp_path / "w.parquet")
    assert main(["score", str(tr.bundle), str(tmp_path / "w.parquet"), "--out",
                 str(tmp_path / "d.csv")]) == 1
    assert "dimension 7" in capsys.readouterr().err


def test_real_store_roundtrip(fixtures_dir, tmp_path):
    pytest.importorskip("dlib")
    store = tmp_path / "real"
    assert main(["embed", "mtfl", "--root", str(fixtures_dir / "mtfl"), "--out", str(store),
                 "--backbone", "dlib.resnet", "--workers", "0", "--limit", "6",
                 "--no-progress"]) == 0
    export_store(store, tmp_path / "e.parquet")
    meta = json.loads(pq.ParquetFile(tmp_path / "e.parquet").schema_arrow.metadata[b"faceprobe"])
    assert meta["backbone"] == "dlib.resnet" and len(meta["weights_sha256"]) == 64
    import_file(tmp_path / "e.parquet", tmp_path / "r")
    _same_store(store, tmp_path / "r")
    r = Store(tmp_path / "r")
    assert r.meta["weights_sha256"] == Store(store).meta["weights_sha256"]
    assert r.meta["recipe"]["backbones"][0]["name"] == "dlib.resnet"
    a = Store(store).load(usable_only=False)
    b = r.load(usable_only=False)
    assert np.array_equal(a.landmarks_detected, b.landmarks_detected, equal_nan=True)


def test_feature_groups_and_labels_by_flag(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"emb": list(rng.standard_normal((40, 6)).astype(np.float32)),
                       "hog_col": list(rng.standard_normal((40, 3)).astype(np.float32)),
                       "sex": ["m", "f"] * 20, "years": rng.uniform(1, 80, 40),
                       "path": [f"f{i}.png" for i in range(40)]})
    df.to_parquet(tmp_path / "p.parquet")
    assert main(["store", "import", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "r"),
                 "--embedding-column", "emb", "--feature", "hog=hog_col", "--label",
                 "gender=sex", "--label", "age=years"]) == 0
    s = Store(tmp_path / "r")
    assert s.feature_dims == {"embedding": 6, "hog": 3}
    assert s.vocabularies == {"gender": ["f", "m"], "age": None}
    export_store(s, tmp_path / "e.parquet")
    import_file(tmp_path / "e.parquet", tmp_path / "r2")  # every group and label by default
    _same_store(tmp_path / "r", tmp_path / "r2")
    assert Store(tmp_path / "r2").feature_dims == {"embedding": 6, "hog": 3}
