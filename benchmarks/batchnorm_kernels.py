"""Batch norm alone, forward + backward: bnbook against PyTorch's CPU kernel.

    python benchmarks/batchnorm_kernels.py [--threads N] [--repeats 15]

For each batch shape (m, d) in (100, 300), (256, 1024), (1024, 4096), float32:

* bnbook: ``BatchNorm1d(d)`` in training mode, ``forward(x)`` then
  ``backward(dout)`` (which also stores dgamma and dbeta and updates the
  running statistics: the work of one training step);
* torch: ``torch.nn.functional.batch_norm(x, running_mean, running_var,
  weight, bias, training=True)`` then ``torch.autograd.grad`` of the output
  with respect to x, weight and bias, given ``dout``.

Each timing is the median of ``--repeats`` repeats (each repeat calls the pair
enough times to last about 50 ms); the two libraries' repeats alternate. The
script also checks that both compute the same dx.

Threads: ``--threads N`` (default: $OPENBLAS_NUM_THREADS, else the number of
CPUs) for both libraries. bnbook's batch norm is plain NumPy and uses one
core whatever N is; torch's kernel uses N.

PyTorch is not a requirement of the book; this benchmark needs it:
``pip install torch==2.13.0`` (a CPU build).
"""
from __future__ import annotations

import os

from bench_common import import_torch, parse_args


def _arguments(parser):
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per library and size")


args = parse_args(__doc__, _arguments)  # before NumPy loads: it sets the BLAS threads

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

torch = import_torch()

from bnbook.batchnorm import BatchNorm1d  # noqa: E402

SHAPES = [(100, 300), (256, 1024), (1024, 4096)]


def calls_for(fn, seconds=0.05):
    """How many calls of ``fn`` last about ``seconds`` (at least 1)."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, int(seconds / max(once, 1e-7)))


def seconds_per_call(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def contenders(m, d):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (m, d)).astype(np.float32)
    dout = rng.standard_normal((m, d)).astype(np.float32)

    bn = BatchNorm1d(d)

    def ours():
        bn.forward(x)
        return bn.backward(dout)

    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tdout = torch.from_numpy(dout.copy())
    weight = torch.ones(d, requires_grad=True)
    bias = torch.zeros(d, requires_grad=True)
    running_mean, running_var = torch.zeros(d), torch.ones(d)

    def theirs():
        out = torch.nn.functional.batch_norm(tx, running_mean, running_var, weight, bias,
                                             training=True, momentum=0.1, eps=1e-5)
        return torch.autograd.grad(out, (tx, weight, bias), tdout)[0]

    return ours, theirs


def main():
    torch.set_num_threads(args.threads)
    print("Batch norm forward + backward, float32, bnbook (NumPy) vs torch (CPU kernel + autograd)")
    print(f"threads: {args.threads} (torch.get_num_threads() = {torch.get_num_threads()}; "
          f"bnbook's elementwise NumPy code runs on one core)")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"median of {args.repeats} alternating repeats\n")
    print(f"{'(m, d)':>13}  {'bnbook us':>10}  {'torch us':>10}  {'bnbook/torch':>12}  dx agree")
    ratios = []
    for m, d in SHAPES:
        ours, theirs = contenders(m, d)
        dx_ours, dx_theirs = ours(), theirs().numpy()
        err = np.max(np.abs(dx_ours - dx_theirs)) / np.max(np.abs(dx_theirs))
        n_ours, n_theirs = calls_for(ours), calls_for(theirs)
        times = {"bnbook": [], "torch": []}
        for r in range(args.repeats):
            pair = [("bnbook", ours, n_ours), ("torch", theirs, n_theirs)]
            for name, fn, number in (pair if r % 2 == 0 else pair[::-1]):
                times[name].append(seconds_per_call(fn, number))
        a, b = statistics.median(times["bnbook"]), statistics.median(times["torch"])
        ratios.append(a / b)
        print(f"{str((m, d)):>13}  {a * 1e6:10.1f}  {b * 1e6:10.1f}  {a / b:12.2f}  "
              f"{'yes' if err < 1e-4 else 'NO'} ({err:.0e})")
    print(f"\nworst ratio bnbook/torch: {max(ratios):.2f}")


if __name__ == "__main__":
    main()
