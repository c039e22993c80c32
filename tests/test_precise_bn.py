"""Tests of chapter 5's precise-BN driver (bnbook.chapters.ch5_statistics): recording
the batch statistics, replaying them for any momentum, the first BN layer's
population statistics, and running_vs_precise on a small data set.

Float64 networks; tolerances rtol 1e-12 (replays: same operations, another
order) unless stated."""

import numpy as np

from bnbook import build_mlp, fit
from bnbook.chapters.ch5_statistics import (BatchStatsRecorder, format_precise_table, input_mean_and_cov, precise_bn,
                                            replay_running_stats, running_vs_precise)
from bnbook.normalization import bn_inputs, bn_layers

from conftest import make_blobs


def trained(momentum, recorder=None, steps=20):
    data = make_blobs(n=120, d=8, c=3, seed=0)
    data = tuple(a.astype(np.float64) if a.dtype.kind == "f" else a for a in data)
    net = build_mlp([8, 16, 12, 3], batchnorm=True, seed=0, dtype=np.float64, bn_momentum=momentum)
    fit(net, data, epochs=3, lr=0.2, batch_size=16, seed=0, progress=False, max_steps=steps,
        callback=recorder, callback_every=1 if recorder else 0)
    return net, data


def test_replay_gives_the_running_averages_of_every_momentum_from_one_run():
    rec = BatchStatsRecorder()
    net, _ = trained(0.1, rec)
    assert rec.model is net and rec.steps == 20 and len(rec.stats[0]) == 2  # 20 steps, 2 BN layers
    first = rec.stats[0][0]                    # step 1, first BN layer: one group of 16 rows
    assert first.mean.shape == first.var.shape == (1, 16) and first.count == 16
    for momentum in (0.1, 0.7, None):
        other, _ = trained(momentum)           # same seed, same weights: only the averages differ
        for bn, (mean, var) in zip(bn_layers(other), replay_running_stats(rec, momentum), strict=True):
            np.testing.assert_allclose(mean, bn.running_mean, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(var, bn.running_var, rtol=1e-12)


def test_replay_trajectory_starts_at_the_initial_values_and_ends_at_the_final_ones():
    rec = BatchStatsRecorder()
    net, _ = trained(0.1, rec)
    means, variances = replay_running_stats(rec, 0.1, layer=1)
    assert means.shape == variances.shape == (21, 12)
    assert np.all(means[0] == 0) and np.all(variances[0] == 1)
    np.testing.assert_allclose(means[-1], bn_layers(net)[1].running_mean, rtol=1e-12, atol=1e-14)


def test_first_layer_population_statistics_are_those_of_its_input():
    data = make_blobs(n=120, d=8, c=3, seed=0)
    x = data[0].astype(np.float64)
    rec = BatchStatsRecorder(input_mean_and_cov(x), probe_every=1)
    net = build_mlp([8, 16, 3], batchnorm=True, seed=0, dtype=np.float64)
    fit(net, (x,) + data[1:2] + (data[2].astype(np.float64), data[3]), epochs=1, lr=0.2,
        batch_size=16, seed=0, progress=False, callback=rec, callback_every=1)
    assert rec.probe_steps == list(range(9))  # 8 steps (120 = 7 * 16 + 8)
    mean, var = rec.population[-1]            # after the last step: the final weights
    h = bn_inputs(net, x)[0]                  # the first BN layer's input for all of x
    np.testing.assert_allclose(mean, h.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, h.var(axis=0, ddof=1), rtol=1e-10)


def test_precise_bn_leaves_the_model_alone():
    net, data = trained(0.1)
    before = bn_layers(net)[0].running_mean.copy()
    copy = precise_bn(net, data[0])
    np.testing.assert_array_equal(bn_layers(net)[0].running_mean, before)
    np.testing.assert_allclose(bn_layers(copy)[0].running_mean, bn_inputs(copy, data[0])[0].mean(axis=0),
                               rtol=1e-12, atol=1e-12)


def test_running_vs_precise_returns_every_case_seed_and_momentum():
    data = make_blobs(n=200, d=784, c=10, seed=1)   # chapter 6's network needs 784 inputs
    cases = {"short": dict(lr=0.1, epochs=1, batch_size=50, max_steps=3, momenta=(0.1, None))}
    out = running_vs_precise(data, cases, seeds=(0, 1), n_precise=100, progress=False)
    assert set(out) == {"short"} and set(out["short"]) == {0, 1}
    r = out["short"][0]
    assert r["steps"] == 3 and set(r["running"]) == {0.1, None}
    assert all(0.0 <= a <= 1.0 for a in (r["precise"], *r["running"].values()))
    table = format_precise_table(out, [("short", 0.1), ("short", None)])
    assert "cumulative" in table and len(table.splitlines()) == 2 + 4
