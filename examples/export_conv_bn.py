"""Export a tiny conv -> BN -> ReLU -> conv -> BN -> ReLU network from PyTorch to ``.npz``.

Builds the network with a fixed seed, gives the BatchNorm layers random affine parameters,
trains their running statistics on a few random batches (training mode, no optimizer: only
the statistics move), then saves to ``examples/conv_bn_relu.npz``:

* every parameter and buffer under its PyTorch ``state_dict`` key (``conv1.weight``,
  ``bn1.running_var``, ...; ``conv1`` has no bias, ``conv2`` has one),
* the BatchNorm ``eps`` values and the convolutions' ``stride`` / ``padding``,
* a test ``input`` and the network's eval-mode ``output`` on it.

``examples/edge_inference.py`` runs the same network with NumPy and normcpp only.

Run: ``python examples/export_conv_bn.py`` (needs torch).
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent / "conv_bn_relu.npz"


class ConvBNReLU2(nn.Module):
    """conv(3 -> 8, 3x3, pad 1, no bias) -> BN -> ReLU -> conv(8 -> 16, 3x3, stride 2, pad 1)
    -> BN -> ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(16, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


def main() -> None:
    torch.manual_seed(0)
    net = ConvBNReLU2()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        net.train()
        for _ in range(20):  # running statistics of a shifted, scaled input distribution
            net(torch.randn(16, 3, 32, 32) * 1.5 + 0.3)
        net.eval()
        x = torch.randn(2, 3, 24, 24) * 1.5 + 0.3
        y = net(x)
    arrays = {key: value.numpy() for key, value in net.state_dict().items()}
    arrays.update({
        "bn1.eps": np.float64(net.bn1.eps),
        "bn2.eps": np.float64(net.bn2.eps),
        "conv1.stride": np.int64(1), "conv1.padding": np.int64(1),
        "conv2.stride": np.int64(2), "conv2.padding": np.int64(1),
        "input": x.numpy(),
        "output": y.numpy(),
    })
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB): "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items() if np.ndim(v)))


if __name__ == "__main__":
    main()
