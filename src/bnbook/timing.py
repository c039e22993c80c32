"""Wall-clock timing of small functions: repeats and the median.

A single timing on a shared machine is noise. :func:`median_time` calls the
function in batches (``number`` calls per repeat, chosen so that one repeat
lasts at least ``min_time`` seconds), repeats that ``repeats`` times and
returns the median time of *one* call. The median ignores the occasional
repeat slowed down by another process.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["repeat_times", "median_time"]


def _calls_per_repeat(fn, args, kwargs, min_time: float) -> int:
    """Smallest power of 2 of calls that take at least ``min_time`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn(*args, **kwargs)
        if time.perf_counter() - start >= min_time or number >= 2**20:
            return number
        number *= 2


def repeat_times(fn, *args, repeats: int = 7, number: int | None = None,
                 min_time: float = 0.02, **kwargs) -> np.ndarray:
    """Seconds per call of ``fn(*args, **kwargs)``, one value per repeat.

    Parameters
    ----------
    fn : the callable to time; its return value is discarded.
    repeats : how many timed repeats (>= 1).
    number : calls per repeat; ``None`` picks the smallest power of 2 whose
        repeat lasts at least ``min_time`` seconds (the calibration calls
        also warm up caches and are not counted).
    min_time : seconds, see ``number``.

    Returns
    -------
    times : float array of shape (repeats,), seconds per single call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats!r}")
    if number is None:
        number = _calls_per_repeat(fn, args, kwargs, min_time)
    elif number < 1:
        raise ValueError(f"number must be at least 1; got {number!r}")
    times = np.empty(repeats)
    for r in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn(*args, **kwargs)
        times[r] = (time.perf_counter() - start) / number
    return times


def median_time(fn, *args, repeats: int = 7, number: int | None = None,
                min_time: float = 0.02, **kwargs) -> float:
    """Median over ``repeats`` of the seconds one call of ``fn(*args, **kwargs)`` takes.

    See :func:`repeat_times` for the parameters.
    """
    return float(np.median(repeat_times(fn, *args, repeats=repeats, number=number,
                                        min_time=min_time, **kwargs)))
