"""``normcpp.onnx``: normalization nodes read from small models built with ``onnx.helper``
give the same output as onnxruntime (and as NumPy references where onnxruntime lacks the
feature)."""

from __future__ import annotations

import normcpp as nc
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from normcpp.interop import BatchNormNd
from normcpp.onnx import NormNode, load_norm_nodes, run_node
from onnx import TensorProto, helper, numpy_helper

FLOAT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def make_model(op_type, x_shape, params, attrs=None, *, opset=17, dtype=np.float32,
               declare_shape=True, outputs=("y",), as_constants=False, extra_nodes=(),
               strip_trailing=True):
    """One-node model ``y = op_type(x, *params)``; ``params`` is a list of (name, array or
    None for an absent optional input)."""
    names = ["x"] + [name if arr is not None else "" for name, arr in params]
    while names[-1] == "" and strip_trailing:  # onnxruntime 1.23 crashes on a trailing ""
        names.pop()
    arrays = [(name, arr) for name, arr in params if arr is not None]
    nodes = list(extra_nodes)
    inits = []
    for name, arr in arrays:
        tensor = numpy_helper.from_array(np.asarray(arr), name)
        if as_constants:
            nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            inits.append(tensor)
    nodes.append(helper.make_node(op_type, names, list(outputs), name="norm", **(attrs or {})))
    elem = FLOAT[np.dtype(dtype)]
    shape = list(x_shape) if declare_shape else None
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info(o, elem, None) for o in outputs], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


def run_ort(model, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def tol(dtype):
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    # float attributes are float32 in ONNX: onnxruntime adds float32(1e-3) where the module
    # adds the decimal 1e-3 that the attribute stands for (a 5e-11 relative difference)
    return {"rtol": 1e-9, "atol": 1e-9}


def rand(rng, shape, dtype=np.float32, low=None):
    if low is not None:
        return rng.uniform(low, low + 2.0, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# BatchNormalization


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "cls"), [((6, 3), nc.BatchNorm1d),
                                            ((2, 3, 7), nc.BatchNorm1d),
                                            ((2, 3, 4, 5), nc.BatchNorm2d),
                                            ((2, 3, 2, 3, 4), nc.BatchNorm3d),
                                            ((1, 3, 2, 2, 2, 3), BatchNormNd)])
@pytest.mark.parametrize("opset", [9, 15, 17])
def test_batch_normalization(shape, cls, opset, dtype):
    rng = np.random.default_rng(len(shape) + opset)
    params = [("scale", rand(rng, 3, dtype)), ("B", rand(rng, 3, dtype)),
              ("mean", rand(rng, 3, dtype)), ("var", rand(rng, 3, dtype, low=0.2))]
    model = make_model("BatchNormalization", shape, params,
                       {"epsilon": 1e-3, "momentum": 0.8}, opset=opset, dtype=dtype)
    [node] = load_norm_nodes(model)
    assert isinstance(node, NormNode)
    assert node.op_type == "BatchNormalization" and node.name == "norm"
    assert node.inputs == ("x", "scale", "B", "mean", "var") and node.outputs == ("y",)
    assert node.opset == opset and node.attributes["momentum"] == pytest.approx(0.8)
    m = node.module
    assert type(m) is cls and not m.training and m.dtype == dtype
    assert m.eps == 1e-3 and m.momentum == pytest.approx(0.2)
    np.testing.assert_array_equal(m.running_var, params[3][1])
    x = rand(rng, shape, dtype) * 2 + 1
    np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(dtype))


def test_batch_normalization_unknown_rank():
    rng = np.random.default_rng(1)
    params = [(n, rand(rng, 4, low=0.5)) for n in ("s", "b", "m", "v")]
    model = make_model("BatchNormalization", None, params, declare_shape=False)
    [node] = load_norm_nodes(model)
    assert type(node.module) is BatchNormNd  # accepts any rank
    for shape in [(3, 4), (2, 4, 5), (2, 4, 3, 3)]:
        x = rand(rng, shape)
        np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(np.float32))


def test_batch_normalization_training_mode():
    """``training_mode=1`` normalizes with the batch statistics and updates the running ones
    (momentum Keras-style in ONNX, PyTorch-style in the module)."""
    rng = np.random.default_rng(2)
    mean, var = rand(rng, 3, np.float64), rand(rng, 3, np.float64, low=0.5)
    params = [("s", rand(rng, 3, np.float64)), ("b", rand(rng, 3, np.float64)), ("m", mean),
              ("v", var)]
    model = make_model("BatchNormalization", (4, 3, 5), params,
                       {"training_mode": 1, "momentum": 0.7}, opset=15, dtype=np.float64,
                       outputs=("y", "running_mean", "running_var"))
    [node] = load_norm_nodes(model)
    assert node.module.training
    x = rand(rng, (4, 3, 5), np.float64)
    y = run_node(node, x)
    bm = x.mean(axis=(0, 2))
    bv = x.var(axis=(0, 2))
    ref = (x - bm[:, None]) / np.sqrt(bv[:, None] + 1e-5) * params[0][1][:, None] \
        + params[1][1][:, None]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(node.module.running_mean, mean * 0.7 + bm * 0.3, rtol=1e-6)
    n = x.size // 3
    np.testing.assert_allclose(node.module.running_var, var * 0.7 + bv * n / (n - 1) * 0.3,
                               rtol=1e-6)


def test_batch_normalization_spatial_zero_refused():
    rng = np.random.default_rng(3)
    params = [(n, rand(rng, 3, low=0.5)) for n in ("s", "b", "m", "v")]
    model = make_model("BatchNormalization", (2, 3, 4), params, {"spatial": 0}, opset=7)
    with pytest.raises(ValueError, match="spatial=0"):
        load_norm_nodes(model)


# --------------------------------------------------------------------------------------------
# InstanceNormalization


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "cls"), [((2, 3, 9), nc.InstanceNorm1d),
                                            ((2, 3, 4, 5), nc.InstanceNorm2d),
                                            ((2, 3, 2, 3, 4), nc.InstanceNorm3d)])
def test_instance_normalization(shape, cls, dtype):
    rng = np.random.default_rng(len(shape))
    params = [("scale", rand(rng, 3, dtype)), ("B", rand(rng, 3, dtype))]
    model = make_model("InstanceNormalization", shape, params, {"epsilon": 1e-4}, dtype=dtype)
    [node] = load_norm_nodes(model)
    assert type(node.module) is cls and node.module.eps == 1e-4 and node.module.affine
    x = rand(rng, shape, dtype) * 3 - 1
    if dtype == np.float64:  # onnxruntime's InstanceNormalization is float32 only
        axes = tuple(range(2, x.ndim))
        cshape = (1, 3) + (1,) * (x.ndim - 2)
        ref = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(
            x.var(axis=axes, keepdims=True) + 1e-4) * params[0][1].reshape(cshape) \
            + params[1][1].reshape(cshape)
    else:
        ref = run_ort(model, x)
    np.testing.assert_allclose(run_node(node, x), ref, **tol(dtype))


def test_instance_normalization_unknown_rank():
    rng = np.random.default_rng(4)
    params = [("scale", rand(rng, 2)), ("B", rand(rng, 2))]
    model = make_model("InstanceNormalization", None, params, declare_shape=False)
    [node] = load_norm_nodes(model)
    for shape in [(2, 2, 7), (2, 2, 3, 4), (1, 2, 2, 3, 2)]:
        x = rand(rng, shape)
        y = run_node(node, x)
        assert y.shape == x.shape
        np.testing.assert_allclose(y, run_ort(model, x), **tol(np.float32))


# --------------------------------------------------------------------------------------------
# GroupNormalization


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize(("channels", "groups"), [(6, 3), (6, 1), (6, 6), (4, 2)])
@pytest.mark.parametrize("shape_tail", [(5,), (4, 3)])
def test_group_normalization(opset, channels, groups, shape_tail):
    rng = np.random.default_rng(channels * 10 + groups + opset)
    k = channels if opset >= 21 else groups  # per channel from opset 21, per group before
    params = [("scale", rand(rng, k)), ("bias", rand(rng, k))]
    shape = (2, channels) + shape_tail
    model = make_model("GroupNormalization", shape, params,
                       {"num_groups": groups, "epsilon": 1e-3}, opset=opset)
    [node] = load_norm_nodes(model)
    m = node.module
    assert type(m) is nc.GroupNorm and m.num_groups == groups and m.num_channels == channels
    assert m.eps == 1e-3
    if opset < 21:
        np.testing.assert_array_equal(m.weight, np.repeat(params[0][1], channels // groups))
    x = rand(rng, shape) * 2 + 3
    np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(np.float32))


def test_group_normalization_opset18_needs_channels():
    rng = np.random.default_rng(5)
    params = [("scale", rand(rng, 2)), ("bias", rand(rng, 2))]
    model = make_model("GroupNormalization", None, params, {"num_groups": 2}, opset=18,
                       declare_shape=False)
    with pytest.raises(ValueError, match="channel count"):
        load_norm_nodes(model)
    model = make_model("GroupNormalization", (2, 4, 3), params, {"num_groups": 3}, opset=18)
    with pytest.raises(ValueError, match="num_groups=3"):
        load_norm_nodes(model)
    # opset 21 carries per-channel values: no shape needed
    params = [("scale", rand(rng, 4)), ("bias", rand(rng, 4))]
    model = make_model("GroupNormalization", None, params, {"num_groups": 2}, opset=21,
                       declare_shape=False)
    [node] = load_norm_nodes(model)
    assert node.module.num_channels == 4


# --------------------------------------------------------------------------------------------
# LayerNormalization


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((4, 8), -1), ((2, 3, 8), -1), ((2, 3, 4, 5), -2),
                                             ((2, 3, 4, 5), 1), ((2, 3, 7), 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(shape, axis, with_bias, dtype):
    rng = np.random.default_rng(len(shape) + axis + 10)
    norm_shape = shape[axis:]
    params = [("Scale", rand(rng, norm_shape, dtype)),
              ("B", rand(rng, norm_shape, dtype) if with_bias else None)]
    model = make_model("LayerNormalization", shape, params, {"axis": axis, "epsilon": 1e-4},
                       dtype=dtype)
    [node] = load_norm_nodes(model)
    m = node.module
    assert type(m) is nc.LayerNorm and m.normalized_shape == tuple(norm_shape)
    assert (m.bias is not None) == with_bias and m.eps == 1e-4 and m.dtype == dtype
    x = rand(rng, shape, dtype) * 2 - 1
    np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(dtype))


def test_layer_normalization_broadcast_scale_and_default_axis():
    rng = np.random.default_rng(6)
    shape = (2, 3, 4, 5)
    params = [("Scale", rand(rng, (1, 5))), ("B", rand(rng, (5,)))]
    model = make_model("LayerNormalization", shape, params, {"axis": 2})
    [node] = load_norm_nodes(model)
    assert node.module.normalized_shape == (4, 5) and node.module.eps == 1e-5
    x = rand(rng, shape)
    np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(np.float32))
    # no shape information: Scale's shape is the normalized shape
    params = [("Scale", rand(rng, (4, 5))), ("B", None)]
    model = make_model("LayerNormalization", None, params, {"axis": -2}, declare_shape=False)
    [node] = load_norm_nodes(model)
    assert node.module.normalized_shape == (4, 5)
    np.testing.assert_allclose(run_node(node, x), run_ort(model, x), **tol(np.float32))


def test_layer_normalization_explicit_empty_bias():
    rng = np.random.default_rng(11)
    params = [("Scale", rand(rng, (5,))), ("B", None)]
    model = make_model("LayerNormalization", (3, 5), params, strip_trailing=False)
    [node] = load_norm_nodes(model)
    assert node.inputs == ("x", "Scale", "") and node.module.bias is None
    x = rand(rng, (3, 5))
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * params[0][1]
    np.testing.assert_allclose(run_node(node, x), ref, **tol(np.float32))


def test_layer_normalization_unreadable_shape():
    rng = np.random.default_rng(7)
    params = [("Scale", rand(rng, (5,)))]
    model = make_model("LayerNormalization", None, params, {"axis": -2}, declare_shape=False)
    with pytest.raises(ValueError, match="normalized dims"):
        load_norm_nodes(model)


# --------------------------------------------------------------------------------------------
# whole models, sources, errors


def test_several_nodes_constants_file_and_bytes(tmp_path):
    """Norm nodes among other nodes, parameters from Constant nodes, loaded from a file, from
    bytes and from a ModelProto; each node runs on its own input as onnxruntime computes."""
    rng = np.random.default_rng(8)
    bn_params = {n: rand(rng, 4, low=0.5) for n in ("s", "b", "m", "v")}
    ln_scale = rand(rng, (6,))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["h"], name="bn",
                         epsilon=1e-4),
        helper.make_node("LayerNormalization", ["h", "ls"], ["y"], name="ln"),
    ]
    consts = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a, n))
              for n, a in [*bn_params.items(), ("ls", ln_scale)]]
    graph = helper.make_graph(
        consts + nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=10)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    x = rand(rng, (2, 4, 3, 6))
    expected = run_ort(model, x)
    for source in (path, str(path), path.read_bytes(), model):
        bn, ln = load_norm_nodes(source)
        assert [bn.name, ln.name] == ["bn", "ln"]
        assert type(bn.module) is nc.BatchNorm2d and bn.module.eps == 1e-4
        assert ln.inputs == ("h", "ls") and ln.module.bias is None
        y = run_node(ln, run_node(bn, np.maximum(x, 0)))
        np.testing.assert_allclose(y, expected, **tol(np.float32))


def test_no_norm_nodes():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=10)
    assert load_norm_nodes(model) == []


def test_errors():
    rng = np.random.default_rng(9)
    with pytest.raises(TypeError, match="path_or_model"):
        load_norm_nodes(42)  # type: ignore[arg-type]
    # a scale that is a graph input, not a constant
    graph = helper.make_graph(
        [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="in")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rand(rng, 2), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=10)
    with pytest.raises(ValueError, match="not an initializer or a Constant"):
        load_norm_nodes(model)
    params = [("scale", rand(rng, 3)), ("B", rand(rng, 3))]
    [node] = load_norm_nodes(make_model("InstanceNormalization", (2, 3, 4), params))
    with pytest.raises(TypeError, match="NormNode"):
        run_node("node", np.ones((2, 3, 4), np.float32))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ndarray"):
        run_node(node, [[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_features=3"):
        run_node(node, np.ones((2, 4, 4), np.float32))
