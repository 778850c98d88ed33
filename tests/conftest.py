"""Shared pytest set-up: ``tests/`` on ``sys.path`` (for ``import reference``), helpers that
build the memory layouts every op must accept, and a fixture that restores the thread count."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import normcpp as nc

#: Layouts that every op must handle. ``contiguous`` and ``channels_last`` are read in place;
#: the others (strided views, Fortran order, negative strides) go through the general path.
LAYOUTS = ("contiguous", "channels_last", "sliced", "batch_strided", "fortran", "negative",
           "channels_last_sliced")


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """A view with the values of ``x`` (shape (N, C, ...)) in the memory layout ``layout``.

    Padding that the view skips is filled with NaN, so a kernel that reads outside the view
    produces NaN instead of silently passing.
    """
    x = np.asarray(x)
    if layout == "contiguous":
        return np.ascontiguousarray(x)
    if layout == "channels_last":  # e.g. nhwc.transpose(0, 3, 1, 2)
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    if layout == "sliced":  # every other element of the last axis, starting at offset 1
        big = np.full(x.shape[:-1] + (2 * x.shape[-1] + 1,), np.nan, dtype=x.dtype)
        view = big[..., 1::2]
    elif layout == "batch_strided":  # every other sample of a larger batch
        big = np.full((2 * x.shape[0],) + x.shape[1:], np.nan, dtype=x.dtype)
        view = big[1::2]
    elif layout == "fortran":
        return np.asfortranarray(x)
    elif layout == "negative":  # negative strides on the channel axis and the last axis
        flip = (slice(None), slice(None, None, -1)) + (Ellipsis, slice(None, None, -1)) * (
            x.ndim > 2)
        return np.ascontiguousarray(x[flip])[flip]
    elif layout == "channels_last_sliced":  # channels-last memory with padded channels
        cl_shape = (x.shape[0],) + x.shape[2:] + (2 * x.shape[1],)
        big = np.full(cl_shape, np.nan, dtype=x.dtype)
        view = np.moveaxis(big[..., ::2], -1, 1)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    view[...] = x
    return view


def is_channels_last(a: np.ndarray) -> bool:
    """True if ``a`` (N, C, ...) is an (N, C, ...) view of C-contiguous (N, ..., C) memory."""
    return np.moveaxis(a, 1, -1).flags.c_contiguous


def random_params(rng, c, dtype, positive=False):
    """A length-``c`` parameter vector of ``dtype``, away from zero when ``positive``."""
    v = rng.uniform(0.5, 2.0, c) if positive else rng.standard_normal(c)
    return v.astype(dtype)


def off_line(shape, dtype, offset):
    """An uninitialized C-contiguous array ``offset`` bytes past a 64-byte cache line."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    return buf[start:start + nbytes].view(dtype).reshape(shape)


@pytest.fixture
def restore_threads():
    """Restore ``nc.set_num_threads`` after the test, whatever the test set."""
    n = nc.get_num_threads()
    yield nc.set_num_threads
    nc.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
