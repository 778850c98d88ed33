"""Functional normalization ops on NumPy arrays (PyTorch names and argument order).

Every function validates its arguments in C++ (``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape or value, each naming the argument), releases the GIL for the
whole computation (forward ops on fewer than 16,384 elements keep it) and changes nothing
when it raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from . import _core

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_forward",
    "batch_norm_stats",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
]

ShapeLike = Union[int, Sequence[int]]
Grads = tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


def batch_norm(
    input: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    nonfinite: str = "raise",
    activation: str | None = None,
) -> np.ndarray:
    """Batch normalization over (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W).

    In training, each channel is normalized with the batch mean and biased variance over N
    and the spatial dims; ``running_mean``/``running_var`` (float32/float64 arrays, if given)
    are updated in place as ``(1 - momentum) * running + momentum * batch`` with the unbiased
    variance. In eval, the running statistics normalize. ``eps`` is added inside the sqrt.

    Parameters
    ----------
    input : ndarray of float16, float32 or float64
        C-contiguous or channels-last (e.g. ``nhwc.transpose(0, 3, 1, 2)``) data is read in
        place; other strides are copied once. The result has the input's layout.
    out : ndarray, optional
        Receives the result (same shape and dtype, writeable); may be ``input`` itself.
    nonfinite : {"raise", "propagate"}
        In training with running statistics, a NaN or inf batch statistic raises
        ``ValueError`` before the running statistics change ("raise", the default: one bad
        batch cannot silently destroy a model's statistics); "propagate" updates them
        anyway, as PyTorch does.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = nc.batch_norm(x, rm, rv, training=True)
    >>> bool(abs(y.mean()) < 1e-5)
    True
    """
    return _core.batch_norm(input, running_mean, running_var, weight, bias, training,
                            momentum, eps, out, nonfinite, activation)


def instance_norm(
    input: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    nonfinite: str = "raise",
) -> np.ndarray:
    """Instance normalization: each (sample, channel) over its spatial positions.

    Input is (N, C, L), (N, C, H, W) or (N, C, D, H, W). With ``use_input_stats`` and running
    statistics, these are updated with the batch mean of the per-instance means and unbiased
    variances (as PyTorch does); with ``use_input_stats=False`` the running statistics
    normalize. ``nonfinite`` as in :func:`batch_norm`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> y = nc.instance_norm(x)
    >>> np.allclose(y.mean(axis=2), 0, atol=1e-6)
    True
    """
    return _core.instance_norm(input, running_mean, running_var, weight, bias,
                               use_input_stats, momentum, eps, out, nonfinite)


def group_norm(
    input: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """Group normalization: each (sample, group of C/num_groups channels) over the group's
    channels and spatial positions; ``weight``/``bias`` are per channel. ``activation`` as in
    :func:`batch_norm`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    >>> y = nc.group_norm(x, 3)
    >>> y.shape
    (2, 6, 5)
    """
    return _core.group_norm(input, num_groups, weight, bias, eps, out, activation)


def layer_norm(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """Layer normalization over the trailing ``normalized_shape`` dims of ``input``;
    ``weight``/``bias`` have shape ``normalized_shape``. ``activation`` as in
    :func:`batch_norm`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    >>> y = nc.layer_norm(x, 10)
    >>> np.allclose(y.std(axis=1), 1, atol=1e-3)
    True
    """
    return _core.layer_norm(input, normalized_shape, weight, bias, eps, out, activation)


def rms_norm(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None = None,
    eps: float | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims:
    ``x / sqrt(mean(x**2) + eps) * weight``. ``eps=None`` uses ``np.finfo(input.dtype).eps``
    (as PyTorch does).

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> y = nc.rms_norm(np.array([[3.0, 4.0]]), 2, eps=0.0)
    >>> np.round(y, 6).tolist()
    [[0.848528, 1.131371]]
    """
    return _core.rms_norm(input, normalized_shape, weight, eps, out)


# ----------------------------------------------------------------------------- backward
# Each ``*_forward`` computes the same output as its op and also returns what the op's
# ``*_backward`` needs: the per-slot mean and 1/sqrt(var + eps) in float64. Each ``*_backward``
# returns ``(grad_input, grad_weight, grad_bias)``: grad_input in the input's dtype and layout;
# grad_weight (None without weight) and grad_bias (None unless ``has_bias``, which defaults to
# "weight is given") in the weight's dtype (float64 without weight).


def batch_norm_forward(
    input: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    nonfinite: str = "raise",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`batch_norm` that also returns ``(save_mean, save_invstd)``, float64 (C,).

    In eval mode these are the running mean and ``1/sqrt(running_var + eps)``.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    >>> y, mean, invstd = nc.batch_norm_forward(x, training=True)
    >>> mean.shape, invstd.dtype
    ((3,), dtype('float64'))
    """
    return _core.batch_norm_forward(input, running_mean, running_var, weight, bias, training,
                                    momentum, eps, out, nonfinite, None)


def batch_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_invstd: np.ndarray,
    training: bool = True,
    *,
    has_bias: bool | None = None,
) -> Grads:
    """Gradients of :func:`batch_norm`. ``training=True``: through the batch statistics
    (what ``batch_norm_forward(..., training=True)`` saved); ``False``: of the frozen affine map
    ``dx = dy * weight * invstd`` (eval mode or a frozen BatchNorm).

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> w = np.ones(3)
    >>> y, m, r = nc.batch_norm_forward(x, weight=w, training=True)
    >>> dx, dw, db = nc.batch_norm_backward(np.ones_like(x), x, w, m, r)
    >>> bool(np.allclose(dx, 0)), db.tolist()
    (True, [20.0, 20.0, 20.0])
    """
    return _core.batch_norm_backward(grad_output, input, weight, save_mean, save_invstd,
                                     training, has_bias)


def instance_norm_forward(
    input: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    nonfinite: str = "raise",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`instance_norm` that also returns ``(save_mean, save_invstd)``, float64 (N, C)."""
    return _core.instance_norm_forward(input, running_mean, running_var, weight, bias,
                                       use_input_stats, momentum, eps, out, nonfinite)


def instance_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_invstd: np.ndarray,
    *,
    has_bias: bool | None = None,
) -> Grads:
    """Gradients of :func:`instance_norm` with input statistics (see :func:`batch_norm_backward`
    with ``training=False`` for running statistics)."""
    return _core.instance_norm_backward(grad_output, input, weight, save_mean, save_invstd,
                                        has_bias)


def group_norm_forward(
    input: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`group_norm` that also returns ``(save_mean, save_invstd)``, float64 (N, G)."""
    return _core.group_norm_forward(input, num_groups, weight, bias, eps, out, None)


def group_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_invstd: np.ndarray,
    *,
    has_bias: bool | None = None,
) -> Grads:
    """Gradients of :func:`group_norm`."""
    return _core.group_norm_backward(grad_output, input, num_groups, weight, save_mean,
                                     save_invstd, has_bias)


def layer_norm_forward(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`layer_norm` that also returns ``(save_mean, save_invstd)``, float64 with the
    input's leading shape (``input.shape[:-len(normalized_shape)]``)."""
    return _core.layer_norm_forward(input, normalized_shape, weight, bias, eps, out, None)


def layer_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_invstd: np.ndarray,
    *,
    has_bias: bool | None = None,
) -> Grads:
    """Gradients of :func:`layer_norm`; grad_weight/grad_bias have ``normalized_shape``."""
    return _core.layer_norm_backward(grad_output, input, normalized_shape, weight, save_mean,
                                     save_invstd, has_bias)


def rms_norm_forward(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None = None,
    eps: float | None = None,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rms_norm` that also returns ``save_invrms = 1/sqrt(mean(x**2) + eps)`` per row."""
    return _core.rms_norm_forward(input, normalized_shape, weight, eps, out)


def rms_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: np.ndarray | None,
    save_invrms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients ``(grad_input, grad_weight)`` of :func:`rms_norm`."""
    return _core.rms_norm_backward(grad_output, input, normalized_shape, weight, save_invrms)


def batch_norm_stats(input: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``(count, mean, m2)`` (float64, M2 = sum of squared deviations) over N and
    the spatial dims — the statistics SyncBatchNorm merges across processes. Computed stably
    (L1 blocks, two-pass or a guarded one pass about a shift -- see the README's Numerics --,
    Chan merge in double; float32 data accumulates its deviations in float32 lanes, so M2 of
    N(5, 1) data is good to ~4e-8 relative, float64 data to ~1e-11).

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> n, mean, m2 = nc.batch_norm_stats(np.arange(12.0).reshape(2, 2, 3))
    >>> n.tolist(), mean.tolist(), (m2 / n).round(3).tolist()
    ([6.0, 6.0], [4.0, 7.0], [9.667, 9.667])
    """
    return _core.batch_norm_stats(input)


def batch_norm_backward_reduce(
    grad_output: np.ndarray, input: np.ndarray, mean: np.ndarray, invstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(sum(dy), sum(dy * xhat))``, float64, with ``xhat = (x - mean) * invstd``."""
    return _core.batch_norm_backward_reduce(grad_output, input, mean, invstd)


def batch_norm_backward_elemt(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray,
    invstd: np.ndarray,
    sum_dy: np.ndarray,
    sum_dy_xhat: np.ndarray,
    count: float,
) -> np.ndarray:
    """``dx = weight * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)`` with
    (global) sums from :func:`batch_norm_backward_reduce` and the global element count."""
    return _core.batch_norm_backward_elemt(grad_output, input, weight, mean, invstd, sum_dy,
                                           sum_dy_xhat, count)
