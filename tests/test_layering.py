"""Layering: which tinylm module may import the heavy frameworks (STYLE.md).

deepspeed only in tinylm/engine.py, ray only in tinylm/tune.py, mlflow only in tinylm/tracking.py, found by
scanning the AST of every .py under tinylm/ (lazy imports inside functions count too). model.py stays pure
PyTorch, and importing it (or config / budget) must not pull any of them into sys.modules.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tinylm"
OWNER = {"deepspeed": "engine.py", "ray": "tune.py", "mlflow": "tracking.py"}


@functools.cache
def imported_roots(path: Path) -> frozenset[str]:
    """Top-level names of every absolute import in a file, at any depth (functions, try blocks, ...)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            roots.add(node.args[0].value.split(".")[0])  # importlib.import_module("ray")
    return frozenset(roots)


SOURCES = sorted(PKG.rglob("*.py"))


def test_the_scan_sees_the_package():
    names = {p.relative_to(PKG).as_posix() for p in SOURCES}
    assert {"engine.py", "tune.py", "tracking.py", "model.py", "train.py", "config.py"} <= names
    assert "deepspeed" in imported_roots(PKG / "engine.py")
    assert "ray" in imported_roots(PKG / "tune.py")
    assert "mlflow" in imported_roots(PKG / "tracking.py")


@pytest.mark.parametrize("framework", sorted(OWNER))
def test_only_the_owner_imports_each_framework(framework):
    offenders = [p.relative_to(PKG).as_posix() for p in SOURCES
                 if framework in imported_roots(p) and p.relative_to(PKG).as_posix() != OWNER[framework]]
    assert not offenders, f"{framework} may only be imported by tinylm/{OWNER[framework]}; also in {offenders}"


def test_model_imports_only_torch_and_tinylm():
    roots = imported_roots(PKG / "model.py")
    assert not roots & set(OWNER)
    assert roots <= {"__future__", "math", "torch", "tinylm"}, roots


@pytest.mark.parametrize("module", ["tinylm.model", "tinylm.config", "tinylm.budget"])
def test_importing_does_not_load_heavy_frameworks(module):
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in {sorted(OWNER)!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_config_does_not_import_torch():
    """Tune's driver and the CLI parse configs cheaply: config.py (and budget.py) import no torch."""
    code = "import sys; import tinylm.config, tinylm.budget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
