"""The training loop shared by every chapter that trains a network (chapters 1 and 5-7).

Conventions (stated once, used everywhere):

* mini-batch SGD; the data are shuffled at the start of every epoch with a
  generator seeded by ``seed``, so a run is repeatable;
* the loss is softmax cross-entropy *averaged* over the batch unless
  ``reduction="sum"`` is asked for;
* "train loss" of an epoch is the mean of its mini-batch losses (per sample);
* "test accuracy" is measured after each epoch with the network in eval mode
  (batch norm uses its running statistics).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .layers import SGD, in_mode, softmax_cross_entropy
from .protocol import NonFiniteError, iter_layers

__all__ = ["History", "fit", "evaluate", "eval_outputs", "predict", "Progress"]


@dataclass
class History:
    """Per-epoch record of a training run (lists indexed by epoch - 1)."""

    label: str = ""
    train_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    steps: int = 0
    diverged_at: int | None = None  # epoch in which the loss became non-finite

    @property
    def epochs(self) -> np.ndarray:
        return np.arange(1, len(self.test_acc) + 1)

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


#: What a layer keeps from its last forward pass for the backward pass.
_BACKWARD_CACHES = ("_cache", "_x", "_mask", "_first", "_y")


def eval_outputs(model, x, batch_size: int = 2000) -> np.ndarray:
    """Eval-mode outputs (n, k) of ``model`` for inputs ``x`` (n, ...).

    The rows go through ``batch_size`` at a time, so memory holds one batch's
    activations, not all of ``x``'s. Afterwards the layers drop the activations
    they kept for a backward pass (``_BACKWARD_CACHES``; no backward follows an
    evaluation), so a trained model
    does not hold its last evaluation batch's activations: for chapter 9's CNN
    about 0.3 GB per model, and the chapter keeps twelve. The model's mode is
    restored. An empty ``x`` gives an array of shape (0, 0).
    """
    if batch_size < 1 or int(batch_size) != batch_size:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    with in_mode(model, training=False):
        out = [model.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    for layer in iter_layers(model):
        for name in _BACKWARD_CACHES:
            if getattr(layer, name, None) is not None:
                setattr(layer, name, None)
    return np.concatenate(out) if out else np.zeros((0, 0))


def predict(model, x, batch_size: int = 2000) -> np.ndarray:
    """Class predictions (n,) for inputs ``x`` (n, d), computed in eval mode,
    ``batch_size`` rows at a time. The model's mode is restored afterwards.
    """
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(eval_outputs(model, x, batch_size), axis=1)


def evaluate(model, x, y, batch_size: int = 2000) -> float:
    """Accuracy in [0, 1] of ``model`` (eval mode) on ``x`` (n, d), ``y`` (n,)."""
    return float(np.mean(predict(model, x, batch_size) == np.asarray(y)))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """Progress of a run: an ipywidgets bar in a notebook, text lines elsewhere.

    In a notebook the bar is replaced, when the run ends, by a one-line text
    summary, so a saved notebook keeps the summary and no widget state.
    """

    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stdout
        self._bar = self._handle = None
        if enabled and _in_notebook():
            try:
                import ipywidgets as widgets
                from IPython.display import display
            except ImportError:
                return
            self._bar = widgets.IntProgress(min=0, max=total, description=label[:20])
            self._text = widgets.Label("")
            self._box = widgets.HBox([self._bar, self._text])
            self._handle = display(self._box, display_id=True)

    def update(self, done: int, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.value = done
            self._text.value = message
        else:
            prefix = f"{self.label}: " if self.label else ""
            print(f"{prefix}{done}/{self.total} {message}", file=self.stream, flush=True)

    def close(self, summary: str) -> None:
        if not self.enabled:
            return
        if self._handle is not None:
            self._handle.update(_Text(summary))
            self._box.close()
        else:
            print(summary, file=self.stream, flush=True)


class _Text:
    """Plain-text display object (shows as text, saves as text)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _params_finite(model) -> bool:
    return all(np.all(np.isfinite(p)) for _, p, _ in model.params())


def _check_fit_args(data, batch_size, shuffle) -> None:
    x_train, y_train, x_test, y_test = data
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError("inputs and labels must have the same number of samples")
    if batch_size < 1 or int(batch_size) != batch_size:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if shuffle not in ("every epoch", "once"):
        raise ValueError(f"shuffle must be 'every epoch' or 'once'; got {shuffle!r}")


def _batch_loss(model, xb, yb, reduction: str):
    """Forward pass and loss of one batch: ``(loss, dlogits)``, or ``(nan, None)``
    when the network diverged (a layer met a non-finite value the data did
    not hold, or a parameter is no longer finite)."""
    try:
        logits = model.forward(xb)
    except NonFiniteError:
        if _params_finite(model) and not np.isfinite(xb).all():
            raise  # the batch itself holds NaN or inf: bad data, not divergence
        return np.nan, None
    return softmax_cross_entropy(logits, yb, reduction)


def _train_epoch(model, opt, data, order, *, batch_size: int, drop_last: bool,
                 reduction: str, step: int, max_steps, callback, callback_every: int):
    """One epoch of SGD over the training set in the given ``order``.

    Returns ``(losses, step, diverged)``: the per-sample mean loss of each
    batch, the global step count after the epoch, and whether the loss
    became non-finite (the epoch stops there).
    """
    x_train, y_train = data[0], data[1]
    n = len(order)
    stop = n - (n % batch_size if drop_last else 0)
    losses = []
    for start in range(0, stop, batch_size):
        # Gather each batch on its own: a small copy that is still in cache
        # for the first matmul, instead of a fresh (n, d) copy every epoch.
        idx = order[start:start + batch_size]
        xb, yb = x_train[idx], y_train[idx]
        if len(xb) < 2:
            break
        loss, dlogits = _batch_loss(model, xb, yb, reduction)
        if not np.isfinite(loss):
            return losses, step, True
        model.backward(dlogits, need_input_grad=False)
        opt.step()
        losses.append(loss / (len(xb) if reduction == "sum" else 1))
        step += 1
        if callback is not None and callback_every and step % callback_every == 0:
            callback(step, model)
        if max_steps is not None and step >= max_steps:
            break
    return losses, step, False


def _record_epoch(hist: History, model, data, losses, seconds: float) -> None:
    """Append one finished epoch to ``hist``: mean loss, test accuracy, time."""
    hist.seconds.append(seconds)
    hist.train_loss.append(float(np.mean(losses)))
    hist.test_acc.append(evaluate(model, data[2], data[3]))


def _record_divergence(hist: History, epoch: int, epochs: int, seconds: float) -> None:
    """Mark ``epoch`` as the one that diverged; it and later epochs are NaN."""
    hist.diverged_at = epoch
    pad = epochs - epoch + 1
    hist.seconds += [seconds] + [0.0] * (pad - 1)
    hist.train_loss += [np.nan] * pad
    hist.test_acc += [np.nan] * pad


def _summary(hist: History, label: str) -> str:
    """The one-line text that replaces the progress bar when a run ends."""
    if hist.diverged:
        summary = f"diverged in epoch {hist.diverged_at} (loss became non-finite)"
    else:
        n = len(hist.test_acc)
        summary = (f"{n} epoch{'' if n == 1 else 's'}: final loss {hist.train_loss[-1]:.4f}, "
                   f"test acc {100 * hist.test_acc[-1]:.2f}%")
    return f"{label + ': ' if label else ''}{summary} in {hist.wall_time:.1f} s"


def fit(model, data, *, epochs: int, lr: float, batch_size: int = 100, seed: int = 0,
        momentum: float = 0.0, reduction: str = "mean", drop_last: bool = False,
        progress: bool = True, label: str = "", callback=None,
        callback_every: int = 0, max_steps: int | None = None,
        shuffle: str = "every epoch", stop_if=None) -> History:
    """Train ``model`` with mini-batch SGD and record a :class:`History`.

    Parameters
    ----------
    model : a :class:`~bnbook.layers.Sequential` (or any layer that follows
        the protocol of :class:`~bnbook.protocol.Layer`).
    data : ``(x_train, y_train, x_test, y_test)`` with x of shape (n, d) and
        y of shape (n,) integer labels.
    epochs, lr, batch_size, momentum : SGD settings.
    seed : seeds the shuffling generator.
    reduction : ``"mean"`` or ``"sum"`` over the batch (see
        :func:`~bnbook.layers.softmax_cross_entropy`).
    drop_last : drop the last, smaller batch of an epoch. A last batch of a
        single sample is always dropped: batch norm cannot train on it.
    progress : show progress (a widget bar in a notebook, text elsewhere).
    callback, callback_every : ``callback(step, model)`` is called after
        every ``callback_every``-th SGD step (and at step 0), for
        measurements during training; its return value is ignored.
    max_steps : stop after this many SGD steps in total (the last epoch may
        be partial; it is still evaluated and recorded).
    shuffle : ``"every epoch"`` (a new order each epoch) or ``"once"`` (one
        order drawn before the first epoch, so every epoch visits the same
        batches in the same order, as the "10 Days of Grad" code does).
    stop_if : ``stop_if(history) -> bool``, asked after every epoch but the
        last; True ends the run there (chapter 6's learning-rate grid stops a
        run that is below 50 % after two epochs). The History then
        holds the epochs that ran.

    If the loss or a parameter becomes non-finite (a layer raises
    :class:`~bnbook.protocol.NonFiniteError` on activations the data did not
    hold) the run stops, and ``History.diverged_at`` records the epoch; later
    epochs are recorded as NaN.
    """
    _check_fit_args(data, batch_size, shuffle)
    n = len(data[0])
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle == "once" else None
    opt = SGD(model, lr, momentum)
    hist = History(label=label)
    bar = Progress(epochs, label, enabled=progress)
    model.train()
    step = 0
    if callback is not None:
        callback(0, model)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if shuffle == "every epoch":
            order = rng.permutation(n)
        losses, step, diverged = _train_epoch(
            model, opt, data, order, batch_size=batch_size, drop_last=drop_last,
            reduction=reduction, step=step, max_steps=max_steps, callback=callback,
            callback_every=callback_every)
        if diverged:
            _record_divergence(hist, epoch, epochs, time.perf_counter() - t0)
            break
        _record_epoch(hist, model, data, losses, time.perf_counter() - t0)
        bar.update(epoch, f"epoch {epoch}: loss {hist.train_loss[-1]:.4f}, "
                          f"test acc {100 * hist.test_acc[-1]:.2f}%")
        if max_steps is not None and step >= max_steps:
            break
        if stop_if is not None and epoch < epochs and stop_if(hist):
            break
    hist.steps = step
    bar.close(_summary(hist, label))
    return hist
