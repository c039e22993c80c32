"""Batch normalization for fully connected layers.

Shapes, used throughout: ``x`` is a mini-batch of shape ``(m, d)`` -- ``m``
samples, ``d`` features. Statistics are taken over the batch axis (axis 0), so
means, variances, ``gamma`` and ``beta`` all have shape ``(d,)``.

Three levels of the same mathematics live here:

* :func:`batchnorm_forward` / :func:`batchnorm_backward` -- the functional
  form used in the derivations (training mode, batch statistics);
* :func:`batchnorm_backward_staged` -- the same gradient taken node by node
  through the computational graph, kept deliberately long for the book;
* :class:`BatchNorm1d` -- the layer, with running statistics and train/eval
  modes that follow ``torch.nn.BatchNorm1d``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "BNCache",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_staged",
    "batchnorm_eval",
    "BatchNorm1d",
    "fold_batchnorm",
]


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------
def _as_float(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a floating array (integers and bools become float64)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":  # dtype.kind: same test as np.issubdtype, 10x cheaper
        x = x.astype(np.float64)
    return x


def _check_batch(x, name: str = "x", training: bool = True) -> np.ndarray:
    x = _as_float(x)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (m, d) (batch, features); got shape {x.shape}"
        )
    if training and x.shape[0] < 2:
        raise ValueError(
            f"batch norm in training mode needs a batch of at least 2 samples; "
            f"got {name} of shape {x.shape}. With one sample the batch variance is 0 "
            "and every output equals beta. Use eval mode for single samples, or drop "
            "/ merge the last partial batch."
        )
    return x


def _check_param(p, d: int, name: str, dtype) -> np.ndarray:
    p = np.asarray(p)
    if p.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},) to match x; got shape {p.shape}")
    if not np.isfinite(p).all():  # the method skips np.all's Python wrapper
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return p.astype(dtype, copy=False)


def _check_eps(eps: float) -> float:
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    return float(eps)


def _check_finite_stats(var: np.ndarray, name: str = "x") -> None:
    # A NaN or inf anywhere in x makes its column's variance NaN or inf, so
    # checking the (d,) vector is enough and costs nothing next to the batch.
    if not np.isfinite(var).all():
        bad = np.flatnonzero(~np.isfinite(var))
        raise ValueError(
            f"{name} contains non-finite values (NaN or inf), or values so large "
            f"that their variance overflows, in feature(s) {bad[:10].tolist()}"
        )


# --------------------------------------------------------------------------
# one (d,) vector against every row of an (m, d) batch, at full speed
# --------------------------------------------------------------------------
_BUFSIZE = 8192  # elements in a buffer of NumPy's iterator: np.getbufsize()'s default


@lru_cache(maxsize=256)
def _rows_per_loop(m: int, d: int) -> int:
    """How many rows of an (m, d) array :func:`_rowwise` joins into one: the
    fewest (a divisor k of m) that make a row of at least ``_BUFSIZE``
    elements, or 1 where that would take more than a quarter of the batch."""
    if d >= _BUFSIZE:
        return 1
    for k in range(2, m // 4 + 1):
        if m % k == 0 and k * d >= _BUFSIZE:
            return k
    return 1


def _rowwise(ufunc, a: np.ndarray, v: np.ndarray, out=None) -> np.ndarray:
    """``ufunc(a, v, out=out)`` for ``a`` of shape (m, d) and ``v`` of shape (d,).

    The same operations, so the same bits, as NumPy's broadcasting, but faster
    on large batches. NumPy 2.4 passes a broadcast (d,) operand through its
    iterator's buffers and refills them row after row when a row is shorter
    than a buffer (8192 elements; numpy/numpy#13307): at (256, 1024) such an
    operation takes about 1.5 times as long as one between two full arrays
    (``benchmarks/batchnorm_kernels.py`` times both). Here k consecutive rows
    are viewed as one row of length k*d, against ``v`` repeated k times: rows
    long enough to need no buffer. Arrays under four buffers (where the
    repeat costs what it saves) and arrays that are not C-contiguous take
    the plain broadcast.
    """
    # the size test first: it is cheap, and the book's training batches end there
    k = 1 if a.size < 4 * _BUFSIZE else _rows_per_loop(*a.shape)
    if k == 1 or not a.flags.c_contiguous or (out is not None and not out.flags.c_contiguous):
        return ufunc(a, v, out=out)
    m, d = a.shape
    if out is None:
        out = np.empty(a.shape, dtype=np.result_type(a, v))
    v_rows = np.empty((k, d), dtype=v.dtype)
    v_rows[...] = v
    ufunc(a.reshape(m // k, k * d), v_rows.reshape(k * d), out=out.reshape(m // k, k * d))
    return out


# --------------------------------------------------------------------------
# functional form
# --------------------------------------------------------------------------
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
    """
    x = _check_batch(x)
    m, d = x.shape
    gamma = _check_param(gamma, d, "gamma", x.dtype)
    beta = _check_param(beta, d, "beta", x.dtype)
    eps = _check_eps(eps)
    return _normalize(x, gamma, beta, eps)


def _normalize(x, gamma, beta, eps, xc=None, xhat=None):
    """The arithmetic of :func:`batchnorm_forward`, on checked arguments.

    ``xc`` and ``xhat``, if given, are arrays of x's shape and dtype that
    receive those nodes (the layer reuses them from step to step); ``None``
    allocates new ones. Returns ``(out, cache)``.
    """
    m = x.shape[0]
    mu = x.sum(axis=0) / m  # the mean; sum / m skips np.mean's Python wrapper (same bits)
    xc = _rowwise(np.subtract, x, mu, out=xc)  # x - mu
    var = np.einsum("ij,ij->j", xc, xc) / m  # biased: divide by m
    _check_finite_stats(var)
    std = np.sqrt(var + eps)
    inv_std = 1.0 / std
    xhat = _rowwise(np.multiply, xc, inv_std, out=xhat)  # xc * inv_std
    out = _rowwise(np.multiply, xhat, gamma)  # gamma * xhat + beta
    _rowwise(np.add, out, beta, out=out)
    return out, BNCache(x, mu, xc, var, std, inv_std, xhat, gamma, beta, eps)


def _check_dout(dout, cache: BNCache) -> np.ndarray:
    dout = _as_float(dout)
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of x {cache.xhat.shape}; got {dout.shape}"
        )
    return dout


def batchnorm_backward(dout, cache: BNCache):
    """Gradients of batch norm, compact closed form.

    ``dx = gamma / (m * sigma) * (m * dout - sum(dout) - xhat * sum(dout * xhat))``
    with sums over the batch axis.

    Parameters
    ----------
    dout : array of shape (m, d), the gradient of the loss w.r.t. the output.
    cache : from :func:`batchnorm_forward`.

    Returns
    -------
    dx : (m, d);  dgamma : (d,);  dbeta : (d,).
    """
    dout = _check_dout(dout, cache)
    return _compact_backward(dout, cache)


def _compact_backward(dout, cache: BNCache, t=None):
    """The arithmetic of :func:`batchnorm_backward`, on a checked ``dout``.

    ``t``, if given, is an array of dout's shape and dtype for the
    intermediate ``m * dout - dbeta`` (the layer reuses it from step to step).
    """
    m = dout.shape[0]
    xhat = cache.xhat
    dbeta = dout.sum(axis=0)
    dgamma = np.einsum("ij,ij->j", dout, xhat)
    # dx = (gamma * inv_std / m) * (m * dout - dbeta - xhat * dgamma), evaluated
    # in the same order (same rounding, same dtype) in place: one new (m, d)
    # array instead of five (fresh large arrays cost page faults)
    dx = _rowwise(np.multiply, xhat, dgamma)  # xhat * dgamma
    t = np.multiply(dout, m, out=t)  # m * dout
    _rowwise(np.subtract, t, dbeta, out=t)  # - dbeta
    np.subtract(t, dx, out=dx)
    _rowwise(np.multiply, dx, cache.gamma * cache.inv_std / m, out=dx)
    return dx, dgamma, dbeta


def batchnorm_backward_staged(dout, cache: BNCache):
    """Gradients of batch norm by the chain rule, one line per graph node.

    The forward graph, in order::

        1 mu = mean(x)          6 std = sqrt(v)
        2 xc = x - mu           7 inv = 1 / std
        3 sq = xc ** 2          8 xhat = xc * inv
        4 var = mean(sq)        9 y = gamma * xhat
        5 v = var + eps        10 out = y + beta

    The backward pass visits the nodes in reverse. Same shapes and return
    values as :func:`batchnorm_backward`.
    """
    dout = _check_dout(dout, cache)
    m = dout.shape[0]
    x, xc, xhat = cache.x, cache.xc, cache.xhat
    std, inv, gamma = cache.std, cache.inv_std, cache.gamma

    dbeta = dout.sum(axis=0)                     # 10  out = y + beta
    dy = dout                                    # 10  (y passes dout on unchanged)
    dgamma = (dy * xhat).sum(axis=0)             # 9   y = gamma * xhat
    dxhat = dy * gamma                           # 9
    dinv = (dxhat * xc).sum(axis=0)              # 8   xhat = xc * inv
    dxc_direct = dxhat * inv                     # 8   (first path into xc)
    dstd = -dinv / std**2                        # 7   inv = 1 / std
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
    (d,). Returns ``gamma * (x - mean) / sqrt(var + eps) + beta``, shape (m, d).
    """
    x = _check_batch(x, training=False)
    d = x.shape[1]
    gamma = _check_param(gamma, d, "gamma", x.dtype)
    beta = _check_param(beta, d, "beta", x.dtype)
    mean = _check_param(mean, d, "mean", x.dtype)
    var = _check_param(var, d, "var", x.dtype)
    eps = _check_eps(eps)
    scale = gamma / np.sqrt(var + eps)
    out = _rowwise(np.multiply, x, scale)  # x * scale
    _rowwise(np.add, out, beta - mean * scale, out=out)
    if not np.all(np.isfinite(out)):
        raise ValueError("x contains non-finite values (NaN or inf)")
    return out


# --------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------
class BatchNorm1d:
    """Batch norm layer for (m, d) inputs, with the semantics of torch.nn.BatchNorm1d.

    * training mode (default): normalize with the batch mean and *biased*
      batch variance; update ``running = (1 - momentum) * running +
      momentum * batch`` with the *unbiased* batch variance ``m / (m - 1) * var``.
    * eval mode: normalize with ``running_mean`` and ``running_var``.

    Attributes: ``gamma`` (ones), ``beta`` (zeros), ``running_mean`` (zeros),
    ``running_var`` (ones), all of shape (d,); after :meth:`backward`,
    ``dgamma`` and ``dbeta`` of shape (d,).

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
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32, param_grads: str = "mean",
                 unbiased_running_var: bool = True):
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features must be a positive integer; got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}")
        if param_grads not in ("mean", "sum"):
            raise ValueError(f"param_grads must be 'mean' or 'sum'; got {param_grads!r}")
        self.param_grads = param_grads
        self.unbiased_running_var = bool(unbiased_running_var)
        d = int(num_features)
        self.num_features = d
        self.eps = _check_eps(eps)
        self.momentum = float(momentum)
        self.dtype = np.dtype(dtype)
        self.gamma = np.ones(d, dtype=self.dtype)
        self.beta = np.zeros(d, dtype=self.dtype)
        self.dgamma = np.zeros_like(self.gamma)
        self.dbeta = np.zeros_like(self.beta)
        self.running_mean = np.zeros(d, dtype=self.dtype)
        self.running_var = np.ones(d, dtype=self.dtype)
        self.training = True
        self._cache: BNCache | None = None
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, like: np.ndarray) -> np.ndarray:
        """An array of ``like``'s shape and dtype kept from step to step.

        The (m, d) intermediates of a step live in these instead of fresh
        arrays: for large batches, new arrays every step cost page faults
        (the OS hands out zeroed memory), about a quarter of the time.
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._buffers[name] = np.empty_like(like)
        return buf

    # mode switches, as in torch
    def train(self, mode: bool = True) -> "BatchNorm1d":
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm1d":
        return self.train(False)

    # parameters as (name, value, gradient) for the optimizer
    def params(self):
        return [("gamma", self.gamma, self.dgamma), ("beta", self.beta, self.dbeta)]

    def forward(self, x):
        """Normalize a batch ``x`` of shape (m, num_features); returns (m, num_features)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected x of shape (m, {self.num_features}); got shape {x.shape}"
            )
        if not self.training:
            self._cache = None
            return batchnorm_eval(x, self.gamma, self.beta, self.running_mean,
                                  self.running_var, self.eps)
        # batchnorm_forward, with the cached nodes xc and xhat written into this
        # layer's buffers (over the previous step's, which backward is done with)
        x = _check_batch(x)
        m, d = x.shape
        gamma = _check_param(self.gamma, d, "gamma", x.dtype)
        beta = _check_param(self.beta, d, "beta", x.dtype)
        eps = _check_eps(self.eps)
        out, cache = _normalize(x, gamma, beta, eps,
                                xc=self._buffer("xc", x), xhat=self._buffer("xhat", x))
        mom = self.momentum
        self.running_mean *= 1.0 - mom
        self.running_mean += mom * cache.mu
        self.running_var *= 1.0 - mom
        correction = m / (m - 1) if self.unbiased_running_var else 1.0
        self.running_var += (mom * correction) * cache.var
        self._cache = cache
        return out

    __call__ = forward

    def backward(self, dout):
        """Backward of the last training-mode forward; returns dx of shape (m, d)
        and stores ``dgamma`` and ``dbeta`` (in place)."""
        if self._cache is None:
            raise RuntimeError(
                "backward() needs a forward() in training mode first "
                "(eval mode keeps no cache: its statistics are constants)"
            )
        dout = _check_dout(dout, self._cache)
        # batchnorm_backward, with its intermediate in a buffer of this layer
        dx, dgamma, dbeta = _compact_backward(dout, self._cache, t=self._buffer("t", dout))
        if self.param_grads == "sum":
            m = dout.shape[0]
            dgamma, dbeta = m * dgamma, m * dbeta
        self.dgamma[...] = dgamma
        self.dbeta[...] = dbeta
        return dx

    def __repr__(self) -> str:
        extra = "" if self.param_grads == "mean" else f", param_grads={self.param_grads!r}"
        if not self.unbiased_running_var:
            extra += ", unbiased_running_var=False"
        return (f"BatchNorm1d({self.num_features}, eps={self.eps:g}, "
                f"momentum={self.momentum:g}{extra})")


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
