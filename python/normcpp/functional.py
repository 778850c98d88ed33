"""Functional normalization ops on NumPy arrays (PyTorch names and argument order).

Every function validates its arguments in C++ (``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape or value, each naming the argument), releases the GIL for the
whole computation and changes nothing when it raises.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import _core

__all__ = ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"]

ShapeLike = Union[int, Sequence[int]]


def batch_norm(
    input: np.ndarray,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: Optional[np.ndarray] = None,
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
                            momentum, eps, out)


def instance_norm(
    input: np.ndarray,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Instance normalization: each (sample, channel) over its spatial positions.

    Input is (N, C, L), (N, C, H, W) or (N, C, D, H, W). With ``use_input_stats`` and running
    statistics, these are updated with the batch mean of the per-instance means and unbiased
    variances (as PyTorch does); with ``use_input_stats=False`` the running statistics
    normalize.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> y = nc.instance_norm(x)
    >>> np.allclose(y.mean(axis=2), 0, atol=1e-6)
    True
    """
    return _core.instance_norm(input, running_mean, running_var, weight, bias,
                               use_input_stats, momentum, eps, out)


def group_norm(
    input: np.ndarray,
    num_groups: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Group normalization: each (sample, group of C/num_groups channels) over the group's
    channels and spatial positions; ``weight``/``bias`` are per channel.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    >>> y = nc.group_norm(x, 3)
    >>> y.shape
    (2, 6, 5)
    """
    return _core.group_norm(input, num_groups, weight, bias, eps, out)


def layer_norm(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Layer normalization over the trailing ``normalized_shape`` dims of ``input``;
    ``weight``/``bias`` have shape ``normalized_shape``.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    >>> y = nc.layer_norm(x, 10)
    >>> np.allclose(y.std(axis=1), 1, atol=1e-3)
    True
    """
    return _core.layer_norm(input, normalized_shape, weight, bias, eps, out)


def rms_norm(
    input: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    eps: Optional[float] = None,
    *,
    out: Optional[np.ndarray] = None,
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
