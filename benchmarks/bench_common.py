"""What the benchmark scripts share: the ``--threads`` option, which must take
effect before NumPy and PyTorch are loaded, and the import of PyTorch (not a
requirement of the book, so its absence ends the script with a clear message).

Import this module before NumPy: ``parse_args`` sets the BLAS thread count
through the environment variables the libraries read when they load.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(doc: str, add_arguments=None) -> argparse.Namespace:
    """Parse the command line (``--threads`` plus what ``add_arguments(parser)``
    adds) and set the thread count of the BLAS libraries loaded after this call."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int,
                        default=int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count()),
                        help="BLAS / torch threads (default: $OPENBLAS_NUM_THREADS or the CPU count)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    for var in BLAS_THREAD_VARIABLES:
        os.environ[var] = str(args.threads)
    return args


def load_baseline(src):
    """Another version of the package, the ``bnbook/`` folder under ``src``,
    imported as ``bnbook_baseline`` (``--baseline`` of the scripts: for
    example an older commit's ``src``, to time old and new side by side)."""
    init = os.path.join(src, "bnbook", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "bnbook_baseline", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnbook_baseline"] = module
    spec.loader.exec_module(module)
    return module


def import_torch():
    """PyTorch, or exit with a message saying how to install it."""
    try:
        import torch
    except ImportError:
        sys.exit("This benchmark compares bnbook with PyTorch, which is not installed "
                 "(it is not a requirement of the book): pip install torch==2.13.0")
    return torch


def bnbook_epoch(model, data, *, lr: float, batch: int, seed: int, max_steps=None, fit=None):
    """Seconds of one training epoch of a bnbook ``model`` as ``fit`` records
    it, and its mean loss. ``data`` is ``(x_train, y_train, x_test, y_test)``;
    ``fit`` defaults to ``bnbook.training.fit`` (a baseline passes its own)."""
    if fit is None:
        from bnbook.training import fit

    hist = fit(model, data, epochs=1, lr=lr, batch_size=batch, seed=seed,
               progress=False, max_steps=max_steps)
    return hist.seconds[0], hist.train_loss[0]


def torch_epoch(model, x, y, *, lr: float, batch: int, seed: int, max_steps=None):
    """Seconds of one training epoch of a torch ``model`` on tensors ``x``
    (n, ...) and ``y`` (n,), with the batch order ``fit`` draws from ``seed``,
    and its mean loss."""
    import time

    import numpy as np

    torch = import_torch()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)  # the shuffle fit uses
    n = len(x)
    steps = n // batch if max_steps is None else max_steps
    t0 = time.perf_counter()
    perm = torch.from_numpy(rng.permutation(n))
    losses = []
    for start in range(0, steps * batch, batch):
        idx = perm[start:start + batch]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - t0, float(np.mean(losses))
