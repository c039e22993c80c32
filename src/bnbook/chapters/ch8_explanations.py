"""Chapter 8: measurements behind the explanations of why batch norm helps.

Each function measures one explanation of batch norm's success on a network
of :mod:`bnbook.layers` (a :class:`~bnbook.layers.Sequential`); none of them
changes the network: parameters and running statistics are put back.

* :func:`gradient_shift` -- internal covariate shift as Santurkar et al.
  (2018) define it: how much a layer's gradient changes when the layers
  before it take their SGD step; :class:`GradientShiftRecorder` measures it
  during training.
* :func:`along_gradient` -- the loss and the gradient along the gradient
  direction ("smoothness", "gradient predictiveness", effective beta).
* :func:`layer_statistics` -- per-layer saturation and gradient norms.
* :func:`feature_drift` and :class:`OutputRecorder` -- how far the
  distribution of a layer's output moves during training.
* :class:`NormRecorder` -- the norm and effective step of the weights that
  feed a batch norm (train with weight decay by giving ``fit`` an
  :class:`~bnbook.optimizers.SGD` with ``weight_decay``);
* :class:`NoisyAffine` and :func:`build_net` -- the "noisy batch norm"
  network of Santurkar et al. (2018): a random per-feature scale and shift,
  redrawn at every training step, after each batch norm.

Conventions: gradients are those of the mean cross-entropy over the batch,
computed in training mode (batch statistics); norms are Euclidean over all
entries of a parameter (Frobenius for matrices).
"""
from __future__ import annotations

import numpy as np

from ..layers import Layer, Linear, Sigmoid, Tanh, running_stats_kept
from ..losses import softmax_cross_entropy
from ..models import build_mlp
from ..normalization import BatchNorm1d

__all__ = [
    "GradientShiftRecorder",
    "NormRecorder",
    "OutputRecorder",
    "along_gradient",
    "feature_drift",
    "gradient_shift",
    "layer_statistics",
    "loss_and_gradients",
    "NoisyAffine",
    "build_net",
]


def _norm(a) -> float:
    return float(np.sqrt(np.sum(np.asarray(a, dtype=np.float64) ** 2)))


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / max(np.sqrt((a @ a) * (b @ b)), 1e-300))


def _layer_index(name: str) -> int:
    return int(name.split(".", 1)[0])


def loss_and_gradients(model, x, y):
    """Loss (float) and ``{name: gradient copy}`` of every parameter of ``model``
    for the batch ``x`` (m, d), ``y`` (m,), in training mode.

    Running statistics are left as they were.
    """
    with running_stats_kept(model):
        was_training = model.training
        model.train()
        logits = model.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits, need_input_grad=False)
        model.train(was_training)
    return loss, {name: g.copy() for name, _, g in model.params()}


def gradient_shift(model, x, y, lr: float, names) -> dict:
    """Internal covariate shift of the weights ``names`` (e.g. ``["3.W"]``), in
    the sense of Santurkar et al. (2018).

    ``G`` is the gradient of parameter ``name`` on the batch ``(x, y)``;
    ``G'`` is the same gradient after every parameter of the *earlier* layers
    (lower index in the Sequential) has taken the SGD step ``-lr * gradient``
    computed on the same batch, with the layer itself and later ones
    unchanged. Returns ``{name: (||G - G'|| / ||G||, cos(G, G'))}``. The model
    is restored afterwards.
    """
    _, grads = loss_and_gradients(model, x, y)
    params = {n: p for n, p, _ in model.params()}
    result = {}
    for name in names:
        k = _layer_index(name)
        earlier = [n for n in params if _layer_index(n) < k]
        saved = {n: params[n].copy() for n in earlier}
        for n in earlier:
            params[n] -= lr * grads[n]
        _, moved = loss_and_gradients(model, x, y)
        for n in earlier:
            params[n][...] = saved[n]
        g, g2 = grads[name], moved[name]
        result[name] = (_norm(g - g2) / max(_norm(g), 1e-300), _cosine(g, g2))
    return result


class GradientShiftRecorder:
    """A ``fit`` callback: :func:`gradient_shift` on a fixed batch at each call.

    After training, ``steps`` (n,), and ``rel[name]``, ``cos[name]`` (n,) as arrays.
    """

    def __init__(self, x, y, lr: float, names):
        self.x, self.y, self.lr, self.names = x, y, lr, list(names)
        self.steps = []
        self.rel = {n: [] for n in self.names}
        self.cos = {n: [] for n in self.names}

    def __call__(self, step, model):
        shift = gradient_shift(model, self.x, self.y, self.lr, self.names)
        self.steps.append(step)
        for n, (r, c) in shift.items():
            self.rel[n].append(r)
            self.cos[n].append(c)

    def arrays(self):
        """``(steps, rel, cos)`` with numpy arrays in place of lists."""
        return (np.array(self.steps), {n: np.array(v) for n, v in self.rel.items()},
                {n: np.array(v) for n, v in self.cos.items()})


def along_gradient(model, x, y, step_sizes) -> dict:
    """Loss and gradient at ``w - eta * g`` for each ``eta`` in ``step_sizes``,
    where ``w`` are all parameters and ``g`` their gradient on ``(x, y)``.

    Returns a dict with

    * ``loss0``, ``grad_norm``: loss and ``||g||`` at ``w``;
    * ``losses`` (k,): the loss at each step size;
    * ``grad_change`` (k,): ``||g(w - eta g) - g||``, the change of the gradient
      ("predictiveness": small means the gradient at ``w`` predicts the
      gradient a step away);
    * ``beta``: the effective smoothness constant
      ``max_eta ||g(w - eta g) - g|| / (eta ||g||)``, change of gradient per
      unit of distance moved.

    The model is restored afterwards.
    """
    loss0, g0 = loss_and_gradients(model, x, y)
    params = {n: p for n, p, _ in model.params()}
    saved = {n: p.copy() for n, p in params.items()}
    gnorm = np.sqrt(sum(_norm(g) ** 2 for g in g0.values()))
    losses, change = [], []
    for eta in step_sizes:
        for n, p in params.items():
            p -= eta * g0[n]
        loss, g = loss_and_gradients(model, x, y)
        for n, p in params.items():
            p[...] = saved[n]
        losses.append(loss)
        change.append(np.sqrt(sum(_norm(g[n] - g0[n]) ** 2 for n in g0)))
    losses, change = np.array(losses), np.array(change)
    beta = float(np.max(change / (np.asarray(step_sizes) * gnorm)))
    return {"loss0": float(loss0), "grad_norm": float(gnorm), "losses": losses,
            "grad_change": change, "beta": beta}


def _saturation(layer, out) -> np.ndarray:
    """|out| for tanh, |2 out - 1| for sigmoid: 1 at full saturation, 0 at the centre."""
    return np.abs(out) if isinstance(layer, Tanh) else np.abs(2.0 * out - 1.0)


def layer_statistics(model, x, y, threshold: float = 0.97) -> dict:
    """Per-layer statistics of one training-mode forward/backward pass.

    For each Tanh or Sigmoid layer (in order): ``saturated`` -- the fraction
    of its outputs within ``1 - threshold`` of a limit (``|tanh| > 0.97``, as in
    Karpathy's makemore part 3); ``act_std`` -- the std of its outputs;
    ``act_grad`` -- the root-mean-square of the loss gradient w.r.t. its
    outputs. For each Linear layer: ``weight_grad`` -- ``||dW||``. All lists of
    floats, first layer first. Running statistics are left as they were.
    """
    layers = model.layers
    stats = {"saturated": [], "act_std": [], "act_grad": [], "weight_grad": []}
    with running_stats_kept(model):
        h = x
        for layer in layers:
            h = layer.forward(h)
            if isinstance(layer, (Tanh, Sigmoid)):
                stats["saturated"].append(float(np.mean(_saturation(layer, h) > threshold)))
                stats["act_std"].append(float(np.std(h, dtype=np.float64)))
        _, dout = softmax_cross_entropy(h, y)
        act_grad = []
        for layer in reversed(layers):
            if isinstance(layer, (Tanh, Sigmoid)):
                act_grad.append(float(np.sqrt(np.mean(np.asarray(dout, np.float64) ** 2))))
            dout = layer.backward(dout)
        stats["act_grad"] = act_grad[::-1]
        stats["weight_grad"] = [_norm(layer.dW) for layer in layers if isinstance(layer, Linear)]
    return stats


def feature_drift(snapshots) -> float:
    """How far a layer's output distribution moves between snapshots.

    ``snapshots`` (t, m, d): the outputs for the same m inputs at t moments.
    For each pair of consecutive moments, the mean over features of ``|change
    of the feature's mean over the m inputs|``, divided by the average over
    features of their std at the earlier moment (one scale per layer, so
    features that are constant -- dead ReLUs -- do not blow it up); returns the
    mean over the pairs. 0 for a distribution that never moves.
    """
    s = np.asarray(snapshots, dtype=np.float64)
    if s.ndim != 3 or len(s) < 2:
        raise ValueError(f"snapshots must have shape (t >= 2, m, d); got {s.shape}")
    mean, std = s.mean(axis=1), s.std(axis=1)
    moves = np.abs(np.diff(mean, axis=0)).mean(axis=1) / np.maximum(std[:-1].mean(axis=1), 1e-12)
    return float(moves.mean())


class OutputRecorder:
    """A ``fit`` callback: the output of ``model.layers[:upto]`` for fixed
    inputs ``x`` (m, d), computed in training mode (as the next layer sees it
    during training; running statistics are left as they were).

    ``snapshots`` is a list of (m, features) arrays, one per call: the input
    of :func:`feature_drift`.
    """

    def __init__(self, x, upto: int):
        self.x, self.upto = x, int(upto)
        self.steps, self.snapshots = [], []

    def __call__(self, step, model):
        with running_stats_kept(model):
            h = self.x
            for layer in model.layers[:self.upto]:
                h = layer.forward(h)
        self.steps.append(step)
        self.snapshots.append(np.array(h, copy=True))


class NormRecorder:
    """A ``fit`` callback: the norm of each weight in
    ``names`` and its relative change since the previous call.

    ``norms[name]`` and ``rel_step[name]`` are lists; ``rel_step`` is
    ``||W_t - W_prev|| / ||W_prev||`` (NaN at the first call), the *effective*
    step: what matters for a weight whose scale the next batch norm removes.
    """

    def __init__(self, names):
        self.names = list(names)
        self.steps = []
        self.norms = {n: [] for n in self.names}
        self.rel_step = {n: [] for n in self.names}
        self._prev = {}

    def __call__(self, step, model):
        params = {n: p for n, p, _ in model.params()}
        self.steps.append(step)
        for n in self.names:
            w = params[n]
            prev = self._prev.get(n)
            self.norms[n].append(_norm(w))
            self.rel_step[n].append(np.nan if prev is None else _norm(w - prev) / _norm(prev))
            self._prev[n] = w.copy()


class NoisyAffine(Layer):
    """``out = s * x + b`` with a fresh random ``s``, ``b`` (d,) at every
    training-mode forward pass; the identity in eval mode.

    Per feature, ``b`` is uniform on ``[-shift, shift]`` and ``log s`` is
    uniform on ``[-log(scale), log(scale)]`` (so ``s`` lies between
    ``1/scale`` and ``scale``, with median 1). ``x`` (m, d) -> ``out`` (m, d).
    The noise has no parameters to learn; ``seed`` seeds its generator.
    """

    def __init__(self, num_features: int, shift: float = 1.0, scale: float = 2.0, seed=0):
        if not shift >= 0 or not scale >= 1:
            raise ValueError(f"need shift >= 0 and scale >= 1; got shift={shift!r}, scale={scale!r}")
        self.num_features = int(num_features)
        self.shift, self.scale = float(shift), float(scale)
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"NoisyAffine expects input of shape (m, {self.num_features}); "
                             f"got shape {x.shape}")
        if not self.training:
            self._saved = (None,)
            return x
        d = self.num_features
        log_scale = np.log(self.scale)
        s = np.exp(self.rng.uniform(-log_scale, log_scale, d)).astype(x.dtype)
        b = self.rng.uniform(-self.shift, self.shift, d).astype(x.dtype)
        self._saved = (s,)
        return s * x + b

    def backward(self, dout, need_input_grad: bool = True):
        (s,) = self._saved_for_backward()
        return dout if s is None else dout * s

    def __repr__(self) -> str:
        return f"NoisyAffine({self.num_features}, shift={self.shift}, scale={self.scale})"


def build_net(sizes, *, batchnorm: bool = False, activation: str = "relu", dropout: float = 0.0,
              noise: tuple | None = None, init: str | None = None, gain: float = 1.0,
              seed: int = 0, dtype=np.float32):
    """:func:`bnbook.models.build_mlp` with a :class:`NoisyAffine` after every
    batch norm: ``noise=(shift, scale)`` (needs ``batchnorm=True``); the k-th
    one's generator is seeded ``(seed, 1, k)``. Other arguments are build_mlp's.
    """
    if noise is not None and not batchnorm:
        raise ValueError("noise is added after batch norm: it needs batchnorm=True")
    if batchnorm and noise is not None:
        count = iter(range(len(sizes)))

        def batchnorm(width):
            return [BatchNorm1d(width, dtype=dtype), NoisyAffine(width, *noise, seed=(seed, 1, next(count)))]
    return build_mlp(sizes, batchnorm=batchnorm, activation=activation, init=init, gain=gain,
                     seed=seed, dtype=dtype, dropout=dropout)
