"""``nashir morph`` and ``nashir passes``: results, flag order, listing, and bad input (exit 2, the
input untouched, nothing written)."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest
from test_passes_nets import plain_net

import nashir
from nashir.cli import main
from nashir.passes import base as B
from nashir.passes import check_preservation


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.onnx"
    nashir.save(plain_net(seed=1), p)
    return p


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def listing(folder):
    return sorted(os.listdir(folder))


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_morph_writes_a_preserving_model(model, capsys):
    before = digest(model)
    code, out, err = run(["morph", model, "--widen", "c2", "--width", "9", "--deepen", "r1", "--kernel", "5",
                          "--skip-add", "r1:r3", "--skip-concat", "r1:r2", "--widen-kernel", "c3",
                          "--split", "random", "--check"], capsys)
    assert code == 0, err
    assert digest(model) == before
    dst = model.with_name("m.morphed.onnx")
    assert dst.exists() and f"wrote {dst}" in out
    assert "check: max |diff| =" in out
    a, b = nashir.load(model), nashir.load(dst)
    assert b.value("c2").shape[1] == 9 and b.node("c3").attrs["kernel_shape"] == [5, 5]
    assert check_preservation(a, b).ok


def test_flags_apply_in_the_order_given(model, tmp_path, capsys):
    out1 = tmp_path / "a.onnx"
    args = ["morph", model, "--deepen", "r1", "--widen", "conv_0", "--width", "7", "-o", out1]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert out.index("net2deeper") < out.index("net2wider")
    assert nashir.load(out1).value("conv_0").shape[1] == 7
    # the other way round, conv_0 does not exist yet when --widen runs
    args = ["morph", model, "--widen", "conv_0", "--deepen", "r1", "-o", tmp_path / "b.onnx"]
    code, out, err = run(args, capsys)
    assert code == 2 and "--widen conv_0" in err
    assert not (tmp_path / "b.onnx").exists()


def test_width_and_factor_belong_to_the_widen_before_them(model, tmp_path, capsys):
    dst = tmp_path / "w.onnx"
    code, _, err = run(["morph", model, "--widen", "c1", "--width", "8", "--widen", "c2", "--factor", "1.5",
                        "--widen", "c3", "-o", dst], capsys)
    assert code == 0, err
    g = nashir.load(dst)
    assert [g.value(n).shape[1] for n in ("c1", "c2", "c3")] == [8, 9, 12]  # c3: default factor 2


def test_names_may_be_output_values(tmp_path, capsys):
    from nashir import GraphBuilder

    b = GraphBuilder("n", (3, 5, 5), seed=0)
    w = b.graph.add_const(np.ones((2, 3, 3, 3), np.float32), "w")
    h = b.graph.add_node("Conv", [b.input, w], {"pads": [1, 1, 1, 1]}, name="convnode",
                         outputs=["feat"]).output
    g = b.build(b.gemm(b.flatten(b.relu(h)), 2))
    p = tmp_path / "n.onnx"
    nashir.save(g, p)
    code, _, err = run(["morph", p, "--widen", "feat", "--width", "4"], capsys)
    assert code == 0, err
    assert nashir.load(tmp_path / "n.morphed.onnx").value("feat").shape[1] == 4


def test_list_sites_writes_nothing(model, capsys):
    files = listing(model.parent)
    code, out, _ = run(["morph", model, "--list-sites"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "net2wider\tc2" in lines and "add-skip\tr1->r3" in lines and "widen-kernel\tc1" in lines
    assert "net2deeper\tr2" in lines
    assert listing(model.parent) == files


def test_passes_lists_builtins(capsys):
    code, out, _ = run(["passes"], capsys)
    assert code == 0
    for name in ("net2wider", "net2deeper", "add-skip", "concat-skip", "widen-kernel"):
        assert any(line.startswith(name) and "exact" in line for line in out.splitlines())


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    saved, src = dict(B._REGISTRY), dict(B._SOURCES)
    (tmp_path / "nashir_cli_plugin.py").write_text(
        "import numpy as np\n"
        "from nashir.passes import PassResult, NodeSite, register_pass\n"
        "from nashir.passes.widen_kernel import WidenKernel\n"
        "@register_pass\n"
        "class Perturb(WidenKernel):\n"
        "    name = 'perturb-test'\n"
        "    exact = False\n"
        "    description = 'scales a conv kernel (not exact)'\n"
        "    def rewrite(self, graph, site, rng):\n"
        "        w = graph.node(site.node).inputs[1]\n"
        "        graph.set_const(w, w.const * 1.5)\n"
        "        return PassResult(graph, True, {})\n"
        "@register_pass\n"
        "class PerturbClaimsExact(Perturb):\n"
        "    name = 'perturb-exact-test'\n"
        "    exact = True\n"
    )
    (tmp_path / "nashir_cli_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("nashir_cli_plugin", None)
    B._REGISTRY.clear()
    B._REGISTRY.update(saved)
    B._SOURCES.clear()
    B._SOURCES.update(src)


def test_passes_lists_plugins(plugin_dir, capsys):
    code, out, _ = run(["passes", "--plugin", "nashir_cli_plugin"], capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("perturb-test"))
    assert "approx" in line and "nashir_cli_plugin" in line


def test_check_failure_exits_1_and_writes_nothing(model, plugin_dir, capsys):
    before, files = digest(model), listing(model.parent)
    # a pass that claims to be exact and is not: --check fails
    code, out, err = run(["morph", model, "--plugin", "nashir_cli_plugin", "--apply", "perturb-exact-test:c2",
                          "--check"], capsys)
    assert code == 1
    assert "differs" in err and "nothing was written" in err and "Traceback" not in err
    assert digest(model) == before and listing(model.parent) == files


def test_check_reports_an_approximate_pass_and_writes(model, plugin_dir, capsys):
    # exact = False (issue 15): --check reports the difference instead of failing, and says so
    code, out, err = run(["morph", model, "--plugin", "nashir_cli_plugin", "--apply", "perturb-test:c2",
                          "--check"], capsys)
    assert code == 0, err
    assert "check: max |diff| = " in out and "reported, not failed" in out and "perturb-test@c2" in out
    assert (model.parent / "m.morphed.onnx").is_file()


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,message", [
    (["--widen", "c9"], ["--widen c9", "no node or output value named 'c9'", "did you mean", "'c1'"]),
    (["--widen", "fc"], ["--widen fc", "net2wider does not apply", "'fc' is a graph output"]),
    (["--widen", "r1"], ["only Conv, ConvTranspose and Gemm"]),
    (["--widen", "c2", "--width", "6"], ["new width 6 is not larger than the current 6 channels of 'c2'"]),
    (["--widen", "c2", "--width", "3"], ["not larger"]),
    (["--skip-add", "r2:r1"], ["--skip-add r2:r1", "'r2' is not an ancestor of 'r1'"]),
    (["--skip-concat", "r3:r1"], ["not an ancestor"]),
    (["--skip-add", "r1:x9"], ["'x9'"]),
    (["--deepen", "r1", "--kernel", "4"], ["--deepen r1", "odd"]),
    (["--width", "8", "--widen", "c1"], ["--width 8 must follow the --widen NAME"]),
    (["--widen", "c1", "--width", "8", "--factor", "2"], ["either --width or --factor"]),
    (["--apply", "net2deeper"], ["expected PASS:SITE"]),
    (["--apply", "nope:c1"], ["no pass named 'nope'"]),
    (["--plugin", "nashir_no_such_mod", "--widen", "c1"], ["plugin module 'nashir_no_such_mod'"]),
    ([], ["nothing to do"]),
])
def test_bad_input_exits_2_untouched_nothing_written(model, capsys, args, message):
    before, files = digest(model), listing(model.parent)
    code, out, err = run(["morph", model, *args], capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    for m in message:
        assert m in err
    assert digest(model) == before
    assert listing(model.parent) == files


def test_spatial_sizes_no_pooling_can_match(tmp_path, capsys):
    from nashir import GraphBuilder

    b = GraphBuilder("nm", (3, 6, 6), seed=0)
    r1 = b.relu(b.conv(b.input, 3, name="c1"), name="r1")
    r2 = b.relu(b.conv(r1, 3, pads=0, name="c2"), name="r2")  # 6 -> 4
    p = tmp_path / "nm.onnx"
    nashir.save(b.build(b.gemm(b.flatten(b.conv(r2, 2)), 2)), p)
    before, files = digest(p), listing(tmp_path)
    for flag in ("--skip-add", "--skip-concat"):
        code, _, err = run(["morph", p, flag, "r1:r2"], capsys)
        assert code == 2 and "differ by no factor that pooling" in err and "[6, 6]" in err
    assert digest(p) == before and listing(tmp_path) == files


def test_plugin_that_fails_to_import(model, plugin_dir, capsys):
    before, files = digest(model), listing(model.parent)
    code, _, err = run(["morph", model, "--plugin", "nashir_cli_broken", "--widen", "c1"], capsys)
    assert code == 2 and "plugin module 'nashir_cli_broken' could not be imported" in err
    assert "broken on purpose" in err
    assert digest(model) == before and listing(model.parent) == files
    code, _, err = run(["passes", "--plugin", "nashir_cli_broken"], capsys)
    assert code == 2


def test_output_must_not_be_the_input(model, capsys):
    before = digest(model)
    code, _, err = run(["morph", model, "--widen", "c1", "-o", model], capsys)
    assert code == 2 and "is the input model" in err
    assert digest(model) == before


def test_missing_model_and_missing_output_folder(tmp_path, model, capsys):
    code, _, err = run(["morph", tmp_path / "nope.onnx", "--widen", "c1"], capsys)
    assert code == 2 and "nope.onnx" in err
    code, _, err = run(["morph", model, "--widen", "c1", "-o", tmp_path / "no" / "x.onnx"], capsys)
    assert code == 2 and "does not exist" in err


# ------------------------------------------------------------------ misbehaving plugins, messages, file modes


@pytest.fixture
def bad_plugins(tmp_path, monkeypatch):
    saved, src = dict(B._REGISTRY), dict(B._SOURCES)
    (tmp_path / "nashir_cli_badplugins.py").write_text(
        "from nashir.passes import register_pass\n"
        "from nashir.passes.widen_kernel import WidenKernel\n"
        "@register_pass\n"
        "class SitesRaise(WidenKernel):\n"
        "    name = 'sites-raise'\n"
        "    def sites(self, graph):\n"
        "        raise ZeroDivisionError('sites broke')\n"
        "class Bomb(WidenKernel):\n"
        "    name = 'factory-raise'\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('factory broke')\n"
        "register_pass(Bomb)\n"
        "@register_pass\n"
        "class BadSite(WidenKernel):\n"
        "    name = 'site-str-raise'\n"
        "    def sites(self, graph):\n"
        "        class S:\n"
        "            def __str__(self):\n"
        "                raise ValueError('no text')\n"
        "        return [S()]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("nashir_cli_badplugins", None)
    B._REGISTRY.clear()
    B._REGISTRY.update(saved)
    B._SOURCES.clear()
    B._SOURCES.update(src)


def test_list_sites_survives_misbehaving_plugins(model, bad_plugins, capsys):
    """Three broken plugins (sites() raises, the factory raises, a site's str() raises): each is warned about
    and every other pass is still listed."""
    before, files = digest(model), listing(model.parent)
    code, out, err = run(["morph", model, "--plugin", "nashir_cli_badplugins", "--list-sites"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "warning: sites-raise: no sites listed, its sites() raised ZeroDivisionError: sites broke" in err
    assert "warning: factory-raise: no sites listed, building it raised RuntimeError: factory broke" in err
    assert "warning: site-str-raise: no sites listed" in err and "no text" in err
    assert "net2wider\tc1" in out and "widen-kernel\tc1" in out
    assert digest(model) == before and listing(model.parent) == files


@pytest.mark.parametrize("args, message", [
    (["--apply", "nosuch:r1"], "--apply nosuch:r1: no pass named 'nosuch'"),
    (["--widen", "c1", "--input-shape", "1,x,8"], "--input-shape '1,x,8' is not a list of positive integers"),
    (["--widen", "c1", "--input-shape", "4,6,6"], "input_shape (4, 6, 6) contradicts input 'input'"),
])
def test_messages_name_what_was_given(model, capsys, args, message):
    before, files = digest(model), listing(model.parent)
    code, _, err = run(["morph", model, *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert digest(model) == before and listing(model.parent) == files


def test_output_folder_that_is_a_file(model, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    before, files = digest(model), listing(tmp_path)
    code, _, err = run(["morph", model, "--widen", "c1", "-o", tmp_path / "afile" / "out.onnx"], capsys)
    assert code == 2 and "afile' is a file, not a folder" in err
    assert digest(model) == before and listing(tmp_path) == files


def test_input_shape_for_a_symbolic_model(tmp_path, capsys):
    import onnx

    from nashir.backends.onnx import model_bytes

    p = tmp_path / "sym.onnx"
    m = onnx.load_from_string(model_bytes(plain_net(seed=1)))
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        d.ClearField("dim_value")
        d.dim_param = name
    p.write_bytes(m.SerializeToString())
    code, _, err = run(["morph", p, "--widen", "c1"], capsys)
    assert code == 2 and "--input-shape" in err
    code, out, err = run(["morph", p, "--widen", "c1", "--input-shape", "3,6,6", "--check"], capsys)
    assert code == 0, err
    assert (tmp_path / "sym.morphed.onnx").exists()


def test_check_on_an_input_too_large_to_check(tmp_path, capsys):
    """A 3 x 8192 x 8192 input: the check would need several GiB, refused before any allocation."""
    from nashir import GraphBuilder

    b = GraphBuilder("big", (3, 8192, 8192), seed=0)
    p = tmp_path / "big.onnx"
    r1 = b.relu(b.conv(b.input, 8, 3, pads=1, name="c1"), name="r1")
    nashir.save(b.build(b.conv(r1, 2, 1, name="c2")), p)
    before, files = digest(p), listing(tmp_path)
    code, _, err = run(["morph", p, "--widen", "c1", "--check"], capsys)
    assert code == 2 and "needs about" in err and "MAX_CHECK_BYTES" in err and "Traceback" not in err
    assert digest(p) == before and listing(tmp_path) == files


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_mode_follows_the_umask(model, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        code, _, err = run(["morph", model, "--widen", "c1", "-o", tmp_path / "out.onnx"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "out.onnx").stat().st_mode & 0o777 == 0o666 & ~umask


def test_opset_and_external_data(model, tmp_path, capsys):
    import onnx

    dst = tmp_path / "o.onnx"
    code, out, err = run(["morph", model, "--widen", "c2", "--opset", "19", "--external-data", "-o", dst],
                         capsys)
    assert code == 0, err
    m = onnx.load(str(dst), load_external_data=False)
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {19}
    assert (tmp_path / "o.onnx.data").exists()
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert check_preservation(nashir.load(model), nashir.load(dst)).ok


@pytest.mark.parametrize("opset", [12, 99])
def test_bad_opset_is_refused_before_any_work(model, tmp_path, capsys, opset):
    before = listing(tmp_path)
    code, out, err = run(["morph", model, "--widen", "c2", "--opset", opset], capsys)
    assert code == 2 and f"--opset {opset}" in err and "pick one in that range" in err
    assert listing(tmp_path) == before


def test_opset_older_than_an_op_is_refused_before_any_morph(tmp_path, capsys):
    """``--opset 13`` on a model with HardSwish (opset 14+) exits 2 before morphing, naming the op and
    the opset to write; nothing is written. ``--opset 14`` works."""
    from nashir import GraphBuilder

    b = GraphBuilder("hsw", input_shape=(3, 6, 6))
    g = b.build(b.conv(b.op("HardSwish", b.conv(b.input, 4, name="c1"), name="hs"), 2, name="c2"))
    src = tmp_path / "h.onnx"
    nashir.save(g, src)
    before = listing(tmp_path)
    code, out, err = run(["morph", src, "--widen", "c1", "--opset", "13"], capsys)
    assert code == 2 and "HardSwish (opset 14+): hs" in err and "write opset 14" in err, err
    assert "net2wider at" not in out and listing(tmp_path) == before
    code, out, err = run(["morph", src, "--widen", "c1", "--opset", "14"], capsys)
    assert code == 0, err


def test_check_on_a_declared_input_of_2_31_squared(tmp_path, capsys):
    """A model declaring input N x 3 x 2**31 x 2**31: refused at import (MAX_INPUT_ELEMENTS), exit 2."""
    import onnx
    from onnx import TensorProto, helper

    from nashir.backends.onnx import model_bytes

    m = onnx.load_from_string(model_bytes(plain_net(seed=1)))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 2**31
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("fc", TensorProto.FLOAT, None))
    p = tmp_path / "huge.onnx"
    p.write_bytes(m.SerializeToString())
    before, files = digest(p), listing(tmp_path)
    code, _, err = run(["morph", p, "--widen", "c1", "--check"], capsys)
    assert code == 2 and "values per sample, above nashir's cap" in err and "Traceback" not in err
    assert digest(p) == before and listing(tmp_path) == files
