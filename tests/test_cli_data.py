"""``faceprobe datasets`` and ``faceprobe inspect`` through ``faceprobe.cli.main``."""

from __future__ import annotations

import json

import pytest

from faceprobe.cli import build_parser, main


def test_datasets_lists_formats_and_tasks(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("utkface", "celeba", "fairface", "mtfl", "lfw", "imdbwiki", "csv", "folder"):
        assert name in out
    assert "Smiling" in out and "age_group" in out


def test_datasets_json(capsys):
    assert main(["datasets", "--json"]) == 0
    formats = {f["name"]: f for f in json.loads(capsys.readouterr().out)}
    assert formats["fairface"]["tasks"] == ["age_group", "gender", "race"]


def test_inspect_json(capsys, fixtures_dir):
    assert main(["inspect", "utkface", "--root", str(fixtures_dir / "utkface"), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["images"] == 10 and result["problem_counts"] == {"malformed_name": 2}
    assert result["duplicate_groups"] == 2 and result["conflicting_groups"] == 1
    assert result["labels"]["race"]["White"] == 5


def test_inspect_summary_exits_0_with_problems(capsys, fixtures_dir):
    assert main(["inspect", "imdbwiki", "--root", str(fixtures_dir / "imdbwiki")]) == 0
    out = capsys.readouterr().out
    assert "images: 5 on disk" in out and "implausible_age: 2" in out


def test_inspect_strict_is_one_line_error(capsys, fixtures_dir):
    assert main(["inspect", "utkface", "--root", str(fixtures_dir / "utkface"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("faceprobe: error: ") and "malformed UTKFace name" in err
    assert err.count("\n") == 1


def test_inspect_wrong_directory_and_unknown_format(capsys, fixtures_dir):
    assert main(["inspect", "celeba", "--root", str(fixtures_dir / "mtfl")]) == 1
    assert "list_attr_celeba.txt" in capsys.readouterr().err
    assert main(["inspect", "nope", "--root", str(fixtures_dir)]) == 1
    assert "known: utkface" in capsys.readouterr().err


def test_inspect_no_images(capsys, fixtures_dir):
    assert main(["inspect", "lfw", "--root", str(fixtures_dir / "lfw"), "--json",
                 "--no-images"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 15 and result["identities"] == 7 and result["duplicates"] == []


@pytest.mark.parametrize("command", ["datasets", "inspect"])
def test_every_argument_has_help(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices[command].description
    help_by_name = {a.dest: a.help for a in sub._choices_actions}
    assert help_by_name[command]
    for action in sub.choices[command]._actions:
        assert action.help, action.dest
