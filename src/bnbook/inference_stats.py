"""Statistics of batch norm at inference time (chapters 5 and 7).

* running averages: :func:`ema` simulates the exponential moving average a
  batch-norm layer keeps, in either momentum convention; :func:`ema_startup_bias`
  and :func:`half_life` give its start-up bias and memory in closed form;
* momentum conventions: :func:`keras_to_pytorch` / :func:`pytorch_to_keras`;
* population statistics: :func:`recompute_bn_statistics` replaces the running
  averages of every :class:`~bnbook.batchnorm.BatchNorm1d` in a network by
  the exact mean and unbiased variance of its input over a data set;
* precise batch norm against the running averages (chapter 5):
  :func:`running_vs_precise` trains chapter 6's network in several settings
  and evaluates the same weights both ways; :class:`BatchStatsRecorder` and
  :func:`replay_running_stats` give the running averages of any momentum
  (or the cumulative average, ``momentum=None``) from one run;
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
    "BatchStatsRecorder",
    "replay_running_stats",
    "input_mean_and_cov",
    "with_statistics",
    "precise_bn",
    "running_vs_precise",
    "format_precise_table",
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


# --------------------------------------------------------------------------
# precise batch norm against the running averages (chapter 5)
# --------------------------------------------------------------------------
class BatchStatsRecorder:
    """A :func:`bnbook.train.fit` callback (``callback_every=1``) that records
    what every BatchNorm1d layer fed into its running averages.

    After each SGD step it keeps, per BN layer, the batch mean ``mu`` (d,)
    and the biased batch variance ``var`` (d,) of that step, and the batch
    size ``m``; :func:`replay_running_stats` turns them into the running
    averages of any momentum. The running averages never influence training
    (a training-mode forward pass normalizes with batch statistics), so one
    run yields the averages that every momentum would have kept.

    ``first_layer_population=(mean, cov)`` -- the mean (d_in,) and unbiased
    covariance (d_in, d_in) of the training inputs -- also records, every
    ``probe_every`` steps (and at step 0), the exact population mean and
    unbiased variance of the *first* BN layer's input ``x @ W`` (no bias),
    ``mean @ W`` and ``diag(W.T cov W)``: the statistics the current weights
    would give over the whole training set, at the cost of one matrix product.

    Attributes: ``model`` (the network being trained), ``mu``/``var``
    (lists over steps of lists over layers), ``m`` (list over steps),
    ``probe_steps`` (list), ``population`` (list of (mean, var) pairs).
    """

    def __init__(self, first_layer_population=None, probe_every: int = 0):
        self.model = None
        self.mu, self.var, self.m = [], [], []
        self.pop_x = first_layer_population
        self.probe_every = int(probe_every)
        self.probe_steps, self.population = [], []

    def __call__(self, step, model):
        self.model = model
        layers = bn_layers(model)
        if step > 0:
            caches = [layer._cache for layer in layers]
            self.mu.append([c.mu.copy() for c in caches])
            self.var.append([c.var.copy() for c in caches])
            self.m.append(len(caches[0].x))
        if self.pop_x is not None and self.probe_every and step % self.probe_every == 0:
            layer_list = iter_layers(model)
            W = layer_list[layer_list.index(layers[0]) - 1].W.astype(np.float64)
            mean, cov = self.pop_x
            self.probe_steps.append(int(step))
            self.population.append((mean @ W, ((cov @ W) * W).sum(axis=0)))

    @property
    def steps(self) -> int:
        return len(self.m)


def replay_running_stats(recorder: BatchStatsRecorder, momentum, layer: int | None = None,
                         unbiased_running_var: bool = True):
    """The running averages a BatchNorm1d with ``momentum`` (a float, or None
    for the cumulative average) would hold after the recorded steps.

    The batch statistics recorded by ``recorder`` are fed, in order, through
    a float64 :class:`BatchNorm1d`'s own update rule. Returns a list of
    ``(running_mean, running_var)`` pairs, one per BN layer, each (d,); with
    ``layer=k``, instead the trajectory of BN layer k: ``(means, vars)`` of
    shape (steps + 1, d), row t holding the averages after t steps.
    """
    n_layers = len(recorder.mu[0]) if recorder.mu else 0
    which = range(n_layers) if layer is None else [layer]
    out = []
    for k in which:
        d = len(recorder.mu[0][k])
        bn = BatchNorm1d(d, momentum=momentum, dtype=np.float64,
                         unbiased_running_var=unbiased_running_var)
        if layer is not None:
            means, variances = [bn.running_mean.copy()], [bn.running_var.copy()]
        for mu, var, m in zip(recorder.mu, recorder.var, recorder.m):
            bn._update_running_stats(mu[k].astype(np.float64), var[k].astype(np.float64), m)
            if layer is not None:
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
    import copy

    net = copy.deepcopy(model)
    for bn, (mean, var) in zip(bn_layers(net), stats, strict=True):
        bn.running_mean[...] = mean
        bn.running_var[...] = var
    return net


def precise_bn(model, x):
    """Precise batch norm (Wu & Johnson's name): a deep copy of ``model``
    whose BN statistics are those of the final weights over the samples
    ``x`` (n, d_in), by :func:`recompute_bn_statistics`."""
    import copy

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
    :func:`bnbook.experiments.train_net` that differ from
    :data:`bnbook.experiments.BOOK` (``lr`` is required; ``epochs``,
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
    from .experiments import BOOK, train_net
    from .train import evaluate

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
