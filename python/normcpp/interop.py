"""Import trained normalization layers from PyTorch and Keras.

:func:`from_torch` turns any ``torch.nn`` normalization module into the normcpp module with
the same hyper-parameters, state and train/eval mode; :func:`from_keras_batchnorm` turns the
weight list of a Keras ``BatchNormalization`` layer into a normcpp batch norm, resolving the
conventions in which the two frameworks differ. Neither needs the other framework installed
to be imported: torch is imported only inside :func:`from_torch`, and Keras never.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

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
    RMSNorm,
    _BatchNorm,
    _check_ndarray,
    _to_numpy,
)

__all__ = ["BatchNormNd", "from_keras_batchnorm", "from_torch"]


class BatchNormNd(_BatchNorm):
    """Batch normalization over (N, C, *) input of any rank >= 2.

    The same module as :class:`~normcpp.BatchNorm1d`/``2d``/``3d`` (same parameters, state,
    ``state_dict`` keys and numerics) without their check of the input's rank: channel axis 1,
    statistics over every other axis. It is what :func:`from_torch` returns for a
    ``torch.nn.SyncBatchNorm`` (which accepts any rank >= 2 as well) and what
    :func:`from_keras_batchnorm` returns (a Keras layer follows Dense, Conv1D, Conv2D or
    Conv3D layers alike).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        PyTorch convention: ``running = (1 - momentum) * running + momentum * batch``;
        ``None`` gives the cumulative average.
    affine : bool, default True
    track_running_stats : bool, default True
    dtype : float32 or float64, default float32
    bias : bool, default True
        Keyword only. With ``affine``, whether to have a ``bias``.

    Examples
    --------
    >>> import numpy as np
    >>> from normcpp.interop import BatchNormNd
    >>> m = BatchNormNd(3).eval()
    >>> rng = np.random.default_rng(0)
    >>> [m(rng.standard_normal(s).astype(np.float32)).shape for s in [(4, 3), (2, 3, 4, 5)]]
    [(4, 3), (2, 3, 4, 5)]
    """

    def _check_input(self, input: Any) -> None:
        _check_ndarray(input)
        if input.ndim < 2:
            raise ValueError(
                f"{type(self).__name__} expected input of at least 2-D (N, C, *), got "
                f"{input.ndim}-D input of shape {input.shape}"
            )
        if self._has_channel_state() and input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expected input with num_features={self.num_features} "
                f"channels at dim 1, got {input.shape[1]} (input shape {input.shape})"
            )


# --------------------------------------------------------------------------------------------
# PyTorch


def _torch_dtype(module: Any, torch: Any) -> type:
    """float64 if the module's first floating parameter or buffer is float64, else float32
    (float16 and bfloat16 are widened to float32; a module without state gives float32)."""
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if tensor is not None and tensor.is_floating_point():
            return np.float64 if tensor.dtype == torch.float64 else np.float32
    return np.float32


def _check_not_lazy(module: Any, torch: Any) -> None:
    is_lazy = getattr(torch.nn.parameter, "is_lazy", None)
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    if is_lazy is not None and any(is_lazy(t) for t in tensors):
        raise ValueError(
            f"cannot convert {type(module).__name__}: its parameters are not initialized yet "
            "(run the lazy module on one batch first)"
        )


def from_torch(module: Any) -> Module:
    """Convert a ``torch.nn`` normalization module into the normcpp module.

    The result has the same hyper-parameters (``eps``, ``momentum`` including ``None``,
    ``affine``, ``bias``, ``track_running_stats``, ``num_groups``, ``normalized_shape``,
    ``elementwise_affine``), a copy of the same state (parameters, running statistics and
    ``num_batches_tracked``) and the same mode (``training``), so it computes the same output
    and, in training mode, the same running-statistics updates.

    ============================================  ============================================
    torch                                         normcpp
    ============================================  ============================================
    ``BatchNorm1d`` / ``2d`` / ``3d``             ``BatchNorm1d`` / ``2d`` / ``3d``
    ``SyncBatchNorm``                             :class:`BatchNormNd` (any rank >= 2, like
                                                  SyncBatchNorm; a SyncBatchNorm has no rank
                                                  of its own, and a normcpp module never
                                                  synchronizes)
    ``InstanceNorm1d`` / ``2d`` / ``3d``          ``InstanceNorm1d`` / ``2d`` / ``3d``
    ``GroupNorm``                                 ``GroupNorm``
    ``LayerNorm``                                 ``LayerNorm``
    ``RMSNorm``                                   ``RMSNorm``
    ============================================  ============================================

    Subclasses of these torch classes convert as their base class. The dtype is float64 if
    the torch module's parameters (or buffers) are float64, float32 otherwise (float16 and
    bfloat16 state is widened to float32). Tensors on any device are copied to host memory.

    Parameters
    ----------
    module : torch.nn.Module
        One of the classes above. torch is imported only when this function is called.

    Returns
    -------
    normcpp.Module

    Raises
    ------
    TypeError
        ``module`` is not a torch normalization module (or torch is not installed).
    ValueError
        A lazy module whose parameters are not initialized yet, or state that normcpp
        refuses (non-finite values).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from normcpp.interop import from_torch
    >>> tm = torch.nn.BatchNorm2d(3, momentum=None).eval()
    >>> m = from_torch(tm)
    >>> m
    BatchNorm2d(3, eps=1e-05, momentum=None, affine=True, bias=True, track_running_stats=True)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    >>> np.allclose(m(x), tm(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    True
    """
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise TypeError(
            f"from_torch expects a torch.nn module, got {type(module).__name__} (and torch is "
            "not installed)"
        ) from None
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")

    result: Module
    kind = type(module).__name__
    rms_norm_cls = getattr(nn, "RMSNorm", None)
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        _check_not_lazy(module, torch)
        dtype = _torch_dtype(module, torch)
        if isinstance(module, nn.SyncBatchNorm):
            cls: type = BatchNormNd
        elif isinstance(module, nn.BatchNorm1d):
            cls = BatchNorm1d
        elif isinstance(module, nn.BatchNorm2d):
            cls = BatchNorm2d
        elif isinstance(module, nn.BatchNorm3d):
            cls = BatchNorm3d
        elif isinstance(module, nn.InstanceNorm1d):
            cls = InstanceNorm1d
        elif isinstance(module, nn.InstanceNorm2d):
            cls = InstanceNorm2d
        elif isinstance(module, nn.InstanceNorm3d):
            cls = InstanceNorm3d
        else:
            raise TypeError(f"from_torch does not know the torch module {kind}")
        has_bias = getattr(module, "bias", None) is not None
        result = cls(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            dtype=dtype,
            bias=has_bias or not module.affine,
        )
    elif isinstance(module, nn.GroupNorm):
        result = GroupNorm(
            module.num_groups,
            module.num_channels,
            eps=module.eps,
            affine=module.affine,
            dtype=_torch_dtype(module, torch),
            bias=module.bias is not None or not module.affine,
        )
    elif isinstance(module, nn.LayerNorm):
        result = LayerNorm(
            tuple(module.normalized_shape),
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None or not module.elementwise_affine,
            dtype=_torch_dtype(module, torch),
        )
    elif rms_norm_cls is not None and isinstance(module, rms_norm_cls):
        result = RMSNorm(
            tuple(module.normalized_shape),
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            dtype=_torch_dtype(module, torch),
        )
    else:
        raise TypeError(
            f"from_torch expects a torch normalization module (BatchNorm1d/2d/3d, SyncBatchNorm, "
            f"InstanceNorm1d/2d/3d, GroupNorm, LayerNorm, RMSNorm), got {kind}"
        )
    with torch.no_grad():
        state = {key: _to_numpy(value) for key, value in module.state_dict().items()}
    result.load_state_dict(state, strict=True)
    result.train(bool(module.training))
    return result


# --------------------------------------------------------------------------------------------
# Keras


def _keras_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = _to_numpy(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of per-channel values, got shape {arr.shape} (Keras "
            "BatchNormalization over several axes is not supported)"
        )
    with np.errstate(all="ignore"):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def from_keras_batchnorm(
    weights: Sequence[Any],
    epsilon: float = 1e-3,
    momentum: float = 0.99,
    axis: int | Sequence[int] = -1,
    center: bool = True,
    scale: bool = True,
) -> BatchNormNd:
    """Build a normcpp batch norm from the weights of a Keras ``BatchNormalization`` layer.

    Pass ``layer.get_weights()`` and the layer's ``epsilon``, ``momentum``, ``axis``,
    ``center`` and ``scale``. The result is a :class:`BatchNormNd` in eval mode (Keras layers
    run inference by default) that accepts (N, C, *) input of any rank.

    Pitfalls this function resolves
    -------------------------------
    * **Weight order.** Keras stores ``[gamma, beta, moving_mean, moving_variance]``;
      ``gamma`` is absent when ``scale=False`` and ``beta`` when ``center=False``, so the list
      has 2, 3 or 4 entries. The flags decide which is which; a count that does not match
      them, arrays of different lengths or a negative ``moving_variance`` (a sign that the
      order is wrong) raise ``ValueError``.
    * **Momentum convention.** Keras updates ``moving = moving * momentum + batch * (1 -
      momentum)`` (default 0.99); PyTorch and normcpp use ``running = (1 - momentum) *
      running + momentum * batch``. The module gets ``momentum = 1 - keras_momentum``
      (0.99 -> 0.01), so further training here moves the statistics as slowly as Keras did.
    * **Epsilon default.** Keras' default is 1e-3, PyTorch's 1e-5; the layer's value is kept
      (inside the square root in both: ``(x - mean) / sqrt(var + eps) * gamma + beta``).
    * **Channel axis.** Keras puts channels last (``axis=-1``, NHWC); normcpp, like PyTorch,
      expects them at axis 1. Give the module a channels-first *view*: for NHWC images
      ``x.transpose(0, 3, 1, 2)`` is read in place (no copy) and the output keeps that
      layout, so ``m(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)`` is NHWC again; in
      general use ``np.moveaxis(x, axis, 1)``. ``axis`` itself is only checked here (one
      axis; Keras BatchNormalization over several axes is not supported).
    * **Biased vs unbiased variance.** Keras 3 updates ``moving_variance`` with the *biased*
      batch variance (older tf.keras fused kernels differed); PyTorch and normcpp with the
      *unbiased* one (times n / (n - 1)).
      Inference is identical; if you keep training here the statistics follow PyTorch's
      rule, which for small batches gives slightly larger running variances than Keras.
    * ``scale=False`` gives ``weight`` fixed at ones and ``center=False`` no ``bias`` (a
      module without either has ``affine=False``).

    Parameters
    ----------
    weights : sequence of array-like
        ``[gamma, beta, moving_mean, moving_variance]`` minus the absent ones.
    epsilon : float, default 1e-3
    momentum : float, default 0.99
        Keras convention, in [0, 1].
    axis : int or sequence of one int, default -1
        The Keras layer's channel axis (see above).
    center, scale : bool, default True
        Whether the layer has ``beta`` / ``gamma``.

    Returns
    -------
    BatchNormNd
        In eval mode, dtype float64 if the weights are float64, float32 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from normcpp.interop import from_keras_batchnorm
    >>> gamma, beta = np.array([1.0, 2.0]), np.array([0.0, 0.5])
    >>> mean, var = np.array([0.1, -0.2]), np.array([1.0, 4.0])
    >>> m = from_keras_batchnorm([gamma, beta, mean, var])
    >>> m.momentum, m.eps, m.training
    (0.010000000000000009, 0.001, False)
    >>> nhwc = np.ones((1, 2, 2, 2))
    >>> y = m(nhwc.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    >>> np.allclose(y, (nhwc - mean) / np.sqrt(var + 1e-3) * gamma + beta)
    True
    """
    if isinstance(weights, (str, bytes, np.ndarray)) or not isinstance(weights, Sequence):
        raise TypeError(
            "weights must be a list of arrays [gamma, beta, moving_mean, moving_variance] "
            f"(layer.get_weights()), got {type(weights).__name__}"
        )
    for name, flag in (("center", center), ("scale", scale)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"epsilon must be a float, got {type(epsilon).__name__}")
    if not (math.isfinite(float(epsilon)) and float(epsilon) >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a float in [0, 1], got {type(momentum).__name__}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (Keras convention), got {momentum!r}")
    axes = [axis] if isinstance(axis, numbers.Integral) else axis
    if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_)) for a in axes
    ):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if len(axes) != 1:
        raise ValueError(
            f"axis must name one channel axis, got {axis!r} (Keras BatchNormalization over "
            "several axes is not supported)"
        )

    names = (["gamma"] if scale else []) + (["beta"] if center else [])
    names += ["moving_mean", "moving_variance"]
    if len(weights) != len(names):
        raise ValueError(
            f"expected {len(names)} weights [{', '.join(names)}] for center={bool(center)}, "
            f"scale={bool(scale)}, got {len(weights)}"
        )
    arrays = {name: _keras_array(w, name) for name, w in zip(names, weights)}
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all weights must have the same length (channels), got {lengths}")
    channels = lengths["moving_mean"]
    if channels == 0:
        raise ValueError("weights have length 0: a BatchNormalization needs >= 1 channel")
    if (arrays["moving_variance"] < 0).any():
        raise ValueError(
            "moving_variance has negative values: the weights are probably not in Keras' order "
            "[gamma, beta, moving_mean, moving_variance] or center/scale do not match the layer"
        )
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays.values()) else np.float32
    module = BatchNormNd(
        channels,
        eps=float(epsilon),
        momentum=1.0 - float(momentum),
        affine=bool(scale or center),
        track_running_stats=True,
        dtype=dtype,
        bias=bool(center),
    )
    state: dict[str, np.ndarray] = {
        "running_mean": arrays["moving_mean"],
        "running_var": arrays["moving_variance"],
    }
    if module.weight is not None:
        state["weight"] = arrays["gamma"] if scale else np.ones(channels)
    if center:
        state["bias"] = arrays["beta"]
    module.load_state_dict(state, strict=True)
    return module.eval()
