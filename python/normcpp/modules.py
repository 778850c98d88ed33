"""Stateful normalization modules with PyTorch's names, arguments and ``state_dict`` keys.

Every module keeps its parameters (``weight``, ``bias``) and buffers (``running_mean``,
``running_var``, ``num_batches_tracked``) as NumPy arrays and does all arithmetic through
:mod:`normcpp.functional`; the Python code here only holds state and checks arguments.

A failed call changes nothing: ``forward`` validates before it computes and counts the batch
only after the computation succeeded; ``load_state_dict`` validates every value before it
assigns any.

Training: every ``forward`` remembers what its backward needs (a reference to the input and the
per-slot mean and inverse standard deviation, never a copy), and :meth:`Module.backward` turns
the gradient of the output into the gradient of the input and sets ``grad_weight`` and
``grad_bias``. BatchNorm modules can be frozen (``freeze()``/``unfreeze()``) for transfer
learning.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Union

import numpy as np

from . import _core
from . import functional as F

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "Module",
    "RMSNorm",
]

DTypeLike = Union[np.dtype, type, str]
ShapeLike = Union[int, Sequence[int]]


class _Saved(NamedTuple):
    """What a forward keeps for :meth:`Module.backward` (references, not copies).

    ``kind`` names the backward: ``"batch"`` (through batch statistics), ``"affine"`` (the
    frozen per-channel map of eval/frozen BatchNorm and eval InstanceNorm), ``"instance"``,
    ``"group"``, ``"layer"``, ``"rms"`` and ``"sync"`` (SyncBatchNorm across ranks).
    """

    kind: str
    input: np.ndarray  # the array the kernel saw (unbatched InstanceNorm input gets an N axis)
    mean: np.ndarray | None  # float64 per slot (None for rms)
    invstd: np.ndarray  # float64 per slot
    weight: np.ndarray | None
    has_bias: bool
    caller: np.ndarray  # the caller's input, whose shape and dtype grad_output must have
    overwritten: bool  # forward wrote its output over (part of) its input
    extra: Any = None  # kind-specific (SyncBatchNorm: communicator and global count)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.caller.shape

    @property
    def dtype(self) -> np.dtype:
        return self.caller.dtype


# The forward functions that Module.__init_subclass__ made a class's __call__ (weakly held:
# classes made and dropped at run time take theirs with them).
_FORWARD_ALIASES: weakref.WeakSet[Any] = weakref.WeakSet()


class _IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` returns (as ``torch.nn.Module`` does)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# --------------------------------------------------------------------------------------------
# argument checks (constructor time, O(1))


def _check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, which must be float32 or float64 (``TypeError`` otherwise)."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(value: Any, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _filled(shape: int | tuple[int, ...], dtype: np.dtype, value: float, name: str) -> np.ndarray:
    """A new parameter/statistic array of ``shape`` filled with ``value``; a size that no array
    can have (or that does not fit in memory) is an error naming the argument ``name``."""
    dims = (shape,) if isinstance(shape, int) else shape
    nbytes = dtype.itemsize
    for d in dims:
        nbytes *= d
    if nbytes >= 2**63:
        raise ValueError(f"{name}={shape!r} asks for an array of {nbytes} bytes, which cannot exist")
    try:
        return np.full(shape, value, dtype)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{name}={shape!r}: cannot create an array of that size ({e})") from None
    except MemoryError:
        raise MemoryError(f"{name}={shape!r}: not enough memory for {nbytes} bytes") from None


def _check_eps(eps: Any) -> float:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    value = float(eps)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def _check_momentum(momentum: Any) -> float | None:
    if momentum is None:
        return None
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a float in [0, 1] or None, got {type(momentum).__name__}")
    value = float(momentum)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
    return value


def _check_normalized_shape(normalized_shape: Any) -> tuple[int, ...]:
    if _is_int(normalized_shape):
        dims: tuple[Any, ...] = (normalized_shape,)
    else:
        try:
            if isinstance(normalized_shape, (str, bytes, set, frozenset, Mapping)):
                raise TypeError
            dims = tuple(normalized_shape)
        except TypeError:
            dims = (None,)  # not a sequence: reported below
    if not all(_is_int(d) for d in dims):
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        )
    shape = tuple(int(d) for d in dims)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(
            "normalized_shape must be a positive int or a non-empty sequence of positive ints, "
            f"got {normalized_shape!r}"
        )
    return shape


def _check_ndarray(input: Any) -> None:
    if not isinstance(input, np.ndarray):
        raise TypeError(f"input must be a numpy.ndarray, got {type(input).__name__}")


def _overlaps(out: np.ndarray | None, input: np.ndarray) -> bool:
    """Whether a forward with ``out`` may have overwritten ``input`` (bounds check, O(1))."""
    return isinstance(out, np.ndarray) and np.may_share_memory(out, input)


def _check_finite_stats(mean: np.ndarray, var: np.ndarray) -> None:
    """ValueError (before any running statistic changes) for NaN/inf batch statistics."""
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"non-finite batch statistics for channel {c} (mean={mean[c]}, var={var[c]}): "
            "running_mean and running_var were left unchanged; the input has NaN or inf values"
        )


def _frozen_stats(
    running_mean: np.ndarray, running_var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 ``(mean, 1 / sqrt(var + eps))`` of running statistics."""
    mean = np.asarray(running_mean, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    return mean, invstd


# --------------------------------------------------------------------------------------------
# state_dict values


def _to_numpy(value: Any) -> np.ndarray:
    """An array-like (a torch tensor included, on any device) as an ndarray."""
    if hasattr(value, "detach"):  # torch.Tensor and look-alikes
        tensor = value.detach()
        if hasattr(tensor, "cpu"):
            tensor = tensor.cpu()
        try:
            return np.asarray(tensor.numpy())
        except (TypeError, RuntimeError):
            if not hasattr(tensor, "float"):
                raise
            return np.asarray(tensor.float().numpy())  # bfloat16 and other types NumPy lacks
    return np.asarray(value)


def _convert_state_value(
    key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """``value`` checked (real, finite, of ``shape``) and cast to a fresh array of ``dtype``."""
    try:
        arr = _to_numpy(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"state_dict[{key!r}] cannot be converted to an array: {exc}") from exc
    integer_target = dtype.kind in "iu"
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"state_dict[{key!r}] must hold real numbers, got an array of dtype {arr.dtype}"
        )
    if arr.shape != shape:
        if shape == () and arr.shape == (1,):  # PyTorch accepts a 1-element vector for a scalar
            arr = arr.reshape(())
        else:
            raise ValueError(
                f"size mismatch for {key}: expected shape {shape}, got shape {arr.shape}"
            )
    with np.errstate(all="ignore"):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"state_dict[{key!r}] contains non-finite values (NaN or inf)")
        if integer_target:
            if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"state_dict[{key!r}] must hold integers, got {arr!r}")
            if (arr < 0).any():
                raise ValueError(f"state_dict[{key!r}] must be >= 0, got {arr!r}")
        result = arr.astype(dtype, copy=True)
        if not integer_target and not np.isfinite(result).all():
            raise ValueError(f"state_dict[{key!r}] overflows {dtype}")
    return result


# --------------------------------------------------------------------------------------------
# base class


class Module:
    """Base class of the normcpp modules: a train/eval flag, parameters and buffers held as
    NumPy arrays, and ``state_dict`` I/O with PyTorch's keys.

    Subclasses list their attribute names in ``_parameter_names`` and ``_buffer_names`` (an
    attribute set to ``None`` is absent) and implement :meth:`forward`.

    Parameters
    ----------
    dtype : float32 or float64
        The dtype of the floating-point parameters and buffers.

    Examples
    --------
    >>> import normcpp as nc
    >>> m = nc.BatchNorm1d(3)
    >>> m.eval() is m, m.training
    (True, False)
    >>> list(m.state_dict())
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    _parameter_names: tuple[str, ...] = ()
    _buffer_names: tuple[str, ...] = ()
    # Absent unless a subclass sets them (read by every forward's save: a plain attribute
    # read instead of getattr with a default).
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ``module(x)`` runs ``forward`` directly (one Python frame less on every call: a
        # tiny call costs about as much as its Python frames). A ``__call__`` that a class or
        # its bases define themselves (hooks, say) is kept.
        inherited = cls.__call__
        if ("forward" in cls.__dict__ and "__call__" not in cls.__dict__
                and (inherited is Module.__call__ or inherited in _FORWARD_ALIASES)):
            cls.__call__ = cls.forward  # type: ignore[method-assign]
            _FORWARD_ALIASES.add(cls.forward)

    def __init__(self, *, dtype: DTypeLike = np.float32) -> None:
        self._dtype: np.dtype = _check_dtype(dtype)
        self.training: bool = True
        #: Gradient of the loss with respect to ``weight``, set by :meth:`backward`.
        self.grad_weight: np.ndarray | None = None
        #: Gradient of the loss with respect to ``bias``, set by :meth:`backward`.
        self.grad_bias: np.ndarray | None = None
        # The last forward's _Saved fields as a plain tuple (built on every forward, so kept
        # cheap: a tiny call costs about as much as its Python work); see _saved_state.
        self._saved: tuple[Any, ...] | None = None

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the floating-point parameters and buffers (float32 or float64)."""
        return self._dtype

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Compute the module's output for ``input`` (implemented by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def __call__(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Same as :meth:`forward`."""
        return self.forward(input, out=out)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient of the loss with respect to the input of the last :meth:`forward`.

        Uses what the last successful ``forward`` saved: in training mode (or whenever the
        module normalized with the statistics of its input) the gradient flows through those
        statistics; after an eval-mode forward of BatchNorm/InstanceNorm, or a forward of a
        frozen BatchNorm, it is the gradient of the frozen per-channel affine map
        ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``.

        Sets ``grad_weight`` and ``grad_bias`` (``None`` where the module has no such
        parameter). They are *set*, not accumulated as in PyTorch: each call replaces them.
        ``backward`` may be called again (for another ``grad_output``) until the next forward.

        The forward keeps a *reference* to its input, not a copy: changing the input in place
        between forward and backward changes the gradient (as an in-place op would in
        PyTorch), and a forward that wrote its output over its input (``out=input``) cannot be
        differentiated. The weight array is referenced too, so updating it in place before
        ``backward`` changes the gradient: step the optimizer after ``backward``.

        Parameters
        ----------
        grad_output : ndarray
            Gradient of the loss with respect to the output; the shape and dtype of the
            forward's input (any memory layout).

        Returns
        -------
        ndarray
            Gradient with respect to the input, of the input's shape and dtype.

        Raises
        ------
        RuntimeError
            No forward was run yet, or the forward overwrote its input (``out=input``).
        TypeError
            ``grad_output`` is not an ndarray or its dtype differs from the input's.
        ValueError
            ``grad_output`` has another shape than the input.

        Examples
        --------
        >>> import numpy as np, normcpp as nc
        >>> m = nc.LayerNorm(4, dtype=np.float64)
        >>> x = np.random.default_rng(0).standard_normal((2, 4))
        >>> y = m(x)
        >>> dx = m.backward(np.ones_like(y))  # loss = y.sum()
        >>> bool(np.allclose(dx, 0.0)), m.grad_bias.tolist()
        (True, [2.0, 2.0, 2.0, 2.0])
        """
        saved = self._saved_for_backward(grad_output)
        dx, dw, db = self._backward(saved, grad_output)
        self.grad_weight, self.grad_bias = dw, db
        return dx

    def _saved_state(self) -> _Saved | None:
        """What the last successful forward saved, or None."""
        saved = self._saved
        if saved is None:
            return None
        kind, input, stats, *rest = saved
        if stats is None:
            mean = invstd = None
        else:  # packed rows (mean, invstd), or (invstd,) for RMSNorm
            mean = stats[0, ...] if len(stats) == 2 else None
            invstd = stats[-1, ...]
        return _Saved(kind, input, mean, invstd, *rest)

    def _saved_for_backward(self, grad_output: Any) -> _Saved:
        """The saved forward state, after checking that ``grad_output`` fits it."""
        saved = self._saved_state()
        name = type(self).__name__
        if saved is None:
            raise RuntimeError(
                f"{name}.backward() called before forward(): run a forward pass first"
            )
        if saved.overwritten:
            raise RuntimeError(
                f"{name}.backward(): the last forward wrote its output over its input "
                "(out=input), so the input it needs is gone; run the forward with a separate "
                "out to differentiate it"
            )
        if not isinstance(grad_output, np.ndarray):
            raise TypeError(
                f"grad_output must be a numpy.ndarray, got {type(grad_output).__name__}"
            )
        if grad_output.dtype != saved.dtype:
            raise TypeError(
                f"grad_output must have the forward input's dtype {saved.dtype}, "
                f"got {grad_output.dtype}"
            )
        if grad_output.shape != saved.shape:
            raise ValueError(
                f"grad_output must have the forward input's shape {saved.shape}, "
                f"got {grad_output.shape}"
            )
        return saved

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(grad_input, grad_weight, grad_bias)`` from checked state (by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def _save(
        self,
        kind: str,
        input: np.ndarray,
        stats: np.ndarray | None,
        out: np.ndarray | None,
        *,
        caller_input: np.ndarray | None = None,
        extra: Any = None,
    ) -> None:
        """Remember a successful forward for :meth:`backward` (references only; positional:
        this runs on every forward). ``stats``: float64 rows (mean, invstd), or (invstd,)
        for RMSNorm, as a ``_core._*_forward_packed`` call returns them; or None (the frozen
        affine map reads the module's running statistics at backward time). (BatchNorm's training step builds the same tuple
        inline: keep the two in step.)"""
        caller = input if caller_input is None else caller_input
        self._saved = (
            kind,
            input,
            stats,
            self.weight,
            self.bias is not None,
            caller,
            out is not None and _overlaps(out, caller),
            extra,
        )

    def train(self, mode: bool = True) -> Self:
        """Set training mode (``True``) or evaluation mode (``False``); returns ``self``.

        Examples
        --------
        >>> import normcpp as nc
        >>> nc.LayerNorm(4).train(False).training
        False
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        """Set evaluation mode (same as ``train(False)``); returns ``self``.

        Examples
        --------
        >>> import normcpp as nc
        >>> nc.BatchNorm2d(8).eval().training
        False
        """
        return self.train(False)

    def extra_repr(self) -> str:
        """The text inside the parentheses of ``repr(module)``."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # parameters and buffers ----------------------------------------------------------------

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` for each parameter (the arrays themselves, not copies).

        Examples
        --------
        >>> import normcpp as nc
        >>> [name for name, _ in nc.GroupNorm(2, 4).named_parameters()]
        ['weight', 'bias']
        """
        for name in self._parameter_names:
            value = getattr(self, name, None)
            if value is not None:
                yield name, value

    def parameters(self) -> Iterator[np.ndarray]:
        """Each parameter array (the arrays themselves, so they can be updated in place).

        Examples
        --------
        >>> import normcpp as nc
        >>> m = nc.LayerNorm(3)
        >>> for p in m.parameters():
        ...     p *= 2.0
        >>> m.weight.tolist()
        [2.0, 2.0, 2.0]
        """
        for _, value in self.named_parameters():
            yield value

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` for each buffer (the arrays themselves, not copies).

        Examples
        --------
        >>> import normcpp as nc
        >>> [name for name, _ in nc.BatchNorm1d(3).named_buffers()]
        ['running_mean', 'running_var', 'num_batches_tracked']
        """
        for name in self._buffer_names:
            value = getattr(self, name, None)
            if value is not None:
                yield name, value

    def buffers(self) -> Iterator[np.ndarray]:
        """Each buffer array (the arrays themselves, not copies).

        Examples
        --------
        >>> import normcpp as nc
        >>> len(list(nc.BatchNorm1d(3).buffers()))
        3
        """
        for _, value in self.named_buffers():
            yield value

    def _state_items(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.named_parameters()
        yield from self.named_buffers()

    def _state_dtype(self, key: str) -> np.dtype:
        """The dtype that ``load_state_dict`` casts the value of ``key`` to."""
        return self._dtype

    def _tolerate_missing(self, key: str) -> bool:
        """Whether ``load_state_dict`` keeps the current value when ``key`` is absent."""
        return False

    # state_dict ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers, under PyTorch's keys in PyTorch's order.

        Returns
        -------
        dict of str to ndarray
            Parameters first, then buffers; absent ones (``None``) are left out.

        Examples
        --------
        >>> import normcpp as nc
        >>> sd = nc.BatchNorm2d(4).state_dict()
        >>> list(sd), sd["num_batches_tracked"].dtype
        (['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'], dtype('int64'))
        """
        return {name: np.array(value, copy=True) for name, value in self._state_items()}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> _IncompatibleKeys:
        """Copy values from ``state_dict`` into the parameters and buffers.

        Values may be any array-likes, PyTorch tensors included (so a ``torch.nn`` module's
        ``state_dict()`` loads directly). Each is checked (real numbers, finite, the expected
        shape) and cast to this module's dtype (``num_batches_tracked`` to int64). Everything is
        validated before anything is assigned, so a failed load changes nothing. The arrays are
        updated in place, so references from :meth:`parameters` stay valid.

        Parameters
        ----------
        state_dict : mapping of str to array-like
        strict : bool, default True
            Raise ``ValueError`` if ``state_dict`` lacks a key of this module or has another
            key. A missing ``num_batches_tracked`` is tolerated (its value is kept), as in
            PyTorch.

        Returns
        -------
        NamedTuple ``(missing_keys, unexpected_keys)``

        Raises
        ------
        TypeError
            ``state_dict`` is not a mapping, or a value is not real numbers.
        ValueError
            Missing or unexpected keys (strict), a shape mismatch, a non-finite value.

        Examples
        --------
        >>> import numpy as np, normcpp as nc
        >>> m = nc.LayerNorm(3)
        >>> m.load_state_dict({"weight": [1.0, 2.0, 3.0], "bias": np.zeros(3)})
        _IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> m.weight
        array([1., 2., 3.], dtype=float32)
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        current = dict(self._state_items())
        missing = [k for k in current if k not in state_dict and not self._tolerate_missing(k)]
        unexpected = [k if isinstance(k, str) else repr(k) for k in state_dict if k not in current]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing key(s): " + ", ".join(repr(k) for k in missing))
            if unexpected:
                parts.append("unexpected key(s): " + ", ".join(repr(k) for k in unexpected))
            raise ValueError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                + "; ".join(parts)
            )
        staged = {
            key: _convert_state_value(key, state_dict[key], np.shape(value),
                                      self._state_dtype(key))
            for key, value in current.items()
            if key in state_dict
        }
        for key, value in staged.items():
            target = current[key]
            if (
                isinstance(target, np.ndarray)
                and target.flags.writeable
                and target.dtype == value.dtype
            ):
                np.copyto(target, value)
            else:
                setattr(self, key, value)
        return _IncompatibleKeys(missing, unexpected)


# --------------------------------------------------------------------------------------------
# BatchNorm and InstanceNorm


class _NormBase(Module):
    """Common base of BatchNorm and InstanceNorm: per-channel affine parameters and running
    statistics.

    Subclasses set ``_layouts``: for each accepted input rank, ``(ndim, dimension names,
    channel axis)``.
    """

    _parameter_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _layouts: tuple[tuple[int, str, int], ...] = ()
    _channel_dim: ClassVar[dict[int, int]] = {}  # ndim -> channel axis, from _layouts

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: DTypeLike = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(dtype=dtype)
        self.num_features: int = _check_positive_int(num_features, "num_features")
        self.eps: float = _check_eps(eps)
        self.momentum: float | None = _check_momentum(momentum)
        self.affine: bool = bool(affine)
        self.track_running_stats: bool = bool(track_running_stats)
        c, dt = self.num_features, self._dtype
        self.weight: np.ndarray | None = _filled(c, dt, 1, "num_features") if self.affine else None
        self.bias: np.ndarray | None = (
            _filled(c, dt, 0, "num_features") if self.affine and bias else None
        )
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None
        self.num_batches_tracked: np.ndarray | None = None
        if self.track_running_stats:
            self.running_mean = _filled(c, dt, 0, "num_features")
            self.running_var = _filled(c, dt, 1, "num_features")
            self.num_batches_tracked = np.zeros((), np.int64)

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, ``num_batches_tracked`` to 0 (in place).

        Examples
        --------
        >>> import numpy as np, normcpp as nc
        >>> m = nc.BatchNorm1d(2)
        >>> _ = m(np.array([[0.0, 1.0], [2.0, 5.0]]))
        >>> m.reset_running_stats()
        >>> m.running_mean.tolist(), int(m.num_batches_tracked)
        ([0.0, 0.0], 0)
        """
        if self.running_mean is not None:
            self.running_mean.fill(0)
        if self.running_var is not None:
            self.running_var.fill(1)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.fill(0)

    def reset_parameters(self) -> None:
        """Reset the running statistics, ``weight`` to 1 and ``bias`` to 0 (in place).

        Examples
        --------
        >>> import normcpp as nc
        >>> m = nc.BatchNorm1d(2)
        >>> m.weight[:] = 3.0
        >>> m.reset_parameters()
        >>> m.weight.tolist()
        [1.0, 1.0]
        """
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.fill(1)
        if self.bias is not None:
            self.bias.fill(0)

    def extra_repr(self) -> str:
        """``"64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True"``."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _tolerate_missing(self, key: str) -> bool:
        return key == "num_batches_tracked"

    def _state_dtype(self, key: str) -> np.dtype:
        return np.dtype(np.int64) if key == "num_batches_tracked" else self._dtype

    def _batch_stats_mode(self) -> bool:
        """Whether ``forward`` normalizes with the statistics of its input (batch statistics)
        rather than with the running statistics."""
        return self.training or self.running_mean is None or self.running_var is None

    def _updates_running_stats(self) -> bool:
        """Whether ``forward`` updates the running statistics."""
        return (
            self.training
            and self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
        )

    def _has_channel_state(self) -> bool:
        """Whether a per-channel array ties the module to ``num_features`` channels."""
        return any(
            a is not None for a in (self.weight, self.bias, self.running_mean, self.running_var)
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._channel_dim = {ndim: dim for ndim, _, dim in cls._layouts}

    def _check_input(self, input: Any) -> None:
        """Type, rank and (where a per-channel array needs it) channel count of ``input``.
        (On every call: kept to a few attribute reads.)"""
        if not isinstance(input, np.ndarray):
            _check_ndarray(input)
        dim = self._channel_dim.get(input.ndim)
        if dim is None:
            expected = " or ".join(f"{ndim}-D input {names}" for ndim, names, _ in self._layouts)
            raise ValueError(
                f"{type(self).__name__} expected {expected}, got {input.ndim}-D input of shape "
                f"{input.shape}"
            )
        if input.shape[dim] != self.num_features and self._has_channel_state():
            raise ValueError(
                f"{type(self).__name__} expected input with num_features={self.num_features} "
                f"channels at dim {dim}, got {input.shape[dim]} (input shape {input.shape})"
            )


class _Recorder:
    """Exact moments of every batch a BatchNorm sees while recalibrating (Chan merge, float64).

    Used by :func:`normcpp.recalibrate`; merged in the order the batches arrive.
    """

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.batches: int = 0

    def add(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        if self.count is None:
            self.count, self.mean, self.m2 = count.copy(), mean.copy(), m2.copy()
        else:
            self.count, self.mean, self.m2 = _chan_merge(
                (self.count, self.mean, self.m2), (count, mean, m2)
            )
        self.batches += 1


def _chan_merge(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s exact merge of two sets of per-channel float64 ``(count, mean, M2)``.

    ``mean = mean_a + delta * n_b / n``, ``M2 = M2_a + M2_b + delta**2 * n_a * n_b / n`` with
    ``delta = mean_b - mean_a``; an empty side (count 0) leaves the other unchanged. The same
    inputs in the same order give bitwise-identical results on every machine.
    """
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    frac = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
    delta = mb - ma
    mean = ma + delta * frac
    m2 = m2a + m2b + delta * delta * (na * frac)
    return n, mean, m2


def _local_moments(input: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-channel float64 ``(count, mean, M2)`` of ``input`` (N, C, *); an empty
    input gives count 0, mean 0, M2 0."""
    c = input.shape[1]
    if input.size == 0:
        return np.zeros(c), np.zeros(c), np.zeros(c)
    count, mean, m2 = F.batch_norm_stats(input)
    return (np.asarray(count, dtype=np.float64), np.asarray(mean, dtype=np.float64),
            np.asarray(m2, dtype=np.float64))


def _total_count(count: np.ndarray) -> int:
    """The element count per channel (the same for every channel)."""
    return int(count[0]) if count.size else 0


class _BatchNorm(_NormBase):
    """Batch normalization: per-channel statistics over the batch and spatial dims.

    Batch statistics are used in training mode and whenever the module has no running
    statistics; the running statistics are updated in training mode when tracked. A frozen
    module (:meth:`freeze`) always normalizes with its running statistics and never updates
    them.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: DTypeLike = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         bias=bias)
        self._frozen: bool = False
        self._recorder: _Recorder | None = None  # set while normcpp.recalibrate records

    # freezing -------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """Whether the module is frozen (see :meth:`freeze`)."""
        return self._frozen

    def freeze(self) -> Self:
        """Freeze the running statistics; returns ``self``.

        A frozen BatchNorm normalizes with its running statistics in training *and* eval
        mode and never updates them (nor ``num_batches_tracked``); :meth:`train` does not
        unfreeze it. :meth:`backward` then gives the gradient of the frozen affine map
        (``grad_input``, and ``grad_weight``/``grad_bias``, which a training loop may apply or
        ignore). See :func:`normcpp.freeze_batchnorm` for the transfer-learning recipe.

        Raises
        ------
        ValueError
            The module has no running statistics (``track_running_stats=False``).

        Examples
        --------
        >>> import numpy as np, normcpp as nc
        >>> m = nc.BatchNorm1d(2).freeze()
        >>> y = m.train()(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
        >>> m.frozen, m.training, int(m.num_batches_tracked), m.running_mean.tolist()
        (True, True, 0, [0.0, 0.0])
        """
        if self.running_mean is None or self.running_var is None:
            raise ValueError(
                f"cannot freeze {type(self).__name__} without running statistics "
                "(track_running_stats=False)"
            )
        self._frozen = True
        return self

    def unfreeze(self) -> Self:
        """Undo :meth:`freeze` (training mode uses and tracks batch statistics again);
        returns ``self``.

        Examples
        --------
        >>> import normcpp as nc
        >>> nc.BatchNorm2d(3).freeze().unfreeze().frozen
        False
        """
        self._frozen = False
        return self

    def extra_repr(self) -> str:
        """As :class:`BatchNorm1d`'s, with ``frozen=True`` appended when frozen."""
        text = super().extra_repr()
        return text + ", frozen=True" if self._frozen else text

    # forward --------------------------------------------------------------------------------

    def _momentum_factor(self) -> float:
        """The update factor for the next tracked batch: ``momentum``, or with
        ``momentum=None`` the cumulative average ``1 / (num_batches_tracked + 1)``."""
        if self.momentum is not None:
            return self.momentum
        if self.num_batches_tracked is None:
            return 0.0
        return 1.0 / float(int(self.num_batches_tracked) + 1)

    def _uses_running_stats(self) -> bool:
        """Whether ``forward`` normalizes with the running statistics (eval or frozen)."""
        return self._recorder is None and (self._frozen or not self._batch_stats_mode())

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize ``input`` (N, C, *) per channel.

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input`` (then
            :meth:`backward` is not available for this forward).

        Returns
        -------
        ndarray
            Same shape, dtype and memory layout as ``input``.
        """
        # The common case checked inline (a method call costs as much as the check); anything
        # else goes to _check_input, which raises with the full message or accepts it.
        if (type(input) is not np.ndarray or input.ndim not in self._channel_dim
                or input.shape[1] != self.num_features):
            self._check_input(input)
        if self._recorder is not None:
            return self._forward_with_moments(input, out, _local_moments(input), update=False)
        # (The mode tests of _uses_running_stats / _updates_running_stats, inlined: a method
        # call costs about as much as a tiny BatchNorm's arithmetic.)
        rm, rv = self.running_mean, self.running_var
        tracked = rm is not None and rv is not None
        if self._frozen or not (self.training or not tracked):
            # Eval or frozen: the per-channel affine map of the running statistics, the hot
            # path of inference (straight to the core, positional arguments). Its backward
            # reads the statistics from the module, sparing this forward two allocations.
            result = _core.batch_norm(input, rm, rv, self.weight, self.bias, False, 0.0,
                                      self.eps, out, "raise", None)
            self._save("affine", input, None, out)
            return result
        update = tracked and self.training and self.track_running_stats
        momentum = self.momentum
        if momentum is None:
            momentum = self._momentum_factor()
        # The core directly, all arguments positional (F.batch_norm_forward adds a frame); it
        # raises for one value per channel, and returns mean and invstd packed in one array.
        result, stats = _core._batch_norm_forward_packed(
            input,
            rm if update else None,
            rv if update else None,
            self.weight,
            self.bias,
            True,
            momentum if update else 0.0,
            self.eps,
            out,
            "raise",
            None,
        )
        if update:
            nbt = self.num_batches_tracked
            if nbt is not None:
                nbt[()] = nbt.item() + 1
        # What _save("batch", input, stats, out) stores, built inline (the training step's
        # last method call).
        self._saved = ("batch", input, stats, self.weight, self.bias is not None, input,
                       out is not None and _overlaps(out, input), None)
        return result

    def _forward_with_moments(
        self,
        input: np.ndarray,
        out: np.ndarray | None,
        moments: tuple[np.ndarray, np.ndarray, np.ndarray],
        *,
        update: bool,
        kind: str = "batch",
        extra: Any = None,
    ) -> np.ndarray:
        """Normalize with given exact batch moments (local, or merged across ranks); record
        them while recalibrating; update the running statistics if ``update``."""
        count, mean, m2 = moments
        n = _total_count(count)
        if n <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got "
                + (f"{n} in total over all ranks" if kind == "sync" else
                   f"input of shape {input.shape}")
            )
        var = m2 / n
        result = F.batch_norm(input, mean, var, self.weight, self.bias, False, 0.0, self.eps,
                              out=out)
        if self._recorder is not None:
            self._recorder.add(count, mean, m2)
        elif update:
            self._update_running(mean, m2 / (n - 1))
        invstd = 1.0 / np.sqrt(var + self.eps)
        self._save(kind, input, np.stack((mean, invstd)), out, extra=extra)
        return result

    def _record_batch(self, input: np.ndarray) -> None:
        """While recalibrating: record the exact moments of ``input`` (no output)."""
        assert self._recorder is not None
        self._check_input(input)
        self._recorder.add(*_local_moments(input))

    def _update_running(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        """``running = (1 - m) * running + m * batch`` in float64, stored in place. A NaN or
        inf batch statistic raises first and changes nothing (the functional ops' default
        ``nonfinite="raise"`` policy)."""
        assert self.running_mean is not None and self.running_var is not None
        _check_finite_stats(mean, unbiased_var)
        m = self._momentum_factor()
        new_mean = (1.0 - m) * self.running_mean.astype(np.float64) + m * mean
        new_var = (1.0 - m) * self.running_var.astype(np.float64) + m * unbiased_var
        np.copyto(self.running_mean, new_mean, casting="unsafe")
        np.copyto(self.running_var, new_var, casting="unsafe")
        self._count_batch()

    def _count_batch(self) -> None:
        """``num_batches_tracked += 1`` in place (an item store: a ufunc call on a 0-d array
        costs more than a whole tiny BatchNorm)."""
        nbt = self.num_batches_tracked
        if nbt is not None:
            nbt[()] = nbt.item() + 1

    # backward -------------------------------------------------------------------------------

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        mean, invstd = saved.mean, saved.invstd
        if mean is None:  # eval / frozen forward: the frozen map of the running statistics
            mean, invstd = _frozen_stats(self.running_mean, self.running_var, self.eps)
        return F.batch_norm_backward(
            grad_output, saved.input, saved.weight, mean, invstd,
            saved.kind != "affine", has_bias=saved.has_bias,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input, like ``torch.nn.BatchNorm1d``.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    momentum : float or None, default 0.1
        Running statistics are updated as ``(1 - momentum) * running + momentum * batch``;
        ``None`` gives the cumulative average over all batches seen.
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them the
        batch statistics are used in eval mode too.
    dtype : float32 or float64, default float32
        Dtype of the parameters and running statistics (the input may have another).
    bias : bool, default True
        Keyword only. With ``affine``, whether to have a ``bias``.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.BatchNorm1d(3)
    >>> x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    >>> y = m(x)
    >>> np.allclose(y.mean(axis=0), 0, atol=1e-5), int(m.num_batches_tracked)
    (True, 1)
    >>> m
    BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """

    _layouts = ((2, "(N, C)", 1), (3, "(N, C, L)", 1))


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, like ``torch.nn.BatchNorm2d``.

    Same parameters as :class:`BatchNorm1d`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.BatchNorm2d(4, momentum=None)
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    >>> m(x).shape, m.eval()(x).shape
    ((2, 4, 5, 5), (2, 4, 5, 5))
    """

    _layouts = ((4, "(N, C, H, W)", 1),)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W) input, like ``torch.nn.BatchNorm3d``.

    Same parameters as :class:`BatchNorm1d`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.BatchNorm3d(2, dtype=np.float64)
    >>> m(np.ones((2, 2, 3, 3, 3))).shape
    (2, 2, 3, 3, 3)
    """

    _layouts = ((5, "(N, C, D, H, W)", 1),)


class _InstanceNorm(_NormBase):
    """Instance normalization: statistics per (sample, channel) over the spatial dims.

    Accepts batched (N, C, *spatial) and unbatched (C, *spatial) input. As in PyTorch, the
    input statistics are used in training mode and whenever the running statistics are not
    tracked; tracked running statistics are updated in training mode (``momentum=None`` means
    no update) and ``num_batches_tracked`` is never incremented.
    """

    _spatial_dims: int = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        dtype: DTypeLike = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         bias=bias)

    def _batch_stats_mode(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize each (sample, channel) of ``input`` over its spatial positions.

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
            Batched (N, C, *spatial) or unbatched (C, *spatial).
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input``.

        Returns
        -------
        ndarray
            Same shape and dtype as ``input``.
        """
        self._check_input(input)
        batched = input.ndim == self._spatial_dims + 2
        x = input if batched else input[np.newaxis]
        target = out
        if not batched and isinstance(out, np.ndarray):
            target = out[np.newaxis]
        momentum = self.momentum if self.momentum is not None else 0.0
        if self._batch_stats_mode():
            # (The core raises for a single spatial element.)
            result, stats = _core._instance_norm_forward_packed(
                x, self.running_mean, self.running_var, self.weight, self.bias, True,
                momentum, self.eps, target, "raise",
            )
            kind = "instance"
        else:  # eval with running statistics: a per-channel affine map (its backward reads
            # the running statistics, as BatchNorm's does)
            result = _core.instance_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False,
                momentum, self.eps, target, "raise",
            )
            stats = None
            kind = "affine"
        self._save(kind, x, stats, out, caller_input=input)
        if batched:
            return result
        return out if out is not None else result[0]

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        x = saved.input
        dy = grad_output if grad_output.ndim == x.ndim else grad_output[np.newaxis]
        if saved.kind == "affine":
            mean, invstd = _frozen_stats(self.running_mean, self.running_var, self.eps)
            dx, dw, db = F.batch_norm_backward(dy, x, saved.weight, mean, invstd,
                                               False, has_bias=saved.has_bias)
        else:
            dx, dw, db = F.instance_norm_backward(dy, x, saved.weight, saved.mean, saved.invstd,
                                                  has_bias=saved.has_bias)
        return (dx if grad_output.ndim == x.ndim else dx[0]), dw, db


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization over (N, C, L) or unbatched (C, L) input, like
    ``torch.nn.InstanceNorm1d``.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        Update factor of the running statistics (``None``: no update, as in PyTorch).
    affine : bool, default False
        Learnable per-channel ``weight`` and ``bias``.
    track_running_stats : bool, default False
        Keep running statistics (updated in training, used in eval).
    dtype : float32 or float64, default float32
    bias : bool, default True
        Keyword only. With ``affine``, whether to have a ``bias``.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.InstanceNorm1d(3)
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> np.allclose(m(x).mean(axis=2), 0, atol=1e-6), m(x[0]).shape
    (True, (3, 4))
    """

    _layouts = ((3, "(N, C, L)", 1), (2, "(C, L)", 0))
    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization over (N, C, H, W) or unbatched (C, H, W) input, like
    ``torch.nn.InstanceNorm2d``. Same parameters as :class:`InstanceNorm1d`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.InstanceNorm2d(3, affine=True)
    >>> m(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    _layouts = ((4, "(N, C, H, W)", 1), (3, "(C, H, W)", 0))
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization over (N, C, D, H, W) or unbatched (C, D, H, W) input, like
    ``torch.nn.InstanceNorm3d``. Same parameters as :class:`InstanceNorm1d`.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.InstanceNorm3d(2, track_running_stats=True)
    >>> m(np.ones((1, 2, 2, 2, 2), np.float32)).shape
    (1, 2, 2, 2, 2)
    """

    _layouts = ((5, "(N, C, D, H, W)", 1), (4, "(C, D, H, W)", 0))
    _spatial_dims = 3


# --------------------------------------------------------------------------------------------
# GroupNorm, LayerNorm, RMSNorm


class GroupNorm(Module):
    """Group normalization over (N, C, *) input, like ``torch.nn.GroupNorm``.

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        C, the number of channels.
    eps : float, default 1e-5
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    dtype : float32 or float64, default float32
    bias : bool, default True
        Keyword only. With ``affine``, whether to have a ``bias``.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.GroupNorm(2, 4)
    >>> m(np.random.default_rng(0).standard_normal((3, 4, 5))).shape
    (3, 4, 5)
    >>> m
    GroupNorm(2, 4, eps=1e-05, affine=True, bias=True)
    """

    _parameter_names = ("weight", "bias")

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        dtype: DTypeLike = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(dtype=dtype)
        self.num_groups: int = _check_positive_int(num_groups, "num_groups")
        self.num_channels: int = _check_positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups != 0:
            raise ValueError(
                f"num_channels ({self.num_channels}) must be divisible by num_groups "
                f"({self.num_groups})"
            )
        self.eps: float = _check_eps(eps)
        self.affine: bool = bool(affine)
        c, dt = self.num_channels, self._dtype
        self.weight: np.ndarray | None = _filled(c, dt, 1, "num_channels") if self.affine else None
        self.bias: np.ndarray | None = (
            _filled(c, dt, 0, "num_channels") if self.affine and bias else None
        )

    def reset_parameters(self) -> None:
        """``weight`` to 1 and ``bias`` to 0 (in place)."""
        if self.weight is not None:
            self.weight.fill(1)
        if self.bias is not None:
            self.bias.fill(0)

    def extra_repr(self) -> str:
        """``"32, 64, eps=1e-05, affine=True, bias=True"``."""
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )

    def _check_input(self, input: Any) -> None:
        """Type, rank and (with weight or bias) channel count of ``input``. (Run before the
        core only for a non-ndarray, and after it raised: the core checks the same things.)"""
        _check_ndarray(input)
        if input.ndim < 2:
            raise ValueError(
                f"GroupNorm expected input of at least 2-D (N, C, *), got {input.ndim}-D input "
                f"of shape {input.shape}"
            )
        has_channel_state = self.weight is not None or self.bias is not None
        if has_channel_state and input.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm expected input with num_channels={self.num_channels} channels at "
                f"dim 1, got {input.shape[1]} (input shape {input.shape})"
            )

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize each (sample, group) of ``input`` (N, C, *).

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input``.
        """
        if type(input) is not np.ndarray:
            self._check_input(input)
        try:
            result, stats = _core._group_norm_forward_packed(input, self.num_groups, self.weight,
                                                             self.bias, self.eps, out, None)
        except ValueError:
            _own_error(self._check_input, input)  # the module's own message where it has one
            raise
        self._save("group", input, stats, out)
        return result

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return F.group_norm_backward(grad_output, saved.input, self.num_groups, saved.weight,
                                     saved.mean, saved.invstd, has_bias=saved.has_bias)


def _own_error(check: Callable[..., None], *args: Any) -> None:
    """While the core's ValueError is handled: run the module's own input ``check``; its error,
    if any, replaces the core's (raised without the core's as context, so the traceback shows
    one message)."""
    try:
        check(*args)
    except (TypeError, ValueError) as own:
        raise own from None


def _check_trailing_shape(module: Module, input: Any, normalized_shape: tuple[int, ...]) -> None:
    _check_ndarray(input)
    k = len(normalized_shape)
    if input.ndim < k or tuple(input.shape[input.ndim - k:]) != normalized_shape:
        raise ValueError(
            f"{type(module).__name__} expected input whose trailing dims equal "
            f"normalized_shape={normalized_shape}, got input of shape {input.shape}"
        )


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` dims, like
    ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing shape that each row is normalized over.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
    bias : bool, default True
        With ``elementwise_affine``, whether to have a ``bias``.
    dtype : float32 or float64, default float32

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.LayerNorm(8)
    >>> y = m(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    >>> np.allclose(y.mean(axis=1), 0, atol=1e-6)
    True
    >>> m
    LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)
    """

    _parameter_names = ("weight", "bias")

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__(dtype=dtype)
        self.normalized_shape: tuple[int, ...] = _check_normalized_shape(normalized_shape)
        self.eps: float = _check_eps(eps)
        self.elementwise_affine: bool = bool(elementwise_affine)
        shape, dt = self.normalized_shape, self._dtype
        affine = self.elementwise_affine
        name = "normalized_shape"
        self.weight: np.ndarray | None = _filled(shape, dt, 1, name) if affine else None
        self.bias: np.ndarray | None = _filled(shape, dt, 0, name) if affine and bias else None

    def reset_parameters(self) -> None:
        """``weight`` to 1 and ``bias`` to 0 (in place)."""
        if self.weight is not None:
            self.weight.fill(1)
        if self.bias is not None:
            self.bias.fill(0)

    def extra_repr(self) -> str:
        """``"(768,), eps=1e-05, elementwise_affine=True, bias=True"``."""
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize ``input`` (*, *normalized_shape) over its trailing dims.

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input``.
        """
        # The core checks the shapes too: the module's message is produced only for a
        # non-ndarray and after the core raised (no cost on the success path).
        if type(input) is not np.ndarray:
            _check_trailing_shape(self, input, self.normalized_shape)
        try:
            result, stats = _core._layer_norm_forward_packed(input, self.normalized_shape,
                                                             self.weight, self.bias, self.eps, out,
                                                             None)
        except ValueError:
            _own_error(_check_trailing_shape, self, input, self.normalized_shape)
            raise
        self._save("layer", input, stats, out)
        return result

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return F.layer_norm_backward(grad_output, saved.input, self.normalized_shape,
                                     saved.weight, saved.mean, saved.invstd,
                                     has_bias=saved.has_bias)


class RMSNorm(Module):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims, like
    ``torch.nn.RMSNorm``: ``x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
    eps : float or None, default None
        ``None`` uses ``np.finfo(input.dtype).eps``, as PyTorch does.
    elementwise_affine : bool, default True
        Learnable ``weight`` (ones) of shape ``normalized_shape``.
    dtype : float32 or float64, default float32

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> m = nc.RMSNorm(2, eps=0.0)
    >>> np.round(m(np.array([[3.0, 4.0]])), 6).tolist()
    [[0.848528, 1.131371]]
    >>> m
    RMSNorm((2,), eps=0.0, elementwise_affine=True)
    """

    _parameter_names = ("weight",)

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None = None,
        elementwise_affine: bool = True,
        dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__(dtype=dtype)
        self.normalized_shape: tuple[int, ...] = _check_normalized_shape(normalized_shape)
        self.eps: float | None = None if eps is None else _check_eps(eps)
        self.elementwise_affine: bool = bool(elementwise_affine)
        self.weight: np.ndarray | None = (
            _filled(self.normalized_shape, self._dtype, 1, "normalized_shape")
            if self.elementwise_affine
            else None
        )

    def reset_parameters(self) -> None:
        """``weight`` to 1 (in place)."""
        if self.weight is not None:
            self.weight.fill(1)

    def extra_repr(self) -> str:
        """``"(768,), eps=None, elementwise_affine=True"``."""
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize ``input`` (*, *normalized_shape) by its root mean square.

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input``.
        """
        # The core checks the shapes too: the module's message is produced only for a
        # non-ndarray and after the core raised (no cost on the success path).
        if type(input) is not np.ndarray:
            _check_trailing_shape(self, input, self.normalized_shape)
        try:
            result, stats = _core._rms_norm_forward_packed(input, self.normalized_shape,
                                                           self.weight, self.eps, out)
        except ValueError:
            _own_error(_check_trailing_shape, self, input, self.normalized_shape)
            raise
        self._save("rms", input, stats, out)
        return result

    def _backward(
        self, saved: _Saved, grad_output: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        dx, dw = F.rms_norm_backward(grad_output, saved.input, self.normalized_shape,
                                     saved.weight, saved.invstd)
        return dx, dw, None
