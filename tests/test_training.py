"""Tests of bnbook.training on a tiny synthetic problem: two Gaussian blobs in
20 dimensions (400 training points, 200 test points), which a small network
separates in a few epochs. Every run uses progress=False."""

import time

import numpy as np
import pytest

from bnbook.checks import NonFiniteError
from bnbook.layers import Layer
from bnbook.models import build_mlp
from bnbook.optimizers import SGD
from bnbook.training import History, eval_outputs, evaluate, fit, predict

SIZES = [20, 32, 2]


@pytest.fixture(scope="module")
def data(two_blobs_data):  # conftest.py: 400 training and 200 test points in 20-D
    return two_blobs_data


@pytest.mark.parametrize("batchnorm", [False, True])
def test_fit_learns_two_blobs_to_high_accuracy(data, batchnorm):
    model = build_mlp(SIZES, batchnorm=batchnorm, seed=0)
    hist = fit(model, data, epochs=3, lr=0.1, batch_size=20, progress=False, label="blobs")
    assert isinstance(hist, History) and hist.label == "blobs"
    assert len(hist.train_loss) == len(hist.test_acc) == len(hist.seconds) == 3
    assert list(hist.epochs) == [1, 2, 3]
    assert hist.steps == 3 * 400 // 20
    assert hist.diverged_at is None and not hist.diverged
    assert hist.test_acc[-1] >= 0.93  # the Bayes rate is about 0.99
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0] or hist.train_loss[-1] < 0.2
    assert all(0.0 <= a <= 1.0 for a in hist.test_acc)
    assert hist.acc_at(3) == hist.test_acc[2]
    assert hist.first_epoch_reaching(0.9) in (1, 2, 3)
    assert hist.first_epoch_reaching(1.01) is None
    # the recorded accuracy is the eval-mode accuracy of the final model
    assert hist.test_acc[-1] == evaluate(model, data[2], data[3])


def test_seconds_time_each_epochs_training_and_not_the_evaluation(data, monkeypatch):
    """A callback that sleeps 10 ms every step makes each epoch's recorded
    time at least steps x 10 ms; an evaluation that sleeps 0.3 s is not counted."""
    import bnbook.training as train_module

    real_evaluate = train_module.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.3)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    t0 = time.perf_counter()
    hist = fit(build_mlp(SIZES, seed=0), data, epochs=2, lr=0.1, batch_size=100, progress=False,
               callback=lambda step, model: time.sleep(0.01), callback_every=1)
    total = time.perf_counter() - t0
    assert len(hist.seconds) == 2
    assert all(s >= 4 * 0.01 for s in hist.seconds)  # 4 steps of >= 10 ms each per epoch
    assert hist.wall_time <= total - 2 * 0.3  # the two evaluations are left out


def test_a_layer_that_refuses_non_finite_data_is_not_mistaken_for_divergence(data):
    """A NaN in the training data is a bug in the data, not a diverging run:
    fit lets the layer's NonFiniteError through; a ValueError of another kind
    is never caught."""
    x_train, y_train, x_test, y_test = data
    x_bad = x_train.copy()
    x_bad[:, 3] = np.nan
    with pytest.raises(NonFiniteError):
        fit(build_mlp(SIZES, batchnorm=True, seed=0), (x_bad, y_train, x_test, y_test),
            epochs=1, lr=0.1, batch_size=20, progress=False)

    class Refuses(Layer):
        def forward(self, x):
            raise ValueError("non-finite in the message, but not a NonFiniteError")

    with pytest.raises(ValueError, match="not a NonFiniteError"):
        fit(Refuses(), data, epochs=1, lr=0.1, progress=False)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_same_seed_gives_identical_history(data, batchnorm):
    runs = [fit(build_mlp(SIZES, batchnorm=batchnorm, seed=3), data, epochs=2, lr=0.05,
                batch_size=16, seed=11, momentum=0.9, progress=False) for _ in range(2)]
    a, b = runs
    assert a.train_loss == b.train_loss  # exactly equal, not approximately
    assert a.test_acc == b.test_acc
    assert a.steps == b.steps and a.diverged_at == b.diverged_at
    # another shuffling seed gives another trajectory
    c = fit(build_mlp(SIZES, batchnorm=batchnorm, seed=3), data, epochs=2, lr=0.05,
            batch_size=16, seed=12, momentum=0.9, progress=False)
    assert c.train_loss != a.train_loss


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("sizes", [[20, 32, 2], [20, 32, 32, 2]])
@pytest.mark.parametrize("lr", [1e3, 1e30])
def test_huge_learning_rate_sets_diverged_at_instead_of_raising(data, batchnorm, sizes, lr):
    model = build_mlp(sizes, batchnorm=batchnorm, seed=0)
    with np.errstate(all="ignore"):
        hist = fit(model, data, epochs=3, lr=lr, batch_size=20, progress=False)
    assert hist.diverged_at is not None and hist.diverged
    assert 1 <= hist.diverged_at <= 3
    # the epochs from the divergence on are recorded as NaN; the lists stay full length
    assert len(hist.train_loss) == len(hist.test_acc) == 3
    assert all(np.isnan(hist.test_acc[e - 1]) for e in range(hist.diverged_at, 4))
    assert all(np.isnan(hist.train_loss[e - 1]) for e in range(hist.diverged_at, 4))
    assert hist.first_epoch_reaching(0.0) in (None, *range(1, hist.diverged_at))


@pytest.mark.parametrize("max_steps, epochs_recorded", [(7, 1), (20, 1), (25, 2)])
def test_max_steps_stops_training(data, max_steps, epochs_recorded):
    model = build_mlp(SIZES, seed=0)
    hist = fit(model, data, epochs=5, lr=0.1, batch_size=20, progress=False,
               max_steps=max_steps)
    assert hist.steps == max_steps
    assert len(hist.test_acc) == len(hist.train_loss) == epochs_recorded
    assert not hist.diverged


def test_callback_is_called_at_step_zero_and_every_n_steps(data):
    model = build_mlp(SIZES, batchnorm=True, seed=0)
    calls = []

    def callback(step, m):
        assert m is model
        calls.append((step, m[0].W.copy()))

    hist = fit(model, data, epochs=2, lr=0.1, batch_size=40, progress=False,
               callback=callback, callback_every=3)
    steps = [s for s, _ in calls]
    assert hist.steps == 20
    assert steps == [0, 3, 6, 9, 12, 15, 18]
    # the callback sees the model as it is at that step: weights move between calls
    assert not np.array_equal(calls[0][1], calls[1][1])
    # without callback_every the callback runs once, before training
    once = []
    fit(build_mlp(SIZES, seed=0), data, epochs=1, lr=0.1, batch_size=40, progress=False,
        callback=lambda s, m: once.append(s))
    assert once == [0]


def test_batch_of_one_at_the_end_of_an_epoch_is_skipped(data):
    x_train, y_train, x_test, y_test = data
    # 401 samples in batches of 20: the last batch holds a single sample
    x = np.concatenate([x_train, x_train[:1]])
    y = np.concatenate([y_train, y_train[:1]])
    hist = fit(build_mlp(SIZES, batchnorm=True, seed=0), (x, y, x_test, y_test),
               epochs=2, lr=0.1, batch_size=20, progress=False)
    assert hist.steps == 2 * 20 and not hist.diverged


def test_drop_last_drops_the_partial_batch(data):
    x_train, y_train, x_test, y_test = data
    kept = fit(build_mlp(SIZES, seed=0), data, epochs=1, lr=0.1, batch_size=30,
               progress=False)
    dropped = fit(build_mlp(SIZES, seed=0), data, epochs=1, lr=0.1, batch_size=30,
                  progress=False, drop_last=True)
    assert kept.steps == 14 and dropped.steps == 13  # 400 = 13 * 30 + 10


def test_sum_reduction_with_lr_over_batch_size_matches_mean_reduction(data):
    mean = fit(build_mlp(SIZES, seed=0, dtype=np.float64), data, epochs=2, lr=0.1,
               batch_size=20, progress=False)
    total = fit(build_mlp(SIZES, seed=0, dtype=np.float64), data, epochs=2, lr=0.1 / 20,
                batch_size=20, progress=False, reduction="sum")
    # the recorded train loss is per sample in both cases
    np.testing.assert_allclose(total.train_loss, mean.train_loss, rtol=1e-10)
    assert total.test_acc == mean.test_acc


def test_fit_on_training_data_alone_records_every_batch_loss_and_no_test_accuracy(data):
    x_train, y_train = data[0], data[1]
    hist = fit(build_mlp(SIZES, seed=0), (x_train, y_train), epochs=2, lr=0.1, batch_size=30,
               progress=False)
    assert hist.test_acc == [] and len(hist.train_loss) == 2
    assert len(hist.batch_loss) == hist.steps == 2 * 14     # 400 = 13 * 30 + 10: 14 batches an epoch
    # an epoch's train loss is the mean of its batch losses
    np.testing.assert_allclose(hist.train_loss, [np.mean(hist.batch_loss[:14]), np.mean(hist.batch_loss[14:])],
                               rtol=1e-12)
    # the same run with the full data tuple: the same losses
    full = fit(build_mlp(SIZES, seed=0), data, epochs=2, lr=0.1, batch_size=30, progress=False)
    assert full.batch_loss == hist.batch_loss and len(full.test_acc) == 2


def test_fit_with_an_optimizer_equals_fit_with_its_learning_rate(data):
    from bnbook.optimizers import SGD

    a, b = build_mlp(SIZES, seed=0), build_mlp(SIZES, seed=0)
    by_lr = fit(a, data, epochs=1, lr=0.1, momentum=0.9, batch_size=20, progress=False)
    by_opt = fit(b, data, SGD(b, lr=0.1, momentum=0.9), epochs=1, batch_size=20, progress=False)
    assert by_lr.batch_loss == by_opt.batch_loss
    with pytest.raises(ValueError, match="not both"):
        fit(b, data, SGD(b, lr=0.1), epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="not both"):
        fit(b, data, SGD(b, lr=0.1), epochs=1, momentum=0.9, progress=False)
    with pytest.raises(ValueError, match="needs an optimizer or a learning rate"):
        fit(b, data, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(b, data, epochs=0, lr=0.1, progress=False)


def test_callbacks_are_called_in_order_with_their_arguments_and_can_stop(data):
    calls = []

    class Recorder:
        def on_train_begin(self, model, history):
            calls.append(("begin", history.steps))

        def on_step(self, step, model):
            calls.append(("step", step))

        def on_epoch_end(self, epoch, model, history):
            calls.append(("epoch", epoch, len(history.train_loss)))
            return epoch == 2                                   # stop after the second epoch

        def on_train_end(self, model, history):
            calls.append(("end", history.steps))

    n_batches = len(data[0]) // 20
    hist = fit(build_mlp(SIZES, seed=0), data, epochs=5, lr=0.1, batch_size=20, progress=False,
               callbacks=[Recorder()])
    steps = [c[1] for c in calls if c[0] == "step"]
    assert calls[0] == ("begin", 0) and calls[-1] == ("end", 2 * n_batches)
    assert steps == list(range(1, 2 * n_batches + 1)) and len(hist.train_loss) == 2
    assert [c for c in calls if c[0] == "epoch"] == [("epoch", 1, 1), ("epoch", 2, 2)]


def test_progress_prints_each_epoch_and_a_summary_outside_a_notebook(data):
    import io

    from bnbook.training import Progress

    out = io.StringIO()
    hist = fit(build_mlp(SIZES, seed=0), data, epochs=2, lr=0.1, batch_size=20, progress=False,
               callbacks=[Progress(2, "run", stream=out)], label="run")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("run: 1/2 epoch 1: loss") and lines[1].startswith("run: 2/2 epoch 2")
    assert lines[2].startswith("run: 2 epochs: final loss") and f"{100 * hist.test_acc[-1]:.2f}%" in lines[2]


def test_sgd_with_momentum_and_weight_decay_equals_torch():
    """Three steps of SGD(lr 0.1, momentum 0.9, weight decay 0.01) against torch.optim.SGD, float64,
    to 1e-15: the decay enters the gradient before the velocity."""
    torch = pytest.importorskip("torch")
    from bnbook.optimizers import SGD

    rng = np.random.default_rng(5)
    p = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(3)]
    g = np.zeros(6)
    opt = SGD([("p", p, g)], lr=0.1, momentum=0.9, weight_decay=0.01)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=0.01)
    for grad in grads:
        g[...] = grad
        opt.step()
        tp.grad = torch.tensor(grad)
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-15)


def test_fit_rejects_bad_arguments(data):
    x_train, y_train, x_test, y_test = data
    model = build_mlp(SIZES, seed=0)
    with pytest.raises(ValueError, match="same number of samples"):
        fit(model, (x_train, y_train[:-1], x_test, y_test), epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, data, epochs=1, lr=0.1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        fit(model, data, epochs=1, lr=0.0, progress=False)


def test_predict_and_evaluate_use_eval_mode_and_restore_the_mode(data):
    x_train, y_train, x_test, y_test = data
    model = build_mlp(SIZES, batchnorm=True, seed=0)
    fit(model, data, epochs=1, lr=0.1, batch_size=20, progress=False)
    bn = model[1]
    rm = bn.running_mean.copy()
    model.train()
    pred = predict(model, x_test, batch_size=7)  # batch sizes do not matter in eval mode
    assert model.training and bn.training
    np.testing.assert_array_equal(bn.running_mean, rm)  # eval mode: no update
    assert pred.shape == (200,) and set(np.unique(pred)) <= {0, 1}
    model.eval()
    np.testing.assert_array_equal(pred, np.argmax(model.forward(x_test), axis=1))
    assert not model.training
    predict(model, x_test[:1])
    assert not model.training
    assert evaluate(model, x_test, y_test) == np.mean(pred == y_test)
    assert predict(model, x_test[:0]).shape == (0,)


def test_fit_stops_after_the_epoch_where_stop_if_says_so(data):
    seen = []

    def stop_after_two(hist):
        seen.append(len(hist.test_acc))
        return len(hist.test_acc) == 2

    hist = fit(build_mlp(SIZES, seed=0), data, epochs=5, lr=0.1, batch_size=20, progress=False,
               stop_if=stop_after_two)
    assert seen == [1, 2] and len(hist.test_acc) == len(hist.train_loss) == 2
    assert hist.steps == 2 * 400 // 20 and not hist.diverged
    never = fit(build_mlp(SIZES, seed=0), data, epochs=3, lr=0.1, batch_size=20, progress=False,
                stop_if=lambda h: False)
    assert len(never.test_acc) == 3 and never.test_acc[:2] == hist.test_acc   # same run until the stop


def test_eval_outputs_in_batches_equal_one_eval_forward_and_restore_the_mode(data):
    model = build_mlp(SIZES, batchnorm=True, seed=0, dtype=np.float64)
    fit(model, data, epochs=1, lr=0.1, batch_size=20, progress=False)
    x_test = data[2].astype(np.float64)
    model.train()
    out = eval_outputs(model, x_test, batch_size=7)      # 200 rows in batches of 7 (the last one 4)
    assert model.training
    with_one = model.eval().forward(x_test)
    np.testing.assert_allclose(out, with_one, rtol=1e-12, atol=1e-12)   # float64: the same up to rounding
    with pytest.raises(ValueError, match="batch_size"):
        eval_outputs(model, x_test, batch_size=0)


def test_an_evaluation_leaves_no_backward_cache_in_the_layers():
    from bnbook.models import build_cnn
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 40)
    model = build_cnn("batch", seed=0)
    fit(model, (x, y, x, y), epochs=1, lr=0.1, batch_size=20, progress=False)   # ends with an evaluation
    kept = [type(layer).__name__ for layer in model.layers if layer._saved is not None]
    assert kept == []             # chapter 9 keeps twelve trained CNNs: 0.3 GB each otherwise
    model.train()
    out = model.forward(x[:4])    # training still works after it
    model.backward(np.ones_like(out))


def test_a_numpy_learning_rate_gives_the_update_of_a_python_float():
    """SGD keeps its rate as a Python float: a NumPy float64 rate (for example ``0.1 * m / 100``
    with m from an array) must not turn float32 updates into float64 products. Same bits."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    results = []
    for lr, wd in ((0.1 * 3 / 7, 0.01), (np.float64(0.1) * np.array([3])[0] / 7, np.float64(0.01))):
        p = p0.copy()
        SGD([("w", p, g)], lr=lr, weight_decay=wd).step()
        results.append(p)
    assert np.array_equal(results[0], results[1])
