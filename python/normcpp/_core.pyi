"""Type stubs for the private extension ``normcpp._core`` (use the ``normcpp`` package).

Every function takes all of its arguments positionally, exactly as :mod:`normcpp.functional`
passes them, checks them in C++ (``TypeError``/``ValueError`` naming the argument) and
releases the GIL for the computation. Ops return ``out`` when given, else a new array in the
input's dtype and layout; ``*_forward`` also return the float64 statistics that the matching
``*_backward`` needs.
"""

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from typing_extensions import TypeAlias

__version__: str

_Array: TypeAlias = np.ndarray
_Shape: TypeAlias = int | Sequence[int]
_NonFinite: TypeAlias = Literal["raise", "propagate"]
_Activation: TypeAlias = Literal["relu", "relu6", "silu", "gelu"] | None
_Grads: TypeAlias = tuple[_Array, _Array | None, _Array | None]

# ---- forward ops ---------------------------------------------------------------------------

def batch_norm(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    training: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
    activation: _Activation,
) -> _Array:
    """BatchNorm over (N, C, *spatial); in training updates the running stats in place."""

def instance_norm(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
) -> _Array:
    """InstanceNorm over the spatial dims of each (sample, channel)."""

def group_norm(
    input: _Array,
    num_groups: int,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> _Array:
    """GroupNorm over each (sample, group of channels) and the spatial dims."""

def layer_norm(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> _Array:
    """LayerNorm over the trailing ``normalized_shape`` dims."""

def rms_norm(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    eps: float | None,
    out: _Array | None,
) -> _Array:
    """RMSNorm over the trailing dims; ``eps=None`` is the input dtype's machine epsilon."""

# ---- forward ops that also return (save_mean, save_invstd) or save_invrms, float64 ----------

def batch_norm_forward(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    training: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
    activation: _Activation,
) -> tuple[_Array, _Array, _Array]:
    """Output, save_mean (C,), save_invstd (C,)."""

def instance_norm_forward(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
) -> tuple[_Array, _Array, _Array]:
    """Output, save_mean (N, C), save_invstd (N, C)."""

def group_norm_forward(
    input: _Array,
    num_groups: int,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> tuple[_Array, _Array, _Array]:
    """Output, save_mean (N, G), save_invstd (N, G)."""

def layer_norm_forward(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> tuple[_Array, _Array, _Array]:
    """Output, save_mean and save_invstd with the input's leading shape."""

def rms_norm_forward(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    eps: float | None,
    out: _Array | None,
) -> tuple[_Array, _Array]:
    """Output and save_invrms = 1/sqrt(mean(x**2) + eps) per row."""

# ---- the modules' training step: the *_forward statistics packed in one float64 array -------
# (y, stats): stats[0] the save_mean and stats[1] the save_invstd (shape (2, *slots)); for
# rms_norm stats[0] the save_invrms (shape (1, *rows)). One allocation instead of two.

def _batch_norm_forward_packed(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    training: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
    activation: _Activation,
) -> tuple[_Array, _Array]: ...
def _instance_norm_forward_packed(
    input: _Array,
    running_mean: _Array | None,
    running_var: _Array | None,
    weight: _Array | None,
    bias: _Array | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    out: _Array | None,
    nonfinite: _NonFinite,
) -> tuple[_Array, _Array]: ...
def _group_norm_forward_packed(
    input: _Array,
    num_groups: int,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> tuple[_Array, _Array]: ...
def _layer_norm_forward_packed(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    bias: _Array | None,
    eps: float,
    out: _Array | None,
    activation: _Activation,
) -> tuple[_Array, _Array]: ...
def _rms_norm_forward_packed(
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    eps: float | None,
    out: _Array | None,
) -> tuple[_Array, _Array]: ...

# ---- backward: (grad_input, grad_weight, grad_bias); a gradient not asked for is None ------

def batch_norm_backward(
    grad_output: _Array,
    input: _Array,
    weight: _Array | None,
    save_mean: _Array,
    save_invstd: _Array,
    training: bool,
    has_bias: bool | None,
) -> _Grads: ...
def instance_norm_backward(
    grad_output: _Array,
    input: _Array,
    weight: _Array | None,
    save_mean: _Array,
    save_invstd: _Array,
    has_bias: bool | None,
) -> _Grads: ...
def group_norm_backward(
    grad_output: _Array,
    input: _Array,
    num_groups: int,
    weight: _Array | None,
    save_mean: _Array,
    save_invstd: _Array,
    has_bias: bool | None,
) -> _Grads: ...
def layer_norm_backward(
    grad_output: _Array,
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    save_mean: _Array,
    save_invstd: _Array,
    has_bias: bool | None,
) -> _Grads: ...
def rms_norm_backward(
    grad_output: _Array,
    input: _Array,
    normalized_shape: _Shape,
    weight: _Array | None,
    save_invrms: _Array,
) -> tuple[_Array, _Array | None]:
    """(grad_input, grad_weight)."""

# ---- the pieces SyncBatchNorm and recalibration are built from -----------------------------

def batch_norm_stats(input: _Array) -> tuple[_Array, _Array, _Array]:
    """Per-channel (count, mean, m2), float64."""

def batch_norm_backward_reduce(
    grad_output: _Array, input: _Array, mean: _Array, invstd: _Array
) -> tuple[_Array, _Array]:
    """Per-channel (sum(dy), sum(dy * xhat)), float64."""

def batch_norm_backward_elemt(
    grad_output: _Array,
    input: _Array,
    weight: _Array | None,
    mean: _Array,
    invstd: _Array,
    sum_dy: _Array,
    sum_dy_xhat: _Array,
    count: float,
) -> _Array:
    """grad_input from global per-channel sums and the global element count."""

# ---- threads -------------------------------------------------------------------------------

def set_num_threads(n: int) -> None:
    """Thread count for the ops; 0 or less restores the default."""

def get_num_threads() -> int: ...
def has_openmp() -> bool: ...
def set_stream_threshold(bytes: int) -> None: ...
def get_stream_threshold() -> int: ...
def _stream_decision(bytes: int, threads: int, inputs: int = 1) -> bool: ...
def _l2_cache_bytes() -> int: ...
def _small_llc_bytes() -> int: ...
def set_output_cache_bytes(bytes: int) -> None: ...
def get_output_cache_bytes() -> int: ...
def output_cache_held_bytes() -> int: ...

# ---- ISA dispatch --------------------------------------------------------------------------

def compiled_isas() -> list[str]:
    """ISA levels built into this binary, lowest first."""

def supported_isas() -> list[str]:
    """Compiled levels this CPU can run."""

def selected_isa() -> str: ...
def select_isa(name: str) -> None:
    """Force a level: ``ValueError`` if unknown or not compiled, ``RuntimeError`` if the CPU
    lacks it."""

# ---- images (normcpp.image) -----------------------------------------------------------------

def normalize_images(
    images: _Array,
    mean: _Array,
    std: _Array,
    scale: float,
    channels_last: bool,
    out_channels_last: bool,
    out_float16: bool,
    out: _Array | None,
) -> _Array:
    """``(x * scale - mean[c]) / std[c]`` of a C-contiguous 4-D uint8/uint16/float batch
    (NHWC if ``channels_last`` else NCHW) as float32/float16 NCHW or NHWC, into ``out``
    (allocated when None)."""

def channel_stats(batch: _Array, N: int, C: int, P: int, channels_last: bool) -> dict[str, Any]:
    """Per-channel ``count``, ``mean``, ``m2``, ``min``, ``max`` and ``exact`` of a C-contiguous
    (N, C, P) or (N, P, C) batch; integer input adds exact ``sum``, ``sum_sq_lo``,
    ``sum_sq_hi`` (uint64 arrays)."""
