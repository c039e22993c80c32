"""Chapter 6's drivers: batch norm against no batch norm on MNIST.

The chapter trains pairs of networks -- one with batch norm before every
hidden activation, one without -- under two recipes:

* :data:`ARTICLE`: the settings of the "10 Days of Grad" code
  (repository penkovsky/10-days-of-grad, folder day4), which the chapter
  replicates and then changes one ingredient at a time;
* :data:`BOOK`: the book's conventions (He initialization, zero biases,
  gradients averaged over the batch, eps 1e-5, a new order every epoch),
  used for the controlled comparison.

``data`` is always ``(x_train, y_train, x_test, y_test)`` with x of shape
(n, d) and integer labels y of shape (n,). Every driver returns plain data
(:class:`~bnbook.training.History` objects, arrays, strings), so the notebook
only calls, asserts and plots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..batchnorm import batchnorm_forward
from ..layers import Linear
from ..models import build_mlp
from ..normalization import BatchNorm1d
from ..training import History, evaluate, fit

__all__ = [
    "ArticleBatchNorm1d",
    "build_net",
    "one_shuffle",
    "LABELS",
    "ARTICLE",
    "BOOK",
    "train_net",
    "run_pair",
    "format_runs",
    "best_lr",
    "paper_experiment",
    "percentile_drift",
]

#: The two networks of every pair, in plotting order.
LABELS = ("BN", "plain")

#: The "10 Days of Grad" code's recipe (day4/app/Main.hs, day4/src/NeuralNetwork.hs):
#: weights 0.01 * N(0, 1); biases N(0, 1) (the batch-norm network has none, not
#: even at the output); batch norm's dgamma and dbeta summed over the batch
#: (the linear layers' gradients averaged); eps 1e-12; the biased batch
#: variance in the running average; batches of 1000 fixed after one shuffle;
#: learning rate 0.1; 10 epochs. (Inputs x/255 - 0.5 are the data's business.)
ARTICLE = dict(sizes=(784, 300, 50, 10), init="normal", gain=0.01, bias_init="normal",
               bn_output_bias=False, bn_eps=1e-12, bn_param_grads="sum",
               bn_unbiased_running_var=False, lr=0.1, batch_size=1000, epochs=10,
               shuffle="once")

#: The book's conventions for the same network and training budget (10 epochs
#: of batches of 1000); the learning rate is left to the caller.
BOOK = dict(sizes=(784, 300, 50, 10), init="he", gain=1.0, bias_init="zeros",
            bn_output_bias=True, bn_eps=1e-5, bn_param_grads="mean",
            bn_unbiased_running_var=True, batch_size=1000, epochs=10,
            shuffle="every epoch")

_PAPER_SIZES = (784, 100, 100, 100, 10)  # Ioffe & Szegedy's MNIST network


class ArticleBatchNorm1d(BatchNorm1d):
    """:class:`~bnbook.normalization.BatchNorm1d` with the article code's conventions.

    * ``param_grads="sum"``: ``dgamma`` and ``dbeta`` are m times the
      gradients of the loss as given (an (m, d) batch), i.e. the gradients
      summed over the batch, while ``dx`` is unchanged. With a loss averaged
      over the batch, this is what the code does (it averages the Linear
      layers' gradients but sums batch norm's): a learning rate m times
      larger for ``gamma`` and ``beta``.
    * ``unbiased_running_var=False``: the running variance takes the biased
      batch variance (the one used to normalize) instead of ``m / (m - 1)``
      times it.

    ``param_grads="mean"`` with ``unbiased_running_var=True`` is the plain
    layer with the same ``eps``, bit for bit.
    """

    def __init__(self, num_features: int, eps: float = 1e-12, momentum: float | None = 0.1,
                 dtype=np.float32, param_grads: str = "sum", unbiased_running_var: bool = False):
        super().__init__(num_features, eps, momentum, dtype)
        if param_grads not in ("mean", "sum"):
            raise ValueError(f"param_grads must be 'mean' or 'sum'; got {param_grads!r}")
        self.param_grads, self.unbiased_running_var = param_grads, bool(unbiased_running_var)

    def running_var_correction(self, count: int) -> float:
        return super().running_var_correction(count) if self.unbiased_running_var else 1.0

    def backward(self, dout, need_input_grad: bool = True):
        dx = super().backward(dout, need_input_grad)
        if self.param_grads == "sum":
            m = dx.shape[0]
            self.dgamma *= m
            self.dbeta *= m
        return dx

    def __repr__(self) -> str:
        return (f"ArticleBatchNorm1d({self.num_features}, eps={self.eps:g}, "
                f"param_grads={self.param_grads!r}, "
                f"unbiased_running_var={self.unbiased_running_var})")


def build_net(network: str, *, seed: int = 0, sizes=ARTICLE["sizes"], activation: str = "relu",
              init: str | None = None, gain: float = 1.0, bias_init: str = "zeros",
              bn_output_bias: bool = True, bn_eps: float = 1e-5, bn_param_grads: str = "mean",
              bn_unbiased_running_var: bool = True):
    """One network of a pair: ``"BN"`` (batch norm before every hidden
    activation, bias-free hidden Linear layers, an output bias only if
    ``bn_output_bias``) or ``"plain"``, built by :func:`bnbook.models.build_mlp`
    from ``seed`` (so both start from the same weights).

    ``bias_init="normal"`` draws every bias from N(0, 1), as the article's
    code does, from a second generator seeded ``[seed, 1]``: one draw per
    Linear layer in order, made whether or not the layer has a bias, so the
    biases a layer gets do not depend on the other layers. The ``bn_*``
    options go to an :class:`ArticleBatchNorm1d` (a plain BatchNorm1d when
    they are build_net's defaults) and are ignored for the plain network.
    """
    if network not in LABELS:
        raise ValueError(f"network must be one of {LABELS}; got {network!r}")
    if bias_init not in ("zeros", "normal"):
        raise ValueError(f"bias_init must be 'zeros' or 'normal'; got {bias_init!r}")
    bn = network == "BN"

    def batchnorm(width):
        if bn_param_grads == "mean" and bn_unbiased_running_var:
            return BatchNorm1d(width, eps=bn_eps)
        return ArticleBatchNorm1d(width, eps=bn_eps, param_grads=bn_param_grads,
                                  unbiased_running_var=bn_unbiased_running_var)
    model = build_mlp(sizes, batchnorm=batchnorm if bn else False, activation=activation,
                      init=init, gain=gain, seed=seed, output_bias=bn_output_bias if bn else True)
    if bias_init == "normal":
        bias_rng = np.random.default_rng([seed, 1])
        for layer in model.layers:
            if isinstance(layer, Linear):
                draw = bias_rng.standard_normal(layer.out_features).astype(layer.W.dtype)
                if layer.b is not None:
                    layer.b[...] = draw
    return model


def one_shuffle(n: int, batch_size: int):
    """A batch order for :func:`bnbook.training.fit`: one permutation of
    ``range(n)``, drawn at the first epoch and kept, so every epoch visits
    the same batches in the same order (the article's code does this)."""
    order = None

    def batches(epoch, rng):
        nonlocal order
        if order is None:
            order = rng.permutation(n)
        return [order[i:i + batch_size] for i in range(0, n, batch_size)
                if min(batch_size, n - i) >= 2]
    return batches


def train_net(data, network: str, *, lr: float, epochs: int, seed: int = 0,
              batch_size: int = 100, shuffle: str = "every epoch", label: str | None = None,
              progress: bool = True, **net_kw) -> History:
    """Build one network of a pair with :func:`build_net` (``net_kw``) and
    train it with :func:`bnbook.training.fit` with the same ``seed`` for the
    batch order; return its History.

    ``shuffle`` is ``"every epoch"`` (fit's default order) or ``"once"``
    (:func:`one_shuffle`). Six more keywords go to ``fit``: ``callback``,
    ``callback_every``, ``max_steps``, ``stop_if``, ``callbacks`` and
    ``drop_last``; the History's label defaults to
    ``"<network> seed <seed>"``.
    """
    if shuffle not in ("every epoch", "once"):
        raise ValueError(f"shuffle must be 'every epoch' or 'once'; got {shuffle!r}")
    fit_names = ("callback", "callback_every", "max_steps", "stop_if", "callbacks", "drop_last")
    fit_kw = {k: net_kw.pop(k) for k in fit_names if k in net_kw}
    model = build_net(network, seed=seed, **net_kw)
    batches = one_shuffle(len(data[0]), batch_size) if shuffle == "once" else None
    return fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               batches=batches, progress=progress,
               label=f"{network} seed {seed}" if label is None else label, **fit_kw)


def run_pair(data, **kw) -> dict:
    """Both networks, trained with the same settings: ``{"BN": History,
    "plain": History}``. Keywords are those of :func:`train_net` (for example
    ``run_pair(data, seed=1, **ARTICLE)``)."""
    return {name: train_net(data, name, **kw) for name in LABELS}


def _final(h: History) -> float:
    """Last test accuracy of a run; -inf if it diverged (never the best)."""
    a = h.test_acc[-1] if h.test_acc else np.nan
    return float(a) if np.isfinite(a) else -np.inf


def best_lr(runs: dict, tolerance: float = 0.0) -> float:
    """The smallest learning rate whose run ends within ``tolerance`` of the best accuracy.

    ``runs`` is ``{lr: History}``; a run that diverged (non-finite final
    accuracy) is never chosen. With ``tolerance=0`` this is the rate with the
    highest final accuracy (ties go to the smaller rate). A tolerance of a few
    times the validation noise (chapter 6 uses 0.0075: 0.75 points, about three
    standard errors of a difference near 97 % on 10,000 images) keeps the choice
    from flipping between two rates that the validation set cannot tell apart,
    as it does from one BLAS library to another, and takes the safer one.
    """
    finite = {lr: _final(h) for lr, h in runs.items() if np.isfinite(_final(h))}
    if not finite:
        raise ValueError("every run diverged: no learning rate to choose")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance!r}")
    top = max(finite.values())
    return min(lr for lr, acc in finite.items() if acc >= top - tolerance)


def _cell(h: History, epoch: int) -> str:
    if epoch > len(h.test_acc):
        return "-"
    a = h.test_acc[epoch - 1]
    return f"{100 * a:.2f}" if np.isfinite(a) else "diverged"


def format_runs(rows: dict, epochs=(10,), published: dict | None = None,
                width: int = 26) -> str:
    """A text table: one line per (row, epoch), one column per run, the range.

    ``rows`` is ``{name: [History, ...]}`` (for example the runs of seeds
    0, 1, 2); the cells are test accuracies in %, ``diverged`` for a run that
    diverged before that epoch and ``-`` for one that stopped earlier. The
    range covers the finite accuracies only. ``published`` (optional)
    is ``{(name, epoch): text}`` shown in a last column.
    """
    n = max(len(hs) for hs in rows.values())
    head = (f"{'':<{width}}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(n))
            + f"{'range':>15}" + (f"{'published':>11}" if published else ""))
    lines = [head, "-" * len(head)]
    for name, hs in rows.items():
        for e in epochs:
            accs = [100 * h.test_acc[e - 1] for h in hs if e <= len(h.test_acc)]
            ok = [a for a in accs if np.isfinite(a)]
            span = f"{min(ok):.2f}-{max(ok):.2f}" if ok else "-"
            pub = (published or {}).get((name, e), "")
            cells = "".join(f"{_cell(h, e):>10}" for h in hs) + " " * 10 * (n - len(hs))
            lines.append(f"{name + ', epoch ' + str(e):<{width}}{cells}{span:>15}"
                         + (f"{pub:>11}" if published else ""))
    return "\n".join(lines)


def _last_hidden_input(model, x) -> np.ndarray:
    """Input (n, units) of the last hidden activation for inputs ``x`` (n, d).

    A batch-norm layer normalizes with the statistics of ``x`` itself (the
    training formula) without touching its running averages, so probing
    never changes the model.
    """
    layers = model.layers
    last_act = max(i for i, layer in enumerate(layers[:-1])
                   if not isinstance(layer, (Linear, BatchNorm1d)))
    h = np.asarray(x)
    for layer in layers[:last_act]:
        if isinstance(layer, BatchNorm1d):
            h, _ = batchnorm_forward(h, layer.gamma, layer.beta, layer.eps)
        elif isinstance(layer, Linear):
            h = h @ layer.W + (layer.b if layer.b is not None else 0)
        else:
            h = layer.forward(h)
    return h


@dataclass
class _Probe:
    """``fit`` callback: the step, the test accuracy and the input (k, units)
    of every unit of the last hidden activation for the probe images."""

    x_probe: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    steps: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def __call__(self, step, model):
        self.steps.append(int(step))
        self.test_acc.append(evaluate(model, self.x_test, self.y_test))
        self.values.append(np.array(_last_hidden_input(model, self.x_probe)))


def paper_experiment(data, *, steps: int, lr: float, seed: int = 0, batch_size: int = 60,
                     record_every: int = 200, n_probe: int = 1000, sizes=_PAPER_SIZES,
                     progress: bool = True) -> dict:
    """Ioffe & Szegedy's MNIST test: sigmoid networks with and without batch norm.

    Each network (Xavier initialization, averaged loss) trains for ``steps``
    SGD steps of ``batch_size`` images. Every ``record_every`` steps (and at
    step 0) the test accuracy and the input of every sigmoid of the last
    hidden layer for the first ``n_probe`` test images are recorded.

    Returns ``{"BN": rec, "plain": rec}`` with ``rec`` a dict of
    ``history`` (History), ``steps`` (r,), ``test_acc`` (r,) and
    ``values`` (r, n_probe, units).
    """
    x_train, _, x_test, y_test = data
    epochs = math.ceil(steps * batch_size / len(x_train))
    out = {}
    for name in LABELS:
        probe = _Probe(x_test[:n_probe], x_test, y_test)
        hist = train_net(data, name, lr=lr, epochs=epochs, seed=seed, sizes=sizes,
                         activation="sigmoid", batch_size=batch_size, progress=progress,
                         label=f"{name} sigmoid seed {seed}", callback=probe,
                         callback_every=record_every, max_steps=steps)
        out[name] = dict(history=hist, steps=np.array(probe.steps),
                         test_acc=np.array(probe.test_acc), values=np.stack(probe.values))
    return out


def percentile_drift(steps, values, start: int, percentiles=(15, 50, 85)) -> np.ndarray:
    """How far each unit's input distribution moves after step ``start``.

    ``steps`` (r,) and ``values`` (r, k, units) as recorded by
    :func:`paper_experiment`. For every unit, the given percentiles over the
    k probe images are followed from the first record at or after ``start``
    to the end; the result (units,) is the largest distance any of them
    moves from its value at that record.
    """
    steps, values = np.asarray(steps), np.asarray(values)
    if values.ndim != 3 or len(steps) != len(values):
        raise ValueError(f"values must be (records, images, units) with one record per step; "
                         f"got {values.shape} for {len(steps)} steps")
    i0 = int(np.searchsorted(steps, start))
    if i0 >= len(steps):
        raise ValueError(f"no record at or after step {start} (last: {steps[-1]})")
    q = np.percentile(values[i0:], percentiles, axis=1)  # (p, r', units)
    return np.max(np.abs(q - q[:, :1]), axis=(0, 1))
