"""Tests of bnbook.timing."""
import time

import numpy as np
import pytest

from bnbook.timing import repeat_times


def test_repeat_times_shape_and_positive():
    t = repeat_times(np.sum, np.ones(100), repeats=5)
    assert t.shape == (5,)
    assert np.all(t > 0)


def test_fixed_number_calls_function_exactly():
    calls = []
    repeat_times(lambda: calls.append(1), repeats=3, number=4)
    assert len(calls) == 12


def test_arguments_are_passed():
    seen = []
    repeat_times(lambda a, b=0: seen.append((a, b)), 1, b=2, repeats=2, number=1)
    assert seen == [(1, 2), (1, 2)]


def test_median_of_a_sleep_is_about_its_duration():
    t = np.median(repeat_times(time.sleep, 0.002, repeats=3, number=2))
    assert 0.0019 < t < 0.05


def test_calibration_reaches_min_time():
    calls = []
    repeat_times(lambda: calls.append(1), repeats=1, min_time=0.001)
    assert len(calls) >= 2  # calibration calls plus the timed repeat


def test_median_orders_slow_and_fast():
    fast = np.median(repeat_times(np.add, 1.0, 2.0, repeats=5))
    slow = np.median(repeat_times(time.sleep, 0.001, repeats=3, number=1))
    assert fast < slow


@pytest.mark.parametrize("kw", [{"repeats": 0}, {"number": 0}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        repeat_times(np.sum, np.ones(3), **kw)
