"""Wall-clock timing of small functions with :mod:`timeit`: repeats and the median (chapter 3).

A single timing on a shared machine is noise. :func:`repeat_times` lets
:class:`timeit.Timer` call the function in batches (``number`` calls per
repeat, by default enough for one repeat to last about ``min_time``
seconds), repeats that ``repeats`` times and returns the time of *one* call
in each repeat; chapter 3 keeps their median, which ignores the occasional
repeat slowed down by another process.
"""
from __future__ import annotations

import functools
import math
import timeit

import numpy as np

__all__ = ["repeat_times"]


def repeat_times(fn, *args, repeats: int = 7, number: int | None = None,
                 min_time: float = 0.02, **kwargs) -> np.ndarray:
    """Seconds per call of ``fn(*args, **kwargs)``, one value per repeat.

    Parameters
    ----------
    fn : the callable to time; its return value is discarded.
    repeats : how many timed repeats (>= 1).
    number : calls per repeat; ``None`` times one call (which also warms up
        caches and is not counted) and takes enough calls for ``min_time`` seconds.
    min_time : seconds, see ``number``.

    Returns
    -------
    times : float array of shape (repeats,), seconds per single call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats!r}")
    if number is not None and number < 1:
        raise ValueError(f"number must be at least 1; got {number!r}")
    timer = timeit.Timer(functools.partial(fn, *args, **kwargs))
    if number is None:
        one_call = timer.timeit(number=1)
        number = max(1, min(2**20, math.ceil(min_time / max(one_call, 1e-9))))
    return np.array(timer.repeat(repeat=repeats, number=number)) / number
