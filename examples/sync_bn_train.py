"""Train a tiny NumPy regression model with SyncBatchNorm across MPI ranks.

    mpiexec -n 2 python examples/sync_bn_train.py      (pip install mpi4py mpich)
    python examples/sync_bn_train.py                   (one process: plain BatchNorm)

Model: linear -> SyncBatchNorm -> ReLU -> linear, trained by hand-written SGD on the mean
squared error of a synthetic regression task. Each rank holds its own shard of the data (the
shards and the minibatches are of uneven size on purpose); every step normalizes with the
statistics of the global minibatch, and the gradients of the linear layers and of the BN
``weight``/``bias`` (local sums, as in PyTorch) are summed over the ranks in rank order, so the
parameters stay identical everywhere. Rank 0 prints the training loss per epoch, evaluates on
held-out data alone (eval mode never communicates) and the script checks that every rank ends
with bitwise-identical running statistics.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per rank

import numpy as np
from normcpp.sync import SyncBatchNorm


class _OneProcess:
    """Stand-in communicator when mpi4py is not installed."""

    def allgather(self, obj):
        return [obj]

    def Get_size(self):
        return 1

    def Get_rank(self):
        return 0


def world():
    try:
        from mpi4py import MPI
    except ImportError:
        return _OneProcess()
    return MPI.COMM_WORLD


def allreduce_sum(comm, arrays):
    """Sum each array over the ranks, in rank order (the same bits on every rank)."""
    gathered = comm.allgather(arrays)
    return [sum(parts[i] for parts in gathered) for i in range(len(arrays))]


def make_data(rng, n, dim):
    x = rng.standard_normal((n, dim)) * np.linspace(0.5, 3.0, dim) + np.linspace(-2, 2, dim)
    a = np.linspace(-1.0, 1.0, dim)
    t = np.sin(x @ a / 2.0) + 0.1 * x[:, 0] ** 2 + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32), t.astype(np.float32)[:, None]


def main(epochs: int = 12, dim: int = 8, hidden: int = 32, batch: int = 64, lr: float = 0.1):
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()

    # The same data and initial parameters on every rank; each rank keeps its shard.
    rng = np.random.default_rng(0)
    x_all, t_all = make_data(rng, 2001, dim)
    x_test, t_test = make_data(rng, 500, dim)
    shard = np.array_split(np.arange(len(x_all)), size)[rank]
    x, t = x_all[shard], t_all[shard]
    w1 = (rng.standard_normal((dim, hidden)) * np.sqrt(2.0 / dim)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 1)) * np.sqrt(2.0 / hidden)).astype(np.float32)
    b2 = np.zeros(1, np.float32)
    bn = SyncBatchNorm(hidden, comm=comm)

    steps = -(-len(x_all) // (batch * size))  # the same number of steps on every rank
    shuffle = np.random.default_rng(1 + rank)
    for epoch in range(1, epochs + 1):
        bn.train()
        sse = 0.0
        for idx in np.array_split(shuffle.permutation(len(x)), steps):
            xb, tb = x[idx], t[idx]
            # forward
            h = xb @ w1
            z = bn(h)
            a = np.maximum(z, 0.0)
            pred = a @ w2 + b2
            # loss = mean over the global minibatch of (pred - t)^2
            (n_global,) = allreduce_sum(comm, [len(xb)])
            err = pred - tb
            sse += float((err.astype(np.float64) ** 2).sum())
            dpred = (2.0 / n_global) * err
            # backward (bn.backward is collective: every rank calls it)
            gw2, gb2 = a.T @ dpred, dpred.sum(axis=0)
            dz = (dpred @ w2.T) * (z > 0)
            dh = bn.backward(dz.astype(np.float32))
            gw1 = xb.T @ dh
            gw1, gw2, gb2, gbw, gbb = allreduce_sum(
                comm, [gw1, gw2, gb2, bn.grad_weight, bn.grad_bias])
            # SGD, in place
            for p, g in ((w1, gw1), (w2, gw2), (b2, gb2), (bn.weight, gbw), (bn.bias, gbb)):
                p -= lr * g
        (sse_total,) = allreduce_sum(comm, [sse])
        if rank == 0:
            print(f"epoch {epoch:2d}  train mse {sse_total / len(x_all):.4f}", flush=True)

    # Eval mode never communicates: rank 0 evaluates alone.
    if rank == 0:
        bn.eval()
        pred = np.maximum(bn(x_test @ w1), 0.0) @ w2 + b2
        base = float(((t_test - t_all.mean()) ** 2).mean())
        print(f"test mse {float(((pred - t_test) ** 2).mean()):.4f} "
              f"(predicting the mean: {base:.4f})", flush=True)

    stats = comm.allgather((bn.running_mean, bn.running_var, int(bn.num_batches_tracked)))
    same = all(np.array_equal(s[0], stats[0][0]) and np.array_equal(s[1], stats[0][1])
               and s[2] == stats[0][2] for s in stats)
    if rank == 0:
        print(f"running statistics identical on all {size} rank(s): {same} "
              f"(num_batches_tracked={stats[0][2]})", flush=True)
    if not same:
        raise SystemExit("running statistics differ between ranks")


if __name__ == "__main__":
    main()
