"""The normalization family for images: batch, layer, instance and group norm.

Used by chapter 9. Inputs are batches of images ``(N, C, H, W)``.

All four normalizations are one operation, :func:`normalize`: subtract the
mean and divide by ``sqrt(var + eps)``, with the statistics taken over a
chosen set of axes. They differ only in that set:

=================  ==========================================  ===============
layer              statistics over                             one mean per
=================  ==========================================  ===============
``BatchNorm2d``    (N, H, W)                                   channel
``LayerNorm2d``    (C, H, W)                                   sample
``InstanceNorm2d`` (H, W)                                      sample, channel
``GroupNorm``      (C/G, H, W) of (N, G, C/G, H, W)            sample, group
=================  ==========================================  ===============

Group norm with one group is layer norm, with C groups instance norm; the
classes are written that way. Each has a learned per-channel scale ``gamma``
and shift ``beta`` of shape (C,), and all share one backward pass,
:func:`normalize_backward`.

``BatchNorm2d`` keeps running statistics with the semantics of
:class:`bnbook.batchnorm.BatchNorm1d` (and of ``torch.nn.BatchNorm2d``):
momentum is the weight of the new batch, the running variance is updated with
the unbiased batch variance ``n / (n - 1) * var`` where ``n = N * H * W``, and
eval mode normalizes with the running statistics. It equals ``BatchNorm1d``
applied to the (N * H * W, C) reshape of the input (chapter 9 asserts it).
"""
from __future__ import annotations

import math

import numpy as np

from .layers import Layer
from .protocol import check_eps, init_scale_shift

__all__ = [
    "NormCache",
    "normalize",
    "normalize_backward",
    "ChannelNorm",
    "BatchNorm2d",
    "GroupNorm",
    "LayerNorm2d",
    "InstanceNorm2d",
    "fold_batchnorm2d",
    "statistic_groups",
    "recompute_bn2d_statistics",
]


class NormCache:
    """What :func:`normalize` keeps for :func:`normalize_backward`: the axes
    and count ``n`` of the statistics, the mean ``mu``, the biased variance
    ``var`` (without eps), ``inv_std = 1 / sqrt(var + eps)`` (all with the
    reduced axes kept as size 1) and the normalized input ``xhat``."""

    __slots__ = ("axes", "n", "mu", "var", "inv_std", "xhat")

    def __init__(self, axes, n, mu, var, inv_std, xhat):
        self.axes, self.n, self.mu, self.var, self.inv_std, self.xhat = axes, n, mu, var, inv_std, xhat


def normalize(x, axes, eps: float = 1e-5):
    """Normalize ``x`` with its mean and biased variance over ``axes``.

    Parameters
    ----------
    x : float array of any shape.
    axes : tuple of ints, the axes the statistics are taken over.
    eps : positive float added to the variance.

    Returns
    -------
    xhat : array of x's shape, ``(x - mu) / sqrt(var + eps)``.
    cache : :class:`NormCache` for :func:`normalize_backward`.
    """
    axes = tuple(int(a) for a in axes)
    n = math.prod(x.shape[a] for a in axes)
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=axes, keepdims=True)
    if not np.isfinite(var).all():
        raise ValueError("input contains non-finite values (NaN or inf), or values so large "
                         "that their variance overflows")
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv_std
    return xhat, NormCache(axes, n, mu, var, inv_std, xhat)


def normalize_backward(dxhat, cache: NormCache):
    """Gradient of :func:`normalize`: ``dxhat`` (x's shape) -> ``dx``.

    ``dx = inv_std / n * (n * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))``
    with the sums over the normalized axes: the compact formula of chapter 3,
    whatever the axes.
    """
    axes, n, xhat = cache.axes, cache.n, cache.xhat
    s1 = dxhat.sum(axis=axes, keepdims=True)
    s2 = np.sum(dxhat * xhat, axis=axes, keepdims=True)
    return (cache.inv_std / n) * (n * dxhat - s1 - xhat * s2)


def statistic_groups(layer, shape) -> np.ndarray:
    """Which statistic each element of an input of ``shape`` (N, C, H, W) is
    normalized with: an integer array of that shape, equal for elements that
    share a mean and variance. Computed from the layer's own view and axes,
    so a figure drawn from it shows what the layer does."""
    xv, axes = layer._view(np.zeros(shape))
    keep = [a for a in range(xv.ndim) if a not in axes]
    index = np.indices(xv.shape)
    ids = np.ravel_multi_index([index[a] for a in keep], [xv.shape[a] for a in keep])
    return np.ascontiguousarray(layer._unview(ids.reshape(xv.shape), shape))


def _check_images(x, channels: int, who: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{who} expects a 4-D batch of images (N, C, H, W); "
                         f"got an array of rank {x.ndim} with shape {x.shape}")
    if x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} channels (axis 1 of (N, C, H, W)); "
                         f"got shape {x.shape}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return x


class ChannelNorm(Layer):
    """Normalization of (N, C, H, W) images over axes chosen by a grouping,
    followed by a per-channel scale ``gamma`` and shift ``beta`` (shape (C,)).

    ``num_groups=None`` takes the statistics over (N, H, W) (batch norm);
    ``num_groups=G`` views the input as (N, G, C/G, H, W) and takes them over
    the last three axes (group norm; G=1 is layer norm, G=C instance norm).
    After :meth:`backward`, ``dgamma`` and ``dbeta`` hold the parameter
    gradients.
    """

    def __init__(self, num_channels: int, num_groups: int | None, eps: float = 1e-5,
                 dtype=np.float32):
        if int(num_channels) != num_channels or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer; got {num_channels!r}")
        c = int(num_channels)
        if num_groups is not None:
            if int(num_groups) != num_groups or num_groups < 1:
                raise ValueError(f"num_groups must be a positive integer; got {num_groups!r}")
            if c % num_groups:
                raise ValueError(f"num_channels ({c}) is not divisible by num_groups "
                                 f"({num_groups}): every group needs the same number of channels")
            num_groups = int(num_groups)
        self.num_channels, self.num_groups, self.eps = c, num_groups, check_eps(eps)
        init_scale_shift(self, c, dtype)
        self.training = True
        self._cache = None

    def params(self):
        return [("gamma", self.gamma, self.dgamma), ("beta", self.beta, self.dbeta)]

    def _view(self, x):
        """The input as the array whose axes :func:`normalize` reduces, and those axes.

        Batch norm: the (C, N*H*W) matrix whose row c holds every value of
        channel c (a free view of this package's channel-major activations),
        normalized along its rows: :class:`~bnbook.batchnorm.BatchNorm1d` on
        the transposed (N*H*W, C) matrix. Group norm: (N, G, C/G, H*W),
        normalized over its last two axes.
        """
        n, c, h, w = x.shape
        if self.num_groups is None:
            return x.transpose(1, 0, 2, 3).reshape(c, n * h * w), (1,)
        return x.reshape(n, self.num_groups, c // self.num_groups, h * w), (2, 3)

    def _unview(self, v, shape):
        """The inverse of :meth:`_view`: back to (N, C, H, W)."""
        n, c, h, w = shape
        if self.num_groups is None:
            return v.reshape(c, n, h, w).transpose(1, 0, 2, 3)
        return v.reshape(shape)

    def _per_channel(self, p):
        """A (C,) parameter shaped to broadcast against the view."""
        if self.num_groups is None:
            return p[:, None]
        return p.reshape(1, self.num_groups, -1, 1)

    def _channel_sum(self, v):
        """Sum a view-shaped array over everything but the channel: (C,)."""
        if self.num_groups is None:
            return v.sum(axis=1)
        return v.sum(axis=(0, 3)).reshape(-1)

    def _normalize_batch(self, x):
        """Training-style normalization with statistics of ``x`` itself; keeps
        the cache and returns xhat in the view's shape."""
        xv, axes = self._view(x)
        if math.prod(xv.shape[a] for a in axes) < 2:
            raise ValueError(
                f"{type(self).__name__} would normalize a single value per "
                f"{'channel' if self.num_groups is None else 'group'} (input shape {x.shape}): "
                "its variance is 0 and every output would equal beta"
                + (". Use eval mode, a larger batch or larger images" if self.num_groups is None
                   else "")
            )
        xhat, cache = normalize(xv, axes, self.eps)
        self._cache, self._shape = cache, x.shape
        return xhat, cache

    def forward(self, x):
        """Normalize ``x`` (N, C, H, W); returns the same shape."""
        x = _check_images(x, self.num_channels, type(self).__name__)
        xhat, _ = self._normalize_batch(x)
        out = self._per_channel(self.gamma) * xhat + self._per_channel(self.beta)
        return self._unview(out, x.shape)

    def backward(self, dout):
        """Back-propagate ``dout`` (N, C, H, W); stores dgamma, dbeta (C,) and returns dx."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a training-mode "
                               "forward() first")
        if np.shape(dout) != self._shape:
            raise ValueError(f"dout must have the shape of x {self._shape}; got {np.shape(dout)}")
        cache = self._cache
        dv, _ = self._view(np.asarray(dout))
        self.dgamma[...] = self._channel_sum(dv * cache.xhat)
        self.dbeta[...] = self._channel_sum(dv)
        dxhat = dv * self._per_channel(self.gamma)
        return self._unview(normalize_backward(dxhat, cache), self._shape)

    def __repr__(self) -> str:
        groups = "" if self.num_groups is None else f", num_groups={self.num_groups}"
        return f"{type(self).__name__}({self.num_channels}{groups}, eps={self.eps:g})"


class BatchNorm2d(ChannelNorm):
    """Spatial batch norm: per-channel statistics over (N, H, W).

    Semantics of :class:`bnbook.batchnorm.BatchNorm1d` and
    ``torch.nn.BatchNorm2d``: in training mode normalize with the batch
    statistics and update ``running = (1 - momentum) * running + momentum *
    batch``, with the unbiased variance ``n / (n - 1) * var``, ``n = N * H * W``;
    in eval mode normalize with ``running_mean`` and ``running_var`` (C,).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32):
        super().__init__(num_channels, None, eps, dtype)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}")
        self.momentum = float(momentum)
        self.running_mean = np.zeros(self.num_channels, dtype=self.dtype)
        self.running_var = np.ones(self.num_channels, dtype=self.dtype)

    @property
    def num_features(self) -> int:  # BatchNorm1d's name for it
        return self.num_channels

    def forward(self, x):
        x = _check_images(x, self.num_channels, "BatchNorm2d")
        if not self.training:
            self._cache = None
            scale = self.gamma / np.sqrt(self.running_var + self.eps)
            shift = self.beta - self.running_mean * scale
            out = x * scale[:, None, None] + shift[:, None, None]
            if not np.isfinite(out).all():
                raise ValueError("input contains non-finite values (NaN or inf)")
            return out
        xhat, cache = self._normalize_batch(x)
        mom, n = self.momentum, cache.n
        self.running_mean *= 1.0 - mom
        self.running_mean += mom * cache.mu.reshape(-1)
        self.running_var *= 1.0 - mom
        self.running_var += (mom * n / (n - 1)) * cache.var.reshape(-1)
        out = self._per_channel(self.gamma) * xhat + self._per_channel(self.beta)
        return self._unview(out, x.shape)

    def __repr__(self) -> str:
        return f"BatchNorm2d({self.num_channels}, eps={self.eps:g}, momentum={self.momentum:g})"


class GroupNorm(ChannelNorm):
    """Group norm: the C channels split into ``num_groups`` groups of C/G
    consecutive channels; statistics per sample and group over (C/G, H, W).
    The same in training and eval mode (no running statistics)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_channels, num_groups, eps, dtype)

    def __repr__(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps:g})"


class LayerNorm2d(GroupNorm):
    """Layer norm of images: statistics per sample over (C, H, W); group norm
    with one group. The scale and shift are per channel (C,); PyTorch's
    ``LayerNorm([C, H, W])`` learns one per element (C, H, W) instead."""

    def __init__(self, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(1, num_channels, eps, dtype)

    def __repr__(self) -> str:
        return f"LayerNorm2d({self.num_channels}, eps={self.eps:g})"


class InstanceNorm2d(GroupNorm):
    """Instance norm: statistics per sample and channel over (H, W); group
    norm with one channel per group. With a per-channel scale and shift (as
    ``torch.nn.InstanceNorm2d(affine=True)``) and no running statistics."""

    def __init__(self, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_channels, num_channels, eps, dtype)

    def __repr__(self) -> str:
        return f"InstanceNorm2d({self.num_channels}, eps={self.eps:g})"


def fold_batchnorm2d(weight, bias, bn: BatchNorm2d):
    """Fold an eval-mode :class:`BatchNorm2d` into the convolution before it.

    ``conv(x, weight, bias)`` followed by ``bn`` in eval mode is the single
    convolution ``conv(x, w_folded, b_folded)``: per output channel f,
    ``w_folded[f] = weight[f] * s[f]`` and ``b_folded[f] = (bias[f] -
    running_mean[f]) * s[f] + beta[f]`` with ``s = gamma / sqrt(running_var + eps)``.

    Parameters
    ----------
    weight : (F, C, kh, kw) filters; bias : (F,) or None; ``bn.num_channels == F``.

    Returns
    -------
    w_folded : (F, C, kh, kw);  b_folded : (F,).
    """
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[0] != bn.num_channels:
        raise ValueError(f"weight must have shape ({bn.num_channels}, C, kh, kw) to match the "
                         f"batch norm's {bn.num_channels} channels; got {weight.shape}")
    scale = bn.gamma / np.sqrt(bn.running_var + bn.eps)
    b = np.zeros(bn.num_channels, dtype=weight.dtype) if bias is None else np.asarray(bias)
    w_folded = weight * scale[:, None, None, None]
    b_folded = (b - bn.running_mean) * scale + bn.beta
    return w_folded.astype(weight.dtype, copy=False), b_folded.astype(weight.dtype, copy=False)


def recompute_bn2d_statistics(model, x, batch_size: int = 1000):
    """Set the running statistics of every :class:`BatchNorm2d` of ``model`` (a
    Sequential) to the population statistics of its input over images ``x``
    (n, C, H, W): per channel, the mean and the unbiased variance of all
    n * H * W values, accumulated in float64. The network runs in eval mode,
    front to back, so each layer's input is computed with the earlier layers'
    new statistics (the 2-D counterpart of
    :func:`bnbook.inference_stats.recompute_bn_statistics`). The model's mode is
    restored. Returns the BatchNorm2d layers, in order.
    """
    from .layers import in_mode

    x = np.asarray(x)
    layers = list(getattr(model, "layers", [model]))
    found = []
    with in_mode(model, training=False):
        chunks = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
        for layer in layers:
            if isinstance(layer, BatchNorm2d):
                count = sum(c.size // c.shape[1] for c in chunks)
                if count < 2:
                    raise ValueError(f"need at least 2 values per channel; got {count}")
                mean = sum(c.sum(axis=(0, 2, 3), dtype=np.float64) for c in chunks) / count
                ss = sum(np.square(c.astype(np.float64) - mean[:, None, None]).sum(axis=(0, 2, 3))
                         for c in chunks)
                layer.running_mean[...] = mean
                layer.running_var[...] = ss / (count - 1)
                found.append(layer)
            chunks = [layer.forward(c) for c in chunks]
    return found
