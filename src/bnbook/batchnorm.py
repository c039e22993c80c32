"""Batch normalization for fully connected layers (chapters 2-7).

Chapter 2 derives :func:`batchnorm_forward`, chapter 3 the two backward
passes, chapter 4 checks them numerically, chapter 5 uses the layer's
running statistics and :func:`fold_batchnorm`, and chapters 6 and 7 train
networks with :class:`BatchNorm1d`.

Shapes, used throughout: ``x`` is a mini-batch of shape ``(m, d)`` -- ``m``
samples, ``d`` features. Statistics are taken over the batch axis (axis 0), so
means, variances, ``gamma`` and ``beta`` all have shape ``(d,)``. The names
are the book's notation (``book/notation.md``): ``mu``, ``xc``, ``sq``,
``var``, ``v``, ``std``, ``inv_std``, ``xhat``, ``z``, ``y``.

Three levels of the same mathematics live here:

* :func:`batchnorm_forward` / :func:`batchnorm_backward` -- the functional
  form used in the derivations (training mode, batch statistics);
* :func:`batchnorm_backward_staged` -- the same gradient taken node by node
  through the computational graph, kept deliberately long for the book;
* :class:`BatchNorm1d` -- the layer, with running statistics and train/eval
  modes that follow ``torch.nn.BatchNorm1d``.

Chapter 7 adds ghost batch norm (:func:`ghost_batchnorm_forward` /
:func:`ghost_batchnorm_backward`, the layer's ``ghost_batch_size`` option):
the batch is cut into groups and each group normalized with its own statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _batchnorm_step
from .protocol import (NormLayer, check_batch, check_eps, check_finite, check_momentum,
                       check_param)

__all__ = [
    "BNCache",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_staged",
    "batchnorm_eval",
    "BatchNorm1d",
    "fold_batchnorm",
    "ghost_batchnorm_forward",
    "ghost_batchnorm_backward",
]


def _check_forward_args(x, gamma, beta, eps):
    """The arguments of a training-mode forward pass, checked: ``x`` (m, d)
    floating with m >= 2, ``gamma`` and ``beta`` finite (d,) in x's dtype."""
    x = check_batch(x)
    if x.shape[0] < 2:
        raise ValueError(
            f"batch norm in training mode needs a batch of at least 2 samples; "
            f"got x of shape {x.shape}. With one sample the batch variance is 0 "
            "and every output equals beta. Use eval mode for single samples, or drop "
            "/ merge the last partial batch."
        )
    d = x.shape[1]
    return x, check_param(gamma, d, "gamma", x.dtype), check_param(beta, d, "beta", x.dtype), check_eps(eps)


@dataclass
class BNCache:
    """What the forward pass keeps for the backward pass.

    Every array is named for the node of the computational graph it holds.
    ``x``, ``xc`` and ``xhat`` have shape ``(m, d)``; the others ``(d,)``.
    """

    x: np.ndarray  # input
    mu: np.ndarray  # 1. batch mean
    xc: np.ndarray  # 2. centred input x - mu
    var: np.ndarray  # 4. biased batch variance mean(xc**2)
    std: np.ndarray  # 6. sqrt(var + eps)
    inv_std: np.ndarray  # 7. 1 / std
    xhat: np.ndarray  # 8. normalized input xc * inv_std
    gamma: np.ndarray  # scale
    beta: np.ndarray  # shift
    eps: float


def batchnorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Training-mode batch norm with the statistics of the batch itself.

    Parameters
    ----------
    x : array of shape (m, d), m >= 2. Integer input is computed in float64;
        float32 input stays float32.
    gamma, beta : arrays of shape (d,).
    eps : positive float added to the (biased) variance.

    Returns
    -------
    out : array of shape (m, d), ``gamma * (x - mu) / sqrt(var + eps) + beta``.
    cache : :class:`BNCache` for :func:`batchnorm_backward`.

    Raises :class:`~bnbook.protocol.NonFiniteError` (a ValueError) if a
    feature's variance is NaN or inf (non-finite or overflowing input).
    """
    x, gamma, beta, eps = _check_forward_args(x, gamma, beta, eps)
    m = x.shape[0]

    mu = x.sum(axis=0) / m      # 1 mean      mu = (1/m) sum_i x_i
    xc = x - mu                 # 2 centre    c_i = x_i - mu
    sq = xc ** 2                # 3 square    q_i = c_i^2
    var = sq.sum(axis=0) / m    # 4 variance  sigma^2 = (1/m) sum_i q_i  (biased)
    check_finite(var, ", or values so large that their variance overflows, in feature(s)")
    v = var + eps               # 5 add eps   v = sigma^2 + eps
    std = np.sqrt(v)            # 6 root      s = sqrt(v)
    inv_std = 1.0 / std         # 7 invert    r = 1 / s
    xhat = xc * inv_std         # 8 normalize xhat_i = c_i r
    z = gamma * xhat            # 9 scale     z_i = gamma xhat_i
    y = z + beta                # 10 shift    y_i = z_i + beta
    return y, BNCache(x, mu, xc, var, std, inv_std, xhat, gamma, beta, eps)


def _check_dout(dout, cache: BNCache) -> np.ndarray:
    dout = np.asarray(dout)
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of x {cache.xhat.shape}; got {dout.shape}"
        )
    return dout if dout.dtype.kind == "f" else dout.astype(np.float64)


def batchnorm_backward(dout, cache: BNCache):
    """Gradients of batch norm, compact closed form.

    ``dx = gamma / (m * s) * (m * dout - sum(dout) - xhat * sum(dout * xhat))``
    with sums over the batch axis and ``s = sqrt(var + eps)``.

    Parameters
    ----------
    dout : array of shape (m, d), the gradient of the loss w.r.t. the output.
    cache : from :func:`batchnorm_forward`.

    Returns
    -------
    dx : (m, d);  dgamma : (d,);  dbeta : (d,).
    """
    dout = _check_dout(dout, cache)
    m = dout.shape[0]
    xhat, gamma, inv_std = cache.xhat, cache.gamma, cache.inv_std
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / m) * (m * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def batchnorm_backward_staged(dout, cache: BNCache):
    """Gradients of batch norm by the chain rule, one line per graph node.

    The forward graph, in order (the book's notation)::

        1 mu = mean(x)          6 std = sqrt(v)
        2 xc = x - mu           7 inv_std = 1 / std
        3 sq = xc ** 2          8 xhat = xc * inv_std
        4 var = mean(sq)        9 z = gamma * xhat
        5 v = var + eps        10 y = z + beta   (the output; its gradient is dout)

    The backward pass visits the nodes in reverse. Same shapes and return
    values as :func:`batchnorm_backward`.
    """
    dout = _check_dout(dout, cache)
    m = dout.shape[0]
    x, xc, xhat = cache.x, cache.xc, cache.xhat
    std, inv_std, gamma = cache.std, cache.inv_std, cache.gamma

    dbeta = dout.sum(axis=0)                     # 10  y = z + beta
    dz = dout                                    # 10  (z passes dout on unchanged)
    dgamma = (dz * xhat).sum(axis=0)             # 9   z = gamma * xhat
    dxhat = dz * gamma                           # 9
    dinv_std = (dxhat * xc).sum(axis=0)          # 8   xhat = xc * inv_std
    dxc_direct = dxhat * inv_std                 # 8   (first path into xc)
    dstd = -dinv_std / std**2                    # 7   inv_std = 1 / std
    dv = 0.5 * dstd / std                        # 6   std = sqrt(v)
    dvar = dv                                    # 5   v = var + eps
    dsq = np.broadcast_to(dvar / m, x.shape)     # 4   var = mean(sq)
    dxc_square = 2.0 * xc * dsq                  # 3   sq = xc ** 2 (second path)
    dxc = dxc_direct + dxc_square                # the two paths into xc add up
    dmu = -dxc.sum(axis=0)                       # 2   xc = x - mu
    dx_direct = dxc                              # 2   (first path into x)
    dx_mean = np.broadcast_to(dmu / m, x.shape)  # 1   mu = mean(x) (second path)
    dx = dx_direct + dx_mean
    return dx, dgamma, dbeta


def batchnorm_eval(x, gamma, beta, mean, var, eps: float = 1e-5):
    """Inference-mode batch norm with fixed statistics.

    ``x`` of shape (m, d) with any m >= 1; ``gamma, beta, mean, var`` of shape
    (d,). Returns ``gamma * (x - mean) / sqrt(var + eps) + beta``, shape (m, d),
    computed as ``x * scale + (beta - mean * scale)`` with
    ``scale = gamma / sqrt(var + eps)``.
    """
    x = check_batch(x)
    d = x.shape[1]
    gamma = check_param(gamma, d, "gamma", x.dtype)
    beta = check_param(beta, d, "beta", x.dtype)
    mean = check_param(mean, d, "mean", x.dtype)
    var = check_param(var, d, "var", x.dtype)
    eps = check_eps(eps)
    scale = gamma / np.sqrt(var + eps)
    out = x * scale + (beta - mean * scale)
    check_finite(out, " in sample(s)")
    return out


def _check_group_size(group_size) -> int:
    """A ghost-batch (group) size: an int >= 2."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ValueError(f"ghost_batch_size must be an int >= 2 or None; got {group_size!r}")
    if group_size < 2:
        raise ValueError(
            f"ghost_batch_size must be at least 2 (a group of one sample has variance 0 and "
            f"every output equals beta); got {group_size}"
        )
    return int(group_size)


def ghost_batchnorm_forward(x, gamma, beta, group_size: int, eps: float = 1e-5):
    """Ghost batch norm (Hoffer et al., 2017): each group of ``group_size``
    consecutive rows is normalized with its own statistics.

    Group ``k`` holds rows ``k * g, ..., (k + 1) * g - 1`` (``g = group_size``);
    its output is ``batchnorm_forward(x[k * g:(k + 1) * g], gamma, beta, eps)``.
    The arithmetic is that of :func:`batchnorm_forward` along a group axis.

    Parameters
    ----------
    x : array of shape (m, d), with m a multiple of ``group_size``.
    gamma, beta : arrays of shape (d,).
    group_size : int >= 2.
    eps : positive float.

    Returns
    -------
    out : array of shape (m, d).
    cache : a :class:`BNCache` whose nodes carry a leading group axis:
        ``x``, ``xc``, ``xhat`` of shape (m // g, g, d); ``mu``, ``var``,
        ``std``, ``inv_std`` of shape (m // g, 1, d) (one row per group).
    """
    x, gamma, beta, eps = _check_forward_args(x, gamma, beta, eps)
    g = _check_group_size(group_size)
    m, d = x.shape
    if m % g:
        raise ValueError(
            f"ghost batch norm needs a batch whose size is a multiple of ghost_batch_size={g}; "
            f"got a batch of {m} rows ({m} = {m // g} * {g} + {m % g})"
        )
    xg = x.reshape(m // g, g, d)                # group k: rows k*g ... (k+1)*g - 1
    mu = xg.sum(axis=1, keepdims=True) / g      # 1 mean of each group
    xc = xg - mu                                # 2 centre
    sq = xc ** 2                                # 3 square
    var = sq.sum(axis=1, keepdims=True) / g     # 4 biased variance of each group
    check_finite(var, ", or values so large that their variance overflows, in group(s)")
    std = np.sqrt(var + eps)                    # 5, 6
    inv_std = 1.0 / std                         # 7
    xhat = xc * inv_std                         # 8
    y = gamma * xhat + beta                     # 9, 10
    return y.reshape(m, d), BNCache(xg, mu, xc, var, std, inv_std, xhat, gamma, beta, eps)


def ghost_batchnorm_backward(dout, cache: BNCache):
    """Gradients of :func:`ghost_batchnorm_forward`: the backward of
    :func:`batchnorm_backward` in each group, with that group's sums.

    ``dx = gamma / (g * s_k) * (g * dout - sum_k(dout) - xhat * sum_k(dout * xhat))``
    where ``sum_k`` runs over the g rows of the row's group k; ``dgamma`` and
    ``dbeta`` add up over all m rows (gamma and beta are shared).

    Parameters
    ----------
    dout : array of shape (m, d).
    cache : from :func:`ghost_batchnorm_forward`.

    Returns
    -------
    dx : (m, d);  dgamma : (d,);  dbeta : (d,).
    """
    k, g, d = cache.xhat.shape
    dout = np.asarray(dout)
    if dout.shape != (k * g, d):
        raise ValueError(f"dout must have the shape of x {(k * g, d)}; got {dout.shape}")
    if dout.dtype.kind != "f":
        dout = dout.astype(np.float64)
    dout = dout.reshape(k, g, d)
    xhat, gamma, inv_std = cache.xhat, cache.gamma, cache.inv_std
    dbeta_k = dout.sum(axis=1, keepdims=True)              # (k, 1, d): per group
    dgamma_k = (dout * xhat).sum(axis=1, keepdims=True)    # (k, 1, d)
    dx = (gamma * inv_std / g) * (g * dout - dbeta_k - xhat * dgamma_k)
    return dx.reshape(k * g, d), dgamma_k.sum(axis=(0, 1)), dbeta_k.sum(axis=(0, 1))


class BatchNorm1d(NormLayer):
    """Batch norm layer for (m, d) inputs, with the semantics of torch.nn.BatchNorm1d.

    * training mode (default): normalize with the batch mean and *biased*
      batch variance; count the batch in ``num_batches_tracked`` and update
      ``running = (1 - momentum) * running + momentum * batch`` with the
      *unbiased* batch variance ``m / (m - 1) * var``.
    * ``momentum=None``: a cumulative average instead of an exponential one,
      as torch's ``momentum=None``: the factor is ``1 / num_batches_tracked``
      in place of ``momentum``, so after k batches the running statistics are
      the plain mean of the k batch statistics (the first batch replaces the
      initial zeros and ones entirely; chapter 5 compares the two averages).
    * eval mode: normalize with ``running_mean`` and ``running_var``.

    Attributes: ``gamma`` (ones), ``beta`` (zeros), ``running_mean`` (zeros),
    ``running_var`` (ones), all of shape (d,) and of the layer's ``dtype``;
    ``num_batches_tracked`` (int, 0), the number of training-mode forward
    passes (counted whatever the momentum, as torch does);
    after :meth:`backward`, ``dgamma`` and ``dbeta`` of shape (d,). Input of
    another dtype is refused (as torch does): a float64 batch would otherwise
    be normalized in float64 but leave float32 running statistics.

    A training step computes exactly :func:`batchnorm_forward` and
    :func:`batchnorm_backward` (the same bits), in arrays the layer keeps
    from step to step (``bnbook._batchnorm_step``: fresh arrays every step
    cost page faults; ``benchmarks/batchnorm_kernels.py`` measures it).

    Two options reproduce other code's conventions (chapter 6 replicates the
    "10 Days of Grad" article's code with them); the defaults are torch's:

    * ``param_grads="sum"`` stores ``m`` times the gradients of ``gamma`` and
      ``beta`` (an (m, d) batch): the gradient of the loss summed over the
      batch, while ``dx`` stays that of the loss as given. With a loss
      averaged over the batch this is what the article's code does (it
      averages the Linear layers' gradients but sums batch norm's), and it
      amounts to a learning rate ``m`` times larger for ``gamma`` and ``beta``.
    * ``unbiased_running_var=False`` feeds the biased batch variance (the one
      used to normalize) into ``running_var`` instead of ``m / (m - 1)`` times it.

    Ghost batch norm (Hoffer et al., 2017; chapter 7): with
    ``ghost_batch_size=g`` a training-mode batch of m rows (m a multiple of g)
    is cut into m // g groups of g consecutive rows, and each group is
    normalized with its own mean and biased variance
    (:func:`ghost_batchnorm_forward`); the backward is the per-group backward
    (:func:`ghost_batchnorm_backward`). The running averages are updated once
    per group, in order, each group counting as a batch of g rows (unbiased
    variance ``g / (g - 1) * var``): exactly what calling the layer without
    the option on each group in turn would do, which is how torch code
    commonly implements it (``torch.split`` into chunks, one
    ``nn.BatchNorm1d`` call per chunk). With m // g groups per step the
    averages thus forget m // g times faster per SGD step than at
    ``ghost_batch_size=None``. Eval mode is unchanged. A batch whose size is
    not a multiple of g, or a g below 2, is refused with a ValueError.
    ``ghost_batch_size=None`` (the default) is the plain layer, bit for bit.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 dtype=np.float32, param_grads: str = "mean",
                 unbiased_running_var: bool = True, ghost_batch_size: int | None = None):
        super().__init__(num_features, eps, dtype)
        self.momentum = check_momentum(momentum, allow_none=True)
        if param_grads not in ("mean", "sum"):
            raise ValueError(f"param_grads must be 'mean' or 'sum'; got {param_grads!r}")
        self.param_grads = param_grads
        self.unbiased_running_var = bool(unbiased_running_var)
        self.running_mean = np.zeros(self.num_features, dtype=self.dtype)
        self.running_var = np.ones(self.num_features, dtype=self.dtype)
        self.num_batches_tracked = 0
        self._buffers = _batchnorm_step.StepBuffers()
        self.ghost_batch_size = ghost_batch_size

    @property
    def ghost_batch_size(self) -> int | None:
        """Rows per normalization group in training mode (None: the whole batch)."""
        return self._ghost_batch_size

    @ghost_batch_size.setter
    def ghost_batch_size(self, value) -> None:
        self._ghost_batch_size = None if value is None else _check_group_size(value)

    def forward(self, x):
        """Normalize a batch ``x`` of shape (m, num_features) of the layer's
        dtype; returns (m, num_features)."""
        x = self._check_input(x)
        if x.dtype != self.dtype:
            raise ValueError(
                f"x has dtype {x.dtype} but this BatchNorm1d holds {self.dtype} parameters "
                f"and running statistics; convert x with x.astype(np.{self.dtype}) or build "
                f"the layer with dtype=np.{x.dtype}"
            )
        if not self.training:
            self._cache = None
            return batchnorm_eval(x, self.gamma, self.beta, self.running_mean,
                                  self.running_var, self.eps)
        if self.ghost_batch_size is not None:
            return self._ghost_forward(x)
        # batchnorm_forward, with its (m, d) nodes in this layer's buffers
        x, gamma, beta, eps = _check_forward_args(x, self.gamma, self.beta, self.eps)
        out, nodes = _batchnorm_step.forward(x, gamma, beta, eps, self._buffers)
        cache = BNCache(x, *nodes, gamma, beta, eps)
        self._update_running_stats(cache.mu, cache.var, m=x.shape[0])
        self._cache = cache
        return out

    def _ghost_forward(self, x):
        """Training-mode forward with ghost batches: per-group statistics, and one
        running-average update per group, in order (see the class docstring)."""
        out, cache = ghost_batchnorm_forward(x, self.gamma, self.beta, self.ghost_batch_size, self.eps)
        g = self.ghost_batch_size
        for mu, var in zip(cache.mu[:, 0], cache.var[:, 0]):
            self._update_running_stats(mu, var, m=g)
        self._cache = cache
        return out

    def _update_running_stats(self, mu, var, m: int) -> None:
        """Count the batch; then ``running = (1 - f) * running + f * batch``, in
        place, with ``f = momentum``, or ``1 / num_batches_tracked`` (the
        cumulative average) when momentum is None."""
        self.num_batches_tracked += 1
        mom = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        correction = m / (m - 1) if self.unbiased_running_var else 1.0
        self.running_mean *= 1.0 - mom
        self.running_mean += mom * mu
        self.running_var *= 1.0 - mom
        self.running_var += (mom * correction) * var

    def backward(self, dout, need_input_grad: bool = True):
        """Backward of the last training-mode forward; returns dx of shape (m, d)
        and stores ``dgamma`` and ``dbeta`` (in place). ``need_input_grad`` is
        accepted for the protocol; dx is always computed."""
        if self._cache is None:
            raise RuntimeError(
                "backward() needs a forward() in training mode first "
                "(eval mode keeps no cache: its statistics are constants)"
            )
        c = self._cache
        if c.xhat.ndim == 3:                   # the last forward used ghost batches
            dx, dgamma, dbeta = ghost_batchnorm_backward(dout, c)
        else:  # batchnorm_backward, with its intermediate in a buffer of this layer
            dx, dgamma, dbeta = _batchnorm_step.backward(_check_dout(dout, c), c.xhat, c.gamma,
                                                         c.inv_std, self._buffers)
        if self.param_grads == "sum":
            m = dx.shape[0]
            dgamma, dbeta = m * dgamma, m * dbeta
        self.dgamma[...] = dgamma
        self.dbeta[...] = dbeta
        return dx

    def __repr__(self) -> str:
        extra = "" if self.param_grads == "mean" else f", param_grads={self.param_grads!r}"
        if self.ghost_batch_size is not None:
            extra += f", ghost_batch_size={self.ghost_batch_size}"
        if not self.unbiased_running_var:
            extra += ", unbiased_running_var=False"
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        return (f"BatchNorm1d({self.num_features}, eps={self.eps:g}, "
                f"momentum={momentum}{extra})")


def fold_batchnorm(weight, bias, bn: BatchNorm1d):
    """Fold an eval-mode batch norm into the linear layer before it.

    The pair ``x -> x @ weight + bias -> bn`` (eval mode) is one affine map
    ``x -> x @ w_folded + b_folded``.

    Parameters
    ----------
    weight : (d_in, d) weight of the linear layer (``y = x @ weight + bias``).
    bias : (d,) or None (a bias-free layer).
    bn : a :class:`BatchNorm1d` with ``num_features == d``.

    Returns
    -------
    w_folded : (d_in, d);  b_folded : (d,).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[1] != bn.num_features:
        raise ValueError(
            f"weight must have shape (d_in, {bn.num_features}); got {weight.shape}"
        )
    scale = bn.gamma / np.sqrt(bn.running_var + bn.eps)
    b = np.zeros(bn.num_features, dtype=weight.dtype) if bias is None else np.asarray(bias)
    w_folded = weight * scale
    b_folded = (b - bn.running_mean) * scale + bn.beta
    return w_folded.astype(weight.dtype, copy=False), b_folded.astype(weight.dtype, copy=False)
