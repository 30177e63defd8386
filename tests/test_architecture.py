"""The shape of the code (issue 21): no import cycle between faceprobe modules or packages,
counting imports inside functions (a lazy import is still a dependency); the report layer
imports no stage; no module over 450 lines outside tests/."""

import ast
from collections import defaultdict
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "faceprobe"
MAX_LINES = 450
TOP = {"faceprobe.cli", "faceprobe.__main__"}  # the console entry: above every package
# faceprobe/report turns plain data into output; stages may use it, it uses none of them
REPORT_MAY_IMPORT = {"_base", "data", "report"}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """faceprobe modules ``path`` imports anywhere in it (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "faceprobe":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "faceprobe")
    return {m for m in out if m in known}


def package_of(module: str) -> str:
    if module in TOP:
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "_base"


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = module_names()
    modules = {m: imports_of(p, known) - {m} for m, p in known.items()}
    packages: dict[str, set[str]] = defaultdict(set)
    for m, deps in modules.items():
        packages[package_of(m)].update(package_of(d) for d in deps)
    for p, deps in packages.items():
        deps.discard(p)
    return modules, dict(packages)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return exc.args[1]
    return None


def test_no_import_cycle_between_modules():
    modules, _ = graphs()
    assert len(modules) > 50  # the walk found the package
    assert cycle(modules) is None, f"import cycle: {' -> '.join(cycle(modules))}"


def test_no_import_cycle_between_packages():
    _, packages = graphs()
    assert {"embed", "heads", "report", "landmarks"} <= set(packages)
    assert cycle(packages) is None, f"package cycle: {' -> '.join(cycle(packages))}"


def test_report_imports_no_stage_and_nothing_imports_the_top():
    modules, packages = graphs()
    assert packages["report"] <= REPORT_MAY_IMPORT, packages["report"]
    for m, deps in modules.items():  # only the CLI and commands drive commands and pipelines
        if package_of(m) not in ("cli", "commands", "pipelines"):
            assert not {package_of(d) for d in deps} & {"cli", "commands", "pipelines"}, m


def test_the_checks_catch_what_they_are_for():
    assert cycle({"a": {"b"}, "b": {"a"}}) is not None and cycle({"a": {"b"}, "b": set()}) is None
    known = {"faceprobe.x": Path(), "faceprobe.y": Path(), "faceprobe.y.z": Path()}
    tree = ROOT / "tests" / "data" / "_import_probe.py"
    try:
        tree.write_text("def f():\n    from faceprobe.y import z\n    import faceprobe.x\n")
        assert imports_of(tree, known) == {"faceprobe.y.z", "faceprobe.x"}  # lazy ones count
    finally:
        tree.unlink(missing_ok=True)


@pytest.mark.parametrize("folder", ["faceprobe", "bench"])
def test_no_module_over_the_line_limit(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
