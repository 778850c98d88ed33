"""Synchronized batch normalization across processes over MPI (mpi4py).

:class:`SyncBatchNorm` is a BatchNorm whose training-mode statistics are those of the batch
of *all* ranks together: each rank computes the exact per-channel ``(count, mean, M2)`` of its
own batch, the ranks exchange them with one ``allgather`` and merge them with Chan's formula
in float64, in rank order, so every rank normalizes with (and stores) bitwise-identical
statistics. Uneven batch sizes and ranks with an empty batch are exact. Backward exchanges the
per-channel sums ``Σdy`` and ``Σdy·x̂`` the same way.

Every collective step first runs its local checks and then exchanges either the result or the
error, so a bad argument on one rank raises on *every* rank instead of leaving the others
waiting.

mpi4py is optional: without it, or with one process, :class:`SyncBatchNorm` is exactly a
BatchNorm (any input rank >= 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from . import functional as F
from .modules import (
    BatchNorm2d,
    DTypeLike,
    _BatchNorm,
    _chan_merge,
    _check_ndarray,
    _local_moments,
)

__all__ = ["SyncBatchNorm"]

T = TypeVar("T")


def _default_comm() -> Any | None:
    """``MPI.COMM_WORLD`` when mpi4py can be imported, else ``None``."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError):
        return None
    return MPI.COMM_WORLD


def _comm_size(comm: Any) -> int:
    get_size = getattr(comm, "Get_size", None)
    return int(get_size() if callable(get_size) else comm.size)


def _comm_rank(comm: Any) -> int:
    get_rank = getattr(comm, "Get_rank", None)
    return int(get_rank() if callable(get_rank) else comm.rank)


def _collective(comm: Any, local: Callable[[], T], what: str) -> list[T]:
    """Run ``local()`` on this rank and ``allgather`` its result in rank order.

    An exception on any rank is exchanged instead of a result, and then raised on every rank
    (the local one re-raises its own exception; the others raise the same type, TypeError,
    ValueError or otherwise RuntimeError, naming the failing rank), so no rank is left waiting
    in a later collective.
    """
    error: BaseException | None = None
    try:
        payload: tuple[bool, Any] = (True, local())
    except Exception as exc:  # noqa: BLE001 (exchanged, then re-raised below)
        error = exc
        payload = (False, (type(exc).__name__, str(exc)))
    gathered = comm.allgather(payload)
    if error is not None:
        raise error
    for rank, (ok, value) in enumerate(gathered):
        if not ok:
            name, message = value
            cls = {"TypeError": TypeError, "ValueError": ValueError}.get(name, RuntimeError)
            raise cls(f"SyncBatchNorm {what} failed on rank {rank}: {name}: {message}")
    return [value for _, value in gathered]


def _merge_in_order(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan merge of per-rank ``(count, mean, M2)`` in the given (rank) order."""
    merged = tuple(np.array(a, dtype=np.float64, copy=True) for a in parts[0])
    for part in parts[1:]:
        merged = _chan_merge(merged, part)  # type: ignore[arg-type]
    return merged  # type: ignore[return-value]


def _check_out(input: np.ndarray, out: Any) -> None:
    """The checks the kernel makes on ``out``, made before any communication."""
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != input.shape:
        raise ValueError(f"out must have the input's shape {input.shape}, got {out.shape}")
    if out.dtype != input.dtype:
        raise ValueError(f"out must have the input's dtype {input.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


class SyncBatchNorm(_BatchNorm):
    """Batch normalization with statistics over the batches of all MPI ranks, like
    ``torch.nn.SyncBatchNorm``, for input (N, C, *) of any rank >= 2.

    In training mode (not frozen), ``forward`` is a *collective* call: every rank of ``comm``
    must call it, each with its own batch (any N, also 0; same C and spatial shape). Every rank
    then normalizes with the global mean and biased variance, and updates identical running
    statistics with the global unbiased variance (``momentum``, or ``None`` for the
    cumulative average, as BatchNorm). An empty batch gives an empty output; fewer than two
    values per channel over all ranks is a ``ValueError`` on every rank. Eval mode and a
    frozen module never communicate. Without mpi4py, or with a communicator of one process,
    the module is exactly a BatchNorm.

    :meth:`backward` after a synchronized forward is collective too: the per-channel ``Σdy``
    and ``Σdy·x̂`` are summed over the ranks (in rank order, so the result is the same on every
    rank) and each rank gets the gradient of *its* input with respect to the loss summed over
    all ranks. As in PyTorch, ``grad_weight`` and ``grad_bias`` are the *local* sums of this
    rank's batch: add them over the ranks (or average them, as DistributedDataParallel does for
    a mean loss) before the update.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default True
    track_running_stats : bool, default True
    comm : mpi4py communicator, optional
        The ranks to synchronize over; defaults to ``MPI.COMM_WORLD`` when mpi4py is
        importable (looked up at the first training forward, so that constructing or
        evaluating the module never initializes MPI). Any object with ``allgather``,
        ``Get_size`` and ``Get_rank`` works.
    dtype : float32 or float64, default float32
    bias : bool, default True
        Keyword only. With ``affine``, whether to have a ``bias``.

    Examples
    --------
    On one process (or without mpi4py) it is a BatchNorm:

    >>> import numpy as np, normcpp as nc
    >>> from normcpp.sync import SyncBatchNorm
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 5)).astype(np.float32)
    >>> sbn, bn = SyncBatchNorm(3), nc.BatchNorm1d(3)
    >>> bool(np.array_equal(sbn(x), bn(x)))
    True

    Under ``mpiexec -n 2 python train.py`` each rank passes its shard and gets its part of the
    output normalized with the statistics of both shards.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        comm: Any = None,
        dtype: DTypeLike = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         bias=bias)
        if comm is not None and not callable(getattr(comm, "allgather", None)):
            raise TypeError(
                f"comm must be an MPI communicator (with allgather), got {type(comm).__name__}"
            )
        self._comm: Any = comm
        self._comm_resolved: bool = comm is not None
        self._batchnorm_class: type[_BatchNorm] = BatchNorm2d

    # communicator ---------------------------------------------------------------------------

    @property
    def comm(self) -> Any | None:
        """The communicator (``MPI.COMM_WORLD`` by default; ``None`` without mpi4py)."""
        if not self._comm_resolved:
            self._comm = _default_comm()
            self._comm_resolved = True
        return self._comm

    def _sync_comm(self) -> Any | None:
        """The communicator if this forward synchronizes (training with batch statistics or
        recalibrating, over more than one process), else ``None``."""
        syncing = self._recorder is not None or (self.training and not self._frozen)
        if not syncing:
            return None
        comm = self.comm
        if comm is None or _comm_size(comm) <= 1:
            return None
        return comm

    def _check_input(self, input: Any) -> None:
        _check_ndarray(input)
        if input.ndim < 2:
            raise ValueError(
                f"SyncBatchNorm expected input of at least 2-D (N, C, *), got {input.ndim}-D "
                f"input of shape {input.shape}"
            )
        if self._has_channel_state() and input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm expected input with num_features={self.num_features} channels "
                f"at dim 1, got {input.shape[1]} (input shape {input.shape})"
            )

    # forward / backward ---------------------------------------------------------------------

    def forward(self, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize ``input`` (N, C, *) per channel, with the statistics of all ranks in
        training mode (a collective call then; see the class docstring).

        Parameters
        ----------
        input : ndarray of float16, float32 or float64
            This rank's batch; N may differ between ranks and may be 0.
        out : ndarray, optional
            Receives the result (same shape and dtype as ``input``); may be ``input``.

        Returns
        -------
        ndarray
            Same shape, dtype and memory layout as ``input``.
        """
        comm = self._sync_comm()
        if comm is None:
            return super().forward(input, out=out)

        def local() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            self._check_input(input)
            _check_out(input, out)
            return _local_moments(input)

        moments = _merge_in_order(_collective(comm, local, "forward"))
        update = self._recorder is None and self._updates_running_stats()
        return self._forward_with_moments(
            input, out, moments, update=update, kind="sync",
            extra=(comm, float(moments[0][0]) if moments[0].size else 0.0),
        )

    def _record_batch(self, input: np.ndarray) -> None:
        comm = self._sync_comm()
        if comm is None:
            super()._record_batch(input)
            return

        def local() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            self._check_input(input)
            return _local_moments(input)

        assert self._recorder is not None
        self._recorder.add(*_merge_in_order(_collective(comm, local, "recalibration")))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient with respect to this rank's input (see :meth:`Module.backward`).

        After a synchronized forward this is a collective call: every rank must call it with
        its ``grad_output``. ``grad_weight``/``grad_bias`` are this rank's local sums (sum or
        average them over the ranks, as PyTorch's DistributedDataParallel does).
        """
        saved = self._saved_state()
        if saved is None or saved.kind != "sync":
            return super().backward(grad_output)
        comm, count = saved.extra

        def local() -> tuple[np.ndarray, np.ndarray]:
            self._saved_for_backward(grad_output)
            c = saved.input.shape[1]
            if saved.input.size == 0:
                return np.zeros(c), np.zeros(c)
            sum_dy, sum_dy_xhat = F.batch_norm_backward_reduce(
                grad_output, saved.input, saved.mean, saved.invstd
            )
            return (np.asarray(sum_dy, dtype=np.float64),
                    np.asarray(sum_dy_xhat, dtype=np.float64))

        parts = _collective(comm, local, "backward")
        local_dy, local_dy_xhat = parts[_comm_rank(comm)]
        sum_dy = np.zeros_like(local_dy)
        sum_dy_xhat = np.zeros_like(local_dy_xhat)
        for part_dy, part_dy_xhat in parts:  # rank order: the same sums on every rank
            sum_dy = sum_dy + part_dy
            sum_dy_xhat = sum_dy_xhat + part_dy_xhat
        if saved.input.size == 0:
            dx = np.empty(saved.input.shape, saved.input.dtype)
        else:
            dx = F.batch_norm_backward_elemt(
                grad_output, saved.input, saved.weight, saved.mean, saved.invstd, sum_dy,
                sum_dy_xhat, count,
            )
        wdt = saved.weight.dtype if saved.weight is not None else np.dtype(np.float64)
        self.grad_weight = None if saved.weight is None else local_dy_xhat.astype(wdt)
        self.grad_bias = local_dy.astype(wdt) if saved.has_bias else None
        return dx

    # conversion -----------------------------------------------------------------------------

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, comm: Any = None) -> SyncBatchNorm:
        """A SyncBatchNorm with the configuration, state and mode of ``bn``.

        The new module holds the *same* arrays as ``bn`` (weight, bias, running statistics,
        ``num_batches_tracked``), as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does,
        so references that an optimizer holds stay valid; ``training`` and ``frozen`` are
        copied. :meth:`to_batchnorm` converts back to ``bn``'s class.

        Parameters
        ----------
        bn : BatchNorm1d, BatchNorm2d, BatchNorm3d or SyncBatchNorm
        comm : mpi4py communicator, optional
            As in the constructor (for a SyncBatchNorm ``bn``, ``None`` keeps its ``comm``).

        Examples
        --------
        >>> import normcpp as nc
        >>> from normcpp.sync import SyncBatchNorm
        >>> bn = nc.BatchNorm1d(4).eval()
        >>> sbn = SyncBatchNorm.from_batchnorm(bn)
        >>> sbn.running_var is bn.running_var, sbn.training
        (True, False)
        >>> type(sbn.to_batchnorm()).__name__
        'BatchNorm1d'
        """
        if not isinstance(bn, _BatchNorm):
            raise TypeError(
                f"bn must be a BatchNorm1d/2d/3d or SyncBatchNorm, got {type(bn).__name__}"
            )
        if comm is None and isinstance(bn, SyncBatchNorm) and bn._comm_resolved:
            comm = bn._comm
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  comm, bn.dtype, bias=bn.bias is not None)
        _share_state(bn, new)
        new._batchnorm_class = (
            bn._batchnorm_class if isinstance(bn, SyncBatchNorm) else type(bn)
        )
        return new

    def to_batchnorm(self) -> _BatchNorm:
        """A BatchNorm of the class this module was converted from (:meth:`from_batchnorm`;
        ``BatchNorm2d`` if it was constructed directly) with the same arrays (shared, not
        copied), configuration, training mode and frozen state.

        Examples
        --------
        >>> from normcpp.sync import SyncBatchNorm
        >>> bn = SyncBatchNorm(3).freeze().to_batchnorm()
        >>> type(bn).__name__, bn.frozen
        ('BatchNorm2d', True)
        """
        cls = self._batchnorm_class
        new = cls(self.num_features, self.eps, self.momentum, self.affine,
                  self.track_running_stats, self.dtype, bias=self.bias is not None)
        _share_state(self, new)
        return new


def _share_state(src: _BatchNorm, dst: _BatchNorm) -> None:
    """``dst`` takes ``src``'s arrays (the same objects), mode and frozen state."""
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(dst, name, getattr(src, name))
    dst.training = src.training
    dst._frozen = src._frozen
