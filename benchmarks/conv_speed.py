"""One MNIST training epoch of chapter 9's convolutional network: bnbook against PyTorch on the CPU.

    python benchmarks/conv_speed.py [--threads N] [--runs 5]

Both libraries train the network of ``bnbook.models.build_cnn("batch")`` --
conv 3x3 1->8 (pad 1, no bias), BatchNorm2d, ReLU, 2x2 max pool, conv 3x3
8->16, BatchNorm2d, ReLU, 2x2 max pool, flatten, linear 784->10 -- with
softmax cross-entropy and plain SGD (learning rate 0.1, batches of 100) for
one epoch over the 60,000 MNIST training images, in float32, in this process:

* bnbook through ``bnbook.training.fit`` (the time fit records for the epoch:
  shuffling, batching and 600 SGD steps; not the test evaluation after it);
* PyTorch through the usual loop (``zero_grad``, forward, ``cross_entropy``,
  ``backward``, ``SGD.step``, ``loss.item()``), each batch gathered with one
  index as fit does.

Both start from the same weights and see the same batches in the same order,
so their mean training losses agree (printed as a check). After a warm-up
the runs alternate (bnbook, torch, torch, bnbook, ...) and the medians are
compared: the machine may be shared.

Before the timed epochs the script prints a profile of one bnbook SGD step:
the median forward and backward time of every layer (on a batch of 100
training images), which is where the epoch's time goes.

Threads: ``--threads N`` (default: $OPENBLAS_NUM_THREADS, else the number of
CPUs) is given to both libraries (see ``bench_common.py``). PyTorch is not a
requirement of the book; this benchmark needs it (``pip install torch``, a
CPU build). The last line is ``ratio bnbook/torch: X.XX``. ``--baseline SRC``
also trains another version of the package (its ``bnbook/`` folder under
SRC) in the same alternating runs.
"""
from __future__ import annotations

import os
import sys

import bench_common
from bench_common import import_torch, parse_args


def _arguments(parser):
    parser.add_argument("--runs", type=int, default=5, help="timed epochs of each library (>= 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffle")
    parser.add_argument("--baseline", default=None,
                        help="folder holding another bnbook/ package to time side by side")


args = parse_args(__doc__, _arguments)  # before NumPy loads: it sets the BLAS threads

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

torch = import_torch()

from bnbook.models import build_cnn  # noqa: E402
from bnbook.mnist import load_mnist  # noqa: E402

BASELINE = bench_common.load_baseline(args.baseline) if args.baseline else None

BATCH = 100
LR = 0.1
EPOCH = dict(lr=LR, batch=BATCH, seed=args.seed)  # what both timed epochs share


def bnbook_model():
    return build_cnn("batch", seed=args.seed)


def torch_model_like(model):
    """The same network in PyTorch, with the weights of the bnbook ``model``."""
    nn = torch.nn
    layers = []
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Conv2d":
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             stride=layer.stride, padding=layer.pad, bias=layer.b is not None)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.W))
            layers.append(conv)
        elif name == "BatchNorm2d":
            layers.append(nn.BatchNorm2d(layer.num_channels, eps=layer.eps, momentum=layer.momentum))
        elif name == "ReLU":
            layers.append(nn.ReLU())
        elif name == "MaxPool2d":
            layers.append(nn.MaxPool2d(2))
        elif name == "Flatten":
            layers.append(nn.Flatten())
        elif name == "Linear":
            lin = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.W.T))  # torch stores (out, in)
                lin.bias.copy_(torch.from_numpy(layer.b))
            layers.append(lin)
        else:
            raise TypeError(f"unexpected layer {name}")
    return nn.Sequential(*layers)


def bnbook_epoch(data, max_steps=None):
    return bench_common.bnbook_epoch(bnbook_model(), data, max_steps=max_steps, **EPOCH)


def baseline_epoch(data, max_steps=None):
    model = BASELINE.build_cnn("batch", seed=args.seed)
    return bench_common.bnbook_epoch(model, data, max_steps=max_steps, fit=BASELINE.fit, **EPOCH)


def torch_epoch(x, y, max_steps=None):
    return bench_common.torch_epoch(torch_model_like(bnbook_model()), x, y,
                                    max_steps=max_steps, **EPOCH)


def layer_profile(x, repeats=15):
    """Median ms of each layer's forward and backward on one batch, bnbook."""
    model = bnbook_model()
    acts = [x]
    for layer in model.layers:
        acts.append(layer.forward(acts[-1]))
    douts = [None] * len(model.layers)
    d = np.random.default_rng(0).standard_normal(acts[-1].shape).astype(np.float32) / BATCH
    for i in range(len(model.layers) - 1, -1, -1):
        douts[i] = d
        d = model.layers[i].backward(d)
    rows = []
    for i, layer in enumerate(model.layers):
        fwd, bwd = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            layer.forward(acts[i])
            t1 = time.perf_counter()
            layer.backward(douts[i])
            bwd.append(time.perf_counter() - t1)
            fwd.append(t1 - t0)
        rows.append((repr(layer), 1e3 * statistics.median(fwd), 1e3 * statistics.median(bwd)))
    return rows


def main():
    if args.runs < 3:
        sys.exit("--runs must be at least 3")
    torch.set_num_threads(args.threads)
    x, y, _, _ = load_mnist(download=False)
    x = x.reshape(-1, 1, 28, 28)
    data = (x, y, x[:BATCH], y[:BATCH])  # fit's end-of-epoch evaluation is not timed
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))  # writable copies

    print("One training epoch of chapter 9's CNN, bnbook vs PyTorch on the CPU")
    print(f"network: {bnbook_model()!r}".replace("\n", " "))
    print(f"SGD lr {LR}, batch {BATCH}, float32, 60000 MNIST training images")
    print(f"threads: {args.threads} (torch.get_num_threads() = {torch.get_num_threads()})")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    print("\nprofile of one bnbook SGD step (batch 100), median ms per call:")
    rows = layer_profile(np.ascontiguousarray(x[:BATCH]))
    for name, f, b in rows:
        print(f"  {name:60s} forward {f:6.2f}  backward {b:6.2f}")
    total = sum(f + b for _, f, b in rows)
    print(f"  {'sum':60s} {total:.2f} ms per step -> {600 * total / 1e3:.2f} s per epoch")

    bnbook_epoch(data, max_steps=50)  # warm-up
    torch_epoch(xt, yt, max_steps=50)
    contenders = {"bnbook": lambda: bnbook_epoch(data), "torch": lambda: torch_epoch(xt, yt)}
    if BASELINE:
        baseline_epoch(data, max_steps=50)  # warm-up
        contenders["baseline"] = lambda: baseline_epoch(data)
    names = list(contenders)
    times = {name: [] for name in names}
    losses = {name: [] for name in names}
    print(f"\n{'run':>3}  " + "  ".join(f"{name:>8}" for name in names) + "   (seconds)")
    for run in range(args.runs):
        order = names if run % 2 == 0 else names[::-1]
        for name in order:
            seconds, loss = contenders[name]()
            times[name].append(seconds)
            losses[name].append(loss)
        print(f"{run + 1:>3}  " + "  ".join(f"{times[n][-1]:8.3f}" for n in names), flush=True)
    med = {name: statistics.median(times[name]) for name in names}
    print(f"\nmedian seconds per epoch: bnbook {med['bnbook']:.3f}, torch {med['torch']:.3f}")
    print(f"mean training loss of the epoch (same weights, same batches): "
          f"bnbook {losses['bnbook'][0]:.4f}, torch {losses['torch'][0]:.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if BASELINE:
        paired = statistics.median(b / a for b, a in zip(times["bnbook"], times["baseline"]))
        print(f"baseline: {os.path.dirname(BASELINE.__file__)}; median {med['baseline']:.3f} s; "
              f"ratio bnbook/baseline: {med['bnbook'] / med['baseline']:.3f} "
              f"(median of the per-run ratios {paired:.3f})")
    print(f"ratio bnbook/torch: {med['bnbook'] / med['torch']:.2f}")


if __name__ == "__main__":
    main()
