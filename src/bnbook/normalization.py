"""The normalization kernel, and every normalization layer built on it.

One operation, :func:`normalize`, subtracts the mean and divides by
``sqrt(var + eps)``, with the mean and the biased variance taken over a
chosen set of axes; :func:`normalize_backward` is its gradient. The layers
differ only in the array they hand it and the axes they name:

==================  ===================================  ========================
layer               array given to the kernel            statistics over
==================  ===================================  ========================
``BatchNorm1d``     x (m, d)                             axis 0: the batch
  ghost batches     x viewed as (m / g, g, d)            axis 1: each group of g
``BatchNorm2d``     x viewed as (N*H*W, C)               axis 0 (``BatchNorm1d``)
``LayerNorm``       x (m, d)                             axis 1: each sample
``GroupNorm``       x viewed as (N, G, C/G, H*W)         axes 2, 3
``LayerNorm2d``     group norm with G = 1                (C, H, W) of each sample
``InstanceNorm2d``  group norm with G = C                (H, W) of each sample
==================  ===================================  ========================

Each layer then applies a learned per-feature (per-channel) scale ``gamma``
and shift ``beta``. The batch norms keep running averages of the batch
statistics with ``torch.nn.BatchNorm1d``'s rules and normalize with them in
eval mode; :func:`fold_batchnorm` folds an eval-mode batch norm into the
linear or convolutional layer before it, and
:func:`recompute_bn_statistics` replaces the running averages by population
statistics. :class:`FrozenBatchNorm1d` is a batch norm turned into a fixed
affine map.

Chapter 2 derives the kernel node by node (:mod:`bnbook.batchnorm`); every
chapter that builds a batch-norm network uses :class:`BatchNorm1d` (1-8),
chapter 5 its running statistics and folding, chapter 7 ghost batches,
layer norm and frozen layers, chapter 9 the image layers.

Speed: a training step of :class:`BatchNorm1d` passes the kernel a
workspace, a few arrays the layer keeps from step to step, so that the
(m, d) intermediates are written into memory that is already mapped instead
of fresh arrays (``benchmarks/batchnorm_kernels.py`` measures the
difference). The arithmetic, and so every bit of the result, is the same
with or without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import (check_batch, check_dtype, check_eps, check_finite, check_images,
                     check_momentum, check_param)
from .layers import Layer, Sequential, in_mode, iter_layers, layer_inputs

__all__ = [
    "NormCache",
    "normalize",
    "normalize_backward",
    "batchnorm_eval",
    "BatchStats",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "LayerNorm2d",
    "InstanceNorm2d",
    "FrozenBatchNorm1d",
    "freeze_batchnorm",
    "ghost_batchnorm_forward",
    "layernorm_forward",
    "layernorm_backward",
    "fold_batchnorm",
    "recompute_bn_statistics",
    "bn_layers",
    "bn_inputs",
    "statistic_groups",
]


# --------------------------------------------------------------------------
# the kernel
# --------------------------------------------------------------------------
class NormCache:
    """What :func:`normalize` keeps for :func:`normalize_backward`: the axes
    and count ``n`` of the statistics, the mean ``mu``, the biased variance
    ``var`` (without eps), ``inv_std = 1 / sqrt(var + eps)`` (all with the
    reduced axes kept, of size 1) and the normalized array ``xhat``."""

    __slots__ = ("axes", "n", "mu", "var", "inv_std", "xhat")

    def __init__(self, axes, n, mu, var, inv_std, xhat):
        self.axes, self.n, self.mu, self.var, self.inv_std, self.xhat = axes, n, mu, var, inv_std, xhat


class _Workspace:
    """Named arrays a layer keeps from one training step to the next."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, like: np.ndarray) -> np.ndarray:
        """An array of ``like``'s shape, dtype and memory order (contents undefined)."""
        buf = self._arrays.get(name)
        if (buf is None or buf.shape != like.shape or buf.dtype != like.dtype
                or buf.flags.c_contiguous != like.flags.c_contiguous):
            buf = self._arrays[name] = np.empty_like(like)
        return buf


def _out(workspace, name, like):
    return None if workspace is None else workspace(name, like)


def normalize(x, axes, eps: float = 1e-5, stats=None, workspace=None):
    """Normalize ``x`` with the mean and biased variance over ``axes``.

    Parameters
    ----------
    x : float array of any shape.
    axes : tuple of ints, the axes the statistics are taken over.
    eps : positive float added to the variance.
    stats : optional ``(mu, var, n)``, statistics to use instead of x's own,
        shaped to broadcast against x: synchronized batch norm passes those
        of the whole batch, gathered from every worker. The gradient then
        needs the whole batch's sums too: pass them to
        :func:`normalize_backward` as ``sums``.
    workspace : optional; see the module docstring. With one, ``xhat`` lives
        in the workspace and the next call with it overwrites it.

    Returns
    -------
    xhat : array of x's shape, ``(x - mu) / sqrt(var + eps)``.
    cache : :class:`NormCache` for :func:`normalize_backward`.

    Raises :class:`~bnbook.checks.NonFiniteError` if a variance is NaN or inf.
    """
    axes = tuple(int(a) for a in axes)
    if stats is None:
        n = math.prod(x.shape[a] for a in axes)
        mu = x.sum(axis=axes, keepdims=True) / n                   # mean
        xc = np.subtract(x, mu, out=_out(workspace, "xc", x))      # centre
        sq = np.square(xc, out=_out(workspace, "sq", x))           # square
        var = sq.sum(axis=axes, keepdims=True) / n                 # biased variance
    else:
        mu, var, n = stats
        xc = np.subtract(x, mu, out=_out(workspace, "xc", x))
    check_finite(var, ", or values so large that their variance overflows, at statistic(s)")
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = np.multiply(xc, inv_std, out=_out(workspace, "xhat", x))
    return xhat, NormCache(axes, n, mu, var, inv_std, xhat)


def normalize_backward(g, cache: NormCache, scale=None, sums=None, workspace=None):
    """The gradient with respect to x of ``sum(g * scale * xhat)``, ``xhat = normalize(x)``.

    ``dx = scale * inv_std / n * (n * g - sum(g) - xhat * sum(g * xhat))``,
    the sums over the normalized axes: chapter 3's compact formula, whatever
    the axes.

    Parameters
    ----------
    g : array of xhat's shape, the gradient with respect to ``scale * xhat``.
    cache : from :func:`normalize`.
    scale : None (1) or an array constant over the normalized axes (batch
        norm's ``gamma``); it factors out of the sums.
    sums : optional ``(sum(g), sum(g * xhat))`` over the whole batch, in place
        of this array's (synchronized batch norm).
    workspace : optional; see the module docstring.

    Returns
    -------
    dx : xhat's shape;  ``sum(g)`` and ``sum(g * xhat)`` over the axes (kept
    as size 1; as given when ``sums`` is passed). For batch norm they are
    ``dbeta`` and ``dgamma``.
    """
    axes, n, xhat = cache.axes, cache.n, cache.xhat
    t = _out(workspace, "t", g)
    if sums is None:
        s1 = g.sum(axis=axes, keepdims=True)
        s2 = np.multiply(g, xhat, out=t).sum(axis=axes, keepdims=True)
    else:
        s1, s2 = sums
    dx = np.multiply(xhat, s2)                     # xhat * sum(g * xhat)
    t = np.multiply(n, g, out=t)                   # n * g
    np.subtract(t, s1, out=t)                      # - sum(g)
    np.subtract(t, dx, out=dx)                     # - xhat * sum(g * xhat)
    coef = cache.inv_std / n if scale is None else scale * cache.inv_std / n
    np.multiply(coef, dx, out=dx)
    return dx, s1, s2


def batchnorm_eval(x, gamma, beta, mean, var, eps: float = 1e-5):
    """Batch norm with fixed statistics (eval mode).

    ``x`` (m, d), any m >= 1; ``gamma, beta, mean, var`` (d,). Returns
    ``gamma * (x - mean) / sqrt(var + eps) + beta``, (m, d), computed as
    ``x * scale + (beta - mean * scale)`` with ``scale = gamma / sqrt(var + eps)``.
    """
    x = check_batch(x)
    d = x.shape[1]
    gamma, beta = check_param(gamma, d, "gamma", x.dtype), check_param(beta, d, "beta", x.dtype)
    mean, var = check_param(mean, d, "mean", x.dtype), check_param(var, d, "var", x.dtype)
    scale = gamma / np.sqrt(var + check_eps(eps))
    out = x * scale + (beta - mean * scale)
    check_finite(out, " in sample(s)")
    return out


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------
class _Normalization(Layer):
    """A normalization layer: ``eps``, ``dtype``, a learned scale ``gamma``
    (ones) and shift ``beta`` (zeros) of shape (num_features,), and their
    gradients ``dgamma``, ``dbeta``, written by ``backward``."""

    param_names = ("gamma", "beta")

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=np.float32,
                 min_features: int = 1):
        if isinstance(num_features, bool) or int(num_features) != num_features \
                or num_features < min_features:
            kind = "a positive integer" if min_features == 1 else f"an integer >= {min_features}"
            raise ValueError(f"num_features must be {kind}; got {num_features!r}")
        self.num_features = int(num_features)
        self.eps = check_eps(eps)
        self.dtype = np.dtype(dtype)
        self.gamma = np.ones(self.num_features, dtype=self.dtype)
        self.beta = np.zeros(self.num_features, dtype=self.dtype)
        self.dgamma = np.zeros_like(self.gamma)
        self.dbeta = np.zeros_like(self.beta)


def _check_dout(dout, shape) -> np.ndarray:
    """``dout`` as an array of the last input's ``shape``, or a ValueError."""
    dout = np.asarray(dout)
    if dout.shape != shape:
        raise ValueError(f"dout must have the shape of the last x {shape}; got {dout.shape}")
    return dout


def _check_images(x, channels: int, dtype, who: str) -> np.ndarray:
    x = check_images(x, who, channels)
    check_dtype(x, dtype, who)
    return x


@dataclass
class BatchStats:
    """The statistics a batch-norm layer normalized its last training batch
    with: ``mean`` and biased ``var``, one row (num_features,) per
    normalization group (one row without ghost batches), and ``count``, the
    rows per group. The running averages took the rows in order."""

    mean: np.ndarray
    var: np.ndarray
    count: int


def _check_group_size(g) -> int:
    """A ghost-batch (group) size: an int >= 2."""
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
        raise ValueError(f"ghost_batch_size must be an int >= 2 or None; got {g!r}")
    if g < 2:
        raise ValueError(f"ghost_batch_size must be at least 2 (a group of one sample has "
                         f"variance 0 and every output equals beta); got {g}")
    return int(g)


def _ghost_view(x, g: int):
    """x (m, d) as (m / g, g, d): group k holds rows k*g ... (k+1)*g - 1."""
    m, d = x.shape
    if m % g:
        raise ValueError(
            f"ghost batch norm needs a batch whose size is a multiple of ghost_batch_size={g}; "
            f"got a batch of {m} rows ({m} = {m // g} * {g} + {m % g})")
    return x.reshape(m // g, g, d)


class BatchNorm1d(_Normalization):
    """Batch norm for (m, d) inputs, with the semantics of ``torch.nn.BatchNorm1d``.

    * Training mode (the default): normalize with the batch mean and biased
      variance, then update ``running = (1 - momentum) * running + momentum
      * batch``, the variance entering as the unbiased ``m / (m - 1) * var``.
      ``num_batches_tracked`` counts the updates.
    * ``momentum=None``: the factor is ``1 / num_batches_tracked`` instead,
      so the running statistics are the plain mean of the batch statistics
      so far (chapter 5 compares the two averages).
    * Eval mode: normalize with ``running_mean`` and ``running_var``.

    Ghost batch norm (Hoffer et al., 2017; chapter 7): with
    ``ghost_batch_size=g``, a training batch of m rows (a multiple of g) is
    viewed as m / g groups of g consecutive rows, each normalized with its
    own statistics, and the running averages take one update per group, in
    order: what calling the layer on each group in turn would do.

    Attributes: ``gamma``, ``beta``, ``running_mean`` (zeros) and
    ``running_var`` (ones), all (d,) in the layer's ``dtype`` (input of
    another dtype is refused, as torch does); after a training forward pass,
    ``batch_stats`` (:class:`BatchStats`); after ``backward``, ``dgamma``
    and ``dbeta`` (d,).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 dtype=np.float32, ghost_batch_size: int | None = None):
        super().__init__(num_features, eps, dtype)
        self.momentum = check_momentum(momentum, allow_none=True)
        self.running_mean = np.zeros(self.num_features, dtype=self.dtype)
        self.running_var = np.ones(self.num_features, dtype=self.dtype)
        self.num_batches_tracked = 0
        self.ghost_batch_size = ghost_batch_size
        self.batch_stats = None
        self._workspace = _Workspace()

    @property
    def ghost_batch_size(self) -> int | None:
        """Rows per normalization group in training mode (None: the whole batch)."""
        return self._ghost_batch_size

    @ghost_batch_size.setter
    def ghost_batch_size(self, value) -> None:
        self._ghost_batch_size = None if value is None else _check_group_size(value)

    def _groups(self, x):
        """The training batch as the kernel sees it: (m, d), or (m/g, g, d) with ghost batches."""
        if x.shape[0] < 2:
            raise ValueError(
                f"batch norm in training mode needs a batch of at least 2 samples; got x of "
                f"shape {x.shape}. With one sample the batch variance is 0 and every output "
                "equals beta. Use eval mode for single samples, or drop or merge the last "
                "partial batch.")
        return x if self.ghost_batch_size is None else _ghost_view(x, self.ghost_batch_size)

    def forward(self, x):
        """Normalize ``x`` (m, num_features) of the layer's dtype; returns (m, num_features)."""
        x = check_batch(x, self.num_features, name=f"{type(self).__name__}'s input x")
        check_dtype(x, self.dtype, type(self).__name__)
        if not self.training:
            self._saved = None
            return batchnorm_eval(x, self.gamma, self.beta, self.running_mean,
                                  self.running_var, self.eps)
        groups = self._groups(x)
        xhat, cache = normalize(groups, (groups.ndim - 2,), self.eps, workspace=self._workspace)
        out = np.multiply(self.gamma, xhat)
        np.add(out, self.beta, out=out)
        d = self.num_features
        self.batch_stats = BatchStats(cache.mu.reshape(-1, d), cache.var.reshape(-1, d), cache.n)
        for mean, var in zip(self.batch_stats.mean, self.batch_stats.var):
            self.update_running_stats(mean, var, cache.n)
        self._saved = cache
        return out.reshape(x.shape)

    def running_var_correction(self, count: int) -> float:
        """The factor the batch variance of ``count`` rows enters the running
        variance with: ``count / (count - 1)``, the unbiased estimate."""
        return count / (count - 1)

    def update_running_stats(self, mean, var, count: int) -> None:
        """Count one batch of ``count`` rows with mean and biased variance
        ``mean``, ``var`` (d,); then ``running = (1 - f) * running + f * batch``
        in place, ``f = momentum`` or ``1 / num_batches_tracked`` when None."""
        self.num_batches_tracked += 1
        f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        self.running_mean *= 1.0 - f
        self.running_mean += f * mean
        self.running_var *= 1.0 - f
        self.running_var += (f * self.running_var_correction(count)) * var

    def release(self) -> None:
        super().release()
        self._workspace = _Workspace()    # its arrays are the size of the last batch

    def backward(self, dout, need_input_grad: bool = True):
        """Backward of the last training forward: returns dx (m, d) and writes
        ``dgamma`` and ``dbeta``. dx is always computed."""
        cache = self._saved_for_backward()
        g = _check_dout(dout, (cache.xhat.size // self.num_features, self.num_features))
        if g.dtype.kind != "f":
            g = g.astype(np.float64)
        grouped = cache.xhat.ndim == 3            # ghost batches: (m/g, g, d)
        if grouped:
            g = g.reshape(cache.xhat.shape)
        dx, s1, s2 = normalize_backward(g, cache, scale=self.gamma, workspace=self._workspace)
        if grouped:                               # gamma and beta are shared by the groups
            s1, s2, dx = s1.sum(axis=0), s2.sum(axis=0), dx.reshape(-1, self.num_features)
        self.dbeta[...] = s1.reshape(-1)
        self.dgamma[...] = s2.reshape(-1)
        return dx

    def __repr__(self) -> str:
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        ghost = "" if self.ghost_batch_size is None else f", ghost_batch_size={self.ghost_batch_size}"
        return f"{type(self).__name__}({self.num_features}, eps={self.eps:g}, momentum={momentum}{ghost})"


def _rows(x):
    """(N, C, H, W) -> the (N*H*W, C) matrix whose column c holds channel c
    (a view when x is stored channel-major, as convolution outputs are)."""
    n, c, h, w = x.shape
    return x.transpose(1, 0, 2, 3).reshape(c, n * h * w).T


def _images(rows, shape):
    """The inverse of :func:`_rows`."""
    n, c, h, w = shape
    return rows.T.reshape(c, n, h, w).transpose(1, 0, 2, 3)


class BatchNorm2d(BatchNorm1d):
    """Spatial batch norm: per-channel statistics over (N, H, W), with the
    semantics of ``torch.nn.BatchNorm2d``.

    It is :class:`BatchNorm1d` applied to the (N*H*W, C) matrix whose column
    c holds every value of channel c, so the running variance takes
    ``n / (n - 1) * var`` with ``n = N * H * W``. Input (N, C, H, W) of the
    layer's dtype; output of the same shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, dtype)

    @property
    def num_channels(self) -> int:
        return self.num_features

    @property
    def ghost_batch_size(self) -> None:
        """Always None: ghost batches are an option of ``BatchNorm1d`` only."""
        return None

    @ghost_batch_size.setter
    def ghost_batch_size(self, value) -> None:
        if value is not None:
            raise ValueError("BatchNorm2d has no ghost batches; use BatchNorm1d(ghost_batch_size=...)")

    def forward(self, x):
        x = _check_images(x, self.num_features, self.dtype, "BatchNorm2d")
        n, _, h, w = x.shape
        if self.training and n * h * w < 2:
            raise ValueError(f"BatchNorm2d in training mode would normalize a single value per "
                             f"channel (input shape {x.shape}): its variance is 0 and every output "
                             "would equal beta. Use eval mode, a larger batch or larger images")
        self._shape = x.shape
        return _images(super().forward(_rows(x)), x.shape)

    def backward(self, dout, need_input_grad: bool = True):
        self._saved_for_backward()
        dout = _check_dout(dout, self._shape)
        return _images(super().backward(_rows(dout)), self._shape)

    def __repr__(self) -> str:
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        return f"BatchNorm2d({self.num_features}, eps={self.eps:g}, momentum={momentum})"


class LayerNorm(_Normalization):
    """Layer norm (Ba, Kiros & Hinton, 2016) for (m, d) inputs: each row is
    normalized over its d features (d >= 2), so a sample's output never
    depends on the rest of the batch and both modes compute the same thing.
    ``gamma`` and ``beta`` are per feature (d,)."""

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_features, eps, dtype, min_features=2)

    def forward(self, x):
        x = check_batch(x, self.num_features, name="LayerNorm's input x")
        check_dtype(x, self.dtype, "LayerNorm")
        out, self._saved = layernorm_forward(x, self.gamma, self.beta, self.eps)
        return out

    def backward(self, dout, need_input_grad: bool = True):
        cache = self._saved_for_backward()
        dx, self.dgamma[...], self.dbeta[...] = layernorm_backward(dout, cache)
        return dx

    def __repr__(self) -> str:
        return f"LayerNorm({self.num_features}, eps={self.eps:g})"


class GroupNorm(_Normalization):
    """Group norm (Wu & He, 2018) for (N, C, H, W) images: the C channels
    form ``num_groups`` groups of C/G consecutive channels, and each sample's
    group is normalized over its (C/G, H, W) values. The same in both modes
    (no running statistics); ``gamma`` and ``beta`` are per channel (C,)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_channels, eps, dtype)
        if isinstance(num_groups, bool) or int(num_groups) != num_groups or num_groups < 1:
            raise ValueError(f"num_groups must be a positive integer; got {num_groups!r}")
        if self.num_features % num_groups:
            raise ValueError(f"num_channels ({self.num_features}) is not divisible by num_groups "
                             f"({num_groups}): every group needs the same number of channels")
        self.num_groups = int(num_groups)

    @property
    def num_channels(self) -> int:
        return self.num_features

    def _view(self, x):
        """x (N, C, H, W) as (N, G, C/G, H*W), and the axes the kernel reduces."""
        n, c, h, w = x.shape
        return x.reshape(n, self.num_groups, c // self.num_groups, h * w), (2, 3)

    def _per_channel(self, p):
        return p.reshape(1, self.num_groups, -1, 1)

    def forward(self, x):
        """Normalize ``x`` (N, C, H, W); returns the same shape."""
        x = _check_images(x, self.num_features, self.dtype, type(self).__name__)
        v, axes = self._view(x)
        if v.shape[2] * v.shape[3] < 2:
            raise ValueError(f"{type(self).__name__} would normalize a single value per group "
                             f"(input shape {x.shape}): its variance is 0 and every output "
                             "would equal beta")
        xhat, cache = normalize(v, axes, self.eps)
        self._saved = (cache, x.shape)
        out = self._per_channel(self.gamma) * xhat + self._per_channel(self.beta)
        return out.reshape(x.shape)

    def backward(self, dout, need_input_grad: bool = True):
        """Back-propagate ``dout`` (N, C, H, W); writes dgamma, dbeta (C,), returns dx."""
        cache, shape = self._saved_for_backward()
        g, _ = self._view(_check_dout(dout, shape))
        self.dgamma[...] = (g * cache.xhat).sum(axis=(0, 3)).reshape(-1)
        self.dbeta[...] = g.sum(axis=(0, 3)).reshape(-1)
        dx, _, _ = normalize_backward(g * self._per_channel(self.gamma), cache)
        return dx.reshape(shape)

    def __repr__(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_features}, eps={self.eps:g})"


class LayerNorm2d(GroupNorm):
    """Layer norm of images: statistics per sample over (C, H, W), group norm
    with one group. The scale and shift are per channel (C,); PyTorch's
    ``LayerNorm([C, H, W])`` learns one per element (C, H, W) instead."""

    def __init__(self, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(1, num_channels, eps, dtype)

    def __repr__(self) -> str:
        return f"LayerNorm2d({self.num_features}, eps={self.eps:g})"


class InstanceNorm2d(GroupNorm):
    """Instance norm: statistics per sample and channel over (H, W), group
    norm with one channel per group; a per-channel scale and shift, as
    ``torch.nn.InstanceNorm2d(affine=True)``, and no running statistics."""

    def __init__(self, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_channels, num_channels, eps, dtype)

    def __repr__(self) -> str:
        return f"InstanceNorm2d({self.num_features}, eps={self.eps:g})"


class FrozenBatchNorm1d(Layer):
    """A :class:`BatchNorm1d` used as a fixed affine map in both modes (chapter 7).

    ``forward``: x (m, d) -> (m, d) with the wrapped layer's running
    statistics, ``gamma`` and ``beta``, any m >= 1; ``backward``: ``dx =
    dout * gamma / sqrt(running_var + eps)``. Nothing is trained and no
    statistic changes, so the layers around it can be fine-tuned alone.
    """

    def __init__(self, bn: BatchNorm1d):
        if not isinstance(bn, BatchNorm1d) or isinstance(bn, BatchNorm2d):
            raise ValueError(f"FrozenBatchNorm1d freezes a BatchNorm1d of (m, d) inputs; "
                             f"got {type(bn).__name__}")
        self.bn = bn

    def forward(self, x):
        bn = self.bn
        x = check_batch(x, bn.num_features, name="FrozenBatchNorm1d's input x")
        check_dtype(x, bn.dtype, "FrozenBatchNorm1d")
        out = batchnorm_eval(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)
        self._saved = (bn.gamma / np.sqrt(bn.running_var + bn.eps), x.shape)
        return out

    def backward(self, dout, need_input_grad: bool = True):
        scale, shape = self._saved_for_backward()
        return _check_dout(dout, shape) * scale

    def __repr__(self) -> str:
        return f"FrozenBatchNorm1d({self.bn!r})"


def freeze_batchnorm(model):
    """A Sequential sharing ``model``'s layers, each BatchNorm1d frozen
    (:class:`FrozenBatchNorm1d`): training it tunes ``model``'s other layers
    in place and leaves its batch norms exactly as they were."""
    if any(isinstance(layer, BatchNorm2d) for layer in model.layers):
        raise ValueError("freeze_batchnorm freezes BatchNorm1d layers of fully connected networks; "
                         "this model has a BatchNorm2d (put it in eval mode and leave its "
                         "parameters out of the optimizer instead)")
    return Sequential(*[FrozenBatchNorm1d(layer) if isinstance(layer, BatchNorm1d) else layer
                        for layer in model.layers])


# --------------------------------------------------------------------------
# functional forms used by the chapters' gradient checks
# --------------------------------------------------------------------------
def ghost_batchnorm_forward(x, gamma, beta, group_size: int, eps: float = 1e-5):
    """Ghost batch norm of ``x`` (m, d), m a multiple of ``group_size``: each
    group of ``group_size`` consecutive rows normalized with its own mean and
    biased variance (training mode, no running averages).
    Returns the output (m, d) and the kernel's cache (statistics (m/g, 1, d))."""
    x = check_batch(x)
    d = x.shape[1]
    gamma, beta = check_param(gamma, d, "gamma", x.dtype), check_param(beta, d, "beta", x.dtype)
    xhat, cache = normalize(_ghost_view(x, _check_group_size(group_size)), (1,), check_eps(eps))
    return (gamma * xhat + beta).reshape(x.shape), cache


def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Layer norm of ``x`` (m, d), d >= 2: ``gamma * xhat + beta`` with each
    row normalized over its features. Returns the output (m, d) and a cache
    for :func:`layernorm_backward`."""
    x = check_batch(x)
    if x.shape[1] < 2:
        raise ValueError(f"layer norm needs at least 2 features per sample; got x of shape "
                         f"{x.shape}. With one feature the per-sample variance is 0 and every "
                         "output equals beta.")
    d = x.shape[1]
    gamma = check_param(gamma, d, "gamma", x.dtype)
    beta = check_param(beta, d, "beta", x.dtype)
    xhat, cache = normalize(x, (1,), check_eps(eps))
    return gamma * xhat + beta, (cache, gamma)


def layernorm_backward(dout, cache):
    """Gradients of :func:`layernorm_forward`: ``dx`` (m, d), ``dgamma``,
    ``dbeta`` (d,). gamma varies along the normalized axis, so the kernel
    gets ``dout * gamma``."""
    norm, gamma = cache
    dout = _check_dout(dout, norm.xhat.shape)
    dx, _, _ = normalize_backward(dout * gamma, norm)
    return dx, np.sum(dout * norm.xhat, axis=0), dout.sum(axis=0)


# --------------------------------------------------------------------------
# batch norm at inference time
# --------------------------------------------------------------------------
def fold_batchnorm(weight, bias, bn: BatchNorm1d):
    """Fold an eval-mode batch norm into the linear or convolutional layer before it.

    With ``s = gamma / sqrt(running_var + eps)``, the layer followed by ``bn``
    is the single layer with weights scaled by ``s`` along their
    output-feature axis and bias ``(bias - running_mean) * s + beta``.

    Parameters
    ----------
    weight : a Linear layer's (d_in, d) (``y = x @ weight + bias``), or a
        convolution's (d, C, kh, kw) filters, with ``d == bn.num_features``.
    bias : (d,) or None (a bias-free layer).
    bn : a :class:`BatchNorm1d` or :class:`BatchNorm2d`.

    Returns
    -------
    w_folded : weight's shape;  b_folded : (d,).
    """
    weight = np.asarray(weight)
    d = bn.num_features
    conv = weight.ndim == 4
    if (weight.shape[0] if conv else weight.shape[-1]) != d or weight.ndim not in (2, 4):
        raise ValueError(f"weight must have shape (d_in, {d}) or ({d}, C, kh, kw) to match the "
                         f"batch norm's {d} features; got {weight.shape}")
    scale = bn.gamma / np.sqrt(bn.running_var + bn.eps)
    b = np.zeros(d, dtype=weight.dtype) if bias is None else np.asarray(bias)
    w_folded = weight * (scale[:, None, None, None] if conv else scale)
    b_folded = (b - bn.running_mean) * scale + bn.beta
    return w_folded.astype(weight.dtype, copy=False), b_folded.astype(weight.dtype, copy=False)


def bn_layers(model) -> list:
    """The batch-norm layers (BatchNorm1d and its subclasses) of ``model``, in order."""
    return [layer for layer in iter_layers(model) if isinstance(layer, BatchNorm1d)]


def bn_inputs(model, x, batch_size: int = 2000) -> list:
    """What every batch-norm layer of ``model`` receives for data ``x``, in
    eval mode: one array per layer, in order (chapters 5 and 7)."""
    return layer_inputs(model, x, lambda i, layer: isinstance(layer, BatchNorm1d), batch_size)


def recompute_bn_statistics(model, x, batch_size: int = 1000) -> list:
    """Set every batch norm's running statistics to population statistics.

    Each layer's ``running_mean`` becomes the exact mean, and ``running_var``
    the exact unbiased variance, of that layer's input over all of ``x``
    ((n, d) rows or (n, C, H, W) images; per feature or channel), accumulated
    in float64. This is Ioffe & Szegedy's inference rule over the whole set
    instead of an average over mini-batches.

    The layers are done front to back in one sweep: a layer's input is
    computed with the earlier layers already in eval mode with their *new*
    statistics, as the network will run at test time. ``x`` goes through
    ``batch_size`` rows at a time, one layer's activations held at a time.
    Nothing else changes; the model's mode is restored. Returns the batch
    norm layers, in order.
    """
    x = np.asarray(x)
    found = []
    with in_mode(model, training=False):
        chunks = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
        for layer in iter_layers(model):
            if isinstance(layer, BatchNorm1d):
                nd = chunks[0].ndim                              # 2 for rows, 4 for images
                axes = (0,) + tuple(range(2, nd))                # all but the feature axis
                count = sum(c.size // c.shape[1] for c in chunks)
                if count < 2:
                    raise ValueError(f"need at least 2 values per feature to estimate a "
                                     f"variance; got {count}")
                mean = sum(c.sum(axis=axes, dtype=np.float64) for c in chunks) / count
                m = mean.reshape((-1,) + (1,) * (nd - 2))
                ss = sum(np.square(c.astype(np.float64) - m).sum(axis=axes) for c in chunks)
                layer.running_mean[...] = mean
                layer.running_var[...] = ss / (count - 1)
                found.append(layer)
            chunks = [layer.forward(c) for c in chunks]
    return found


def statistic_groups(layer, shape) -> np.ndarray:
    """Which statistic each element of an input of ``shape`` (N, C, H, W) is
    normalized with, for a :class:`BatchNorm2d` or a :class:`GroupNorm`: an
    integer array of that shape, equal where two elements share a mean and
    variance (chapter 9's figure)."""
    n, c, h, w = shape
    index = np.indices(shape)
    if isinstance(layer, BatchNorm2d):
        return index[1]
    if isinstance(layer, GroupNorm):
        return index[0] * layer.num_groups + index[1] // (c // layer.num_groups)
    raise ValueError(f"statistic_groups needs a BatchNorm2d or a GroupNorm; got {type(layer).__name__}")

