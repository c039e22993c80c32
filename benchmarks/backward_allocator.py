"""Staged walk vs compact formula of batch norm's backward pass, with and without fresh memory.

Chapter 3 (book/03_backward.ipynb) times the staged walk
(``bnbook.batchnorm.batchnorm_backward_staged``) against the compact formula
written out in plain NumPy, and one size, 256 x 256, stands out by a large
factor. This script tests the explanation that the chapter offers: the gap
comes from the memory allocator, not from arithmetic. The staged walk creates
more temporary (m, d) arrays; glibc serves large requests with fresh pages
from the operating system (mmap), and every fresh page costs a page fault
on first touch, until its dynamic threshold has grown past the array size.

The same measurement runs in two fresh Python processes: one with glibc's
defaults, one with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
set to 1 GB, so that freed arrays are reused instead of returned. (Linux with
glibc only; elsewhere the variables do nothing and the two runs should agree.)
Each run prints nanoseconds per batch entry (medians of alternating repeats)
and the ratio staged / compact.

    python benchmarks/backward_allocator.py          # about 30 seconds
"""
from __future__ import annotations

import os
import subprocess
import sys

SIZES = [(64, 100), (256, 256), (1024, 256), (1024, 1024)]
REUSE = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def measure() -> None:
    import numpy as np

    from bnbook.batchnorm import batchnorm_backward_staged, batchnorm_forward
    from bnbook.timing import repeat_times

    def backward_compact(dout, cache):  # the formula as chapter 3 writes it
        m = dout.shape[0]
        dbeta = dout.sum(axis=0)
        dgamma = (dout * cache.xhat).sum(axis=0)
        dx = cache.gamma / (m * cache.std) * (m * dout - dbeta - cache.xhat * dgamma)
        return dx, dgamma, dbeta

    rng = np.random.default_rng(11)
    for m, d in SIZES:
        x, g = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        _, cache = batchnorm_forward(x, np.ones(d), np.zeros(d))
        staged, compact = [], []
        for _ in range(7):  # alternate, so that a burst of load hits both
            staged.append(np.median(repeat_times(batchnorm_backward_staged, g, cache, repeats=3)))
            compact.append(np.median(repeat_times(backward_compact, g, cache, repeats=3)))
        ts, tc = np.median(staged), np.median(compact)
        print(f"  {m:5d} x {d:<5d} staged {1e9 * ts / (m * d):7.1f}   compact {1e9 * tc / (m * d):7.1f}"
              f"   ratio {ts / tc:5.2f}", flush=True)


def main() -> None:
    if "--measure" in sys.argv:
        measure()
        return
    print(__doc__.splitlines()[0])
    print("nanoseconds per entry of the (m, d) batch, medians of 7 alternating repeats")
    for title, extra in [("glibc defaults (fresh pages for large arrays)", {}),
                         ("MALLOC_MMAP_THRESHOLD_=1 GB (freed arrays reused)", REUSE)]:
        print(f"\n{title}:", flush=True)
        env = {**os.environ, **extra}
        for var in REUSE:
            if var not in extra:
                env.pop(var, None)
        subprocess.run([sys.executable, __file__, "--measure"], env=env, check=True)


if __name__ == "__main__":
    main()
