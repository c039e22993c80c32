"""Experiment drivers of the MNIST chapter (book/06_mnist_comparison.ipynb).

Each driver trains networks with :func:`bnbook.train.fit` and returns plain
data -- :class:`~bnbook.train.History` objects, NumPy arrays, dictionaries --
so that the notebook only calls and plots.

``data`` is always ``(x_train, y_train, x_test, y_test)`` with x of shape
(n, d) and integer labels y of shape (n,), as returned by
:func:`bnbook.mnist.load_mnist`.

Conventions: the two networks of a pair are built by
:func:`bnbook.layers.build_mlp` with the *same* seed (so they start from the
same weights; the batch-norm network has bias-free hidden linear layers and
a batch-norm layer before each activation) and trained by ``fit`` with the
same shuffling seed, learning rate and batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .batchnorm import BatchNorm1d, batchnorm_forward
from .layers import Linear, SGD, build_mlp, softmax_cross_entropy
from .train import History, evaluate, fit

__all__ = [
    "SEED_SIZES",
    "PAPER_SIZES",
    "LABELS",
    "run_pair",
    "truncate",
    "lr_grid",
    "milestones",
    "format_milestones",
    "sum_vs_mean_step",
    "last_hidden_input",
    "SigmoidProbe",
    "paper_experiment",
    "weight_scale_sweep",
    "seed_spread",
    "format_spread",
]

#: The seed article's network: 784 inputs, hidden layers of 300 and 50, 10 classes.
SEED_SIZES = (784, 300, 50, 10)
#: The original paper's MNIST network: three hidden layers of 100 units.
PAPER_SIZES = (784, 100, 100, 100, 10)
#: The two members of every pair, in plotting order.
LABELS = ("BN", "plain")


def run_pair(data, *, lr: float, epochs_bn: int, epochs_plain: int | None = None,
             reduction: str = "mean", seed: int = 0, sizes=SEED_SIZES,
             activation: str = "relu", gain: float = 1.0, batch_size: int = 100,
             progress: bool = True, tag: str = "") -> dict:
    """Train the batch-norm network and the plain one with shared settings.

    Returns ``{"BN": History, "plain": History}``; the labels of the
    histories are ``"BN"``/``"plain"`` followed by ``tag``.
    ``epochs_plain`` defaults to ``epochs_bn``.
    """
    epochs = {"BN": epochs_bn, "plain": epochs_bn if epochs_plain is None else epochs_plain}
    out = {}
    for name in LABELS:
        model = build_mlp(sizes, batchnorm=(name == "BN"), activation=activation,
                          gain=gain, seed=seed)
        out[name] = fit(model, data, epochs=epochs[name], lr=lr, batch_size=batch_size,
                        seed=seed, reduction=reduction, progress=progress,
                        label=f"{name}{tag}")
    return out


def truncate(history: History, epochs: int, label: str | None = None) -> History:
    """A copy of ``history`` keeping only its first ``epochs`` epochs.

    A run is deterministic given its seed, so the first k epochs of a long
    run *are* the k-epoch run with the same settings; this saves re-training.
    ``steps`` is scaled in proportion (exact when every epoch has the same
    number of steps).
    """
    k = min(int(epochs), len(history.test_acc))
    n = len(history.test_acc)
    diverged = history.diverged_at
    if diverged is not None and diverged > k:
        diverged = None
    return replace(history, label=history.label if label is None else label,
                   train_loss=list(history.train_loss[:k]), test_acc=list(history.test_acc[:k]),
                   seconds=list(history.seconds[:k]),
                   steps=int(round(history.steps * k / n)) if n else 0, diverged_at=diverged)


def lr_grid(data, lrs, *, epochs: int, seed: int = 0, reuse: dict | None = None,
            progress: bool = True, **pair_kw) -> dict:
    """Both networks at every learning rate of ``lrs`` (averaged loss).

    Returns ``{lr: {"BN": History, "plain": History}}``. A pair already
    trained with the same seed and the averaged loss at one of these rates
    can be passed in ``reuse`` as ``{lr: pair}``; it is cut to ``epochs``
    instead of being trained again. Other keywords (``sizes``,
    ``batch_size``, ...) go to :func:`run_pair`.
    """
    return _sweep(data, "lr", lrs, epochs=epochs, reuse=reuse, seed=seed,
                  progress=progress, **pair_kw)


def _sweep(data, key: str, values, *, epochs: int, reuse: dict | None, **pair_kw) -> dict:
    """``{v: run_pair(..., key=v)}`` for every v in ``values``, labelled
    ``" {key} {v}"``; a pair given in ``reuse[v]`` is cut to ``epochs``
    instead of being trained again."""
    reuse = reuse or {}
    out = {}
    for v in values:
        if v in reuse:
            out[v] = {k: truncate(h, epochs) for k, h in reuse[v].items()}
        else:
            out[v] = run_pair(data, epochs_bn=epochs, tag=f" {key} {v:g}", **{key: v}, **pair_kw)
    return out


def milestones(history: History, epochs=(1, 5, 10, 50), targets=(0.97, 0.98)) -> dict:
    """Test accuracy at the given epochs and the first epoch reaching each target.

    Returns ``{"label", "run": epochs run, "acc": {epoch: accuracy or None
    (not run)}, "first": {target: epoch or None (not reached)}}``.
    """
    run = len(history.test_acc)
    acc = {e: (history.acc_at(e) if e <= run else None) for e in epochs}
    first = {t: history.first_epoch_reaching(t) for t in targets}
    return {"label": history.label, "run": run, "acc": acc, "first": first}


def format_milestones(rows, epochs=(1, 5, 10, 50), targets=(0.97, 0.98)) -> str:
    """A fixed-width text table of :func:`milestones` rows (accuracies in %)."""
    head = (f"{'run':<26}{'epochs':>7}" + "".join(f"{'ep ' + str(e):>9}" for e in epochs)
            + "".join(f"{'first ' + format(100 * t, 'g') + '%':>12}" for t in targets))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{'-' if a is None else format(100 * a, '.2f'):>9}"
                        for a in (r["acc"][e] for e in epochs))
        firsts = "".join(f"{'not reached' if f is None else 'epoch ' + str(f):>12}"
                         for f in (r["first"][t] for t in targets))
        lines.append(f"{r['label']:<26}{r['run']:>7}{cells}{firsts}")
    return "\n".join(lines)


def sum_vs_mean_step(x, y, *, lr_sum: float = 0.01, sizes=SEED_SIZES, batchnorm=False,
                     seed: int = 0) -> float:
    """Largest parameter difference after one SGD step with the summed loss at
    ``lr_sum`` and one with the averaged loss at ``lr_sum * m`` (``m = len(x)``).

    Both start from the same weights; mathematically the two steps are equal.
    """
    m = len(x)
    params = []
    for reduction, lr in (("sum", lr_sum), ("mean", lr_sum * m)):
        model = build_mlp(sizes, batchnorm=batchnorm, seed=seed)
        _, dlogits = softmax_cross_entropy(model.forward(x), y, reduction)
        model.backward(dlogits, need_input_grad=False)
        SGD(model, lr).step()
        params.append([p.copy() for _, p, _ in model.params()])
    return float(max(np.max(np.abs(a - b)) for a, b in zip(*params)))


def last_hidden_input(model, x) -> np.ndarray:
    """Input (n, units) of the last hidden layer's activation for inputs ``x`` (n, d).

    The layers before the last activation are applied in order; a batch-norm
    layer normalizes with the statistics of ``x`` itself (training-mode
    formula) *without* updating its running averages, so probing never
    changes the model. For the plain network this is the output of the last
    hidden linear layer; for the batch-norm network it is the output of the
    last batch-norm layer (the value the sigmoid receives).
    """
    layers = model.layers
    last_act = max(i for i, layer in enumerate(layers)
                   if not isinstance(layer, (Linear, BatchNorm1d)) and i < len(layers) - 1)
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
class SigmoidProbe:
    """``fit`` callback: test accuracy and the input of one last-layer unit.

    At each call it records the step, the test accuracy (eval mode) on
    ``x_test``/``y_test`` and the input of unit ``unit`` of the last hidden
    activation for every probe image ``x_probe`` (k, d).

    After training: ``steps`` (r,), ``test_acc`` (r,), ``values`` (r, k).
    """

    x_probe: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    unit: int = 0
    steps: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def __call__(self, step, model):
        self.steps.append(int(step))
        self.test_acc.append(evaluate(model, self.x_test, self.y_test))
        self.values.append(np.array(last_hidden_input(model, self.x_probe)[:, self.unit]))

    def arrays(self):
        """``(steps (r,), test_acc (r,), values (r, k))`` as arrays."""
        return np.array(self.steps), np.array(self.test_acc), np.stack(self.values)


def paper_experiment(data, *, steps: int, lr: float, batch_size: int = 60, seed: int = 0,
                     record_every: int = 200, n_probe: int = 1000, unit: int = 0,
                     sizes=PAPER_SIZES, progress: bool = True) -> dict:
    """Ioffe & Szegedy's MNIST test: sigmoid network with and without batch norm.

    Trains each network for ``steps`` SGD steps of ``batch_size`` images and
    records, every ``record_every`` steps, the test accuracy and the input of
    sigmoid ``unit`` of the last hidden layer for the first ``n_probe`` test
    images. Returns ``{"BN": (History, SigmoidProbe), "plain": (...)}``.
    """
    x_train, y_train, x_test, y_test = data
    epochs = math.ceil(steps * batch_size / len(x_train))
    out = {}
    for name in LABELS:
        model = build_mlp(sizes, batchnorm=(name == "BN"), activation="sigmoid", seed=seed)
        probe = SigmoidProbe(x_test[:n_probe], x_test, y_test, unit=unit)
        hist = fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                   progress=progress, label=f"{name} (sigmoid 3x100)", callback=probe,
                   callback_every=record_every, max_steps=steps)
        out[name] = (hist, probe)
    return out


def weight_scale_sweep(data, gains, *, epochs: int, lr: float, seed: int = 0,
                       reuse: dict | None = None, progress: bool = True, **pair_kw) -> dict:
    """Both networks with every initial weight multiplied by each gain of ``gains``.

    Returns ``{gain: {"BN": History, "plain": History}}``. ``reuse`` works as
    in :func:`lr_grid` (a pair trained at this ``lr`` with gain g, cut to
    ``epochs``); other keywords go to :func:`run_pair`.
    """
    return _sweep(data, "gain", gains, epochs=epochs, reuse=reuse, lr=lr, seed=seed,
                  progress=progress, **pair_kw)


def seed_spread(data, seeds, *, epochs: int, lr: float, reuse: dict | None = None,
                progress: bool = True, **pair_kw) -> dict:
    """The same pair of networks trained from every seed of ``seeds``.

    The seed sets both the initial weights and the shuffling. Returns
    ``{seed: {"BN": History, "plain": History}}``. ``reuse`` works as in
    :func:`lr_grid` (``{seed: pair}`` trained with the same settings, cut to
    ``epochs``); other keywords (``reduction``, ``gain``, ...) go to
    :func:`run_pair`.
    """
    return _sweep(data, "seed", seeds, epochs=epochs, reuse=reuse, lr=lr,
                  progress=progress, **pair_kw)


def format_spread(by_seed: dict, epochs=(1, 10), title: str = "") -> str:
    """A text table of :func:`seed_spread` results: the test accuracy (%) of each
    network after each of ``epochs``, one column per seed, and the range.

    A run that diverged before an epoch shows ``diverged`` there (and is left
    out of the range).
    """
    seeds = list(by_seed)
    head = f"{title:<22}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds) + f"{'range':>17}"
    lines = [head, "-" * len(head)]
    for name in LABELS:
        for e in epochs:
            accs = [by_seed[s][name].acc_at(e) if e <= len(by_seed[s][name].test_acc) else None
                    for s in seeds]
            cells = "".join(f"{_percent_or_state(a):>10}" for a in accs)
            ok = [100 * a for a in accs if a is not None and np.isfinite(a)]
            span = f"{min(ok):.2f}-{max(ok):.2f}" if ok else "-"
            lines.append(f"{name + ', epoch ' + str(e):<22}{cells}{span:>17}")
    return "\n".join(lines)


def _percent_or_state(acc) -> str:
    """An accuracy in % for a table cell: '-' if not run, 'diverged' if NaN."""
    if acc is None:
        return "-"
    return "diverged" if not np.isfinite(acc) else f"{100 * acc:.2f}"
