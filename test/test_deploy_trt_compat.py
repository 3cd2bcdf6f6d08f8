"""The TensorRT compatibility check on small hand-made graphs: each rule catches what it should and only that."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from seg_perception.cli import main as cli_main
from seg_perception.deploy.trt_compat import check_onnx, load_tables, select_version

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, elem=F, shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def reasons(report):
    return " | ".join(str(p) for p in report.problems)


def test_tables_hold_the_documented_facts():
    tables = load_tables()
    assert {"8.6", "10.0", "10.1", "10.15"} <= set(tables)
    # Facts as written in onnx-tensorrt's docs/operators.md for those releases.
    assert tables["8.6"]["ops"]["Hardmax"][0] is False and tables["10.15"]["ops"]["Hardmax"][0] is True
    assert tables["8.6"]["opset_max"] == 17 and tables["10.15"]["opset_max"] == 24
    assert tables["10.15"]["ops"]["Unique"][0] is False


def test_version_selection():
    assert select_version("latest") == "10.15"
    assert select_version("10.3") == "10.1"  # newest table not newer than the request
    assert select_version("10.0") == "10.0"
    assert select_version("10.99") == "10.15"
    with pytest.raises(ValueError, match="no op table for TensorRT 9.2"):
        select_version("9.2")
    with pytest.raises(ValueError, match="look like"):
        select_version("ten")


def test_clean_graph_passes_and_counts_ops():
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
              [vi("x")], [vi("y")])
    report = check_onnx(m)
    assert report.ok, report.describe()
    assert report.op_counts == {"Relu": 1, "Sigmoid": 1}


def test_op_support_depends_on_the_version():
    m = model([helper.make_node("Hardmax", ["x"], ["y"], axis=1)], [vi("x")], [vi("y")])
    assert "Hardmax 'y': not supported" in reasons(check_onnx(m, "8.6"))
    assert check_onnx(m, "10.15").ok


def test_data_dependent_output_size_unless_declared():
    m = model([helper.make_node("NonZero", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["y"], to=F)],
              [vi("x")], [vi("y", F, (4, "n"))])
    strict = check_onnx(m)
    assert [p.op for p in strict.problems] == ["NonZero"] and "data-dependent" in reasons(strict)
    relaxed = check_onnx(m, allow_data_dependent=True)
    assert relaxed.ok and "data-dependent" in str(relaxed.warnings[0])


def test_int64_graph_output_is_a_problem():
    m = model([helper.make_node("ArgMax", ["x"], ["y"], axis=1)], [vi("x")], [vi("y", I64, (1, 1, 8, 8))])
    report = check_onnx(m)
    assert not report.ok and "graph output is INT64" in reasons(report)


def test_uint8_may_only_feed_a_cast():
    u8 = TensorProto.UINT8
    bad = model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                 helper.make_node("Cast", ["t"], ["y"], to=F)], [vi("x", u8, (1, 8, 8, 3))], [vi("y")])
    assert "UINT8" in reasons(check_onnx(bad))
    good = model([helper.make_node("Cast", ["x"], ["c"], to=F),
                  helper.make_node("Transpose", ["c"], ["y"], perm=[0, 3, 1, 2])], [vi("x", u8, (1, 8, 8, 3))],
                 [vi("y")])
    assert check_onnx(good).ok


def test_resize_sizes_from_shapes_pass_but_from_values_fail():
    # sizes = Shape(other): shape-derived, TensorRT resolves it at build time.
    shape_based = model([helper.make_node("Shape", ["other"], ["s"]),
                         helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="linear")],
                        [vi("x"), vi("other", F, (1, 3, 16, 16))], [vi("y", F, (1, 3, 16, 16))])
    assert check_onnx(shape_based).ok, check_onnx(shape_based).describe()
    # sizes computed from a tensor's values (Cast of data): data-dependent.
    value_based = model([helper.make_node("Cast", ["v"], ["s"], to=I64),
                         helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="linear")],
                        [vi("x"), vi("v", F, (4,))], [vi("y", F, (1, 3, 16, 16))])
    report = check_onnx(value_based)
    assert "sizes (input 3" in reasons(report) and "data-dependent" in reasons(report)


def test_resize_modes_checked_against_the_table():
    m = model([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic")], [vi("x")],
              [vi("y", F, (1, 3, 16, 16))], [const("sc", [1, 1, 2, 2], np.float32)])
    assert "mode='cubic'" in reasons(check_onnx(m))


def test_custom_domain_needs_a_plugin():
    node = helper.make_node("MultiScaleDeformableAttn", ["x"], ["y"], domain="mmdeploy")
    graph = helper.make_graph([node], "g", [vi("x")], [vi("y")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mmdeploy", 1)])
    assert "plugin" in reasons(check_onnx(m))


def test_opset_outside_range():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")], opset=18)
    assert "opset 18 is outside" in reasons(check_onnx(m, "8.6"))
    assert check_onnx(m, "10.15").ok


def test_constant_input_restriction_uses_the_versions_wording():
    # 8.6: "`axes` must be an initializer"; 10.15: "`axes` must be resolvable to a constant".
    # axes = Sub(initializer, initializer) is constant but not an initializer.
    m = model([helper.make_node("Sub", ["a", "b"], ["axes"]), helper.make_node("Squeeze", ["x", "axes"], ["y"])],
              [vi("x", F, (1, 3, 1, 8))], [vi("y", F, (1, 3, 8))], [const("a", [3]), const("b", [1])])
    assert "must be a constant" in reasons(check_onnx(m, "8.6"))
    assert check_onnx(m, "10.15").ok
    # axes from a tensor's values is never a constant.
    m = model([helper.make_node("Cast", ["v"], ["axes"], to=I64), helper.make_node("Squeeze", ["x", "axes"], ["y"])],
              [vi("x", F, (1, 3, 1, 8)), vi("v", F, (1,))], [vi("y", F, (1, 3, 8))])
    assert "must be a constant" in reasons(check_onnx(m, "10.15"))


def test_topk_k_limit():
    m = model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)], [vi("x", F, (1, 5000))],
              [vi("v", F, (1, 4000)), vi("i", I64, (1, 4000))], [const("k", [4000])])
    report = check_onnx(m, "10.15")
    assert "K=4000" in reasons(report)


def test_cli_exit_codes(tmp_path, capsys):
    import onnx
    good = tmp_path / "good.onnx"
    onnx.save(model([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")]), good)
    bad = tmp_path / "bad.onnx"
    onnx.save(model([helper.make_node("Unique", ["x"], ["y"])], [vi("x")], [vi("y", F, ("n",))]), bad)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00not a model")
    assert cli_main(["check-trt", str(good)]) == 0
    assert cli_main(["check-trt", str(bad), "--trt-version", "10.1"]) == 1
    assert "Unique" in capsys.readouterr().out
    assert cli_main(["check-trt", str(tmp_path / "missing.onnx")]) == 2
    assert cli_main(["check-trt", str(corrupt)]) == 2
    assert "cannot read" in capsys.readouterr().out
