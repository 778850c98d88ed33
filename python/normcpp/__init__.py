"""normcpp: normalization layers for NumPy arrays on the CPU, at the speed of memory.

Functional ops (``batch_norm``, ``instance_norm``, ``group_norm``, ``layer_norm``,
``rms_norm``) and stateful modules with PyTorch's names, conventions and ``state_dict`` keys.
SIMD kernels (chosen at import for the CPU: baseline, AVX2 or AVX-512; NEON on aarch64) and
OpenMP threads do the work with the GIL released.
"""

from __future__ import annotations

from . import _core
from ._config import config, get_num_threads, set_num_threads
from . import functional, onnx
from .fold import fold_batchnorm
from .functional import *  # noqa: F403 (the functional API, listed in functional.__all__)
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

__version__: str = _core.__version__

__all__ = sorted(functional.__all__) + [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "Module",
    "RMSNorm",
    "__version__",
    "config",
    "fold_batchnorm",
    "from_keras_batchnorm",
    "from_torch",
    "get_num_threads",
    "onnx",
    "set_num_threads",
]
