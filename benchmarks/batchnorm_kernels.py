"""Batch norm alone, forward + backward: bnbook against PyTorch's CPU kernel.

    python benchmarks/batchnorm_kernels.py [--threads N] [--repeats 15] [--baseline SRC]

For each batch shape (m, d) in (100, 300), (256, 1024), (1024, 4096) -- and
(100, 50), the book's second batch-norm layer, and (60, 100), the layers of
the original paper's MNIST network that chapter 6 trains -- in float32:

* bnbook: ``BatchNorm1d(d)`` in training mode, ``forward(x)`` (which
  also updates the running statistics) then ``backward(dout)`` (which stores
  dgamma and dbeta): the work of one training step;
* torch: ``torch.nn.functional.batch_norm(x, running_mean, running_var,
  weight, bias, training=True)`` then ``torch.autograd.grad`` of the output
  with respect to x, weight and bias, given ``dout``.

Each timing is the median of ``--repeats`` repeats (each repeat calls the pair
enough times to last about 50 ms); the two libraries' repeats alternate. The
script also checks that both compute the same dx.

The NumPy floor: the least time any NumPy code with the book's arithmetic
(two-pass variance) could take. One step needs at least 4 reductions over
the batch axis (the mean, the variance of ``x - mu``, ``sum(dout)``,
``sum(dout * (x - mu))``) and 7 elementwise ufunc passes over (m, d) arrays:
3 forward (``x - mu``, the scale ``gamma / sigma``, the shift ``beta``) and
4 backward (``dx = a * dout - b * (x - mu) - c`` joins five operands, and a
ufunc joins two), one of which joins two (m, d) arrays. The floor prices each
at NumPy's fastest loop of its kind on contiguous arrays -- a (d,) operand as
cheap as a scalar, the sums by BLAS (``ones @ x``) where that is faster --
and adds no Python overhead. No runnable code reaches it; it says how much
of a gap to torch is NumPy's and how much is the code's. Its parts are timed
right after the pair, alternating among themselves, and printed in a second
table beside a (d,) operand broadcast by NumPy.

``--baseline SRC`` also times another version of the package, side by side
in the same alternating repeats: SRC is a folder holding a ``bnbook/``
package (for instance ``git worktree add /tmp/old <commit>`` and
``--baseline /tmp/old/src``), loaded under the name ``bnbook_baseline``. Two
more columns print its median and the ratio bnbook/baseline.

Threads: ``--threads N`` (default: $OPENBLAS_NUM_THREADS, else the number of
CPUs) for both libraries. bnbook's batch norm is plain NumPy and uses one
core whatever N is; torch's kernel uses N.

PyTorch is not a requirement of the book; this benchmark needs it:
``pip install torch==2.13.0`` (a CPU build).
"""
from __future__ import annotations

import os

from bench_common import import_torch, parse_args, load_baseline


def _arguments(parser):
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per library and size")
    parser.add_argument("--baseline", default=None,
                        help="folder holding another bnbook/ package to time side by side")


args = parse_args(__doc__, _arguments)  # before NumPy loads: it sets the BLAS threads

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

torch = import_torch()

from bnbook.normalization import BatchNorm1d  # noqa: E402


BASELINE = load_baseline(args.baseline) if args.baseline else None

# the three sizes, the book's second batch-norm layer (100, 50), and
# the layers of the original paper's network in chapter 6 (60, 100)
SHAPES = [(60, 100), (100, 50), (100, 300), (256, 1024), (1024, 4096)]


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


def alternating_medians(named_fns):
    """Median seconds per call of each ``(name, fn)``, over ``--repeats`` repeats
    that take the functions in turn (reversed every other repeat)."""
    timed = [(name, fn, calls_for(fn)) for name, fn in named_fns]
    times = {name: [] for name, _, _ in timed}
    for r in range(args.repeats):
        for name, fn, number in (timed if r % 2 == 0 else timed[::-1]):
            times[name].append(seconds_per_call(fn, number))
    return {name: statistics.median(t) for name, t in times.items()}


def bnbook_step(layer_class, x, dout):
    """One training step of a BatchNorm1d: forward, then backward (returns dx)."""
    bn = layer_class(x.shape[1])

    def step():
        bn.forward(x)
        return bn.backward(dout)
    return step


def contenders(m, d):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (m, d)).astype(np.float32)
    dout = rng.standard_normal((m, d)).astype(np.float32)

    ours = bnbook_step(BatchNorm1d, x, dout)
    baseline = bnbook_step(BASELINE.BatchNorm1d, x, dout) if BASELINE else None

    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tdout = torch.from_numpy(dout.copy())
    weight = torch.ones(d, requires_grad=True)
    bias = torch.zeros(d, requires_grad=True)
    running_mean, running_var = torch.zeros(d), torch.ones(d)

    def theirs():
        out = torch.nn.functional.batch_norm(tx, running_mean, running_var, weight, bias,
                                             training=True, momentum=0.1, eps=1e-5)
        return torch.autograd.grad(out, (tx, weight, bias), tdout)[0]

    return ours, theirs, baseline


# How many of each NumPy operation one step needs at the least (see the docstring).
FLOOR_COUNTS = {"scalar": 6, "two arrays": 1, "sum": 2, "sum of products": 2}


def numpy_passes(m, d):
    """One pass of each kind over (m, d) float32 arrays, as (name, callable):
    the floor's parts, and a (d,) operand broadcast by NumPy."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal((m, d)).astype(np.float32)
    v = rng.standard_normal(d).astype(np.float32)
    out = np.empty_like(a)
    ones = np.ones(m, dtype=np.float32)
    return [
        ("scalar", lambda: np.multiply(a, 2.0, out=out)),
        ("(d,) broadcast", lambda: np.multiply(a, v, out=out)),
        ("two arrays", lambda: np.multiply(a, b, out=out)),
        ("sum, ufunc", lambda: a.sum(axis=0)),
        ("sum, BLAS", lambda: ones @ a),
        ("sum of products", lambda: np.einsum("ij,ij->j", a, b)),
    ]


def floor_seconds(median_of):
    """The floor, from the median seconds of each pass (the cheaper of the two sums)."""
    median_of = dict(median_of, sum=min(median_of["sum, ufunc"], median_of["sum, BLAS"]))
    return sum(count * median_of[name] for name, count in FLOOR_COUNTS.items())


def main():
    torch.set_num_threads(args.threads)
    print("Batch norm forward + backward, float32, bnbook (NumPy) vs torch (CPU kernel + autograd)")
    print(f"threads: {args.threads} (torch.get_num_threads() = {torch.get_num_threads()}; "
          f"bnbook's elementwise NumPy code runs on one core)")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    if BASELINE:
        print(f"baseline: {os.path.dirname(BASELINE.__file__)} (bnbook_baseline)")
    print(f"median of {args.repeats} alternating repeats\n")
    print(f"{'(m, d)':>13}  {'bnbook us':>10}  {'torch us':>10}  {'bnbook/torch':>12}  "
          f"{'floor us':>9}  {'floor/torch':>11}  dx agree"
          + (f"  {'baseline us':>11}  {'bnbook/baseline':>15}" if BASELINE else ""))
    ratios, floor_ratios, passes = {}, {}, {}
    for m, d in SHAPES:
        ours, theirs, baseline = contenders(m, d)
        dx_ours, dx_theirs = ours(), theirs().numpy()
        err = np.max(np.abs(dx_ours - dx_theirs)) / np.max(np.abs(dx_theirs))
        # the pair first, alternating; then NumPy's passes (timed apart: the BLAS
        # sum leaves OpenBLAS threads spinning, which would slow torch's next call)
        median_of = alternating_medians([("bnbook", ours), ("torch", theirs)]
                                        + ([("baseline", baseline)] if baseline else []))
        passes[(m, d)] = alternating_medians(numpy_passes(m, d))
        median_of.update(passes[(m, d)])
        a, b, f = median_of["bnbook"], median_of["torch"], floor_seconds(median_of)
        ratios[(m, d)], floor_ratios[(m, d)] = a / b, f / b
        print(f"{str((m, d)):>13}  {a * 1e6:10.1f}  {b * 1e6:10.1f}  {a / b:12.2f}  "
              f"{f * 1e6:9.1f}  {f / b:11.2f}  {'yes' if err < 1e-4 else 'NO'} ({err:.0e})"
              + (f"  {median_of['baseline'] * 1e6:11.1f}  {a / median_of['baseline']:15.2f}"
                 if baseline else ""))
    names = list(next(iter(passes.values())))  # the passes, in numpy_passes' order
    print("\nNumPy passes over (m, d) float32, median us (the floor's parts; "
          "'scalar' also prices a (d,) operand)")
    print(f"{'(m, d)':>13}" + "".join(f"  {name:>15}" for name in names))
    for shape, median_of in passes.items():
        print(f"{str(shape):>13}" + "".join(f"  {median_of[n] * 1e6:15.1f}" for n in names))
    print(f"\nworst ratio bnbook/torch: {max(ratios.values()):.2f} "
          f"(NumPy floor/torch: {max(floor_ratios.values()):.2f})")


if __name__ == "__main__":
    main()
