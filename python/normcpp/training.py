"""Training helpers for BatchNorm: freezing for transfer learning and exact recalibration of the
running statistics ("precise BN").

- :func:`freeze_batchnorm` / :func:`unfreeze_batchnorm` freeze or unfreeze every BatchNorm of an
  iterable of modules.
- :func:`recalibrate` recomputes the running mean and variance of BatchNorm modules as the
  exact statistics of a whole set of batches (not an exponential average), e.g. after
  pruning, quantization or SWA weight averaging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import numpy as np

from .modules import Module, _BatchNorm, _check_finite_stats, _Recorder

__all__ = ["freeze_batchnorm", "recalibrate", "unfreeze_batchnorm"]

ModulesLike = Union[Module, Iterable[Any]]


def _as_list(modules: Any, name: str) -> list[Any]:
    """``modules`` (a module, a mapping of modules, or an iterable) as a list."""
    if isinstance(modules, Module):
        return [modules]
    if isinstance(modules, Mapping):
        return list(modules.values())
    if isinstance(modules, (str, bytes)) or not isinstance(modules, Iterable):
        raise TypeError(
            f"{name} must be a module or an iterable of modules, got {type(modules).__name__}"
        )
    return list(modules)


def _batchnorms(modules: Any, name: str) -> list[_BatchNorm]:
    """The BatchNorm modules of ``modules``, each once, in order."""
    seen: set[int] = set()
    found = []
    for m in _as_list(modules, name):
        if isinstance(m, _BatchNorm) and id(m) not in seen:
            seen.add(id(m))
            found.append(m)
    return found


def freeze_batchnorm(modules: ModulesLike) -> int:
    """Freeze every BatchNorm (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) in ``modules``.

    A frozen BatchNorm normalizes with its running statistics in training *and* eval mode,
    never updates them, and stays frozen when ``train()`` is called; its ``backward`` gives the
    gradient of that frozen affine map (``grad_input``, and ``grad_weight``/``grad_bias``).
    Other modules in ``modules`` are left alone.

    Transfer-learning recipe:

    1. Load the pretrained weights and running statistics (``load_state_dict`` accepts a
       PyTorch ``state_dict``).
    2. ``freeze_batchnorm(bns)``: the network keeps normalizing with the statistics of the
       *original* data, which is what the pretrained weights expect, and small or unbalanced
       fine-tuning batches cannot disturb them. Train the new head (and, if you like, the BN
       ``weight``/``bias`` with ``grad_weight``/``grad_bias``; skip their update to freeze those
       too).
    3. To adapt to the new data instead, either ``unfreeze_batchnorm(bns)`` and train on (the
       running statistics then move towards the new data's by exponential averaging), or keep
       training frozen and afterwards re-estimate exactly with
       ``recalibrate(model_fn, new_batches, modules=bns)``.

    Parameters
    ----------
    modules : module or iterable of modules
        A single module, an iterable (list, generator) or a mapping (its values) of modules.

    Returns
    -------
    int
        The number of BatchNorm modules frozen.

    Raises
    ------
    ValueError
        A BatchNorm has no running statistics (``track_running_stats=False``); then no module
        is changed.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> from normcpp.training import freeze_batchnorm, unfreeze_batchnorm
    >>> model = [nc.BatchNorm2d(8), nc.LayerNorm(4), nc.BatchNorm1d(16)]
    >>> freeze_batchnorm(model)
    2
    >>> bn = model[0].train()
    >>> y = bn(np.ones((2, 8, 3, 3), np.float32))  # uses the running statistics
    >>> bn.frozen, int(bn.num_batches_tracked)
    (True, 0)
    >>> unfreeze_batchnorm(model)
    2
    """
    bns = _batchnorms(modules, "modules")
    bad = [m for m in bns if m.running_mean is None or m.running_var is None]
    if bad:
        raise ValueError(
            f"cannot freeze {len(bad)} BatchNorm module(s) without running statistics "
            f"(track_running_stats=False): {bad[0]!r}"
        )
    for m in bns:
        m.freeze()
    return len(bns)


def unfreeze_batchnorm(modules: ModulesLike) -> int:
    """Unfreeze every BatchNorm in ``modules`` (see :func:`freeze_batchnorm`).

    Returns
    -------
    int
        The number of BatchNorm modules found (frozen or not).

    Examples
    --------
    >>> import normcpp as nc
    >>> from normcpp.training import unfreeze_batchnorm
    >>> bn = nc.BatchNorm1d(3).freeze()
    >>> unfreeze_batchnorm([bn]), bn.frozen
    (1, False)
    """
    bns = _batchnorms(modules, "modules")
    for m in bns:
        m.unfreeze()
    return len(bns)


def _with_progress(batches: Iterable[Any], progress: bool | None) -> tuple[Iterable[Any], Any]:
    """``batches`` wrapped in a tqdm bar when wanted and possible, and the bar (or None)."""
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be None, True or False, got {type(progress).__name__}")
    if progress is False:
        return batches, None
    try:
        from tqdm import tqdm
    except ImportError:
        if progress:
            raise ImportError("recalibrate(progress=True) needs tqdm (pip install tqdm)") from None
        return batches, None
    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if progress is None and total is None:
        return batches, None
    bar = tqdm(batches, total=total, desc="recalibrate", unit="batch")
    return bar, bar


def recalibrate(
    modules_or_model_fn: ModulesLike | Callable[[Any], Any],
    batches: Iterable[Any],
    *,
    modules: ModulesLike | None = None,
    progress: bool | None = None,
) -> int:
    """Recompute the running mean and variance of BatchNorm modules as the exact statistics
    of all ``batches`` together ("precise BN").

    For each module, the per-channel ``(count, mean, M2)`` of every batch it sees is computed
    exactly and merged with Chan's formula in float64, so the result is the mean and variance
    of the concatenation of all batches, whatever their sizes, not an exponential moving
    average. Then ``running_mean`` becomes that mean, ``running_var`` the unbiased variance
    ``M2 / (count - 1)``, and ``num_batches_tracked`` the number of batches (as
    ``torch.optim.swa_utils.update_bn`` leaves it: the statistics are the cumulative average
    of that many batches, consistent with ``momentum=None``). Use it after pruning,
    quantization or SWA weight averaging, when the stored statistics no longer match the
    weights.

    Two forms:

    - ``recalibrate(bn, batches)`` or ``recalibrate([bn1, bn2], batches)``: each batch is the
      input of the module(s) (the *same* batch goes to every module listed), and only its
      statistics are computed (no output).
    - ``recalibrate(model_fn, batches, modules=bns)``: ``model_fn(batch)`` runs the whole
      network; during these calls the modules in ``bns`` are in a recording mode: they
      normalize with the statistics of their input, as in training (also if frozen or in eval
      mode), record those statistics exactly and leave the running statistics alone until the
      end. BatchNorms not listed in ``modules`` behave as usual (a BatchNorm in training mode
      would update its running statistics), so list them all. A :class:`SyncBatchNorm` on
      several ranks records the statistics merged over the ranks, so every rank ends with the
      same running statistics (every rank must then run the same number of batches).

    ``training`` and ``frozen`` of every module are the same afterwards as before, and if
    anything raises (a bad batch, ``model_fn``), no running statistics are changed.

    Parameters
    ----------
    modules_or_model_fn : BatchNorm module, iterable of them, or callable
    batches : iterable
        Iterated once. Arrays (N, C, *) in the first form; whatever ``model_fn`` takes in the
        second.
    modules : BatchNorm module or iterable of them
        Required with ``model_fn``, not allowed otherwise.
    progress : bool or None, default None
        A tqdm progress bar: ``None`` shows one when tqdm is installed and ``len(batches)``
        works; ``True`` always (needs tqdm); ``False`` never.

    Returns
    -------
    int
        The number of batches.

    Raises
    ------
    TypeError
        ``modules`` missing with ``model_fn`` or given without it, a listed module is not a
        BatchNorm, a batch is not an ndarray.
    ValueError
        No batches, a module without running statistics, a module that saw fewer than two
        values per channel in total (or none), a batch with the wrong channel count.

    Examples
    --------
    >>> import numpy as np, normcpp as nc
    >>> from normcpp.training import recalibrate
    >>> rng = np.random.default_rng(0)
    >>> batches = [rng.normal(3.0, 2.0, (n, 4)).astype(np.float32) for n in (5, 17, 9)]
    >>> bn = nc.BatchNorm1d(4)
    >>> recalibrate(bn, batches, progress=False)
    3
    >>> data = np.concatenate(batches).astype(np.float64)
    >>> bool(np.allclose(bn.running_mean, data.mean(axis=0), rtol=1e-6))
    True
    >>> bool(np.allclose(bn.running_var, data.var(axis=0, ddof=1), rtol=1e-6))
    True

    The second form (precise BN through a network):

    >>> lin = rng.standard_normal((4, 4)).astype(np.float32)
    >>> bn2 = nc.BatchNorm1d(4).eval()
    >>> def model_fn(x):
    ...     return np.maximum(bn2(x @ lin), 0.0)
    >>> recalibrate(model_fn, batches, modules=[bn2], progress=False), bn2.training
    (3, False)
    """
    if isinstance(modules_or_model_fn, Module) or not callable(modules_or_model_fn):
        if modules is not None:
            raise TypeError(
                "modules= is only for the model-function form recalibrate(model_fn, batches, "
                "modules=...); here pass the modules as the first argument"
            )
        targets = _as_list(modules_or_model_fn, "modules_or_model_fn")
        model_fn: Callable[[Any], Any] | None = None
    else:
        if modules is None:
            raise TypeError(
                "recalibrate(model_fn, batches) needs modules=: the BatchNorm modules that "
                "model_fn runs"
            )
        targets = _as_list(modules, "modules")
        model_fn = modules_or_model_fn
    bns: list[_BatchNorm] = []
    for m in targets:
        if not isinstance(m, _BatchNorm):
            raise TypeError(
                "recalibrate expects BatchNorm modules (BatchNorm1d/2d/3d, SyncBatchNorm), "
                f"got {type(m).__name__}"
            )
        if m.running_mean is None or m.running_var is None:
            raise ValueError(
                f"cannot recalibrate {m!r}: it has no running statistics "
                "(track_running_stats=False)"
            )
        if m._recorder is not None:
            raise RuntimeError(f"{m!r} is already being recalibrated")
        if all(m is not b for b in bns):
            bns.append(m)
    if not bns:
        raise ValueError("recalibrate needs at least one BatchNorm module")

    modes = [(m.training, m.frozen) for m in bns]
    recorders = [_Recorder() for _ in bns]
    num_batches = 0
    iterable, bar = _with_progress(batches, progress)
    try:
        for m, rec in zip(bns, recorders):
            m._recorder = rec
        for batch in iterable:
            if model_fn is None:
                for m in bns:
                    m._record_batch(batch)
            else:
                model_fn(batch)
            num_batches += 1
    finally:
        if bar is not None:
            bar.close()
        for m, (training, frozen) in zip(bns, modes):
            m._recorder = None
            m.training = training
            m._frozen = frozen

    if num_batches == 0:
        raise ValueError("recalibrate got no batches")
    for m, rec in zip(bns, recorders):
        total = int(rec.count[0]) if rec.count is not None and rec.count.size else 0
        if rec.count is None:
            raise ValueError(f"{m!r} received no input during recalibration")
        if total <= 1:
            raise ValueError(
                f"{m!r} saw {total} value(s) per channel during recalibration; the variance "
                "needs at least 2"
            )
        assert rec.mean is not None and rec.m2 is not None
        _check_finite_stats(rec.mean, rec.m2)
    for m, rec in zip(bns, recorders):
        assert rec.count is not None and rec.mean is not None and rec.m2 is not None
        assert m.running_mean is not None and m.running_var is not None
        total = float(rec.count[0])
        np.copyto(m.running_mean, rec.mean, casting="unsafe")
        np.copyto(m.running_var, rec.m2 / (total - 1.0), casting="unsafe")
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill(num_batches)
    return num_batches
