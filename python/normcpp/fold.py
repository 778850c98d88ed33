"""Fold an eval-mode BatchNorm into the convolution or linear layer before it."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .modules import _to_numpy

__all__ = ["fold_batchnorm"]

_KINDS = ("conv", "conv_transpose", "linear")


def _as_float_array(value: Any, name: str) -> np.ndarray:
    """``value`` (array-like or torch tensor) as an ndarray of real numbers."""
    try:
        arr = _to_numpy(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    return arr


def _bn_vector(bn: Any, attr: str, channels: int | None) -> np.ndarray | None:
    """``bn.<attr>`` as a finite float64 vector (``None`` stays ``None``)."""
    value = getattr(bn, attr)
    if value is None:
        return None
    arr = _as_float_array(value, f"bn.{attr}").astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"bn.{attr} must be a 1-D per-channel array, got shape {arr.shape}")
    if channels is not None and arr.shape[0] != channels:
        raise ValueError(
            f"bn.{attr} has {arr.shape[0]} channels, but bn.running_mean has {channels}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"bn.{attr} contains non-finite values (NaN or inf); cannot fold")
    return arr


def _bn_scale_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, shift)`` in float64 with ``bn(y) == y * scale + shift`` (eval)."""
    for attr in ("running_mean", "running_var", "eps", "training"):
        if not hasattr(bn, attr):
            raise TypeError(
                f"bn must be a BatchNorm module (with running_mean, running_var, weight, bias, "
                f"eps and training attributes), got {type(bn).__name__} without {attr!r}"
            )
    if bool(bn.training) and not bool(getattr(bn, "frozen", False)):
        raise ValueError(
            f"cannot fold {type(bn).__name__} in training mode: training mode normalizes with "
            "batch statistics; call bn.eval() first"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"cannot fold {type(bn).__name__} without running statistics "
            f"(track_running_stats={getattr(bn, 'track_running_stats', None)}): it normalizes "
            "with batch statistics even in eval mode"
        )
    eps = bn.eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"bn.eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (np.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"bn.eps must be finite and >= 0, got {eps!r}")
    mean = _bn_vector(bn, "running_mean", None)
    assert mean is not None
    channels = mean.shape[0]
    var = _bn_vector(bn, "running_var", channels)
    assert var is not None
    if (var < 0).any():
        raise ValueError("bn.running_var has negative values; cannot fold")
    denom = var + eps
    if (denom <= 0).any():
        raise ValueError(
            "bn.running_var + bn.eps is 0 for some channel (division by zero); cannot fold"
        )
    gamma = _bn_vector(bn, "weight", channels) if hasattr(bn, "weight") else None
    beta = _bn_vector(bn, "bias", channels) if hasattr(bn, "bias") else None
    scale = 1.0 / np.sqrt(denom)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    return scale, shift


def fold_batchnorm(
    weight: Any,
    bias: Any,
    bn: Any,
    *,
    kind: str = "conv",
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm into the layer before it.

    Returns ``(new_weight, new_bias)`` such that the layer with the new parameters computes
    what the layer followed by ``bn`` in eval mode computes: with per-channel
    ``s = bn.weight / sqrt(bn.running_var + bn.eps)``, each output channel ``o`` of the layer
    gets ``new_weight[o] = weight[o] * s[o]`` and
    ``new_bias[o] = (bias[o] - running_mean[o]) * s[o] + bn.bias[o]``.

    Parameters
    ----------
    weight : array-like of float32 or float64
        The layer's weight (a torch tensor works too):

        * ``kind="conv"``: (C_out, C_in / groups, *kernel) (any number of spatial dims;
          grouped and depthwise convolutions scale per output channel like any other);
        * ``kind="conv_transpose"``: (C_in, C_out / groups, *kernel), PyTorch's layout,
          where output channel ``o = g * (C_out / groups) + j`` is
          ``weight[g * C_in / groups:(g + 1) * C_in / groups, j]``;
        * ``kind="linear"``: (out_features, in_features).
    bias : array-like or None
        The layer's bias, shape (C_out,); ``None`` (a layer without bias) counts as zeros.
    bn : BatchNorm module
        A normcpp ``BatchNorm*`` module, a ``torch.nn.BatchNorm*`` module, or anything with
        ``running_mean``, ``running_var``, ``weight`` and ``bias`` (either may be ``None``),
        ``eps`` and ``training`` attributes. It must be in eval mode (an object with a true
        ``frozen`` attribute, which normalizes with its running statistics in training mode,
        is accepted too).
    kind : {"conv", "conv_transpose", "linear"}, default "conv"
    groups : int, default 1
        The convolution's groups (``kind="linear"`` needs 1).

    Returns
    -------
    new_weight, new_bias : ndarray
        Fresh arrays in the dtype of ``weight`` (computed in float64); ``new_bias`` has shape
        (C_out,) even when ``bias`` is ``None``.

    Raises
    ------
    TypeError
        ``weight``/``bias`` are not real arrays, ``weight`` is not float32/float64, ``kind``
        or ``groups`` has a wrong type, or ``bn`` lacks a BatchNorm attribute.
    ValueError
        ``bn`` in training mode, without running statistics, with non-finite statistics or
        parameters, with a negative variance; an unknown ``kind``; a channel count that does
        not match ``bn``; ``groups`` that does not divide the channels; a wrong ``bias`` shape.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> from normcpp.fold import fold_batchnorm
    >>> rng = np.random.default_rng(0)
    >>> w, b = rng.standard_normal((4, 3)), rng.standard_normal(4)
    >>> bn = nc.BatchNorm1d(4, dtype=np.float64)
    >>> bn.running_mean[:], bn.running_var[:] = rng.standard_normal(4), rng.random(4) + 0.5
    >>> bn.weight[:], bn.bias[:] = rng.standard_normal(4), rng.standard_normal(4)
    >>> w2, b2 = fold_batchnorm(w, b, bn.eval(), kind="linear")
    >>> x = rng.standard_normal((5, 3))
    >>> np.allclose(x @ w2.T + b2, bn(x @ w.T + b))
    True
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, got {type(kind).__name__}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups}")
    if kind == "linear" and groups != 1:
        raise ValueError(f"groups must be 1 for kind='linear', got {groups}")

    w = _as_float_array(weight, "weight")
    if w.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"weight must be float32 or float64, got {w.dtype}")
    min_ndim = 2 if kind == "linear" else 3
    if (kind == "linear" and w.ndim != 2) or w.ndim < min_ndim:
        expected = {
            "conv": "(C_out, C_in / groups, *kernel)",
            "conv_transpose": "(C_in, C_out / groups, *kernel)",
            "linear": "(out_features, in_features)",
        }[kind]
        raise ValueError(
            f"weight for kind={kind!r} must have shape {expected}, got shape {w.shape}"
        )
    if kind == "conv_transpose":
        if w.shape[0] % groups != 0:
            raise ValueError(
                f"groups ({groups}) must divide the input channels of the conv_transpose "
                f"weight (weight.shape[0] = {w.shape[0]})"
            )
        out_channels = w.shape[1] * groups
    else:
        out_channels = w.shape[0]
        if out_channels % groups != 0:
            raise ValueError(
                f"groups ({groups}) must divide the output channels (weight.shape[0] = "
                f"{out_channels})"
            )

    scale, shift = _bn_scale_shift(bn)
    if scale.shape[0] != out_channels:
        raise ValueError(
            f"bn has {scale.shape[0]} channels, but the {kind} layer has {out_channels} output "
            f"channels (weight shape {w.shape}, groups={groups})"
        )
    if bias is None:
        b = np.zeros(out_channels)
    else:
        b = _as_float_array(bias, "bias").astype(np.float64)
        if b.shape != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},), got shape {b.shape}")

    w64 = w.astype(np.float64)
    kernel = w.shape[2:]
    if kind == "conv_transpose":
        per_group = w64.reshape((groups, w.shape[0] // groups, w.shape[1]) + kernel)
        factors = scale.reshape((groups, 1, w.shape[1]) + (1,) * len(kernel))
        new_w = (per_group * factors).reshape(w.shape)
    else:
        new_w = w64 * scale.reshape((out_channels,) + (1,) * (w.ndim - 1))
    new_b = b * scale + shift
    return new_w.astype(w.dtype), new_b.astype(w.dtype)
