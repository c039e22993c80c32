"""BatchNorm1d's running averages: ``momentum=None`` (the cumulative average)
beside the exponential one, and ``num_batches_tracked`` (chapter 5).

Torch parity in float64 (tolerance rtol 1e-13 on the running statistics,
1e-12 on outputs: a few roundings of difference in the update order);
everything else is exact or float64 to 1e-13.
"""

import numpy as np
import pytest

from bnbook.chapters.ch6_mnist import ArticleBatchNorm1d
from bnbook.checks import check_momentum
from bnbook.normalization import BatchNorm1d
from bnbook.optimizers import SGD

BATCH_SIZES = [2, 5, 16, 3, 32, 7, 64]


def batches(seed=0, d=6, sizes=BATCH_SIZES):
    """Batches of different sizes, each with a different mean and spread per feature."""
    rng = np.random.default_rng(seed)
    return [rng.normal(loc=rng.normal(0.0, 2.0, d), scale=rng.uniform(0.5, 3.0, d), size=(m, d))
            for m in sizes]


def test_new_layer_has_tracked_no_batches():
    assert BatchNorm1d(3).num_batches_tracked == 0
    assert BatchNorm1d(3, momentum=None).num_batches_tracked == 0


@pytest.mark.parametrize("momentum", [None, 0.1, 0.7])
def test_running_statistics_and_batch_count_equal_torch_float64(momentum):
    torch = pytest.importorskip("torch")
    d = 6
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 2.0, d), rng.standard_normal(d)
    ours = BatchNorm1d(d, momentum=momentum, dtype=np.float64)
    ours.gamma[...], ours.beta[...] = gamma, beta
    theirs = torch.nn.BatchNorm1d(d, momentum=momentum, dtype=torch.float64).train()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
        theirs.bias.copy_(torch.from_numpy(beta))
    for k, x in enumerate(batches(), start=1):
        out = ours.forward(x)
        np.testing.assert_allclose(out, theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-13, atol=1e-15)
        assert ours.num_batches_tracked == int(theirs.num_batches_tracked) == k
    ours.eval()
    theirs.eval()
    for m in (1, 4, 50):   # eval mode: same outputs, and nothing is counted
        x = rng.normal(1.0, 3.0, (m, d))
        np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-12, atol=1e-12)
    assert ours.num_batches_tracked == int(theirs.num_batches_tracked) == len(BATCH_SIZES)


def test_cumulative_average_is_the_plain_mean_of_the_batch_statistics():
    """After k batches, momentum=None holds the unweighted mean of the k batch
    means and of the k unbiased batch variances -- an exponential average of
    any momentum weights recent batches more and fails this test."""
    xs = batches(seed=2)
    bn = BatchNorm1d(6, momentum=None, dtype=np.float64)
    for k, x in enumerate(xs, start=1):
        bn.forward(x)
        seen = xs[:k]
        np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(axis=0) for b in seen], axis=0),
                                   rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(bn.running_var, np.mean([b.var(axis=0, ddof=1) for b in seen], axis=0),
                                   rtol=1e-13, atol=1e-14)
    # an exponential average of the same batches is a different number
    ema = BatchNorm1d(6, momentum=0.1, dtype=np.float64)
    for x in xs:
        ema.forward(x)
    assert np.max(np.abs(ema.running_mean - bn.running_mean)) > 0.1


def test_first_batch_replaces_the_initial_statistics_entirely():
    x = batches(seed=3)[2]
    bn = BatchNorm1d(6, momentum=None, dtype=np.float64)
    bn.forward(x)
    np.testing.assert_array_equal(bn.running_mean, x.mean(axis=0))
    np.testing.assert_allclose(bn.running_var, x.var(axis=0, ddof=1), rtol=1e-15)


def test_cumulative_average_with_biased_running_variance():
    xs = batches(seed=4)
    bn = ArticleBatchNorm1d(6, momentum=None, dtype=np.float64, unbiased_running_var=False)
    for x in xs:
        bn.forward(x)
    np.testing.assert_allclose(bn.running_var, np.mean([b.var(axis=0) for b in xs], axis=0), rtol=1e-13)


def test_batches_are_counted_in_training_mode_only_whatever_the_momentum():
    for momentum in (None, 0.1, 0.0):
        bn = BatchNorm1d(6, momentum=momentum, dtype=np.float64)
        for x in batches(seed=5):
            bn.forward(x)
        bn.eval()
        bn.forward(batches(seed=6)[0])
        assert bn.num_batches_tracked == len(BATCH_SIZES)


def test_cumulative_average_is_not_an_optimizer_parameter():
    bn = BatchNorm1d(3, momentum=None)
    assert [name for name, _, _ in bn.params()] == ["gamma", "beta"]


def test_repr_shows_the_momentum():
    assert "momentum=None" in repr(BatchNorm1d(3, momentum=None))
    assert "momentum=0.1" in repr(BatchNorm1d(3))


@pytest.mark.parametrize("bad, words", [(1.5, r"momentum must lie in \[0, 1\] or be None; got 1.5"),
                                        (-0.1, r"momentum must lie in \[0, 1\] or be None"),
                                        (np.nan, r"momentum must lie in \[0, 1\]"),
                                        ("0.1", "momentum must be a number or None")])
def test_layer_rejects_bad_momentum(bad, words):
    with pytest.raises(ValueError, match=words):
        BatchNorm1d(3, momentum=bad)


def test_check_momentum_refuses_none_unless_allowed():
    with pytest.raises(ValueError, match="momentum must be a number here; got None"):
        check_momentum(None)
    with pytest.raises(ValueError, match="momentum must be a number here"):
        SGD(BatchNorm1d(3), lr=0.1, momentum=None)   # the optimizer's momentum has no "None"
    assert check_momentum(None, allow_none=True) is None
    assert check_momentum(0.25, allow_none=True) == 0.25


def test_running_stats_kept_also_restores_the_batch_count():
    from bnbook.layers import running_stats_kept
    bn = BatchNorm1d(6, momentum=None, dtype=np.float64)
    bn.forward(batches(seed=7)[1])
    mean, count = bn.running_mean.copy(), bn.num_batches_tracked
    with running_stats_kept(bn):
        for x in batches(seed=8):
            bn.forward(x)
    assert bn.num_batches_tracked == count == 1
    np.testing.assert_array_equal(bn.running_mean, mean)
