"""Run the conv -> BN -> ReLU -> conv -> BN -> ReLU network of ``export_conv_bn.py`` with NumPy
and normcpp only (no PyTorch), two ways:

(a) NumPy convolution (im2col + matmul) followed by normcpp ``BatchNorm2d`` modules in eval
    mode (loaded from the PyTorch ``state_dict`` values) and ReLU;
(b) the BatchNorms folded into the convolutions with ``fold_batchnorm``: conv + ReLU only.

It prints each output's largest difference from PyTorch's saved output and the median time of
repeated runs, on the saved input and on a larger batch.

The convolution writes its result as (N, H, W, C) memory and hands on the (N, C, H, W) view
``y.transpose(0, 3, 1, 2)``: normcpp reads and writes that channels-last view in place.

Run: ``python examples/edge_inference.py`` (after ``export_conv_bn.py`` made the ``.npz``).
"""

from __future__ import annotations

import pathlib
import statistics
import time
from typing import Callable

import normcpp as nc
import numpy as np
from normcpp.fold import fold_batchnorm

DATA = pathlib.Path(__file__).resolve().parent / "conv_bn_relu.npz"


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int,
           padding: int) -> np.ndarray:
    """NCHW convolution (cross-correlation) by im2col + one matmul.

    Returns an (N, C_out, H_out, W_out) view of (N, H_out, W_out, C_out) memory (channels
    last), which is what the matmul produces without a transposing copy.
    """
    n, c, _, _ = x.shape
    c_out, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, H_out, W_out, kh, kw)
    h_out, w_out = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, c * kh * kw)
    y = cols @ weight.reshape(c_out, -1).T  # (N * H_out * W_out, C_out)
    if bias is not None:
        y += bias
    return y.reshape(n, h_out, w_out, c_out).transpose(0, 3, 1, 2)


def load() -> dict[str, np.ndarray]:
    with np.load(DATA) as f:
        return {key: f[key] for key in f.files}


def make_bn(data: dict[str, np.ndarray], name: str) -> nc.BatchNorm2d:
    bn = nc.BatchNorm2d(data[f"{name}.weight"].shape[0], eps=float(data[f"{name}.eps"]))
    keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    bn.load_state_dict({k: data[f"{name}.{k}"] for k in keys})
    return bn.eval()


def main() -> None:
    data = load()
    layers = [("conv1", "bn1"), ("conv2", "bn2")]
    convs = {
        conv: (data[f"{conv}.weight"], data.get(f"{conv}.bias"), int(data[f"{conv}.stride"]),
               int(data[f"{conv}.padding"]))
        for conv, _ in layers
    }
    bns = {bn: make_bn(data, bn) for _, bn in layers}
    folded = {}
    for conv, bn in layers:
        weight, bias, stride, padding = convs[conv]
        new_w, new_b = fold_batchnorm(weight, bias, bns[bn], kind="conv")
        folded[conv] = (new_w, new_b, stride, padding)

    def run_bn(x: np.ndarray) -> np.ndarray:  # (a) conv -> normcpp BatchNorm2d -> ReLU
        for conv, bn in layers:
            y = conv2d(x, *convs[conv])
            bns[bn](y, out=y)  # channels-last view, normalized in place
            x = np.maximum(y, 0, out=y)
        return x

    def run_folded(x: np.ndarray) -> np.ndarray:  # (b) folded conv -> ReLU
        for conv, _ in layers:
            y = conv2d(x, *folded[conv])
            x = np.maximum(y, 0, out=y)
        return x

    x, expected = data["input"], data["output"]
    batch = np.random.default_rng(0).standard_normal((32, 3, 64, 64)).astype(np.float32)
    print(f"normcpp {nc.__version__}, ISA {nc.config().get('isa', '?')}, "
          f"{nc.get_num_threads()} threads")
    print(f"{'variant':<26}{'max |diff| vs torch':>21}{'input (2,3,24,24)':>20}"
          f"{'batch (32,3,64,64)':>21}")
    for label, fn in [("conv + nc.BatchNorm2d", run_bn), ("folded conv", run_folded)]:
        diff = float(np.max(np.abs(fn(x) - expected)))
        print(f"{label:<26}{diff:>21.2e}{median_ms(fn, x, 200):>17.3f} ms"
              f"{median_ms(fn, batch, 10):>18.2f} ms")
    agree = float(np.max(np.abs(run_bn(batch) - run_folded(batch))))
    print(f"(a) vs (b) on the batch: max |diff| = {agree:.2e}")


def median_ms(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    main()
