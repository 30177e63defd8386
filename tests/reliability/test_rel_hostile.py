"""`faceprobe embed folder` over real faces mixed with hostile files (see hostile.py): the run
finishes, every bad file is a failed row with a message, every good face embeds bit for bit as in
a clean run over the good files alone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hostile import make_mix, restore_permissions
from procs import cli, run

from faceprobe.data.registry import get_reader
from faceprobe.embed.store import FAILED_STATUSES, STATUSES, USABLE_STATUSES, Store

EMBED = ("--backbone", "dlib.resnet", "--shard-size", "8", "--workers", "2", "--no-progress",
         "--json")


def stored(path: str) -> str:
    """A path as the store spells it (non-UTF-8 bytes as \\x escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, dlib_available):
    mix = make_mix(tmp_path_factory.mktemp("hostile"))
    out = {}
    for name, root in (("mix", mix.root), ("clean", mix.clean_dir)):
        store = root.parent / f"store-{name}"
        res = run(cli("embed", "folder", "--root", root, "--out", store, *EMBED), timeout=600)
        out[name] = (res, store)
    yield mix, out
    restore_permissions(mix)


def test_run_finishes_without_a_crash(mixed):
    mix, out = mixed
    for name, (res, _) in out.items():
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr
    summary = json.loads(out["mix"][0].stdout)
    assert summary["records"] == summary["rows"] == len(mix.entries)
    assert Store(out["mix"][1]).verify()["ok"]


def test_every_file_is_a_row_and_every_bad_file_is_reported(mixed):
    mix, out = mixed
    reader_paths = {r.path for r in get_reader("folder", mix.root).records()}
    assert reader_paths == {mix.path(e) for e in mix.entries}  # the walker saw every entry
    d = Store(out["mix"][1]).load(usable_only=False)
    assert len(d) == len(set(d.path)) == len(mix.entries)
    rows = {p: (s, err) for p, s, err in zip(d.path, d.status, d.extra["error"], strict=True)}
    unreported = []
    for e in mix.bad:
        status, err = rows[stored(mix.path(e))]
        if status not in FAILED_STATUSES or not err.strip() or "\n" in err:
            unreported.append((e.kind, status, err))
    assert not unreported
    for e in mix.odd:
        status, err = rows[stored(mix.path(e))]
        assert status in STATUSES
        assert status in USABLE_STATUSES or err.strip(), e.kind
    usable_odd = sum(rows[stored(mix.path(e))][0] in USABLE_STATUSES for e in mix.odd)
    print(f"\nhostile run: {len(mix.entries)} files ({len(mix.good)} good, {len(mix.renamed)} "
          f"good under hostile names, {len(mix.bad)} bad, {len(mix.odd)} odd-but-valid of which "
          f"{usable_odd} embedded); bad reported {len(mix.bad) - len(unreported)}/{len(mix.bad)}; "
          f"skipped: {mix.skipped or 'none'}")


def test_good_files_are_bitwise_equal_to_a_clean_run(mixed):
    mix, out = mixed
    d = Store(out["mix"][1]).load(usable_only=False)
    c = Store(out["clean"][1]).load(usable_only=False)
    clean = {os.path.basename(p): (s, e) for p, s, e in zip(c.path, c.status, c.X["embedding"],
                                                            strict=True)}
    assert len(clean) == len(mix.good)
    mixed_rows = {p: (s, e) for p, s, e in zip(d.path, d.status, d.X["embedding"], strict=True)}
    compared = 0
    for e in mix.good + mix.renamed:
        status, emb = mixed_rows[stored(mix.path(e))]
        ref_status, ref = clean[e.source or e.name]
        assert status == ref_status, e.kind
        if status in USABLE_STATUSES:
            assert emb.tobytes() == ref.tobytes(), f"{e.kind}: {e.name!r}"
            compared += 1
    assert compared >= len(mix.good) - 2  # a fixture face the detector misses is no mismatch
    assert np.isfinite(d.X["embedding"][np.isin(d.status, USABLE_STATUSES)]).all()
    print(f"\nbitwise equal to the clean run: {compared}/{len(mix.good) + len(mix.renamed)}")
