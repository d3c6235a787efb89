"""Layering: which tinylm module may import the heavy frameworks (one owner each, as torchtitan and litgpt keep them).

deepspeed only in tinylm/engine.py, ray only under tinylm/tune/, mlflow only under tinylm/tracking/, found by
scanning the AST of every .py under tinylm/ (lazy imports inside functions count too). model.py stays pure
PyTorch, and importing it (or config / budget) must not pull any of them into sys.modules.

Inside the package, every module has a layer (LAYERS) and imports only its own layer or below, with no import
cycles, no other module's ``_private`` names, no library code importing a CLI and no ``main()`` outside a
command's own module. There are no exceptions: every violation fails the test.
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
OWNER = {"deepspeed": "engine.py", "ray": "tune/", "mlflow": "tracking/"}  # a file, or a folder "x/": all in it


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
    assert {"engine.py", "tune/__init__.py", "tracking/__init__.py", "model.py", "train/__init__.py",
            "config.py"} <= names
    assert "deepspeed" in imported_roots(PKG / "engine.py")
    assert "ray" in imported_roots(PKG / "tune" / "worker.py")
    assert "ray" in imported_roots(PKG / "tune" / "runner.py")
    assert "ray" not in imported_roots(PKG / "sweep" / "settings.py")  # flags are parsed without Ray
    assert "mlflow" in imported_roots(PKG / "tracking" / "writer.py")
    assert "mlflow" in imported_roots(PKG / "tracking" / "store.py")
    assert "mlflow" not in imported_roots(PKG / "tracking" / "readers.py")  # it searches through store


def owned_by(framework: str, rel: str) -> bool:
    owner = OWNER[framework]
    return rel.startswith(owner) if owner.endswith("/") else rel == owner


@pytest.mark.parametrize("framework", sorted(OWNER))
def test_only_the_owner_imports_each_framework(framework):
    offenders = [p.relative_to(PKG).as_posix() for p in SOURCES
                 if framework in imported_roots(p) and not owned_by(framework, p.relative_to(PKG).as_posix())]
    assert not offenders, f"{framework} may only be imported by tinylm/{OWNER[framework]}; also in {offenders}"


def test_model_imports_only_torch_and_tinylm():
    roots = imported_roots(PKG / "model.py")
    assert not roots & set(OWNER)
    assert roots <= {"__future__", "hashlib", "math", "torch", "tinylm"}, roots  # hashlib: per-tensor init seeds


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


# --- the import order of the whole package (issue 14, item 1) ------------------------------------------------
# Lowest first. A module may import modules of its own layer or below; never above. Imports made by a command's
# own ``main()``, under ``if __name__ == "__main__":`` or anywhere in a ``__main__.py`` belong to the top layer
# (CLI): a command may use anything, and nothing may import a command. Lazy (function-level) imports count.
LAYERS: list[tuple[str, set[str]]] = [
    ("core", {"errors", "layout", "markdown_table", "config", "budget", "model", "blocks", "blocks.registry",
              "blocks.mlp", "blocks.moe",
              "blocks.ssm"}),
    ("parts", {"data", "tokenizer", "optim", "engine", "checkpoint", "machine", "kill_rule", "ranking", "regime",
               "footprint", "ensemble"}),
    ("evals", {"evals", "evals.scorer", "evals.decode", "evals.suite", "evals.sources", "evals.arithmetic",
               "evals.association", "evals.commonsense", "evals.completion", "evals.lambada", "evals.qa",
               "evals.recall", "evals.squad"}),  # the benchmark library: train() runs it at the end of a run
    ("tracking", {"tracking", "tracking.schema", "tracking.store", "tracking.writer", "tracking.readers"}),
    ("train", {"train", "train.run", "train.sanity", "train.tracked", "train.ensemble"}),
    # a sweep's settings, flags and grid (no ray: the CLI parses and checks them before Ray starts); tune.*: Ray
    ("sweeps", {"sweep.settings", "sweep.space", "tune", "tune.grid", "tune.results", "tune.console", "tune.resources", "tune.worker",
                "tune.callbacks", "tune.search", "tune.stopping", "tune.runner", "tune.state", "ablation"}),
    ("analysis", {"analysis", "analysis.columns", "analysis.cost", "analysis.decision", "analysis.fits",
                  "analysis.ladder", "analysis.pareto", "analysis.plots", "analysis.report",
                  "analysis.scaling", "analysis.sequential", "analysis.stats", "analysis.validity",
                  "analysis.verdict"}),
    # "" is tinylm/__init__.py (lazy re-exports of the API); a sweep end to end: its declaration and checks
    # (experiment), the dry-run plan, the phases on tune and the report (pipeline); api.run_sweep calls it
    ("api", {"", "api", "sweep", "sweep.experiment", "sweep.plan", "sweep.pipeline", "sweep.ladder", "log",
             "export"}),
    # every command line: a package's cli.py (parser and main) and the two-line __main__.py that runs it; the
    # sweep scripts call sweep.cli.main (python sweeps/<name>.py)
    ("cli", {"train.cli", "evals.cli", "analysis.cli", "sweep.cli", "train.__main__", "evals.__main__",
             "analysis.__main__", "sweep.__main__"}),
]
LAYER = {mod: i for i, (_, mods) in enumerate(LAYERS) for mod in mods}
CLI = len(LAYERS) - 1

def _modname(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_modname(p): p for p in SOURCES}


def _resolve(dotted: str) -> str | None:
    """``tinylm.a.b`` -> the package-relative module name it loads (the longest existing prefix)."""
    if dotted != "tinylm" and not dotted.startswith("tinylm."):
        return None
    parts = dotted.split(".")[1:]
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, "id", None) == "__name__"
            and any(getattr(c, "value", None) == "__main__" for c in node.test.comparators))


@functools.cache
def package_imports(mod: str) -> tuple[tuple[str, str, str, bool], ...]:
    """(imported module, imported name or "", private attribute or "", in a CLI context) for every import of a
    tinylm module in ``mod``, at any depth; ``from pkg import sub`` resolves to the submodule; a private name
    imported or read as ``module._name`` is reported as such; ``importlib.import_module(<variable>)`` counts
    every "tinylm...." string constant of the file as an import."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), filename=str(path))
    cli_module = path.name in ("__main__.py", "cli.py")
    out: list[tuple[str, str, str, bool]] = []
    aliases: dict[str, str] = {}  # local name -> tinylm module it is bound to
    dynamic = False

    def add(dotted: str, name: str, cli: bool) -> None:
        target = _resolve(dotted)
        if target is None:
            return
        sub = f"{target}.{name}" if target else name
        if name and sub in MODULES:  # from tinylm.evals import decode: the submodule
            target, name = sub, ""
        out.append((target, name, "", cli))

    def visit(node: ast.AST, cli: bool) -> None:
        nonlocal dynamic
        for ch in ast.iter_child_nodes(node):
            ctx = cli or _is_main_guard(ch) or (isinstance(ch, ast.FunctionDef) and ch.name == "main"
                                                and node is tree)
            if isinstance(ch, ast.Import):
                for a in ch.names:
                    add(a.name, "", ctx)
                    if a.asname and _resolve(a.name) is not None:
                        aliases[a.asname] = _resolve(a.name)
            elif isinstance(ch, ast.ImportFrom):
                base = ch.module or ""
                if ch.level:  # relative: from .x import y
                    here = ["tinylm", *mod.split(".")] if path.name == "__init__.py" else \
                        ["tinylm", *mod.split(".")[:-1]]
                    here = here[: len(here) - ch.level + 1]
                    base = ".".join(here + ([ch.module] if ch.module else []))
                for a in ch.names:
                    add(base, a.name, ctx)
                    target = _resolve(f"{base}.{a.name}")
                    if target is not None and target in MODULES and target != _resolve(base):
                        aliases[a.asname or a.name] = target
            elif (isinstance(ch, ast.Attribute) and isinstance(ch.value, ast.Name) and ch.value.id in aliases
                  and ch.attr.startswith("_") and not ch.attr.startswith("__")):
                out.append((aliases[ch.value.id], "", ch.attr, ctx))
            elif (isinstance(ch, ast.Call) and getattr(ch.func, "id", getattr(ch.func, "attr", None))
                  in ("import_module", "__import__") and ch.args):
                arg = ch.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    add(arg.value, "", ctx)
                else:
                    dynamic = True
            visit(ch, ctx)

    visit(tree, cli_module)
    if dynamic:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _resolve(node.value) is not None \
                    and node.value.startswith("tinylm.") and _resolve(node.value) == node.value[len("tinylm."):]:
                add(node.value, "", cli_module)
    return tuple(out)


def _defines_main(mod: str) -> bool:
    tree = ast.parse(MODULES[mod].read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def _is_cli(mod: str) -> bool:
    """A command line: a package's ``cli.py`` or ``__main__.py``."""
    return mod.endswith((".cli", "__main__")) or mod in ("cli", "__main__")


def _is_command(mod: str) -> bool:
    """A command line (``_is_cli``), or a single-module tool ``python -m tinylm.<mod>`` runs (a ``__main__``
    guard)."""
    tree = ast.parse(MODULES[mod].read_text())
    return _is_cli(mod) or any(_is_main_guard(n) for n in tree.body)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def import_violations() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for target, name, private, cli in package_imports(mod):
            if target == mod:
                continue
            graph[mod].add(target)
            own = CLI if cli or _is_cli(mod) else LAYER[mod]
            if LAYER[target] > own:
                found.add(("upward", mod, target))
            if not cli and (_is_cli(target) or name == "main"):
                found.add(("cli-import", mod, target))
            for n in (name, private):
                if n.startswith("_") and not n.startswith("__"):
                    found.add(("private", mod, f"{target}.{n}"))
        if _defines_main(mod) and not _is_command(mod):
            found.add(("main-not-a-command", mod, "main"))
    for comp in _strongly_connected(graph):
        if len(comp) > 1:
            found.update(("cycle", a, b) for a in comp for b in graph[a] & comp)
    return found


def test_every_module_has_a_layer():
    missing = sorted(set(MODULES) - set(LAYER))
    assert not missing, f"place these tinylm modules in LAYERS (tests/test_layering.py): {missing}"


def test_the_import_scan_sees_lazy_imports_and_private_names():
    imports = {(t, n, p, cli) for t, n, p, cli in package_imports("train")}
    assert ("engine", "", "", False) in imports  # `from tinylm import engine` inside setup(): the submodule
    assert ("train.tracked", "train_tracked", "", True) in package_imports("train.cli")  # --track: the command's
    assert {t for t, *_ in package_imports("")} >= {"api", "config"}  # tinylm/__init__'s import_module(name)
    assert ("decode", "evals.decode") == ("decode", _resolve("tinylm.evals.decode"))
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": set(), "d": {"d"}}
    assert sorted(map(sorted, _strongly_connected(graph))) == [["a", "b"], ["c"], ["d"]]


def test_the_import_scan_sees_private_names(tmp_path, monkeypatch):
    fake = tmp_path / "fake.py"
    fake.write_text("from tinylm import tune\nfrom tinylm.train import _x\n\n\ndef f():\n    return tune._py(1)\n")
    monkeypatch.setitem(MODULES, "zz_fake", fake)
    imports = set(package_imports("zz_fake"))
    assert ("tune", "", "_py", False) in imports  # tune._py(...) read via the module
    assert ("train", "_x", "", False) in imports  # from tinylm.train import _x


def test_imports_follow_the_layer_order():
    assert not set(MODULES) - set(LAYER), "every module needs a layer first"
    found = sorted(import_violations())
    assert not found, ("imports against the order config/budget/model -> parts -> evals -> train -> tracking -> "
                       f"sweeps -> analysis -> api -> CLIs (tests/test_layering.py LAYERS): {found}")


def test_scripts_import_library_modules_never_a_main():
    """Sweep scripts, benchmarks and tools import a library module (``tinylm.sweep.cli``), never a ``__main__``."""
    root = PKG.parent
    offenders = []
    for path in sorted([*root.glob("sweeps/*.py"), *root.glob("bench/*.py"), *root.glob("scripts/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("tinylm") and
                          n.endswith("__main__")]
    assert len(list(root.glob("sweeps/*.py"))) >= 20 and not offenders, offenders
