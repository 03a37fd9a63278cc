"""The layout holds: imports run one way (jobs -> orchestration -> compute and actors -> data contract -> configs),
imports inside functions are deferred heavy or optional ones that say so, and no module outgrows one job."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("configs", "pipeline", "models", "training", "actors", "orchestration", "jobs", "benchmarks")
# The data contract: what prepared data is and where it lives, read and written by every later layer.
DATA_CONTRACT = {
    "pipeline." + m
    for m in (
        "records",
        "shards",
        "storage",
        "sources",
        "source_errors",
        "source_values",
        "source_files",
        "source_rows",
        "conversations",
        "read",
        "task",
        "tokenize",
        "report",
    )
}
# Modules over 300 lines, and why they stay whole.
LONG_MODULES = {
    "training/losses.py": "every loss in one file, each a pure tensor function on one screen (TRL's dpo_loss family)",
    "pipeline/records.py": "the data contract: the record schema and every check of its values, read together",
    "pipeline/task.py": "the embedded task: its families and the verifier whose rules mirror them",
}


def layer(module: str) -> int:
    package = module.split(".")[0]
    if package == "configs":
        return 0
    if module in DATA_CONTRACT:
        return 1
    if package in ("pipeline", "models", "training", "actors"):
        return 2
    return {"orchestration": 3, "jobs": 4, "benchmarks": 5}[package]


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            yield ".".join(rel.with_suffix("").parts).removesuffix(".__init__"), rel, path.read_text()


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_imports(tree: ast.AST):
    """``(node, module)`` for every import of a project module (``from pipeline import storage``: pipeline.storage)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module for a in node.names
            ]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        yield from ((node, t) for t in targets if t.split(".")[0] in PACKAGES)


def test_imports_run_one_way():
    wrong = []
    for module, rel, text in modules():
        for node, name in project_imports(ast.parse(text)):
            target = name
            if layer(target) > layer(module):
                wrong.append(
                    f"{rel}:{node.lineno}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
                )
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_an_import_inside_a_function_says_why():
    silent = []
    for _, rel, text in modules():
        lines = text.split("\n")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    row = sub.lineno - 1
                    while row > 0 and lines[row - 1].strip().startswith(("import ", "from ")):
                        row -= 1  # the comment above a block of deferred imports covers the block
                    if "#" not in lines[sub.lineno - 1] and not lines[row - 1].strip().startswith("#"):
                        silent.append(f"{rel}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not silent, "imports inside functions without a comment saying why:\n" + "\n".join(silent)


def test_no_module_outside_the_tests_is_over_300_lines_but_those_that_say_why():
    long = {str(rel): len(text.splitlines()) for _, rel, text in modules() if len(text.splitlines()) > 300}
    assert set(long) == set(LONG_MODULES), long
