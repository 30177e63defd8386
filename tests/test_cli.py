"""The CLI as a whole: every command documents itself; user errors are one line, exit 1."""

import argparse
import subprocess
import sys

from faceprobe.cli import build_parser, main


def _walk(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield prefix + (name,), helps.get(name), sub
                yield from _walk(sub, prefix + (name,))


def test_every_command_and_argument_has_help():
    commands = list(_walk(build_parser()))
    assert len(commands) >= 5
    for path, help_text, sub in commands:
        assert help_text, f"`faceprobe {' '.join(path)}` has no help text"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"`faceprobe {' '.join(path)}` argument {action.dest} lacks help"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_1(tmp_path, capsys):
    import faceprobe.commands.embed  # noqa: F401  (a broken module of ours fails, never skips)

    code = main(["store", "info", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("faceprobe: error: ") and err.count("\n") == 1
    assert "missing" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "faceprobe", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("faceprobe ")
