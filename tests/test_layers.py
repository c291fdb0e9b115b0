"""The dependency direction between nashir's layers (docs/architecture.md), checked on the source.

Layers, bottom to top: core (``nashir`` IR, ops, builder, errors, data) <- passes (``nashir.passes``)
and backends (``nashir.backends.*``, core only) <- search (``nashir.search``) <- CLI (``nashir.cli``,
``nashir.commands``). A module may import, at module level, only its own layer and those below.
Upward references are allowed only inside functions in the top-level ``nashir/__init__.py``
(lazy convenience wrappers such as ``nashir.load``). torch and onnxruntime are imported at module
level only inside ``nashir.backends``; the core modules never import torch at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"nashir": "nashir", "passes": "nashir.passes", "backends": "nashir.backends"}

RANK = {"core": 0, "passes": 1, "backends": 1, "search": 2, "cli": 3}
HEAVY = {"torch", "onnxruntime"}
CORE_NO_TORCH_EVER = {"nashir.ir", "nashir.ops", "nashir.builder", "nashir.errors"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def layer(mod: str) -> str | None:
    if mod.startswith("nashir.passes"):
        return "passes"
    if mod.startswith("nashir.backends"):
        return "backends"
    if mod.startswith("nashir.search"):
        return "search"
    if mod == "nashir.cli" or mod.startswith("nashir.commands"):
        return "cli"
    if mod == "nashir" or mod.startswith("nashir."):
        return "core"
    return None


def _imports(path: Path, modname: str):
    """Yield (imported module, lineno, at_module_level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"

    def walk(node, top):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, top
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = modname.split(".") if is_pkg else modname.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                yield target, child.lineno, top
                for a in child.names:  # `from nashir import passes` names a submodule
                    if layer(f"{target}.{a.name}") not in (None, "core"):
                        yield f"{target}.{a.name}", child.lineno, top
            else:
                yield from walk(child, inner)

    yield from walk(tree, True)


MODULES = _modules()


def test_the_scan_sees_the_tree():
    assert {"nashir.ir", "nashir.ops", "nashir.passes", "nashir.backends"} <= set(MODULES)
    found = list(_imports(MODULES["nashir.ir"], "nashir.ir"))
    assert ("nashir.errors", True) in [(m, top) for m, _, top in found]


def violations(mod: str, path: Path) -> list[str]:
    """Every import of ``path`` (module ``mod``) that breaks the layering rules, as readable lines."""
    mine = layer(mod)
    bad = []
    for target, line, top in _imports(path, mod):
        root = target.split(".")[0]
        if root in HEAVY and mod in CORE_NO_TORCH_EVER:
            bad.append(f"line {line}: imports {target} (the core never imports {root})")
        if not top:
            continue
        if root in HEAVY and mine != "backends":
            bad.append(f"line {line}: imports {target} at module level (import it inside the function "
                       "that needs it; `import nashir` must stay free of torch and onnxruntime)")
        theirs = layer(target)
        if theirs is None or theirs == mine:
            continue
        sideways = mine in ("passes", "backends") and theirs in ("passes", "backends")
        if RANK[theirs] > RANK[mine] or sideways:
            bad.append(f"line {line}: {mine} module imports {target} ({theirs}); dependencies point "
                       "down only")
    return bad


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_level_imports_point_down(mod):
    bad = violations(mod, MODULES[mod])
    assert not bad, f"{MODULES[mod].relative_to(ROOT)}:\n  " + "\n  ".join(bad)


def test_the_rules_catch_violations(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import numpy\nimport torch\nfrom nashir.search import nash\nfrom nashir import passes\n"
        "from nashir.ir import Graph\n"
        "def lazy():\n    import onnxruntime\n    from nashir.cli import main\n"
    )
    got = violations("nashir.ops", f)
    assert any("imports torch (the core never" in b for b in got)
    assert any("line 2: imports torch at module level" in b for b in got)
    assert any("imports nashir.search (search)" in b for b in got)
    assert any("imports nashir.passes (passes)" in b for b in got)
    assert any("line 7: imports onnxruntime (the core never" in b for b in got)
    assert not any("line 5" in b or "line 8" in b or "numpy" in b for b in got)
    assert any("sideways" in b or "nashir.backends" in b
               for b in violations("nashir.passes.x", _write(tmp_path, "from nashir.backends import onnx\n")))
    assert violations("nashir.search.x", _write(tmp_path, "from nashir.passes import base\n")) == []


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "w.py"
    f.write_text(text)
    return f


def test_core_modules_never_reach_up_even_lazily():
    for mod in sorted(m for m in MODULES if layer(m) == "core" and m != "nashir"):
        for target, line, _ in _imports(MODULES[mod], mod):
            theirs = layer(target)
            assert theirs in (None, "core"), f"{mod} line {line} imports {target}"
