"""Preprocessing for image pipelines: fused normalize and exact per-channel dataset statistics.

:func:`normalize` is the ``ToTensor() + Normalize(mean, std)`` step of a vision pipeline in one
pass over memory: uint8/uint16/float input, per-channel ``(x * scale - mean) / std``, layout
change (NHWC <-> NCHW) and conversion to float32 or float16, with SIMD kernels and threads
and no temporaries.

:class:`ChannelStats` computes the per-channel mean, variance, std, min and max of a whole
dataset, streaming over batches of any size: exactly (integer sums) for uint8/uint16 data, in
float64 with a stable blocked two-pass + Chan merge for float data. Its results seed
:func:`normalize` and the running statistics of a BatchNorm module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np

from . import _core

__all__ = ["ChannelStats", "normalize"]

ArrayLike = Any
PerChannel = Union[float, Sequence[float], np.ndarray]

_IMAGE_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.float16, np.float32,
                                              np.float64))
_DEFAULT_SCALE = {np.dtype(np.uint8): 1.0 / 255.0, np.dtype(np.uint16): 1.0 / 65535.0}
_OUT_LAYOUTS = {"NCHW": False, "CHW": False, "NHWC": True, "HWC": True}


def _as_image_array(obj: ArrayLike, name: str) -> np.ndarray:
    """``obj`` as an ndarray of a supported image dtype (TypeError otherwise)."""
    if isinstance(obj, np.ndarray):
        a = obj
    elif isinstance(obj, (list, tuple)) or hasattr(obj, "__array__") or hasattr(
            obj, "__array_interface__"):
        a = np.asarray(obj)
    else:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    if a.dtype not in _IMAGE_DTYPES:
        raise TypeError(f"{name} must have dtype uint8, uint16, float16, float32 or float64, "
                        f"got {a.dtype} (cast it first, e.g. {name}.astype(np.float32))")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _as_int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _as_real(v: Any, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def _per_channel(v: PerChannel, c: int, name: str) -> np.ndarray:
    """A float64 array of ``c`` values from a scalar or a length-``c`` (or length-1) sequence."""
    if isinstance(v, (bool, np.bool_, str, bytes)) or v is None:
        raise TypeError(f"{name} must be a number or a sequence of {c} numbers, "
                        f"got {type(v).__name__}")
    a = np.asarray(v)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64).reshape(-1) if a.ndim <= 1 else a.astype(np.float64)
    if a.ndim != 1 or a.size not in (1, c):
        raise ValueError(f"{name} must be a number or have {c} values (one per channel), "
                         f"got shape {np.shape(v)}")
    return np.ascontiguousarray(np.broadcast_to(a, (c,)))


def _channels_last(channel_axis: Any, ndim: int) -> bool:
    """True for a channels-last image/batch, False for channels-first (ValueError otherwise)."""
    axis = _as_int(channel_axis, "channel_axis")
    if ndim == 4:
        if axis in (-1, 3):
            return True
        if axis in (1, -3):
            return False
        raise ValueError(f"channel_axis must be -1 (N, H, W, C) or 1 (N, C, H, W) for a batch "
                         f"of images, got {axis}")
    if axis in (-1, 2):
        return True
    if axis in (0, -3, 1):
        return False
    raise ValueError(f"channel_axis must be -1 (H, W, C) or 0 / 1 (C, H, W) for a single "
                     f"image, got {axis}")


def normalize(
    images: ArrayLike,
    mean: PerChannel,
    std: PerChannel,
    *,
    channel_axis: int = -1,
    scale: float | None = None,
    out_layout: str = "NCHW",
    dtype: Any = np.float32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Normalize images per channel, ``(x * scale - mean) / std``, in one pass.

    Converts the element type, applies the per-channel affine and changes the layout in a
    single read of the input and a single write of the output (no temporaries), with SIMD
    kernels and OpenMP threads, the GIL released. Integer input is converted before any
    arithmetic, so nothing wraps around.

    Parameters
    ----------
    images : ndarray of uint8, uint16, float16, float32 or float64
        A batch ``(N, H, W, C)`` (``channel_axis=-1``) or ``(N, C, H, W)``
        (``channel_axis=1``), or a single image ``(H, W, C)`` / ``(C, H, W)`` (then
        ``channel_axis`` is -1 or 0; 1 is accepted as "channels first" too). C-contiguous
        input, and channels-first views of channels-last memory (``nhwc.transpose(0, 3, 1,
        2)``), are read in place; other strides are copied once.
    mean, std : float or sequence of C floats
        Per-channel mean and standard deviation in the units of ``x * scale`` (e.g. the
        ImageNet ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)`` for uint8 input with the
        default scale). ``std`` must be non-zero; both must be finite.
    channel_axis : int
        Where the channels are in ``images`` (see above).
    scale : float, optional
        Multiplies the input before the affine. Default: ``1/255`` for uint8, ``1/65535`` for
        uint16, ``1`` for float input.
    out_layout : {"NCHW", "NHWC"}
        Layout of the result (``"CHW"``/``"HWC"`` are accepted for a single image).
    dtype : float32 or float16
        Element type of the result. Arithmetic is float32 (float64 for float64 input) and
        rounds once to ``dtype``.
    out : ndarray, optional
        Preallocated C-contiguous result of the right shape and dtype; returned. It must not
        overlap ``images``, except for an exact in-place call (float input of the output dtype
        with the same layout).

    Returns
    -------
    ndarray
        ``(N, C, H, W)`` or ``(N, H, W, C)`` (no N for a single image) of ``dtype``.

    Raises
    ------
    TypeError
        For a wrong type or dtype (of ``images``, ``mean``, ``std``, ``scale``, ``dtype`` or
        ``out``).
    ValueError
        For a wrong shape or value (rank, channel count, ``channel_axis``, ``out_layout``,
        zero or non-finite ``std``, ``out``'s shape, overlap).

    Examples
    --------
    >>> import numpy as np
    >>> from normcpp.image import normalize
    >>> x = np.full((2, 4, 4, 3), 255, np.uint8)            # NHWC uint8
    >>> y = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> y.shape, y.dtype, round(float(y.max()), 6)       # (1 - 0.5) / 0.5
    ((2, 3, 4, 4), dtype('float32'), 1.0)
    """
    x = _as_image_array(images, "images")
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be a batch (N, H, W, C) / (N, C, H, W) or one image "
                         f"(H, W, C) / (C, H, W), got shape {x.shape}")
    batched = x.ndim == 4
    in_cl = _channels_last(channel_axis, x.ndim)
    if not isinstance(out_layout, str):
        raise TypeError(f"out_layout must be a str, got {type(out_layout).__name__}")
    if out_layout.upper() not in _OUT_LAYOUTS:
        raise ValueError(f"out_layout must be 'NCHW' or 'NHWC', got {out_layout!r}")
    out_cl = _OUT_LAYOUTS[out_layout.upper()]
    try:
        odt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float16, got {dtype!r}") from exc
    if odt not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise TypeError(f"dtype must be float32 or float16, got {odt}")
    s = _DEFAULT_SCALE.get(x.dtype, 1.0) if scale is None else _as_real(scale, "scale")

    xb = x if batched else x[None]
    c = xb.shape[3] if in_cl else xb.shape[1]
    if c < 1:
        raise ValueError(f"images must have at least one channel, got shape {x.shape}")
    h, w = (xb.shape[1], xb.shape[2]) if in_cl else (xb.shape[2], xb.shape[3])
    if not xb.flags.c_contiguous:
        # A channels-first view of channels-last memory (or the reverse) is read in place.
        other = xb.transpose(0, 3, 1, 2) if in_cl else xb.transpose(0, 2, 3, 1)
        if other.flags.c_contiguous:
            xb, in_cl = other, not in_cl
        else:
            xb = np.ascontiguousarray(xb)
    m = _per_channel(mean, c, "mean")
    sd = _per_channel(std, c, "std")

    shape = (h, w, c) if out_cl else (c, h, w)
    if batched:
        shape = (xb.shape[0],) + shape
    ob = None
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != odt:
            raise TypeError(f"out must have dtype {odt}, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        ob = out if batched else out[None]
    y = _core.normalize_images(xb, m, sd, s, in_cl, out_cl, odt == np.float16, ob)
    if out is not None:
        return out
    return y if batched else y[0]


# ------------------------------------------------------------------------- dataset statistics


def _stats_view(x: np.ndarray, axis: int) -> tuple[np.ndarray, int, int, int, bool]:
    """(array, N, C, P, channels_last): ``x`` seen as C-contiguous (N, P, C) or (N, C, P)."""
    c = x.shape[axis]
    moved = np.moveaxis(x, axis, -1)
    if moved.flags.c_contiguous:
        return moved, x.size // c, c, 1, True
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x, math.prod(x.shape[:axis]), c, math.prod(x.shape[axis + 1:]), False


def _chan(na: int, ma: np.ndarray, qa: np.ndarray, nb: int, mb: np.ndarray,
          qb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chan's merge of two sets' per-channel (count, mean, M2), in float64."""
    if na == 0:
        return mb.copy(), qb.copy()
    if nb == 0:
        return ma.copy(), qa.copy()
    f = nb / (na + nb)
    d = mb - ma
    return ma + d * f, qa + qb + d * d * (na * f)


class ChannelStats:
    """Streaming per-channel count, mean, variance, std, min and max of a dataset.

    Feed batches of any size and shape with :meth:`update` (or build one with
    :meth:`from_batches`); combine partial statistics with :meth:`merge` (e.g. from worker
    processes) or across MPI ranks with :meth:`allreduce`.

    * uint8 / uint16 data: **exact**. The C++ kernels sum ``x`` and ``x**2`` in integers; the
      totals are Python ints, and ``mean``/``var`` are the exactly rounded float64 values of
      ``sum / n`` and ``(n * sum_sq - sum**2) / (n * (n - ddof))``, for any amount of data, in
      any order.
    * float data: accumulated in float64 whatever the input dtype (blocked two-pass per batch,
      Chan's merge across blocks and batches), so the results equal ``np.mean`` / ``np.var``
      in float64 of the concatenated data to ~1e-15 relative. Mixing float and integer
      batches switches to this mode.
    * ``min`` / ``max`` follow ``np.min`` / ``np.max``: a NaN makes them NaN (and ``mean`` /
      ``var`` too). An infinite value makes ``mean`` and ``var`` NaN (``np.mean`` would give
      +-inf; ``np.var`` gives NaN too). With no data, every statistic is NaN.

    Parameters
    ----------
    num_channels : int
        Number of channels C; every batch must have ``C`` entries along ``channel_axis``.
    channel_axis : int
        The channel axis of the batches: 1 for (N, C, H, W) or (N, C), -1 for (N, H, W, C).
        Batches may have any rank; every other axis is reduced.
    ddof : int
        Delta degrees of freedom of :attr:`var` and :attr:`std` (0: population variance, as
        ``np.var``; 1: the unbiased estimate).

    Examples
    --------
    >>> import numpy as np
    >>> from normcpp.image import ChannelStats, normalize
    >>> rng = np.random.default_rng(0)
    >>> st = ChannelStats(3, channel_axis=-1)
    >>> for _ in range(4):
    ...     _ = st.update(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    >>> st.count, st.mean.shape
    (32768, (3,))
    >>> y = normalize(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
    ...               **st.normalize_kwargs())
    """

    def __init__(self, num_channels: int, channel_axis: int = 1, ddof: int = 0) -> None:
        c = _as_int(num_channels, "num_channels")
        if c < 1:
            raise ValueError(f"num_channels must be >= 1, got {c}")
        self._c = c
        self._axis = _as_int(channel_axis, "channel_axis")
        d = _as_int(ddof, "ddof")
        if d < 0:
            raise ValueError(f"ddof must be >= 0, got {d}")
        self._ddof = d
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> ChannelStats:
        """Forget every batch (in place); returns self."""
        c = self._c
        self._n = 0
        self._exact = True
        self._sum = np.zeros(c, dtype=object)  # Python ints
        self._sumsq = np.zeros(c, dtype=object)
        self._mean = np.zeros(c)
        self._m2 = np.zeros(c)
        self._min = np.full(c, np.inf)
        self._max = np.full(c, -np.inf)
        return self

    @property
    def num_channels(self) -> int:
        return self._c

    @property
    def channel_axis(self) -> int:
        return self._axis

    @property
    def ddof(self) -> int:
        return self._ddof

    @property
    def exact(self) -> bool:
        """True while every value seen was an integer (uint8/uint16): results are exact."""
        return self._exact

    def _float_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, M2) as float64 arrays (exactly rounded from the sums in exact mode)."""
        if not self._exact:
            return self._mean, self._m2
        n = self._n
        if n == 0:
            return np.zeros(self._c), np.zeros(self._c)
        mean = np.array([s / n for s in self._sum], dtype=np.float64)
        m2 = np.array([(n * q - s * s) / n for s, q in zip(self._sum, self._sumsq)],
                      dtype=np.float64)
        return mean, m2

    def _to_float_mode(self) -> None:
        if self._exact:
            self._mean, self._m2 = self._float_moments()
            self._exact = False

    def _add(self, n: int, exact: bool, mean: np.ndarray, m2: np.ndarray, mn: np.ndarray,
             mx: np.ndarray, sums: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if n == 0:
            return
        if exact and self._exact and sums is not None:
            self._sum = self._sum + sums[0]
            self._sumsq = self._sumsq + sums[1]
        else:
            self._to_float_mode()
            self._mean, self._m2 = _chan(self._n, self._mean, self._m2, n, mean, m2)
        self._n += n
        self._min = np.minimum(self._min, mn)  # NaN propagates, as in np.min
        self._max = np.maximum(self._max, mx)

    # --------------------------------------------------------------- updates
    def update(self, batch: ArrayLike) -> ChannelStats:
        """Add a batch (any rank, channels on ``channel_axis``); returns self.

        Raises ``TypeError`` for a dtype other than uint8/uint16/float16/float32/float64 and
        ``ValueError`` if the batch has no ``channel_axis`` or the wrong number of channels.
        """
        x = _as_image_array(batch, "batch")
        if x.ndim == 0 or not -x.ndim <= self._axis < x.ndim:
            raise ValueError(f"batch of shape {x.shape} has no axis {self._axis} "
                             f"(channel_axis)")
        axis = self._axis % x.ndim
        if x.shape[axis] != self._c:
            raise ValueError(f"batch must have {self._c} channels on axis {self._axis}, got "
                             f"shape {x.shape}")
        if x.size == 0:
            return self
        arr, n, c, p, cl = _stats_view(x, axis)
        r = _core.channel_stats(arr, n, c, p, cl)
        sums = None
        if r["exact"]:
            hi = r["sum_sq_hi"].astype(object)
            sums = (r["sum"].astype(object), (hi * (1 << 64)) + r["sum_sq_lo"].astype(object))
        self._add(int(r["count"]), bool(r["exact"]), r["mean"], r["m2"], r["min"], r["max"],
                  sums)
        return self

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Add another ChannelStats' data (Chan's formula in float64; exact if both are);
        returns self. ``other`` is not changed."""
        if not isinstance(other, ChannelStats):
            raise TypeError(f"other must be a ChannelStats, got {type(other).__name__}")
        if other._c != self._c:
            raise ValueError(f"other has {other._c} channels, this ChannelStats has {self._c}")
        if other._exact:
            mean, m2 = other._float_moments()
            self._add(other._n, True, mean, m2, other._min, other._max,
                      (other._sum, other._sumsq))
        else:
            self._add(other._n, False, other._mean, other._m2, other._min, other._max)
        return self

    def copy(self) -> ChannelStats:
        """An independent copy."""
        new = ChannelStats(self._c, self._axis, self._ddof)
        new._load_state(self._state())
        return new

    def _state(self) -> dict[str, Any]:
        return {
            "num_channels": self._c,
            "count": self._n,
            "exact": self._exact,
            "sum": [int(v) for v in self._sum],
            "sum_sq": [int(v) for v in self._sumsq],
            "mean": self._mean.copy(),
            "m2": self._m2.copy(),
            "min": self._min.copy(),
            "max": self._max.copy(),
        }

    def _load_state(self, st: dict[str, Any]) -> None:
        self._n = int(st["count"])
        self._exact = bool(st["exact"])
        self._sum = np.array(list(st["sum"]), dtype=object)
        self._sumsq = np.array(list(st["sum_sq"]), dtype=object)
        self._mean = np.array(st["mean"], dtype=np.float64)
        self._m2 = np.array(st["m2"], dtype=np.float64)
        self._min = np.array(st["min"], dtype=np.float64)
        self._max = np.array(st["max"], dtype=np.float64)

    def allreduce(self, comm: Any = None) -> ChannelStats:
        """Replace this rank's statistics by those of all ranks' data together (in place).

        One ``comm.allgather`` of every rank's state, merged in rank order, so every rank ends
        with identical statistics. ``comm`` is an mpi4py communicator (anything with
        ``allgather``); default ``MPI.COMM_WORLD`` (mpi4py is imported only then).
        Returns self.
        """
        if comm is None:
            try:
                from mpi4py import MPI
            except ImportError as exc:
                raise ImportError("ChannelStats.allreduce() without comm needs mpi4py") from exc
            comm = MPI.COMM_WORLD
        if not callable(getattr(comm, "allgather", None)):
            raise TypeError(f"comm must have an allgather method (an mpi4py communicator), "
                            f"got {type(comm).__name__}")
        states = comm.allgather(self._state())
        sizes = sorted({int(st["num_channels"]) for st in states})
        if sizes != [self._c]:
            raise ValueError(f"ranks disagree on num_channels: {sizes}")
        total = ChannelStats(self._c, self._axis, self._ddof)
        for st in states:
            part = ChannelStats(self._c, self._axis, self._ddof)
            part._load_state(st)
            total.merge(part)
        self._load_state(total._state())
        return self

    @classmethod
    def from_batches(
        cls,
        iterable: Iterable[Any],
        num_channels: int | None = None,
        channel_axis: int = 1,
        progress: bool | None = None,
        ddof: int = 0,
    ) -> ChannelStats:
        """Statistics of every batch of ``iterable``.

        Each item is a batch array, or a tuple/list whose first element is one (e.g.
        ``(images, labels)`` from a data loader; torch CPU tensors work). ``num_channels``
        defaults to the first batch's size along ``channel_axis``.

        ``progress``: ``None`` (default) shows a tqdm progress bar when tqdm is installed, the
        iterable has a length and stderr is a terminal; ``True`` always shows one (needs
        tqdm); ``False`` never.

        Examples
        --------
        >>> import numpy as np
        >>> from normcpp.image import ChannelStats
        >>> batches = [np.ones((4, 3, 8, 8), np.float32) * k for k in range(3)]
        >>> st = ChannelStats.from_batches(batches, progress=False)
        >>> st.num_channels, st.mean.tolist()
        (3, [1.0, 1.0, 1.0])
        """
        if progress is not None and not isinstance(progress, (bool, np.bool_)):
            raise TypeError(f"progress must be None, True or False, got "
                            f"{type(progress).__name__}")
        items: Iterable[Any] = iterable
        if progress is None or progress:
            try:
                from tqdm import tqdm
            except ImportError:
                if progress:
                    raise ImportError("progress=True needs tqdm (pip install tqdm)") from None
                tqdm = None
            try:
                total: int | None = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
            if tqdm is not None and (progress or total is not None):
                items = tqdm(iterable, total=total, desc="ChannelStats", unit="batch",
                             disable=None if progress is None else False)
        stats: ChannelStats | None = None
        if num_channels is not None:
            stats = cls(num_channels, channel_axis, ddof)
        try:
            for item in items:
                batch = item[0] if isinstance(item, (tuple, list)) else item
                if stats is None:
                    x = _as_image_array(batch, "batch")
                    axis = _as_int(channel_axis, "channel_axis")
                    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
                        raise ValueError(f"batch of shape {x.shape} has no axis {axis} "
                                         f"(channel_axis)")
                    stats = cls(x.shape[axis], channel_axis, ddof)
                stats.update(batch)
        finally:
            close = getattr(items, "close", None)
            if items is not iterable and callable(close):
                close()
        if stats is None:
            raise ValueError("from_batches got no batches and no num_channels")
        return stats

    # ------------------------------------------------------------ statistics
    @property
    def count(self) -> int:
        """Values seen per channel."""
        return self._n

    def _nan(self) -> np.ndarray:
        return np.full(self._c, np.nan)

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean (float64)."""
        if self._n == 0:
            return self._nan()
        return self._float_moments()[0].copy()

    def _var(self, ddof: int) -> np.ndarray:
        n = self._n
        if n - ddof <= 0:
            return self._nan()
        if self._exact:
            den = n * (n - ddof)
            return np.array([(n * q - s * s) / den for s, q in zip(self._sum, self._sumsq)],
                            dtype=np.float64)
        return self._m2 / (n - ddof)

    @property
    def var(self) -> np.ndarray:
        """Per-channel variance with ``ddof`` (float64)."""
        return self._var(self._ddof)

    @property
    def std(self) -> np.ndarray:
        """Per-channel standard deviation, ``sqrt(var)`` (float64)."""
        return np.sqrt(self.var)

    @property
    def min(self) -> np.ndarray:
        """Per-channel minimum (float64; NaN if any value was NaN)."""
        return self._nan() if self._n == 0 else self._min.copy()

    @property
    def max(self) -> np.ndarray:
        """Per-channel maximum (float64; NaN if any value was NaN)."""
        return self._nan() if self._n == 0 else self._max.copy()

    # ----------------------------------------------------------------- seeding
    def normalize_kwargs(self, scale: float = 1.0) -> dict[str, Any]:
        """Keyword arguments for :func:`normalize`: ``dict(mean=..., std=..., scale=...)``.

        ``mean`` and ``std`` are reported in units of ``x * scale`` and ``scale`` goes with
        them, so ``normalize(images, **stats.normalize_kwargs())`` standardizes images of the
        same kind as the ones the statistics were computed on, whatever their dtype.
        Statistics of raw uint8 data used with torchvision-style constants in [0, 1]:
        ``stats.normalize_kwargs(scale=1/255)`` (the same result: ``mean`` and ``std`` are
        divided by 255 and ``scale`` is 1/255, the default of ``normalize`` for uint8).
        Drop the ``scale`` entry to pass ``mean``/``std`` elsewhere.
        """
        s = _as_real(scale, "scale")
        if not math.isfinite(s) or s == 0.0:
            raise ValueError(f"scale must be finite and non-zero, got {s}")
        if self._n == 0:
            raise ValueError("ChannelStats has no data yet")
        return {"mean": self.mean * s, "std": self.std * abs(s), "scale": s}

    def seed_batchnorm(self, bn: Any) -> Any:
        """Set a BatchNorm module's ``running_mean`` / ``running_var`` from these statistics.

        ``running_var`` gets the unbiased variance (``ddof=1``), as BatchNorm keeps it. Works
        with normcpp modules (ndarrays, written in place) and torch modules (tensors, copied
        under ``torch.no_grad()``); ``num_batches_tracked`` is left alone. Returns ``bn``.
        """
        rm = getattr(bn, "running_mean", None)
        rv = getattr(bn, "running_var", None)
        if rm is None or rv is None:
            raise ValueError(f"{type(bn).__name__} has no running statistics "
                             f"(track_running_stats=False?)")
        if self._n < 2:
            raise ValueError(f"need at least 2 values per channel to seed running_var, have "
                             f"{self._n}")
        for name, buf in (("running_mean", rm), ("running_var", rv)):
            if tuple(buf.shape) != (self._c,):
                raise ValueError(f"{name} has shape {tuple(buf.shape)}, these statistics have "
                                 f"{self._c} channels")
        mean, var = self.mean, self._var(1)
        if isinstance(rm, np.ndarray) and isinstance(rv, np.ndarray):
            rm[...] = mean
            rv[...] = var
            return bn
        import torch

        with torch.no_grad():
            rm.copy_(torch.as_tensor(mean, dtype=rm.dtype))
            rv.copy_(torch.as_tensor(var, dtype=rv.dtype))
        return bn

    def __repr__(self) -> str:
        with np.printoptions(precision=6, suppress=True):
            return (f"ChannelStats(num_channels={self._c}, count={self._n}, "
                    f"mean={self.mean}, std={self.std}, min={self.min}, max={self.max})")
