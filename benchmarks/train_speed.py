"""One MNIST training epoch: bnbook against PyTorch on the CPU.

    python benchmarks/train_speed.py [--threads N] [--runs 5]

Both libraries train the seed's network -- 784-300-50-10, batch norm before
each ReLU, bias-free hidden linear layers, softmax cross-entropy, plain SGD
with learning rate 0.01, mini-batches of 100 -- for one epoch over the 60,000
MNIST training images, in float32, in this process:

* bnbook through ``bnbook.training.fit`` (the time is the one fit records for the
  epoch: shuffling, batching and 600 SGD steps; the test-set evaluation that
  follows is not included);
* PyTorch through the usual loop (``zero_grad``, forward, ``cross_entropy``,
  ``backward``, ``SGD.step``, ``loss.item()``), gathering each batch with one
  index like fit does (no DataLoader, which would only add overhead).

Both start from the same weights and see the same batches in the same order,
so their mean training losses agree (printed as a check). The runs alternate
(bnbook, torch, torch, bnbook, ...) after a warm-up and the medians are
reported: the machine may be shared.

The matmul floor: one epoch is 600 steps of 8 matrix products (3 forward,
3 weight gradients, 2 input gradients: the first layer's input gradient is not
needed), about 62 GFLOP. The script times exactly those products, with the
shapes and memory layouts of training, in NumPy and in PyTorch, and prints the
epoch time that this machine's float32 matmul rate allows.

Threads: ``--threads N`` (default: $OPENBLAS_NUM_THREADS, else the number of
CPUs) is given to both libraries: NumPy's BLAS through the environment
variables read when it loads, PyTorch through ``torch.set_num_threads``.

PyTorch is not a requirement of the book; this benchmark needs it:
``pip install torch==2.13.0`` (a CPU build). Without the MNIST files it uses
random data of the same shape, and says so.

``--baseline SRC`` also times another version of the package (the
``bnbook/`` folder under SRC, for example an older commit's ``src``) in the
same alternating runs, and prints the ratio bnbook/baseline.
"""
from __future__ import annotations

import os
import sys

import bench_common
from bench_common import import_torch, parse_args


def _arguments(parser):
    parser.add_argument("--runs", type=int, default=5, help="timed epochs of each library (>= 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffle")
    parser.add_argument("--baseline", default=None,
                        help="folder holding another bnbook/ package to time side by side")


args = parse_args(__doc__, _arguments)  # before NumPy loads: it sets the BLAS threads

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

torch = import_torch()

from bnbook.models import build_mlp  # noqa: E402
from bnbook.mnist import load_mnist  # noqa: E402

BASELINE = bench_common.load_baseline(args.baseline) if args.baseline else None

SIZES = [784, 300, 50, 10]
BATCH = 100
LR = 0.01
EPOCH = dict(lr=LR, batch=BATCH, seed=args.seed)  # what both timed epochs share
N_TRAIN = 60_000


def blas_threads() -> str:
    """What NumPy's BLAS reports about its threads (needs threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return f"{args.threads} requested via OPENBLAS_NUM_THREADS (threadpoolctl not installed)"
    blas = [f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()
            if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    return ", ".join(blas) or "no BLAS found by threadpoolctl"


def load_data():
    """MNIST training images (60000, 784) float32 and labels, or random stand-ins."""
    try:
        x, y, _, _ = load_mnist(download=False)
        return x, y, "MNIST, 60000 training images (bnbook.mnist.load_mnist)"
    except (OSError, ValueError) as exc:
        rng = np.random.default_rng(0)
        x = rng.random((N_TRAIN, SIZES[0]), dtype=np.float32)
        y = rng.integers(0, SIZES[-1], N_TRAIN)
        return x, y, (f"RANDOM data of MNIST's shape (60000, 784): the MNIST files are "
                      f"missing ({type(exc).__name__}); timings are comparable, losses are not")


# --------------------------------------------------------------------------
# the two contenders
# --------------------------------------------------------------------------
def bnbook_model():
    return build_mlp(SIZES, batchnorm=True, seed=args.seed, dtype=np.float32)


def torch_model_like(model):
    """The same network in PyTorch, with the weights of the bnbook ``model``."""
    layers = []
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Linear":
            lin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.b is not None)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.W.T))  # torch stores (out, in)
                if layer.b is not None:
                    lin.bias.copy_(torch.from_numpy(layer.b))
            layers.append(lin)
        elif name == "BatchNorm1d":
            layers.append(torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps,
                                               momentum=layer.momentum))
        elif name == "ReLU":
            layers.append(torch.nn.ReLU())
        else:
            raise TypeError(f"unexpected layer {name}")
    return torch.nn.Sequential(*layers)


def bnbook_epoch(data, max_steps=None):
    return bench_common.bnbook_epoch(bnbook_model(), data, max_steps=max_steps, **EPOCH)


def baseline_epoch(data, max_steps=None):
    model = BASELINE.build_mlp(SIZES, batchnorm=True, seed=args.seed, dtype=np.float32)
    return bench_common.bnbook_epoch(model, data, max_steps=max_steps, fit=BASELINE.fit, **EPOCH)


def torch_epoch(x, y, max_steps=None):
    return bench_common.torch_epoch(torch_model_like(bnbook_model()), x, y,
                                    max_steps=max_steps, **EPOCH)


# --------------------------------------------------------------------------
# the matmul floor
# --------------------------------------------------------------------------
def step_matmuls():
    """(name, (a_shape, b_shape), transposes) of the 8 products of one SGD step."""
    prods = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        prods.append((f"x{i} @ W{i}", (BATCH, fan_in), (fan_in, fan_out), "NN"))
        prods.append((f"x{i}.T @ d{i}", (fan_in, BATCH), (BATCH, fan_out), "TN"))
        if i > 0:  # the network's input needs no gradient
            prods.append((f"d{i} @ W{i}.T", (BATCH, fan_out), (fan_out, fan_in), "NT"))
    return prods


def gflop_per_epoch(steps):
    return steps * sum(2 * a[0] * a[1] * b[1] for _, a, b, _ in step_matmuls()) / 1e9


def operands(lib):
    """Random float32 operands with training's layouts (transposed views, not copies)."""
    rng = np.random.default_rng(1)
    out = []
    for _, a, b, kind in step_matmuls():
        # store each operand the way training holds it, then view it as used
        A = rng.standard_normal(a[::-1] if kind[0] == "T" else a, dtype=np.float32)
        B = rng.standard_normal(b[::-1] if kind[1] == "T" else b, dtype=np.float32)
        if lib == "torch":
            A, B = torch.from_numpy(A), torch.from_numpy(B)
        A = A.T if kind[0] == "T" else A
        B = B.T if kind[1] == "T" else B
        out.append((A, B))
    return out


def numpy_matmul_epoch(steps):
    prods = [(A, B, np.empty((A.shape[0], B.shape[1]), np.float32)) for A, B in operands("numpy")]
    t0 = time.perf_counter()
    for _ in range(steps):
        for A, B, C in prods:
            np.matmul(A, B, out=C)
    return time.perf_counter() - t0


def torch_matmul_epoch(steps):
    prods = [(A, B, torch.empty(A.shape[0], B.shape[1])) for A, B in operands("torch")]
    t0 = time.perf_counter()
    for _ in range(steps):
        for A, B, C in prods:
            torch.mm(A, B, out=C)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
def main():
    if args.runs < 5:
        sys.exit("--runs must be at least 5")
    torch.set_num_threads(args.threads)
    x, y, source = load_data()
    data = (x, y, x[:BATCH], y[:BATCH])  # fit's end-of-epoch evaluation is not timed
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))  # writable copies
    steps = len(x) // BATCH

    print("One training epoch, bnbook vs PyTorch on the CPU")
    print(f"network: {'-'.join(map(str, SIZES))}, batch norm before each ReLU, bias-free "
          f"hidden layers, softmax cross-entropy, SGD lr {LR}, batch {BATCH}, float32")
    print(f"data: {source}")
    print(f"threads: {args.threads} (NumPy BLAS: {blas_threads()}; "
          f"torch.get_num_threads() = {torch.get_num_threads()})")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    # warm-up: imports, allocator, BLAS thread pools, torch's kernels
    bnbook_epoch(data, max_steps=100)
    torch_epoch(xt, yt, max_steps=100)
    if BASELINE:
        baseline_epoch(data, max_steps=100)
    numpy_matmul_epoch(50)
    torch_matmul_epoch(50)

    contenders = {
        "bnbook": lambda: bnbook_epoch(data),
        "torch": lambda: torch_epoch(xt, yt),
        "numpy matmuls": lambda: (numpy_matmul_epoch(steps), None),
        "torch matmuls": lambda: (torch_matmul_epoch(steps), None),
    }
    if BASELINE:
        contenders["baseline"] = lambda: baseline_epoch(data)
    names = list(contenders)
    times = {name: [] for name in names}
    losses = {name: [] for name in names}
    print(f"\n{'run':>3}  " + "  ".join(f"{name:>13}" for name in names) + "   (seconds)")
    for run in range(args.runs):
        order = names if run % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            seconds, loss = contenders[name]()
            times[name].append(seconds)
            losses[name].append(loss)
        print(f"{run + 1:>3}  " + "  ".join(f"{times[n][-1]:13.3f}" for n in names))

    med = {name: statistics.median(times[name]) for name in names}
    gflop = gflop_per_epoch(steps)
    floor = min(med["numpy matmuls"], med["torch matmuls"])
    print(f"\nmedian seconds per epoch: bnbook {med['bnbook']:.3f}, torch {med['torch']:.3f}")
    print(f"mean training loss of the epoch (same weights, same batches): "
          f"bnbook {losses['bnbook'][0]:.4f}, torch {losses['torch'][0]:.4f}")
    print(f"matmul floor: {steps} steps x {len(step_matmuls())} products = {gflop:.1f} GFLOP "
          f"per epoch;")
    for lib in ("numpy", "torch"):
        t = med[f"{lib} matmuls"]
        print(f"  {lib:5s} {gflop / t:6.1f} GFLOP/s -> {t:.3f} s per epoch")
    print(f"bnbook epoch / matmul floor: {med['bnbook'] / floor:.2f}  "
          f"(torch: {med['torch'] / floor:.2f})")
    if BASELINE:
        paired = statistics.median(b / a for b, a in zip(times["bnbook"], times["baseline"]))
        print(f"baseline: {os.path.dirname(BASELINE.__file__)}; median {med['baseline']:.3f} s, "
              f"loss {losses['baseline'][0]:.4f}; ratio bnbook/baseline: "
              f"{med['bnbook'] / med['baseline']:.3f} (median of the per-run ratios {paired:.3f})")
    print(f"ratio bnbook/torch: {med['bnbook'] / med['torch']:.2f}")


if __name__ == "__main__":
    main()
