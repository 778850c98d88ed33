"""Build facts, ISA selection (``NORMCPP_ISA``) and the thread count (``NORMCPP_NUM_THREADS``)."""

from __future__ import annotations

import os
import warnings
from typing import Any

from . import _core


def _apply_environment() -> None:
    isa = os.environ.get("NORMCPP_ISA", "").strip().lower()
    if isa:
        try:
            _core.select_isa(isa)
        except (ValueError, RuntimeError) as exc:
            warnings.warn(
                f"NORMCPP_ISA={isa!r} ignored ({exc}); using {_core.selected_isa()!r}",
                RuntimeWarning,
                stacklevel=3,
            )
    threads = os.environ.get("NORMCPP_NUM_THREADS", "").strip()
    if threads:
        try:
            n = int(threads)
            if n < 1:
                raise ValueError
        except ValueError:
            warnings.warn(
                f"NORMCPP_NUM_THREADS={threads!r} is not a positive integer; ignored",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            _core.set_num_threads(n)


def config() -> dict[str, Any]:
    """What this build is and how it runs.

    Returns
    -------
    dict
        ``version``, ``isa`` (the selected level), ``isas_compiled``, ``isas_supported``
        (compiled and runnable here), ``openmp`` (bool) and ``num_threads``.

    Examples
    --------
    >>> import normcpp as nc
    >>> sorted(nc.config())
    ['isa', 'isas_compiled', 'isas_supported', 'num_threads', 'openmp', 'version']
    """
    return {
        "version": _core.__version__,
        "isa": _core.selected_isa(),
        "isas_compiled": list(_core.compiled_isas()),
        "isas_supported": list(_core.supported_isas()),
        "openmp": bool(_core.has_openmp()),
        "num_threads": int(_core.get_num_threads()),
    }


def set_num_threads(n: int) -> None:
    """Set the number of threads normcpp uses (1 = serial). Results do not depend on it.

    Raises ``TypeError`` if ``n`` is not an integer and ``ValueError`` if it is < 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1 or n > 2**31 - 1:
        raise ValueError(f"n must be between 1 and 2**31 - 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads normcpp uses."""
    return int(_core.get_num_threads())


_apply_environment()
