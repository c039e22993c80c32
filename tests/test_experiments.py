"""Fast tests of bnbook.experiments on tiny synthetic data (no MNIST)."""
import numpy as np
import pytest

from bnbook.experiments import (LABELS, SigmoidProbe, format_milestones, format_spread,
                                last_hidden_input, lr_grid, milestones, paper_experiment,
                                run_pair, seed_spread, sum_vs_mean_step, truncate,
                                weight_scale_sweep)
from bnbook.layers import build_mlp
from bnbook.train import History

SIZES = (8, 6, 5, 3)


def blobs(n=120, d=8, c=3, seed=0):
    """Three well separated Gaussian blobs: (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((c, d))
    y = rng.integers(0, c, size=2 * n)
    x = (centres[y] + rng.standard_normal((2 * n, d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def test_run_pair_same_start_and_labels():
    data = blobs()
    pair = run_pair(data, lr=0.1, epochs_bn=3, epochs_plain=2, sizes=SIZES, batch_size=20,
                    progress=False, tag=" t")
    assert list(pair) == list(LABELS)
    assert [h.label for h in pair.values()] == ["BN t", "plain t"]
    assert len(pair["BN"].test_acc) == 3 and len(pair["plain"].test_acc) == 2
    assert pair["BN"].test_acc[-1] > 0.8  # separable blobs are learnt quickly
    # build_mlp with one seed: the same first-layer weights with and without BN
    w_bn = build_mlp(SIZES, batchnorm=True, seed=0)[0].W
    w_plain = build_mlp(SIZES, batchnorm=False, seed=0)[0].W
    np.testing.assert_array_equal(w_bn, w_plain)


def test_truncate_equals_shorter_run():
    data = blobs()
    long = run_pair(data, lr=0.1, epochs_bn=4, sizes=SIZES, batch_size=20, progress=False)
    short = run_pair(data, lr=0.1, epochs_bn=2, sizes=SIZES, batch_size=20, progress=False)
    for k in LABELS:
        cut = truncate(long[k], 2)
        assert cut.test_acc == short[k].test_acc
        np.testing.assert_allclose(cut.train_loss, short[k].train_loss, rtol=1e-6)
        assert cut.steps == short[k].steps
        assert len(long[k].test_acc) == 4  # the original is untouched


def test_truncate_keeps_divergence_only_if_inside():
    h = History(label="x", train_loss=[1.0, np.nan, np.nan], test_acc=[0.5, np.nan, np.nan],
                seconds=[1.0, 1.0, 0.0], steps=3, diverged_at=2)
    assert truncate(h, 1).diverged_at is None
    assert truncate(h, 2).diverged_at == 2


def test_milestones_and_table():
    h = History(label="demo", test_acc=[0.9, 0.96, 0.971, 0.975, 0.981],
                train_loss=[1.0] * 5, seconds=[0.1] * 5, steps=5)
    m = milestones(h, epochs=(1, 5, 10), targets=(0.97, 0.98, 0.99))
    assert m["acc"] == {1: 0.9, 5: 0.981, 10: None}
    assert m["first"] == {0.97: 3, 0.98: 5, 0.99: None}
    text = format_milestones([m], epochs=(1, 5, 10), targets=(0.97, 0.98, 0.99))
    assert "not reached" in text and "epoch 3" in text and "98.10" in text
    assert text.splitlines()[2].split()[0] == "demo"


def test_lr_grid_reuses_given_pair():
    data = blobs()
    pair = run_pair(data, lr=0.1, epochs_bn=3, sizes=SIZES, batch_size=20, progress=False)
    grid = lr_grid(data, [0.1], epochs=2, reuse={0.1: pair}, progress=False)
    assert grid[0.1]["BN"].test_acc == pair["BN"].test_acc[:2]


def test_sum_vs_mean_step_equal():
    x, y, _, _ = blobs(n=50)
    assert sum_vs_mean_step(x, y, lr_sum=0.01, sizes=SIZES) < 1e-5
    assert sum_vs_mean_step(x, y, lr_sum=0.01, sizes=SIZES, batchnorm=True) < 1e-5


@pytest.mark.parametrize("batchnorm", [False, True])
def test_last_hidden_input(batchnorm):
    x, _, _, _ = blobs(n=40)
    model = build_mlp((8, 6, 5, 4, 3), batchnorm=batchnorm, activation="sigmoid", seed=1)
    model.train()
    before = [l.running_mean.copy() for l in model.layers if hasattr(l, "running_mean")]
    z = last_hidden_input(model, x)
    assert z.shape == (40, 4)
    after = [l.running_mean for l in model.layers if hasattr(l, "running_mean")]
    for a, b in zip(before, after):  # probing does not move the running statistics
        np.testing.assert_array_equal(a, b)
    if batchnorm:  # batch-normalized with gamma=1, beta=0: mean 0, variance 1 per unit
        np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(z.var(axis=0), 1, atol=1e-2)  # eps=1e-5 shrinks it a little
    else:  # equals the pre-activation of the last sigmoid computed by the model
        model.forward(x)
        sig = model.layers[-2]
        pre = -np.log(1 / sig._y - 1)
        np.testing.assert_allclose(z, pre, atol=1e-3)


def test_sigmoid_probe_and_paper_experiment():
    data = blobs(n=120)
    out = paper_experiment(data, steps=10, lr=0.5, batch_size=20, record_every=5, n_probe=30,
                           sizes=(8, 7, 7, 7, 3), progress=False)
    for name in LABELS:
        hist, probe = out[name]
        assert hist.steps == 10
        steps, acc, values = probe.arrays()
        assert list(steps) == [0, 5, 10]
        assert values.shape == (3, 30) and acc.shape == (3,)
        assert np.all((acc >= 0) & (acc <= 1))
    assert isinstance(out["BN"][1], SigmoidProbe)


def test_weight_scale_sweep_shapes():
    data = blobs()
    sweep = weight_scale_sweep(data, [0.1, 1.0], epochs=1, lr=0.1, progress=False,
                               sizes=SIZES, batch_size=20)
    assert sorted(sweep) == [0.1, 1.0]
    assert all(len(sweep[g][k].test_acc) == 1 for g in sweep for k in LABELS)


def test_seed_spread_trains_each_seed_and_reuses_a_given_pair():
    data = blobs()
    kw = dict(lr=0.1, sizes=SIZES, batch_size=20, progress=False)
    seed0 = run_pair(data, epochs_bn=3, seed=0, **kw)
    spread = seed_spread(data, [0, 1, 2], epochs=2, reuse={0: seed0}, **kw)
    assert list(spread) == [0, 1, 2]
    assert spread[0]["BN"].test_acc == seed0["BN"].test_acc[:2]  # cut, not retrained
    alone = run_pair(data, epochs_bn=2, seed=1, **kw)
    for k in LABELS:
        assert spread[1][k].test_acc == alone[k].test_acc  # the seed is run_pair's seed
        assert spread[1][k].label == f"{k} seed 1"
    assert spread[1]["BN"].test_acc != spread[2]["BN"].test_acc  # seeds differ


def test_format_spread_shows_each_seed_the_range_and_divergence():
    def hist(accs, diverged_at=None):
        return History(label="h", test_acc=accs, train_loss=[1.0] * len(accs),
                       seconds=[0.1] * len(accs), steps=len(accs), diverged_at=diverged_at)
    by_seed = {0: {"BN": hist([0.91, 0.965]), "plain": hist([0.88, 0.9475])},
               1: {"BN": hist([0.9077, 0.9649]), "plain": hist([0.1135, np.nan], diverged_at=2)}}
    text = format_spread(by_seed, epochs=(1, 2), title="demo")
    lines = text.splitlines()
    assert lines[0].split() == ["demo", "seed", "0", "seed", "1", "range"]
    assert lines[2].split() == ["BN,", "epoch", "1", "91.00", "90.77", "90.77-91.00"]
    assert lines[3].split() == ["BN,", "epoch", "2", "96.50", "96.49", "96.49-96.50"]
    assert lines[5].split() == ["plain,", "epoch", "2", "94.75", "diverged", "94.75-94.75"]
    assert len(lines) == 6
