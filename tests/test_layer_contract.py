"""The layer contract (``bnbook.layers`` docstring), checked for every layer class the package defines.

The classes are found by walking the package, core and chapter drivers alike, so a
layer added later is checked by these same tests: it fails ``test_every_layer_class_has_a_case``
until it gets a case in ``CASES`` below. All checks run in float64; the gradient
check uses centred differences with h = 1e-6 and a relative-error tolerance of 1e-6.
"""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import bnbook
from bnbook import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, FrozenBatchNorm1d,
                    GroupNorm, InstanceNorm2d, Layer, LayerNorm, LayerNorm2d, Linear, MaxPool2d,
                    NonFiniteError, ReLU, Sequential, Sigmoid, Tanh, build_cnn, fit, numerical_gradient,
                    relative_error)
from bnbook.chapters.ch5_statistics import BatchStatsRecorder, replay_running_stats
from bnbook.chapters.ch6_mnist import ArticleBatchNorm1d
from bnbook.chapters.ch8_explanations import NoisyAffine
from bnbook.normalization import _Normalization, statistic_groups


def _package_classes():
    """Every public class defined in a module of bnbook, with that module."""
    found = {}
    for info in pkgutil.walk_packages(bnbook.__path__, "bnbook."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == info.name and not name.startswith("_"):
                found[obj] = info.name
    return found


PACKAGE_CLASSES = _package_classes()
LAYER_CLASSES = sorted((c for c in PACKAGE_CLASSES if issubclass(c, Layer) and c is not Layer),
                       key=lambda c: c.__name__)


def images(c=3):
    return lambda rng: rng.normal(1.0, 2.0, (2, c, 4, 4))


def rows(d=4, m=6):
    return lambda rng: rng.normal(1.0, 2.0, (m, d))


#: One or more cases per layer class: (id, make(dtype, **kw) -> layer, make_input(rng)).
CASES = [
    ("Linear", lambda dtype, **kw: Linear(4, 3, rng=0, dtype=dtype), rows()),
    ("ReLU", lambda dtype, **kw: ReLU(), rows()),
    ("Sigmoid", lambda dtype, **kw: Sigmoid(), rows()),
    ("Tanh", lambda dtype, **kw: Tanh(), rows()),
    ("Dropout", lambda dtype, **kw: Dropout(0.5, seed=0), rows()),
    ("Sequential", lambda dtype, **kw: Sequential(Linear(4, 3, rng=0, dtype=dtype), ReLU()), rows()),
    ("BatchNorm1d", lambda dtype, **kw: BatchNorm1d(4, dtype=dtype, **kw), rows()),
    ("BatchNorm1d-ghost", lambda dtype, **kw: BatchNorm1d(4, dtype=dtype, ghost_batch_size=3, **kw), rows()),
    ("ArticleBatchNorm1d", lambda dtype, **kw: ArticleBatchNorm1d(4, dtype=dtype, **kw), rows()),
    ("BatchNorm2d", lambda dtype, **kw: BatchNorm2d(3, dtype=dtype, **kw), images()),
    ("LayerNorm", lambda dtype, **kw: LayerNorm(4, dtype=dtype), rows()),
    ("GroupNorm", lambda dtype, **kw: GroupNorm(2, 4, dtype=dtype), images(4)),
    ("LayerNorm2d", lambda dtype, **kw: LayerNorm2d(4, dtype=dtype), images(4)),
    ("InstanceNorm2d", lambda dtype, **kw: InstanceNorm2d(4, dtype=dtype), images(4)),
    ("FrozenBatchNorm1d", lambda dtype, **kw: FrozenBatchNorm1d(BatchNorm1d(4, dtype=dtype)), rows()),
    ("Conv2d", lambda dtype, **kw: Conv2d(3, 2, 3, pad=1, rng=0, dtype=dtype), images()),
    ("MaxPool2d", lambda dtype, **kw: MaxPool2d(), images()),
    ("Flatten", lambda dtype, **kw: Flatten(), images()),
    ("NoisyAffine", lambda dtype, **kw: NoisyAffine(4, seed=0), rows()),
]
CLASS_OF = {case[0]: type(case[1](np.float64)) for case in CASES}
#: The normalization layers: they keep the stricter part of the contract.
NORMALIZATION = (_Normalization, FrozenBatchNorm1d)   # every normalization layer derives from these
NORM_CASES = [c for c in CASES if issubclass(CLASS_OF[c[0]], NORMALIZATION)]
STATS_CASES = [c for c in NORM_CASES if hasattr(c[1](np.float64), "running_mean")
               and not isinstance(c[1](np.float64), FrozenBatchNorm1d)]


def ids(cases):
    return [c[0] for c in cases]


def test_every_layer_class_has_a_case():
    missing = [c.__name__ for c in LAYER_CLASSES if c not in CLASS_OF.values()]
    assert not missing, f"layer classes without a case in CASES: {missing}"
    assert len(LAYER_CLASSES) >= 18


def test_every_normalization_layer_class_has_a_case_in_the_strict_checks():
    found = {c for c in LAYER_CLASSES if issubclass(c, NORMALIZATION)}
    assert found == {CLASS_OF[c[0]] for c in NORM_CASES}
    assert {BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm, FrozenBatchNorm1d} <= found


def test_every_class_with_forward_and_backward_subclasses_layer():
    impostors = [c.__name__ for c in PACKAGE_CLASSES
                 if hasattr(c, "forward") and hasattr(c, "backward") and not issubclass(c, Layer)]
    assert not impostors


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_backward_takes_need_input_grad(name, make, make_x):
    param = inspect.signature(type(make(np.float64)).backward).parameters.get("need_input_grad")
    assert param is not None and param.default is True


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_backward_before_forward_raises(name, make, make_x):
    layer = make(np.float64)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones(1))


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_release_forgets_the_forward_pass(name, make, make_x):
    layer = make(np.float64)
    out = layer.forward(make_x(np.random.default_rng(0)))
    layer.release()
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones_like(out))


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_train_and_eval_set_the_mode_and_return_the_layer(name, make, make_x):
    layer = make(np.float64)
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True


def _owned_arrays(layer):
    arrays = [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
    for sub in getattr(layer, "layers", []):
        arrays += _owned_arrays(sub)
    return arrays


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_params_are_the_layers_own_arrays_and_backward_writes_them_in_place(name, make, make_x):
    layer = make(np.float64)
    rng = np.random.default_rng(1)
    before = layer.params()
    owned = _owned_arrays(layer)
    for pname, value, grad in before:
        assert any(value is a for a in owned) and any(grad is a for a in owned), pname
        grad[...] = np.nan
    out = layer.forward(make_x(rng))
    dx = layer.backward(rng.standard_normal(out.shape))
    after = layer.params()
    assert [(n, id(v), id(g)) for n, v, g in after] == [(n, id(v), id(g)) for n, v, g in before]
    for pname, _, grad in after:
        assert np.isfinite(grad).all(), f"{pname}'s gradient was not written"
    assert dx.shape == make_x(rng).shape


@pytest.mark.parametrize("name,make,make_x", CASES, ids=ids(CASES))
def test_backward_matches_numerical_gradient(name, make, make_x):
    """dx of sum(forward(x) * dout), against centred differences (h = 1e-6), relative error < 1e-6.
    Random layers (Dropout, NoisyAffine) are checked in eval mode, where they are deterministic."""
    layer = make(np.float64)
    if name in ("Dropout", "NoisyAffine"):
        layer.eval()
    rng = np.random.default_rng(2)
    for _, value, _ in layer.params():                       # not the identity gamma = 1, beta = 0
        value[...] = rng.normal(1.0, 0.5, value.shape)
    x = make_x(rng)
    if name == "MaxPool2d":
        x = x + np.arange(x.size).reshape(x.shape) * 1e-3   # no ties within a window
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)

    grads = {name: grad.copy() for name, _, grad in layer.params()}

    def f(z):
        with np.errstate(all="ignore"):
            return layer.forward(z)
    saved = [(a, a.copy()) for a in _owned_arrays(layer)]
    num = numerical_gradient(f, x.copy(), dout, h=1e-6)
    for a, copy in saved:
        a[...] = copy
    assert relative_error(dx, num) < 1e-6
    for name, value, _ in layer.params():                    # and every parameter's gradient
        num = numerical_gradient(lambda v: f(x), value, dout, h=1e-6)
        for a, copy in saved:
            a[...] = copy
        summed = len(x) if getattr(layer, "param_grads", "mean") == "sum" else 1   # the article's option
        assert relative_error(grads[name], summed * num) < 1e-6, name


@pytest.mark.parametrize("name,make,make_x", NORM_CASES, ids=ids(NORM_CASES))
def test_normalization_layer_raises_nonfinite_error(name, make, make_x):
    layer = make(np.float64)
    x = make_x(np.random.default_rng(3))
    x.flat[5] = np.nan
    modes = [True, False] if hasattr(layer, "running_mean") else [layer.training]
    for mode in modes:
        layer.train(mode)
        with pytest.raises(NonFiniteError):
            layer.forward(x)


@pytest.mark.parametrize("name,make,make_x", NORM_CASES, ids=ids(NORM_CASES))
def test_normalization_layer_refuses_a_mismatched_dtype_naming_both(name, make, make_x):
    layer = make(np.float32)
    x = make_x(np.random.default_rng(4))                     # float64
    with pytest.raises(ValueError, match="float32") as err:
        layer.forward(x)
    assert "float64" in str(err.value)


@pytest.mark.parametrize("name,make,make_x", STATS_CASES, ids=ids(STATS_CASES))
def test_momentum_none_keeps_the_cumulative_average(name, make, make_x):
    """With momentum=None the running mean after k updates is the plain mean of the k batch means
    (float64, tolerance 1e-12), and num_batches_tracked counts the updates."""
    layer = make(np.float64, momentum=None)
    rng = np.random.default_rng(5)
    means, variances = [], []
    for _ in range(3):
        x = make_x(rng)
        layer.forward(x)
        rows = np.moveaxis(x, 1, -1).reshape(-1, layer.num_features)   # one column per feature
        groups = np.split(rows, len(layer.batch_stats.mean))           # ghost groups, in order
        means += [g.mean(axis=0) for g in groups]
        variances += [g.var(axis=0, ddof=0 if isinstance(layer, ArticleBatchNorm1d) else 1) for g in groups]
    assert layer.num_batches_tracked == len(means)
    np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.running_var, np.mean(variances, axis=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,make,make_x", STATS_CASES, ids=ids(STATS_CASES))
def test_batch_stats_replayed_give_the_layers_running_statistics(name, make, make_x):
    """BatchStatsRecorder reads the public batch_stats; replaying them through a fresh layer
    reproduces the running statistics, ghost batches included (tolerance 1e-12)."""
    layer = make(np.float64)
    rec = BatchStatsRecorder()
    rng = np.random.default_rng(6)
    for step in range(1, 4):
        layer.forward(make_x(rng))
        rec(step, Sequential(layer))
    [(mean, var)] = replay_running_stats(rec, layer.momentum)
    np.testing.assert_allclose(mean, layer.running_mean, rtol=0, atol=1e-12)
    if not isinstance(layer, ArticleBatchNorm1d):            # the replay keeps PyTorch's variance rule
        np.testing.assert_allclose(var, layer.running_var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", [BatchNorm2d(4, dtype=np.float64), GroupNorm(2, 4, dtype=np.float64),
                                   LayerNorm2d(4, dtype=np.float64), InstanceNorm2d(4, dtype=np.float64)],
                         ids=lambda layer: type(layer).__name__)
def test_statistic_groups_are_the_sets_the_layer_normalizes_together(layer):
    """Within each label of statistic_groups the layer's output has mean 0 and variance
    var / (var + eps): 1 within 1e-4 for these spreads (gamma 1, beta 0)."""
    x = np.random.default_rng(7).normal(3.0, 2.0, (3, 4, 2, 2))
    out = layer.forward(x)
    labels = statistic_groups(layer, x.shape)
    for k in np.unique(labels):
        vals = out[labels == k]
        assert abs(vals.mean()) < 1e-9 and abs(vals.var() - 1) < 1e-4


def test_batchnorm2d_accepts_momentum_none():
    # regression: this raised TypeError when BatchNorm2d checked its momentum itself
    layer = BatchNorm2d(3, momentum=None, dtype=np.float64)
    layer.forward(np.random.default_rng(8).standard_normal((2, 3, 4, 4)))
    assert layer.num_batches_tracked == 1


def test_fit_records_divergence_of_a_cnn_instead_of_crashing():
    """A CNN with batch norm at a learning rate of 1e30 overflows; fit records the epoch
    (regression: when BatchNorm2d raised a plain ValueError here, fit crashed)."""
    rng = np.random.default_rng(9)
    x = rng.random((40, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    with np.errstate(all="ignore"):
        hist = fit(build_cnn("batch", seed=0), (x, y, x[:10], y[:10]), epochs=2, lr=1e30,
                   batch_size=10, progress=False)
    assert hist.diverged_at == 1 and np.isnan(hist.test_acc).all()
