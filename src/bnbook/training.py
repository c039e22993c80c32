"""The one training loop of the book, its record, and evaluation.

Used by every chapter that trains a network (1 and 5-9).

:func:`fit` trains any model that keeps the layer contract with an
optimizer from :mod:`bnbook.optimizers`. What happens around the steps --
the progress display, measurements, early stopping -- is done by callbacks,
objects with any of these methods:

* ``on_train_begin(model, history)``;
* ``on_step(step, model)``, after every optimizer step (step counts from 1);
* ``on_epoch_end(epoch, model, history) -> bool``: True stops the run;
* ``on_train_end(model, history)``.

Conventions: the softmax cross-entropy loss is *averaged* over the batch
unless ``reduction="sum"``; by default the data are shuffled at the start of
every epoch by a generator seeded with ``seed``, so a run is repeatable; an
epoch's "train loss" is the mean of its batch losses (per sample); the test
accuracy after each epoch is measured in eval mode (batch norm with its
running statistics).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .checks import NonFiniteError
from .layers import in_mode, running_stats_kept
from .losses import softmax_cross_entropy
from .optimizers import SGD

__all__ = ["History", "fit", "evaluate", "eval_outputs", "predict", "Progress", "EverySteps",
           "StopIf",
           "accuracy_with_batch_statistics"]


@dataclass
class History:
    """The record of a training run: per-epoch lists (indexed by epoch - 1)
    and the loss of every batch."""

    label: str = ""
    train_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    batch_loss: list = field(default_factory=list)
    steps: int = 0
    diverged_at: int | None = None  # epoch in which the loss became non-finite

    @property
    def epochs(self) -> np.ndarray:
        return np.arange(1, len(self.train_loss) + 1)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def wall_time(self) -> float:
        return float(sum(self.seconds))

    def acc_at(self, epoch: int) -> float:
        """Test accuracy after ``epoch`` (1-based)."""
        return float(self.test_acc[epoch - 1])

    def first_epoch_reaching(self, accuracy: float) -> int | None:
        """First epoch whose test accuracy is >= ``accuracy``; None if never."""
        for e, a in zip(self.epochs, self.test_acc):
            if np.isfinite(a) and a >= accuracy:
                return int(e)
        return None


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------
def eval_outputs(model, x, batch_size: int = 2000) -> np.ndarray:
    """Eval-mode outputs (n, k) of ``model`` for inputs ``x`` (n, ...).

    The rows go through ``batch_size`` at a time, so memory holds one batch's
    activations; afterwards the model releases what its layers kept for a
    backward pass (no backward follows an evaluation). The model's mode is
    restored. An empty ``x`` gives an array of shape (0, 0).
    """
    if batch_size < 1 or int(batch_size) != batch_size:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    with in_mode(model, training=False):
        out = [model.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    model.release()
    return np.concatenate(out) if out else np.zeros((0, 0))


def predict(model, x, batch_size: int = 2000) -> np.ndarray:
    """Class predictions (n,) for inputs ``x`` (n, ...), in eval mode."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(eval_outputs(model, x, batch_size), axis=1)


def evaluate(model, x, y, batch_size: int = 2000) -> float:
    """Accuracy in [0, 1] of ``model`` (eval mode) on ``x`` (n, ...), ``y`` (n,)."""
    return float(np.mean(predict(model, x, batch_size) == np.asarray(y)))


def accuracy_with_batch_statistics(model, x, y, batch_size: int) -> float:
    """Accuracy when the network is (wrongly) left in training mode at test time.

    Every BN layer normalizes each test batch of ``batch_size`` consecutive rows
    of ``x`` (n, ...) with that batch's own statistics. The running statistics
    are saved and restored, so the call leaves the model unchanged. A last
    batch of one sample, which training mode refuses, is evaluated together
    with the batch before it.
    """
    x, y = np.asarray(x), np.asarray(y)
    with running_stats_kept(model), in_mode(model, training=True):
        starts = list(range(0, len(x), batch_size))
        if len(starts) > 1 and len(x) - starts[-1] < 2:
            starts.pop()
        ends = starts[1:] + [len(x)]
        correct = 0
        for a, b in zip(starts, ends):
            correct += int(np.sum(np.argmax(model.forward(x[a:b]), axis=1) == y[a:b]))
    model.release()
    return correct / len(x)


# --------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------
def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Text:
    """Plain-text display object (shows as text, saves as text)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Progress:
    """Callback: an ipywidgets bar in a notebook, text lines elsewhere.

    In a notebook the bar is replaced at the end of the run by a one-line
    summary, so a saved notebook keeps the summary and no widget state.
    """

    def __init__(self, epochs: int, label: str = "", stream=None):
        self.total, self.label = epochs, label
        self.stream = stream or sys.stdout
        self._bar = self._handle = None

    def on_train_begin(self, model, history) -> None:
        if not _in_notebook():
            return
        try:
            import ipywidgets as widgets
            from IPython.display import display
        except ImportError:
            return
        self._bar = widgets.IntProgress(min=0, max=self.total, description=self.label[:20])
        self._text = widgets.Label("")
        self._box = widgets.HBox([self._bar, self._text])
        self._handle = display(self._box, display_id=True)

    def on_epoch_end(self, epoch, model, history) -> bool:
        message = (f"epoch {epoch}: loss {history.train_loss[-1]:.4f}"
                   + (f", test acc {100 * history.test_acc[-1]:.2f}%" if history.test_acc else ""))
        if self._bar is not None:
            self._bar.value = epoch
            self._text.value = message
        else:
            prefix = f"{self.label}: " if self.label else ""
            print(f"{prefix}{epoch}/{self.total} {message}", file=self.stream, flush=True)
        return False

    def on_train_end(self, model, history) -> None:
        if self._handle is not None:
            self._handle.update(_Text(_summary(history)))
            self._box.close()
        else:
            print(_summary(history), file=self.stream, flush=True)


class EverySteps:
    """Callback: ``fn(step, model)`` at step 0 (before training) and after
    every ``every``-th optimizer step (with ``every=0``, at step 0 only); for
    measurements during training. ``fn``'s return value is ignored."""

    def __init__(self, fn, every: int = 1):
        if int(every) != every or every < 0:
            raise ValueError(f"every must be a non-negative integer; got {every!r}")
        self.fn, self.every = fn, int(every)

    def on_train_begin(self, model, history) -> None:
        self.fn(0, model)

    def on_step(self, step, model) -> None:
        if self.every and step % self.every == 0:
            self.fn(step, model)


class StopIf:
    """Callback: stop after an epoch (not the last) when ``predicate(history)`` is True."""

    def __init__(self, predicate):
        self.predicate = predicate

    def on_epoch_end(self, epoch, model, history) -> bool:
        return bool(self.predicate(history))


def _summary(hist: History) -> str:
    """The one-line text that ends a run's progress display."""
    if hist.diverged:
        summary = f"diverged in epoch {hist.diverged_at} (loss became non-finite)"
    else:
        n = len(hist.train_loss)
        summary = f"{n} epoch{'' if n == 1 else 's'}: final loss {hist.train_loss[-1]:.4f}"
        if hist.test_acc:
            summary += f", test acc {100 * hist.test_acc[-1]:.2f}%"
    return f"{hist.label + ': ' if hist.label else ''}{summary} in {hist.wall_time:.1f} s"


def _call(callbacks, method: str, *args) -> bool:
    """Call ``method`` on every callback that has it; True if any asked to stop."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            stop = bool(fn(*args)) or stop
    return stop


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------
def shuffled_batches(n: int, batch_size: int, drop_last: bool = False):
    """The default batch order: ``batches(epoch, rng)`` gives a new permutation
    of ``range(n)`` cut into batches of ``batch_size`` (the last one smaller,
    or dropped with ``drop_last``; a last batch of one sample is always
    dropped, since batch norm cannot train on it)."""
    stop = n - (n % batch_size if drop_last else 0)

    def batches(epoch, rng):
        order = rng.permutation(n)
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)
                if min(batch_size, stop - i) >= 2]
    return batches


def _params_finite(model) -> bool:
    return all(np.all(np.isfinite(p)) for _, p, _ in model.params())


def _batch_loss(model, xb, yb, reduction: str):
    """Forward pass and loss of one batch: ``(loss, dlogits)``, or ``(nan, None)``
    when the network diverged (a layer met a non-finite value the data did
    not hold)."""
    try:
        logits = model.forward(xb)
    except NonFiniteError:
        if _params_finite(model) and not np.isfinite(xb).all():
            raise  # the batch itself holds NaN or inf: bad data, not divergence
        return np.nan, None
    return softmax_cross_entropy(logits, yb, reduction)


def _check_fit_args(data, batch_size, reduction) -> None:
    if len(data) not in (2, 4):
        raise ValueError("data must be (x_train, y_train) or (x_train, y_train, x_test, y_test)")
    for x, y in zip(data[::2], data[1::2]):
        if len(x) != len(y):
            raise ValueError("inputs and labels must have the same number of samples")
    if batch_size < 1 or int(batch_size) != batch_size:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")


def fit(model, data, optimizer=None, *, epochs: int, lr: float | None = None,
        momentum: float = 0.0, batch_size: int = 100, seed: int = 0, reduction: str = "mean",
        drop_last: bool = False, batches=None, max_steps: int | None = None,
        callbacks=(), callback=None, callback_every: int = 0, stop_if=None,
        progress: bool = True, label: str = "") -> History:
    """Train ``model`` with mini-batches and record a :class:`History`.

    Parameters
    ----------
    model : a :class:`~bnbook.layers.Sequential` or any layer that keeps the contract.
    data : ``(x_train, y_train, x_test, y_test)``, or ``(x_train, y_train)``
        (no test accuracy is recorded), y integer labels (n,).
    optimizer : e.g. :class:`~bnbook.optimizers.SGD` over ``model.params()``;
        ``lr`` (and ``momentum``) instead is short for ``SGD(model, lr, momentum)``.
    epochs, batch_size, seed : the batch order is ``shuffled_batches(n,
        batch_size, drop_last)`` with a generator seeded by ``seed``, unless
        ``batches(epoch, rng) -> list of index arrays`` gives another.
    reduction : ``"mean"`` or ``"sum"`` over the batch (see
        :func:`~bnbook.losses.softmax_cross_entropy`).
    max_steps : stop after this many optimizer steps (the last epoch may be
        partial; it is still recorded).
    callbacks : see the module docstring. Three are also available as
        arguments: ``progress`` (a :class:`Progress` display),
        ``callback`` with ``callback_every`` (an :class:`EverySteps`), and
        ``stop_if(history) -> bool`` (a :class:`StopIf`).

    If the loss becomes non-finite, or a layer raises
    :class:`~bnbook.checks.NonFiniteError` on values the data did not hold,
    the run stops: ``History.diverged_at`` records the epoch, and it and the
    later epochs are recorded as NaN.
    """
    _check_fit_args(data, batch_size, reduction)
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if optimizer is None and lr is None:
        raise ValueError("fit needs an optimizer or a learning rate lr")
    if optimizer is not None and (lr is not None or momentum):
        raise ValueError("give fit an optimizer or lr (and momentum), not both: the optimizer "
                         "holds its own rate and momentum")
    optimizer = optimizer if optimizer is not None else SGD(model, lr, momentum)
    x_train, y_train = data[0], data[1]
    batches = batches or shuffled_batches(len(x_train), batch_size, drop_last)
    callbacks = list(callbacks)
    if callback is not None:
        callbacks.append(EverySteps(callback, callback_every))
    if stop_if is not None:
        callbacks.append(StopIf(stop_if))
    if progress:
        callbacks.append(Progress(epochs, label))
    rng = np.random.default_rng(seed)
    hist = History(label=label)
    model.train()
    _call(callbacks, "on_train_begin", model, hist)
    step = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        losses = []
        epoch_batches = list(batches(epoch, rng))
        if len(epoch_batches) == 0:
            raise ValueError(f"epoch {epoch} has no batch to train on ({len(x_train)} samples, "
                             f"batch_size={batch_size}, drop_last={drop_last}; a batch needs "
                             "at least 2 samples)")
        for idx in epoch_batches:
            xb, yb = x_train[idx], y_train[idx]
            loss, dlogits = _batch_loss(model, xb, yb, reduction)
            if not np.isfinite(loss):
                hist.diverged_at = epoch
                break
            model.backward(dlogits, need_input_grad=False)
            optimizer.step()
            step += 1
            losses.append(loss / (len(xb) if reduction == "sum" else 1))
            _call(callbacks, "on_step", step, model)
            if max_steps is not None and step >= max_steps:
                break
        seconds = time.perf_counter() - t0
        hist.batch_loss += losses
        if hist.diverged:
            pad = epochs - epoch + 1
            hist.seconds += [seconds] + [0.0] * (pad - 1)
            hist.train_loss += [np.nan] * pad
            if len(data) == 4:
                hist.test_acc += [np.nan] * pad
            break
        hist.seconds.append(seconds)
        hist.train_loss.append(float(np.mean(losses)))
        if len(data) == 4:
            hist.test_acc.append(evaluate(model, data[2], data[3]))
        stop = _call(callbacks, "on_epoch_end", epoch, model, hist)
        if (max_steps is not None and step >= max_steps) or (stop and epoch < epochs):
            break
    hist.steps = step
    _call(callbacks, "on_train_end", model, hist)
    return hist
