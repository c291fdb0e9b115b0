"""Runs the code of docs/writing-passes.md in order: its files are written, its Python blocks run,
its ``$ nashir ...`` / ``$ python ...`` lines executed; every command must succeed."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import nashir
from nashir.cli import main
from nashir.passes import base as B
from nashir.passes import check_preservation

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-passes.md"


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def test_tutorial_code_runs(tmp_path, monkeypatch, capsys):
    saved, src = dict(B._REGISTRY), dict(B._SOURCES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = {"files": [], "python": 0, "commands": []}
    try:
        for lang, code in blocks(DOC.read_text()):
            if lang == "python":
                first = code.splitlines()[0]
                m = re.match(r"# file: (\S+)", first)
                if m:
                    (tmp_path / m.group(1)).write_text(code)
                    ran["files"].append(m.group(1))
                else:
                    exec(compile(code, str(DOC), "exec"), {"__name__": "tutorial"})
                    ran["python"] += 1
            elif lang == "console":
                for line in code.splitlines():
                    if not line.startswith("$ "):
                        continue
                    argv = shlex.split(line[2:])
                    if argv[0] == "python":
                        runpy.run_path(str(tmp_path / argv[1]), run_name="__main__")
                    else:
                        assert argv[0] == "nashir"
                        code_ = main(argv[1:])
                        assert code_ == 0, (line, capsys.readouterr().err)
                    ran["commands"].append(line)
        out = capsys.readouterr().out
    finally:
        sys.modules.pop("nashir_scale", None)
        B._REGISTRY.clear()
        B._REGISTRY.update(saved)
        B._SOURCES.clear()
        B._SOURCES.update(src)
    assert ran["files"] == ["nashir_scale.py", "make_model.py"]
    assert ran["python"] == 1 and len(ran["commands"]) == 4
    # what the tutorial says happened
    assert any(line.startswith("insert-scale") and "exact" in line for line in out.splitlines())
    assert "insert-scale\tr1" in out and "insert-scale\tr2" in out
    g, scaled = nashir.load(tmp_path / "model.onnx"), nashir.load(tmp_path / "scaled.onnx")
    mul = scaled.node("r1_scale")
    assert mul.op_type == "Mul" and mul.inputs[1].const.shape == (16, 1, 1)  # widened with c1
    assert scaled.value("c1").shape[1] == 16
    assert check_preservation(g, scaled).ok
    assert "{'node': 'r2_scale', 'channels': 16}" in out
