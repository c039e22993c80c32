"""Statistics of batch norm at inference time (chapters 5 and 7).

* running averages: :func:`ema` simulates the exponential moving average a
  batch-norm layer keeps, in either momentum convention; :func:`ema_startup_bias`
  and :func:`half_life` give its start-up bias and memory in closed form;
* momentum conventions: :func:`keras_to_pytorch` / :func:`pytorch_to_keras`;
* population statistics: :func:`recompute_bn_statistics` replaces the running
  averages of every :class:`~bnbook.batchnorm.BatchNorm1d` in a network by
  the exact mean and unbiased variance of its input over a data set;
* diagnostics for the pitfalls: :func:`bn_inputs` (what a BN layer sees),
  :func:`accuracy_with_batch_statistics` (evaluating in training mode, the
  mistake, without touching the running statistics) and
  :func:`train_on_batches` (SGD over a *given* sequence of batches, for
  non-i.i.d. orders that :func:`bnbook.train.fit` deliberately never makes).

The figure of these running averages is :func:`bnbook.plots.plot_running_averages`.
"""
from __future__ import annotations

import numpy as np

from .batchnorm import BatchNorm1d
from .layers import SGD, in_mode, layer_inputs, running_stats_kept, softmax_cross_entropy
from .protocol import check_momentum, iter_layers

__all__ = [
    "ema",
    "ema_startup_bias",
    "half_life",
    "keras_to_pytorch",
    "pytorch_to_keras",
    "bn_layers",
    "bn_inputs",
    "recompute_bn_statistics",
    "accuracy_with_batch_statistics",
    "train_on_batches",
]


# --------------------------------------------------------------------------
# running averages and the two momentum conventions
# --------------------------------------------------------------------------
def keras_to_pytorch(momentum: float) -> float:
    """PyTorch momentum (weight of the new batch) for a Keras momentum
    (weight of the old average): ``1 - momentum``."""
    return 1.0 - check_momentum(momentum)


def pytorch_to_keras(momentum: float) -> float:
    """Keras momentum for a PyTorch momentum: ``1 - momentum``."""
    return 1.0 - check_momentum(momentum)


def ema(values, momentum: float, init=0.0, convention: str = "pytorch") -> np.ndarray:
    """Exponential moving average of a sequence, as a batch-norm layer keeps it.

    Parameters
    ----------
    values : array (T,) or (T, d): the batch statistic at each step.
    momentum : float in [0, 1].
        ``convention="pytorch"``: ``avg = (1 - momentum) * avg + momentum * value``;
        ``convention="keras"``:   ``avg = momentum * avg + (1 - momentum) * value``.
    init : the starting value (0 for a running mean, 1 for a running variance).

    Returns
    -------
    array of shape ``(T + 1,) + values.shape[1:]``: the average before the first
    step (``init``) and after each of the T steps, in float64.
    """
    values = np.asarray(values, dtype=np.float64)
    m = check_momentum(momentum)
    if convention == "pytorch":
        w_new = m
    elif convention == "keras":
        w_new = 1.0 - m
    else:
        raise ValueError(f"convention must be 'pytorch' or 'keras'; got {convention!r}")
    out = np.empty((len(values) + 1,) + values.shape[1:])
    out[0] = init
    for t, v in enumerate(values):
        out[t + 1] = (1.0 - w_new) * out[t] + w_new * v
    return out


def ema_startup_bias(momentum: float, steps, init: float = 0.0, target: float = 1.0):
    """What is left of the initial value after ``steps`` updates towards a
    constant ``target`` (PyTorch convention): ``(1 - momentum)**steps * (init - target)``."""
    m = check_momentum(momentum)
    return (1.0 - m) ** np.asarray(steps, dtype=np.float64) * (init - target)


def half_life(momentum: float) -> float:
    """Steps after which an old value's weight in the average has halved
    (PyTorch convention): ``log(0.5) / log(1 - momentum)``."""
    m = check_momentum(momentum)
    if m == 0.0:
        return np.inf
    if m == 1.0:
        return 0.0
    return float(np.log(0.5) / np.log1p(-m))


# --------------------------------------------------------------------------
# population statistics
# --------------------------------------------------------------------------
def bn_layers(model) -> list:
    """The :class:`BatchNorm1d` layers of a Sequential model, in order."""
    return [layer for layer in iter_layers(model) if isinstance(layer, BatchNorm1d)]


def bn_inputs(model, x, batch_size: int = 2000) -> list:
    """The inputs of every BatchNorm1d layer for data ``x`` (n, d_in).

    The network runs in eval mode (earlier BN layers use their running
    statistics). Returns a list with one array (n, num_features) per BN layer.
    """
    return layer_inputs(model, x, lambda i, layer: isinstance(layer, BatchNorm1d), batch_size)


def recompute_bn_statistics(model, x, batch_size: int = 1000):
    """Set the running statistics of every BatchNorm1d to population statistics.

    Each layer's ``running_mean`` becomes the exact mean and ``running_var``
    the exact *unbiased* variance (divided by n - 1) of that layer's input over
    all n samples of ``x`` (n, d_in), accumulated in float64. This is the
    inference rule of Ioffe & Szegedy (2015) computed on the whole set instead
    of averaged over mini-batches.

    The layers are processed front to back in one sweep over the network:
    the input of a BN layer is computed with all earlier BN layers already in
    eval mode with their *new* statistics, which is how the network will run
    at test time. ``x`` is pushed through the network once, ``batch_size``
    rows at a time; one layer's activations for all of ``x`` are held in
    memory at a time. No parameter other than the running statistics
    changes, and the model's train/eval mode is restored.

    Returns the list of BN layers, in order.
    """
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 samples to estimate a variance; got {n}")
    with in_mode(model, training=False):
        chunks = [x[i:i + batch_size] for i in range(0, n, batch_size)]
        for layer in iter_layers(model):
            if isinstance(layer, BatchNorm1d):
                s1 = sum(c.sum(axis=0, dtype=np.float64) for c in chunks)
                mean = s1 / n
                # second pass over the held activations: sum of squared deviations
                ss = sum(np.square(c.astype(np.float64) - mean).sum(axis=0) for c in chunks)
                layer.running_mean[...] = mean
                layer.running_var[...] = ss / (n - 1)
            chunks = [layer.forward(c) for c in chunks]
    return bn_layers(model)


# --------------------------------------------------------------------------
# diagnostics used by the pitfalls chapter
# --------------------------------------------------------------------------
def accuracy_with_batch_statistics(model, x, y, batch_size: int) -> float:
    """Accuracy when the network is (wrongly) left in training mode at test time.

    Every BN layer normalizes each test batch of ``batch_size`` consecutive rows
    of ``x`` (n, d) with that batch's own statistics. The running statistics
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
    return correct / len(x)


def train_on_batches(model, x, y, batches, lr: float) -> np.ndarray:
    """One pass of SGD (mean cross-entropy) over the given batches, in order.

    ``batches`` is a sequence of index arrays into ``x`` (n, d) and ``y`` (n,).
    Unlike :func:`bnbook.train.fit`, nothing is shuffled: the caller decides
    what each batch holds (for instance one class only). Returns the loss of
    each batch, shape (len(batches),).
    """
    opt = SGD(model, lr)
    model.train()
    losses = np.empty(len(batches))
    for k, idx in enumerate(batches):
        logits = model.forward(x[idx])
        losses[k], dlogits = softmax_cross_entropy(logits, y[idx])
        model.backward(dlogits, need_input_grad=False)
        opt.step()
    return losses
