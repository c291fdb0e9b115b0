"""The ``nashir`` entry point itself (nashir/cli.py): how any error reaches the user."""

from __future__ import annotations

import hashlib
import os

import pytest
from test_passes_nets import plain_net

import nashir
from nashir.cli import main


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.onnx"
    nashir.save(plain_net(seed=1), p)
    return p


def test_memory_error_while_reading_is_one_line_exit_1(model, capsys, monkeypatch):
    from nashir.backends import onnx as B

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(B, "load", boom)
    before = _digest(model)
    assert main(["show", str(model)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory in `nashir show` (MemoryError)")
    assert "Traceback" not in err
    assert _digest(model) == before


def test_memory_error_while_writing_leaves_no_partial_output(model, tmp_path, capsys, monkeypatch):
    """The output's temp file is half-written when memory runs out: it is removed, the target never made."""
    from nashir.backends.onnx import exporter

    real = exporter._write_temp

    class Boom(list):
        def __iter__(self):
            yield b"partial"
            raise MemoryError

    monkeypatch.setattr(exporter, "_write_temp", lambda path, data: real(path, Boom([data])))
    before, listing = _digest(model), sorted(os.listdir(tmp_path))
    assert main(["morph", str(model), "--widen", "c1", "-o", str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory in `nashir morph`") and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == listing
    assert _digest(model) == before


def test_memory_error_with_debug_shows_the_traceback(model, monkeypatch):
    from nashir.backends import onnx as B

    monkeypatch.setenv("NASHIR_DEBUG", "1")
    monkeypatch.setattr(B, "load", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        main(["show", str(model)])


def test_os_error_the_checks_did_not_foresee_is_one_line_exit_1(model, tmp_path, capsys, monkeypatch):
    """``nashir report RUN -o /proc/x`` as root passes the writability check (root may write /proc), then
    mkdir fails with ENOENT: that was a FileNotFoundError traceback."""
    from nashir.search import report as R

    def boom(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", "/proc/x")

    monkeypatch.setattr(R, "write_report", boom)
    run = tmp_path / "run"
    run.mkdir()
    assert main(["report", str(run), "-o", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "error: cannot access /proc/x: No such file or directory (FileNotFoundError)" in err
