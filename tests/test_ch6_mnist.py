"""Tests of bnbook.chapters.ch6_mnist (chapter 6's drivers) on tiny synthetic data
(three Gaussian blobs, not MNIST), so they run in seconds."""
import numpy as np
import pytest

from bnbook.chapters.ch6_mnist import (ARTICLE, BOOK, LABELS, ArticleBatchNorm1d, best_lr, format_runs, paper_experiment,
                                       percentile_drift, run_pair, train_net)
from bnbook.normalization import BatchNorm1d
from bnbook.layers import Linear
from bnbook.training import History

SIZES = (8, 6, 5, 3)


def blobs(n=120, d=8, c=3, seed=0):
    """Three well separated Gaussian blobs: (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((c, d))
    y = rng.integers(0, c, size=2 * n)
    x = (centres[y] + rng.standard_normal((2 * n, d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def hist(accs, diverged_at=None):
    return History(label="h", test_acc=list(accs), train_loss=[1.0] * len(accs),
                   seconds=[0.1] * len(accs), steps=len(accs), diverged_at=diverged_at)


def test_run_pair_trains_both_networks_from_the_same_weights_as_asked():
    data = blobs()
    seen = {}

    def grab(step, model):  # record the starting weights of each network
        if step == 0:
            seen[len(seen)] = [layer.W.copy() for layer in model.layers
                               if isinstance(layer, Linear)]

    pair = run_pair(data, lr=0.1, epochs=3, sizes=SIZES, batch_size=20, seed=5,
                    progress=False, callback=grab, callback_every=1000)
    assert list(pair) == list(LABELS)
    assert [h.label for h in pair.values()] == ["BN seed 5", "plain seed 5"]
    for h in pair.values():
        assert len(h.test_acc) == 3 and h.steps == 3 * 6  # 120 images, batches of 20
        assert h.test_acc[-1] > 0.8  # separable blobs are learnt in three epochs
    for w_bn, w_plain in zip(seen[0], seen[1]):
        np.testing.assert_array_equal(w_bn, w_plain)
    # and the pair is the two single runs: train_net is deterministic given the seed
    alone = train_net(data, "plain", lr=0.1, epochs=3, sizes=SIZES, batch_size=20, seed=5,
                      progress=False)
    assert alone.test_acc == pair["plain"].test_acc


def test_article_recipe_builds_the_articles_networks():
    data = blobs()
    models = {}

    def grab(name):
        def cb(step, model):
            models[name] = model
        return cb

    kw = {**ARTICLE, "sizes": SIZES, "batch_size": 40, "epochs": 1}
    for name in LABELS:
        train_net(data, name, progress=False, callback=grab(name), callback_every=1000, **kw)
    bn, plain = models["BN"], models["plain"]
    bns = [layer for layer in bn.layers if isinstance(layer, BatchNorm1d)]
    assert len(bns) == 2 and all(isinstance(layer, ArticleBatchNorm1d) for layer in bns)
    assert all(layer.eps == 1e-12 and layer.param_grads == "sum" and not layer.unbiased_running_var
               for layer in bns)
    assert all(layer.b is None for layer in bn.layers if isinstance(layer, Linear))
    assert all(layer.b is not None for layer in plain.layers if isinstance(layer, Linear))
    assert not any(isinstance(layer, BatchNorm1d) for layer in plain.layers)
    assert ARTICLE["shuffle"] == "once" and BOOK["shuffle"] == "every epoch"


def test_train_net_rejects_an_unknown_network():
    with pytest.raises(ValueError, match="network"):
        train_net(blobs(), "LN", lr=0.1, epochs=1, progress=False)


def test_best_lr_takes_the_highest_final_accuracy_and_never_a_diverged_run():
    runs = {0.1: hist([0.5, 0.90]), 0.3: hist([0.6, 0.95]), 1.0: hist([0.99, np.nan], 2),
            3.0: hist([np.nan], 1)}
    assert best_lr(runs) == 0.3
    assert best_lr({0.1: hist([0.9]), 0.3: hist([0.9])}) == 0.1  # ties: the smaller rate
    with pytest.raises(ValueError, match="diverged"):
        best_lr({1.0: hist([np.nan], 1)})


def test_best_lr_with_a_tolerance_takes_the_smallest_rate_within_it_of_the_best():
    runs = {0.1: hist([0.9466]), 0.3: hist([0.9687]), 1.0: hist([0.9711]), 3.0: hist([0.1064])}
    assert best_lr(runs) == 1.0
    assert best_lr(runs, tolerance=0.003) == 0.3      # 0.24 points behind: within the tolerance
    assert best_lr(runs, tolerance=0.002) == 1.0      # ... but not within 0.2 points
    assert best_lr(runs, tolerance=0.03) == 0.1
    with pytest.raises(ValueError, match="tolerance"):
        best_lr(runs, tolerance=-0.01)


def test_format_runs_shows_each_run_the_finite_range_and_divergence():
    rows = {"BN": [hist([0.91, 0.965]), hist([0.9077, 0.9649])],
            "plain": [hist([0.88, 0.9475]), hist([0.1135, np.nan], diverged_at=2)]}
    text = format_runs(rows, epochs=(1, 2), published={("plain", 2): "85.8"})
    lines = text.splitlines()
    assert lines[0].split() == ["run", "1", "run", "2", "range", "published"]
    assert lines[2].split() == ["BN,", "epoch", "1", "91.00", "90.77", "90.77-91.00"]
    assert lines[3].split() == ["BN,", "epoch", "2", "96.50", "96.49", "96.49-96.50"]
    # the diverged run is shown as such and left out of the range
    assert lines[5].split() == ["plain,", "epoch", "2", "94.75", "diverged", "94.75-94.75",
                                "85.8"]
    assert len(lines) == 6
    # a diverged first run does not spoil the range either
    first = format_runs({"x": [hist([np.nan], 1), hist([0.5])]}, epochs=(1,)).splitlines()[2]
    assert first.split() == ["x,", "epoch", "1", "diverged", "50.00", "50.00-50.00"]
    # every run diverged: no range at all
    assert format_runs({"x": [hist([np.nan], 1)]}, epochs=(1,)).splitlines()[2].split() == \
        ["x,", "epoch", "1", "diverged", "-"]


def test_paper_experiment_records_every_unit_of_the_last_hidden_layer():
    data = blobs(n=120)
    out = paper_experiment(data, steps=10, lr=0.5, batch_size=20, record_every=5, n_probe=30,
                           sizes=(8, 7, 7, 4, 3), progress=False)
    for name in LABELS:
        rec = out[name]
        assert rec["history"].steps == 10
        assert list(rec["steps"]) == [0, 5, 10]
        assert rec["values"].shape == (3, 30, 4) and rec["test_acc"].shape == (3,)
    # with batch norm (gamma 1, beta 0 at step 0) each unit's input is standardized
    z0 = out["BN"]["values"][0]
    np.testing.assert_allclose(z0.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z0.var(axis=0), 1, atol=1e-2)  # eps 1e-5 shrinks it a little


def test_percentile_drift_follows_each_unit_from_the_start_record():
    steps = np.array([0, 100, 200, 300])
    base = np.linspace(-1, 1, 101)[:, None]            # 101 images, percentiles exact
    two = np.ones((1, 2))
    values = np.stack([base + np.array([[50.0, 0.0]]),  # step 0: unit 0 far away
                       base * two, base + np.array([[0.5, -0.2]]), base * np.array([[1.0, 3.0]])])
    d = percentile_drift(steps, values, start=100)      # the jump before step 100 is ignored
    # unit 0: shifted by 0.5 at step 200; unit 1: -0.2 at 200, then spread x3 (85th: 0.7 -> 2.1)
    np.testing.assert_allclose(d, [0.5, 1.4], atol=1e-12)
    assert percentile_drift(steps, values, start=0)[0] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no record"):
        percentile_drift(steps, values, start=400)
    with pytest.raises(ValueError, match="records, images, units"):
        percentile_drift(steps, values[:, :, 0], start=0)
