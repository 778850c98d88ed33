"""Read the normalization nodes of an ONNX model into normcpp modules.

:func:`load_norm_nodes` finds every ``BatchNormalization``, ``InstanceNormalization``,
``GroupNormalization`` and ``LayerNormalization`` node of a model's main graph, reads its
attributes and its parameters (initializers or ``Constant`` nodes) and builds the normcpp
module that computes the same thing; :func:`run_node` runs one on the node's input.

The ``onnx`` package is needed only when a model is loaded; it is imported inside the
functions, so ``import normcpp.onnx`` works without it.

Conventions translated here:

* ``BatchNormalization`` ``momentum`` follows Keras (``running = running * momentum +
  batch * (1 - momentum)``, default 0.9); the module gets PyTorch's ``1 - momentum``.
* ``GroupNormalization`` in opset 18 to 20 has one ``scale``/``bias`` value per *group*, from
  opset 21 on one per *channel*; per-group values are repeated over the group's channels
  (this needs the channel count, read from the graph's shape information).
* ``LayerNormalization`` normalizes over the input dims from ``axis`` on; the module's
  ``normalized_shape`` is ``Scale``'s shape (broadcast to the input's trailing dims when
  these are known).
* ``stash_type`` (the precision of ONNX's statistics) is not needed: normcpp always
  accumulates in float64-merged blocks.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .interop import BatchNormNd
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    Module,
    _BatchNorm,
    _InstanceNorm,
)

__all__ = ["NormNode", "load_norm_nodes", "run_node"]

NORM_OP_TYPES = (
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LayerNormalization",
)

PathOrModel = Union[str, "os.PathLike[str]", bytes, Any]


@dataclass
class NormNode:
    """One normalization node of an ONNX graph and the normcpp module that computes it.

    Attributes
    ----------
    name : str
        The node's name (``""`` if it has none).
    op_type : str
        ``"BatchNormalization"``, ``"InstanceNormalization"``, ``"GroupNormalization"`` or
        ``"LayerNormalization"``.
    inputs, outputs : tuple of str
        The node's input and output value names (``""`` for an absent optional one);
        ``inputs[0]`` is the data input and ``outputs[0]`` the normalized output.
    module : normcpp.Module
        The module with the node's parameters and attributes, in eval mode (training mode
        for a ``BatchNormalization`` with ``training_mode=1``).
    attributes : dict
        The node's attributes with ONNX's defaults filled in (ONNX's conventions, e.g. the
        Keras-style BatchNormalization ``momentum``).
    opset : int
        The model's ``ai.onnx`` opset.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    module: Module
    attributes: dict[str, Any] = field(default_factory=dict)
    opset: int = 0


def _onnx() -> Any:
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ImportError(
            "normcpp.onnx needs the 'onnx' package (pip install onnx)"
        ) from exc


def _load_model(path_or_model: PathOrModel) -> Any:
    onnx = _onnx()
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (str, os.PathLike)):
        return onnx.load(os.fspath(path_or_model))
    if isinstance(path_or_model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(path_or_model))
    raise TypeError(
        "path_or_model must be a path, serialized model bytes or an onnx.ModelProto, got "
        f"{type(path_or_model).__name__}"
    )


def _default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model does not import the default ONNX domain ('ai.onnx')")


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of the main graph, as arrays."""
    onnx = _onnx()
    to_array = onnx.numpy_helper.to_array
    values = {init.name: to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = to_array(attr.t)
                elif attr.name == "value_float":
                    values[node.output[0]] = np.array(attr.f, np.float32)
                elif attr.name == "value_floats":
                    values[node.output[0]] = np.array(list(attr.floats), np.float32)
    return values


def _static_shapes(model: Any) -> dict[str, tuple[int | None, ...]]:
    """The shapes the graph declares or that shape inference finds; ``None`` marks a
    symbolic or unknown dim. Values without a known rank are left out."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
            RuntimeError, TypeError):  # inference fails: use the shapes the model declares
        inferred = model
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[info.name] = tuple(
            int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        )
    return shapes


def _attributes(node: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    onnx = _onnx()
    attrs = dict(defaults)
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, float):
            value = float(str(np.float32(value)))  # the float32 attribute's shortest decimal
        attrs[attr.name] = value
    return attrs


def _module_dtype(*arrays: np.ndarray | None) -> type:
    present = [a for a in arrays if a is not None]
    return np.float64 if any(a.dtype == np.float64 for a in present) else np.float32


def _vector(values: Mapping[str, np.ndarray], node: Any, index: int, what: str,
            *, optional: bool = False) -> np.ndarray | None:
    """Input ``index`` of ``node`` as a constant array (``None`` if absent and optional)."""
    name = node.input[index] if index < len(node.input) else ""
    if name == "":
        if optional:
            return None
        raise ValueError(f"{node.op_type} node {node.name!r} lacks its {what} input")
    if name not in values:
        raise ValueError(
            f"{node.op_type} node {node.name!r}: {what} ({name!r}) is not an initializer or a "
            "Constant, so it cannot be read into a module"
        )
    arr = np.asarray(values[name])
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{node.op_type} node {node.name!r}: {what} ({name!r}) has dtype {arr.dtype}, "
            "expected real numbers"
        )
    return arr


def _build_batch_norm(node: Any, values: Mapping[str, np.ndarray],
                      shapes: Mapping[str, tuple[int | None, ...]],
                      opset: int) -> tuple[Module, dict[str, Any]]:
    attrs = _attributes(node, {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0,
                               "spatial": 1})
    if int(attrs["spatial"]) != 1:
        raise ValueError(
            f"BatchNormalization node {node.name!r}: spatial=0 (per-element statistics, "
            "opset < 9) is not supported"
        )
    scale = _vector(values, node, 1, "scale")
    bias = _vector(values, node, 2, "B")
    mean = _vector(values, node, 3, "input_mean")
    var = _vector(values, node, 4, "input_var")
    assert scale is not None and bias is not None and mean is not None and var is not None
    channels = int(scale.size)
    rank = len(shapes[node.input[0]]) if node.input[0] in shapes else None
    cls = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}.get(
        rank if rank is not None else -1
    )
    if cls is None:
        cls = BatchNormNd  # rank unknown or > 5: accept (N, C, *) of any rank
    # PyTorch's momentum, rounded to the float32 precision of the attribute (0.9 -> 0.1)
    momentum = min(max(float(str(np.float32(1.0 - float(attrs["momentum"])))), 0.0), 1.0)
    module = cls(channels, eps=float(attrs["epsilon"]), momentum=momentum,
                 dtype=_module_dtype(scale, bias, mean, var))
    module.load_state_dict(
        {"weight": scale.reshape(-1), "bias": bias.reshape(-1),
         "running_mean": mean.reshape(-1), "running_var": var.reshape(-1)},
        strict=True,
    )
    module.train(bool(attrs["training_mode"]))
    return module, attrs


def _build_instance_norm(node: Any, values: Mapping[str, np.ndarray],
                         shapes: Mapping[str, tuple[int | None, ...]],
                         opset: int) -> tuple[Module, dict[str, Any]]:
    attrs = _attributes(node, {"epsilon": 1e-5})
    scale = _vector(values, node, 1, "scale")
    bias = _vector(values, node, 2, "B")
    assert scale is not None and bias is not None
    rank = len(shapes[node.input[0]]) if node.input[0] in shapes else None
    cls = {3: InstanceNorm1d, 4: InstanceNorm2d, 5: InstanceNorm3d}.get(
        rank if rank is not None else -1, InstanceNorm1d
    )
    module = cls(int(scale.size), eps=float(attrs["epsilon"]), affine=True,
                 track_running_stats=False, dtype=_module_dtype(scale, bias))
    module.load_state_dict({"weight": scale.reshape(-1), "bias": bias.reshape(-1)})
    return module.eval(), attrs


def _build_group_norm(node: Any, values: Mapping[str, np.ndarray],
                      shapes: Mapping[str, tuple[int | None, ...]],
                      opset: int) -> tuple[Module, dict[str, Any]]:
    attrs = _attributes(node, {"epsilon": 1e-5, "stash_type": 1})
    if "num_groups" not in attrs:
        raise ValueError(f"GroupNormalization node {node.name!r} lacks the num_groups attribute")
    groups = int(attrs["num_groups"])
    scale = _vector(values, node, 1, "scale")
    bias = _vector(values, node, 2, "bias")
    assert scale is not None and bias is not None
    scale, bias = scale.reshape(-1), bias.reshape(-1)
    x_shape = shapes.get(node.input[0])
    known_c = x_shape[1] if x_shape is not None and len(x_shape) >= 2 else None
    if opset >= 21:  # per channel
        channels = int(scale.size)
        if known_c is not None and known_c != channels:
            raise ValueError(
                f"GroupNormalization node {node.name!r}: scale has {channels} values, but the "
                f"input has {known_c} channels"
            )
    else:  # opset 18-20: per group
        if scale.size != groups or bias.size != groups:
            raise ValueError(
                f"GroupNormalization node {node.name!r} (opset {opset}): scale and bias must "
                f"have num_groups={groups} values, got {scale.size} and {bias.size}"
            )
        if known_c is None:
            raise ValueError(
                f"GroupNormalization node {node.name!r} (opset {opset}) has per-group scale "
                "and bias, and the graph does not tell the input's channel count; give the "
                "model input a static shape (or convert the model to opset 21)"
            )
        channels = int(known_c)
        if channels % groups != 0:
            raise ValueError(
                f"GroupNormalization node {node.name!r}: num_groups={groups} does not divide "
                f"the {channels} input channels"
            )
        scale = np.repeat(scale, channels // groups)
        bias = np.repeat(bias, channels // groups)
    module = GroupNorm(groups, channels, eps=float(attrs["epsilon"]), affine=True,
                       dtype=_module_dtype(scale, bias))
    module.load_state_dict({"weight": scale, "bias": bias})
    return module.eval(), attrs


def _build_layer_norm(node: Any, values: Mapping[str, np.ndarray],
                      shapes: Mapping[str, tuple[int | None, ...]],
                      opset: int) -> tuple[Module, dict[str, Any]]:
    attrs = _attributes(node, {"axis": -1, "epsilon": 1e-5, "stash_type": 1})
    scale = _vector(values, node, 1, "Scale")
    bias = _vector(values, node, 2, "B", optional=True)
    assert scale is not None
    axis = int(attrs["axis"])
    x_shape = shapes.get(node.input[0])
    if axis < 0:
        k = -axis
    elif x_shape is not None:
        k = len(x_shape) - axis
    else:
        k = scale.ndim  # rank unknown: Scale's shape is the normalized shape
    if k <= 0 or (x_shape is not None and k > len(x_shape)):
        raise ValueError(
            f"LayerNormalization node {node.name!r}: axis={axis} is out of range for an input "
            f"of rank {len(x_shape) if x_shape is not None else 'unknown'}"
        )
    trailing = x_shape[len(x_shape) - k:] if x_shape is not None else None
    if trailing is not None and all(d is not None for d in trailing):
        normalized_shape = tuple(int(d) for d in trailing)  # type: ignore[arg-type]
    elif scale.ndim == k:
        normalized_shape = tuple(int(d) for d in scale.shape)
    else:
        raise ValueError(
            f"LayerNormalization node {node.name!r}: Scale has shape {scale.shape}, which does "
            f"not give the {k} normalized dims, and the input's shape is unknown"
        )
    try:
        weight = np.broadcast_to(scale, normalized_shape)
        b = None if bias is None else np.broadcast_to(bias, normalized_shape)
    except ValueError:
        raise ValueError(
            f"LayerNormalization node {node.name!r}: Scale {scale.shape} / B "
            f"{None if bias is None else bias.shape} do not broadcast to the normalized shape "
            f"{normalized_shape}"
        ) from None
    module = LayerNorm(normalized_shape, eps=float(attrs["epsilon"]), elementwise_affine=True,
                       bias=b is not None, dtype=_module_dtype(scale, bias))
    state = {"weight": weight} if b is None else {"weight": weight, "bias": b}
    module.load_state_dict(state)
    return module.eval(), attrs


_BUILDERS = {
    "BatchNormalization": _build_batch_norm,
    "InstanceNormalization": _build_instance_norm,
    "GroupNormalization": _build_group_norm,
    "LayerNormalization": _build_layer_norm,
}


def load_norm_nodes(path_or_model: PathOrModel) -> list[NormNode]:
    """Read the normalization nodes of an ONNX model into normcpp modules.

    Parameters
    ----------
    path_or_model : str, os.PathLike, bytes or onnx.ModelProto
        An ``.onnx`` file (external data next to it is loaded too), a serialized model or a
        loaded model.

    Returns
    -------
    list of NormNode
        One per ``BatchNormalization``, ``InstanceNormalization``, ``GroupNormalization`` and
        ``LayerNormalization`` node of the main graph (``ai.onnx`` domain), in graph order.
        Subgraphs (``If``/``Loop`` bodies) and model-local functions are not searched.

    Raises
    ------
    ImportError
        The ``onnx`` package is not installed.
    TypeError
        ``path_or_model`` has a wrong type, or a parameter is not real numbers.
    ValueError
        A node's parameters are not constants (initializers or ``Constant`` nodes), are
        inconsistent, or need shape information the graph lacks.

    Notes
    -----
    The module class follows the rank of the node's input when the graph tells it (through
    its declared shapes or ONNX shape inference): ``BatchNorm1d`` (rank 2 or 3), ``2d``,
    ``3d``, or :class:`normcpp.interop.BatchNormNd` when the rank is unknown or above 5;
    ``InstanceNorm1d``/``2d``/``3d`` (``1d`` when unknown; :func:`run_node` folds the
    spatial dims of other ranks into the module's). A ``BatchNormalization`` with
    ``training_mode=1`` gives a module in training mode: it normalizes with the batch
    statistics as ONNX does, and updates its running statistics with PyTorch's rule (the
    unbiased variance, where ONNX uses the biased one).

    Examples
    --------
    >>> import numpy as np, onnx
    >>> from onnx import helper, numpy_helper, TensorProto
    >>> from normcpp.onnx import load_norm_nodes, run_node
    >>> inits = [numpy_helper.from_array(np.full(3, v, np.float32), n)
    ...          for n, v in [("s", 2.0), ("b", 0.5), ("m", 0.0), ("v", 1.0)]]
    >>> graph = helper.make_graph(
    ...     [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])], inits)
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    >>> [node] = load_norm_nodes(model)
    >>> node.op_type, type(node.module).__name__, node.module.eps, node.module.momentum
    ('BatchNormalization', 'BatchNorm2d', 1e-05, 0.1)
    >>> run_node(node, np.zeros((1, 3, 2, 2), np.float32))[0, :, 0, 0].tolist()
    [0.5, 0.5, 0.5]
    """
    model = _load_model(path_or_model)
    opset = _default_opset(model)
    norm_nodes = [
        n for n in model.graph.node
        if n.op_type in _BUILDERS and n.domain in ("", "ai.onnx")
    ]
    if not norm_nodes:
        return []
    values = _constants(model)
    shapes = _static_shapes(model)
    result = []
    for node in norm_nodes:
        if not node.input or node.input[0] == "":
            raise ValueError(f"{node.op_type} node {node.name!r} lacks its data input")
        module, attrs = _BUILDERS[node.op_type](node, values, shapes, opset)
        result.append(
            NormNode(
                name=node.name,
                op_type=node.op_type,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                module=module,
                attributes=attrs,
                opset=opset,
            )
        )
    return result


def _fold_spatial(x: np.ndarray, spatial_dims: int) -> np.ndarray:
    """(N, C, *spatial) reshaped to (N, C) + ``spatial_dims`` dims (extra dims merged into
    the last one, missing ones added with size 1)."""
    spatial = x.shape[2:]
    if len(spatial) < spatial_dims:
        spatial = spatial + (1,) * (spatial_dims - len(spatial))
    else:
        spatial = spatial[: spatial_dims - 1] + (math.prod(spatial[spatial_dims - 1:]),)
    return x.reshape(x.shape[:2] + spatial)


def run_node(node: NormNode, x: np.ndarray) -> np.ndarray:
    """Run ``node.module`` on the node's data input ``x``; returns the node's first output.

    Parameters
    ----------
    node : NormNode
        From :func:`load_norm_nodes`.
    x : ndarray of float16, float32 or float64
        The node's input (N, C, *) (any leading dims for ``LayerNormalization``). For batch
        and instance norms, an input whose rank the module does not take is run with its
        spatial dims folded into the module's rank (the statistics are the same).

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``.

    Examples
    --------
    See :func:`load_norm_nodes`.
    """
    if not isinstance(node, NormNode):
        raise TypeError(f"node must be a NormNode, got {type(node).__name__}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    module = node.module
    if isinstance(module, (_BatchNorm, _InstanceNorm)) and x.ndim >= 2:
        ranks = {ndim for ndim, _, dim in module._layouts if dim == 1}
        if ranks and x.ndim not in ranks:
            spatial_dims = max(ranks) - 2
            return module(_fold_spatial(x, spatial_dims)).reshape(x.shape)
    return module(x)
