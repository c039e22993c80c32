"""Chapter 5: batch norm's statistics at inference time.

* running averages: :func:`ema` simulates the exponential moving average a
  batch-norm layer keeps, in either momentum convention; :func:`ema_startup_bias`
  and :func:`half_life` give its start-up bias and memory in closed form;
* momentum conventions: :func:`keras_to_pytorch`;
* precise batch norm against the running averages: :func:`running_vs_precise`
  trains chapter 6's network in several settings and evaluates the same
  weights both ways; :class:`BatchStatsRecorder` and
  :func:`replay_running_stats` give the running averages of any momentum
  (or the cumulative average, ``momentum=None``) from one run.

Population statistics themselves are computed by
:func:`bnbook.normalization.recompute_bn_statistics`. The figure of the
running averages is :func:`plot_running_averages`.
"""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np

from ..checks import check_momentum
from ..layers import iter_layers
from ..normalization import BatchNorm1d, bn_layers, recompute_bn_statistics
from ..training import evaluate
from .ch6_mnist import BOOK, train_net

__all__ = [
    "ema",
    "ema_startup_bias",
    "half_life",
    "keras_to_pytorch",
    "BatchStatsRecorder",
    "replay_running_stats",
    "input_mean_and_cov",
    "with_statistics",
    "precise_bn",
    "running_vs_precise",
    "format_precise_table",
    "plot_running_averages",
]


# --------------------------------------------------------------------------
# running averages and the two momentum conventions
# --------------------------------------------------------------------------
def keras_to_pytorch(momentum: float) -> float:
    """PyTorch momentum (weight of the new batch) for a Keras momentum
    (weight of the old average): ``1 - momentum``."""
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
# precise batch norm against the running averages (chapter 5)
# --------------------------------------------------------------------------
class BatchStatsRecorder:
    """A :func:`bnbook.training.fit` callback (``callback_every=1``) that records
    what every batch-norm layer fed into its running averages.

    After each step it keeps each layer's ``batch_stats``
    (:class:`~bnbook.normalization.BatchStats`: the mean and biased variance
    of every normalization group, and the group's size);
    :func:`replay_running_stats` turns them into the running averages of any
    momentum. The running averages never influence training (a training
    forward pass normalizes with batch statistics), so one run yields the
    averages that every momentum would have kept.

    ``first_layer_population=(mean, cov)`` -- the mean (d_in,) and unbiased
    covariance (d_in, d_in) of the training inputs -- also records, every
    ``probe_every`` steps (and at step 0), the exact population mean and
    unbiased variance of the *first* BN layer's input ``x @ W`` (no bias),
    ``mean @ W`` and ``diag(W.T cov W)``: the statistics the current weights
    would give over the whole training set, at the cost of one matrix product.

    Attributes: ``model`` (the network being trained), ``stats`` (a list
    over steps of lists over layers of ``BatchStats``), ``probe_steps``
    (list), ``population`` (list of (mean, var) pairs).
    """

    def __init__(self, first_layer_population=None, probe_every: int = 0):
        self.model = None
        self.stats = []
        self.pop_x = first_layer_population
        self.probe_every = int(probe_every)
        self.probe_steps, self.population = [], []

    def __call__(self, step, model):
        self.model = model
        layers = bn_layers(model)
        if step > 0:
            self.stats.append([copy.deepcopy(layer.batch_stats) for layer in layers])
        if self.pop_x is not None and self.probe_every and step % self.probe_every == 0:
            layer_list = iter_layers(model)
            W = layer_list[layer_list.index(layers[0]) - 1].W.astype(np.float64)
            mean, cov = self.pop_x
            self.probe_steps.append(int(step))
            self.population.append((mean @ W, ((cov @ W) * W).sum(axis=0)))

    @property
    def steps(self) -> int:
        return len(self.stats)


def replay_running_stats(recorder: BatchStatsRecorder, momentum, layer: int | None = None):
    """The running averages a BatchNorm1d with ``momentum`` (a float, or None
    for the cumulative average) would hold after the recorded steps.

    The recorded batch statistics go, in order, through a float64
    :class:`~bnbook.normalization.BatchNorm1d`'s own update rule. Returns a
    list of ``(running_mean, running_var)`` pairs, one per BN layer, each
    (d,); with ``layer=k``, instead the trajectory of BN layer k:
    ``(means, vars)`` of shape (steps + 1, d), row t holding the averages
    after t steps.
    """
    n_layers = len(recorder.stats[0]) if recorder.stats else 0
    which = range(n_layers) if layer is None else [layer]
    out = []
    for k in which:
        d = recorder.stats[0][k].mean.shape[1]
        bn = BatchNorm1d(d, momentum=momentum, dtype=np.float64)
        means, variances = [bn.running_mean.copy()], [bn.running_var.copy()]
        for step in recorder.stats:
            s = step[k]
            for mu, var in zip(s.mean, s.var):
                bn.update_running_stats(mu.astype(np.float64), var.astype(np.float64), s.count)
            means.append(bn.running_mean.copy())
            variances.append(bn.running_var.copy())
        if layer is not None:
            return np.array(means), np.array(variances)
        out.append((bn.running_mean, bn.running_var))
    return out


def input_mean_and_cov(x):
    """Mean (d,) and unbiased covariance (d, d) of the rows of ``x`` (n, d),
    in float64 (the Gram matrix is formed in x's dtype: one BLAS product)."""
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x - mean.astype(x.dtype)
    return mean, (xc.T @ xc).astype(np.float64) / (len(x) - 1)


def with_statistics(model, stats):
    """A deep copy of ``model`` whose BN layers hold the given statistics
    (a list of ``(mean, var)`` pairs, one per BN layer, as
    :func:`replay_running_stats` returns), cast to each layer's dtype."""
    net = copy.deepcopy(model)
    for bn, (mean, var) in zip(bn_layers(net), stats, strict=True):
        bn.running_mean[...] = mean
        bn.running_var[...] = var
    return net


def precise_bn(model, x):
    """Precise batch norm (Wu & Johnson's name): a deep copy of ``model``
    whose BN statistics are those of the final weights over the samples
    ``x`` (n, d_in), by :func:`recompute_bn_statistics`."""
    net = copy.deepcopy(model)
    recompute_bn_statistics(net, x)
    return net


def running_vs_precise(data, cases: dict, *, seeds=(0, 1, 2), n_precise: int = 10_000,
                       progress: bool = True) -> dict:
    """Train chapter 6's batch-norm network once per case and seed, and
    evaluate the SAME trained weights with running averages and with
    precise batch norm.

    ``data`` is ``(x_train, y_train, x_test, y_test)``. ``cases`` maps a
    case name to a dict with the keywords of
    :func:`bnbook.chapters.ch6_mnist.train_net` that differ from
    :data:`bnbook.chapters.ch6_mnist.BOOK` (``lr`` is required; ``epochs``,
    ``batch_size``, ``max_steps`` ...) and optionally ``"momenta"``: the
    momenta of the running averages to evaluate (default ``(0.1,)``; None is
    the cumulative average), and ``"probe_every"``: record the first BN
    layer's population statistics every so many steps (default 0: never;
    see :class:`BatchStatsRecorder`). One training run serves every
    momentum. Precise BN uses the first ``n_precise`` training images.

    Returns ``{case: {seed: result}}``, each result a dict with
    ``history`` (History), ``steps`` (int), ``recorder``
    (:class:`BatchStatsRecorder`), ``precise`` (test accuracy with precise
    BN) and ``running`` (``{momentum: test accuracy}``). The trained network
    is ``recorder.model``; its layers keep their own momentum-0.1 running
    averages.
    """
    x_train, _, x_test, y_test = data
    pop = None
    out = {}
    for name, spec in cases.items():
        spec = dict(spec)
        momenta = tuple(spec.pop("momenta", (0.1,)))
        probe_every = int(spec.pop("probe_every", 0))
        if probe_every and pop is None:
            pop = input_mean_and_cov(x_train)
        out[name] = {}
        for seed in seeds:
            rec = BatchStatsRecorder(pop if probe_every else None, probe_every)
            hist = train_net(data, "BN", seed=seed, callback=rec, callback_every=1,
                             progress=progress, label=f"{name}, seed {seed}", **(BOOK | spec))
            model = rec.model
            res = dict(history=hist, steps=hist.steps, recorder=rec,
                       precise=evaluate(precise_bn(model, x_train[:n_precise]), x_test, y_test),
                       running={})
            for mom in momenta:
                net = with_statistics(model, replay_running_stats(rec, mom))
                res["running"][mom] = evaluate(net, x_test, y_test)
            out[name][seed] = res
    return out


def format_precise_table(results: dict, rows) -> str:
    """A text table of :func:`running_vs_precise`'s results: one line per
    (case, momentum) in ``rows`` and seed, with the test accuracy (%) with
    the running averages of that momentum, with precise BN, and the
    difference precise - running (percentage points)."""
    def mom(m):
        return "cumulative" if m is None else f"{m:g}"

    head = f"{'case':<26}{'momentum':>11}{'seed':>6}{'running':>10}{'precise':>10}{'precise - running':>19}"
    lines = [head, "-" * len(head)]
    for case, m in rows:
        for seed, r in results[case].items():
            run, pre = 100 * r["running"][m], 100 * r["precise"]
            lines.append(f"{case:<26}{mom(m):>11}{seed:>6}{run:>9.2f}%{pre:>9.2f}%{pre - run:>+17.2f}")
    return "\n".join(lines)


def plot_running_averages(truth, observed, momenta, init: float = 0.0, ax=None,
                          title: str = "Running mean of one feature"):
    """Draw the batch statistic ``observed`` (T,), the quantity it estimates
    ``truth`` (T,), and its running average (PyTorch convention, starting at
    ``init``) for each momentum in ``momenta``. Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.8), constrained_layout=True)
    t = np.arange(1, len(observed) + 1)
    ax.plot(t, observed, ".", ms=2.5, color="0.7", label="batch mean")
    ax.plot(t, truth, "k--", lw=1, label="population mean")
    for m in momenta:
        ax.plot(np.arange(len(observed) + 1), ema(observed, m, init), lw=1.6,
                label=f"running mean, momentum {m:g}")
    ax.set_xlabel("training step (batches seen)")
    ax.set_ylabel("mean of the feature (input units)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", ncol=2)
    return ax
