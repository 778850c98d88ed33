"""Independent float64 NumPy references for every normcpp op (used by all tests).

Each returns the output in float64 and, where the op updates running statistics, the new
running statistics as float64 arrays (the inputs are never modified here).
"""

from __future__ import annotations

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _bshape(x):
    """Shape that broadcasts a per-channel vector over (N, C, *spatial)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5):
    x = _f64(x)
    rm, rv = _f64(running_mean), _f64(running_var)
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        n = x.size // x.shape[1]
        if rm is not None:
            rm = (1 - momentum) * rm + momentum * mean
            rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(_bshape(x))) / np.sqrt(var.reshape(_bshape(x)) + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(_bshape(x))
    if bias is not None:
        y = y + _f64(bias).reshape(_bshape(x))
    return y, rm, rv


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    x = _f64(x)
    rm, rv = _f64(running_mean), _f64(running_var)
    axes = tuple(range(2, x.ndim))
    if use_input_stats:
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        if rm is not None:
            n = int(np.prod(x.shape[2:]))
            rm = (1 - momentum) * rm + momentum * mean.reshape(x.shape[:2]).mean(axis=0)
            unbiased = var.reshape(x.shape[:2]) * n / (n - 1)
            rv = (1 - momentum) * rv + momentum * unbiased.mean(axis=0)
    else:
        mean = running_mean_b = _f64(running_mean).reshape(_bshape(x))
        var = _f64(running_var).reshape(_bshape(x))
        del running_mean_b
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(_bshape(x))
    if bias is not None:
        y = y + _f64(bias).reshape(_bshape(x))
    return y, rm, rv


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    x = _f64(x)
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = g.var(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * _f64(weight).reshape(_bshape(x))
    if bias is not None:
        y = y + _f64(bias).reshape(_bshape(x))
    return y


def _norm_axes(x, normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    k = len(tuple(normalized_shape))
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = _f64(x)
    axes = _norm_axes(x, normalized_shape)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y


def rms_norm(x, normalized_shape, weight=None, eps=None, input_dtype=None):
    """``eps=None`` means ``np.finfo(input_dtype).eps`` (PyTorch's rule)."""
    if eps is None:
        eps = float(np.finfo(input_dtype if input_dtype is not None else np.asarray(x).dtype).eps)
    x = _f64(x)
    axes = _norm_axes(x, normalized_shape)
    ms = (x * x).mean(axis=axes, keepdims=True)
    y = x / np.sqrt(ms + eps)
    if weight is not None:
        y = y * _f64(weight)
    return y


def tolerance(dtype):
    """(rtol, atol) for comparing an op's output in ``dtype`` with the float64 reference."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return 2e-3, 5e-3
    if dtype == np.float32:
        return 1e-4, 2e-5
    return 1e-10, 1e-11
