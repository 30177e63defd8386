"""`faceprobe serve` argument handling: help, missing extra, errors before the server starts."""

from __future__ import annotations

import importlib

import pytest

from faceprobe.cli import build_parser, main


def test_serve_is_listed_and_every_option_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "serve" in sub.choices
    serve = sub.choices["serve"]
    for action in serve._actions:
        if action.dest != "help":
            assert action.help, action.dest
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("MODEL", "--store", "--gallery", "--host", "--port", "127.0.0.1", "8000"):
        assert option in text


def test_missing_serve_extra_names_the_pip_command(monkeypatch, capsys):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "uvicorn":
            raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["serve", "some-model"]) == 1
    err = capsys.readouterr().err
    assert "uvicorn" in err and "pip install 'faceprobe[serve]'" in err


def test_errors_come_before_the_server_starts(monkeypatch, tmp_path, capsys):
    pytest.importorskip("uvicorn")
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("server started"))
    assert main(["serve", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-files", "0"]) == 1
    assert "--max-files" in capsys.readouterr().err


def test_package_imports_without_the_web_stack():
    import faceprobe.serve as serve

    assert "create_app" in serve.__all__
    with pytest.raises(AttributeError):
        serve.nothing_here  # noqa: B018
