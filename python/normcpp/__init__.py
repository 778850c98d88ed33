"""normcpp: normalization layers for NumPy arrays on the CPU, at the speed of memory.

Functional ops (``batch_norm``, ``instance_norm``, ``group_norm``, ``layer_norm``,
``rms_norm``) and stateful modules with PyTorch's names, conventions and ``state_dict`` keys.
SIMD kernels (chosen at import for the CPU: baseline, AVX2 or AVX-512; NEON on aarch64) and
OpenMP threads do the work with the GIL released.
"""

from __future__ import annotations

import os as _os

# GNU OpenMP spins idle threads for ~0.3 s worth of iterations after each parallel region by
# default; next to BLAS threads or other processes on few cores that spinning starves the
# workers (measured on 2 cores: an eval BN after a NumPy matmul took 20 ms instead of 0.09 ms).
# A short spin keeps back-to-back calls fast without that cliff. Set OMP_WAIT_POLICY or
# GOMP_SPINCOUNT yourself to choose otherwise (read once, when the OpenMP runtime loads).
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from . import (
    _core,
    functional,  # noqa: F401 (normcpp.functional stays importable as an attribute)
    onnx,
)
from ._config import config, get_num_threads, set_num_threads
from .fold import fold_batchnorm
from .functional import *
from .image import ChannelStats, normalize
from .interop import BatchNormNd, from_keras_batchnorm, from_torch
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    Module,
    RMSNorm,
)
from .sync import SyncBatchNorm
from .training import freeze_batchnorm, recalibrate, unfreeze_batchnorm

__version__: str = _core.__version__

__all__ = [  # noqa: RUF022 (grouped: functional API, then modules and tools)
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
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "ChannelStats",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "Module",
    "RMSNorm",
    "SyncBatchNorm",
    "__version__",
    "config",
    "fold_batchnorm",
    "freeze_batchnorm",
    "from_keras_batchnorm",
    "from_torch",
    "get_num_threads",
    "normalize",
    "onnx",
    "recalibrate",
    "set_num_threads",
    "unfreeze_batchnorm",
]
