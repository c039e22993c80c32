"""Convolution, pooling and reshaping layers for images, written out in NumPy.

Used by chapter 9 (batch norm in convolutional networks). Images are batches
of shape ``(N, C, H, W)``: samples, channels, height, width (PyTorch's
layout). The layers keep the contract of :mod:`bnbook.layers`, so they go
into a :class:`~bnbook.layers.Sequential` with ``Linear``, ``ReLU`` and the
normalizations of :mod:`bnbook.normalization`, and train with
:func:`bnbook.training.fit`.

The convolution is *im2col*: every (kh, kw) patch of the input becomes one
column of a matrix, and the convolution is one matrix product of the
flattened filters with those columns.
:func:`numpy.lib.stride_tricks.sliding_window_view` builds the patches
without a Python loop; the backward pass scatters the patch gradients back
with one loop over the kh * kw kernel offsets (9 for a 3x3 kernel), never
over samples or pixels.

Memory layout: the layers take and return arrays of shape (N, C, H, W), but
the arrays they return are stored channel-major, as transposed views of
(C, N, H, W) arrays. That is the order in which the matrix product writes
its result, and the order in which per-channel work (batch norm's
statistics, pooling, the next im2col) reads it, so no layer has to copy an
activation just to reorder it. NumPy's elementwise operations keep the
layout, and code that indexes the arrays sees ordinary (N, C, H, W) arrays.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .checks import check_images
from .layers import Layer, init_weights

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "im2col",
    "col2im",
    "ConvCache",
    "Conv2d",
    "MaxPool2d",
    "Flatten",
]


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _channels_first(x) -> np.ndarray:
    """(N, C, H, W) -> its (C, N, H, W) transpose, a view (no copy when x came
    from a layer of this module, whose outputs are stored channel-major)."""
    return x.transpose(1, 0, 2, 3)


def im2col(x, kh: int, kw: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Patches of ``x`` (N, C, H, W) as columns: returns (C * kh * kw, N * Ho * Wo).

    Column ``(n, i, j)`` (in that order) holds the patch whose top-left corner
    is at ``(i * stride - pad, j * stride - pad)``, flattened in the order
    (c, di, dj): the order of a filter ``W[f]`` of shape (C, kh, kw) flattened.
    The convolution is then one matrix product, ``W.reshape(F, -1) @ cols``.
    """
    n, c, h, w = x.shape
    xp = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=x.dtype)  # channel-major, padded
    xp[:, :, pad:pad + h, pad:pad + w] = _channels_first(x)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))  # (C, N, H', W', kh, kw), a view
    win = win[:, :, ::stride, ::stride]  # (C, N, Ho, Wo, kh, kw)
    ho, wo = win.shape[2:4]
    # the one copy; its inner axis (Wo) runs along memory, so it is a fast one
    return win.transpose(0, 4, 5, 1, 2, 3).reshape(c * kh * kw, n * ho * wo)


def col2im(dcols, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col`: add each column of ``dcols``
    (C * kh * kw, N * Ho * Wo) back onto the pixels of its patch; returns an
    array of shape ``x_shape`` (N, C, H, W)."""
    n, c, h, w = x_shape
    ho, wo = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    d = dcols.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=dcols.dtype)
    for di in range(kh):  # one pass per kernel offset: 9 for a 3x3 kernel
        for dj in range(kw):
            dx[:, :, di:di + stride * ho:stride, dj:dj + stride * wo:stride] += d[:, di, dj]
    return _channels_first(dx[:, :, pad:pad + h, pad:pad + w])


class ConvCache:
    """What :func:`conv2d_forward` keeps for the backward pass."""

    __slots__ = ("x_shape", "cols", "w", "stride", "pad")

    def __init__(self, x_shape, cols, w, stride, pad):
        self.x_shape, self.cols, self.w, self.stride, self.pad = x_shape, cols, w, stride, pad


def conv2d_forward(x, w, b=None, stride: int = 1, pad: int = 0):
    """2-D convolution (cross-correlation, as in every deep-learning library).

    ``out[n, f, i, j] = b[f] + sum_{c, di, dj} w[f, c, di, dj] *
    xpad[n, c, i * stride + di, j * stride + dj]``

    Parameters
    ----------
    x : (N, C, H, W) images.
    w : (F, C, kh, kw) filters.
    b : (F,) bias, or None.
    stride, pad : the step between patches and the zero padding on each side.

    Returns
    -------
    out : (N, F, Ho, Wo) with ``Ho = (H + 2 pad - kh) // stride + 1`` (same for W).
        Its memory is channel-major (a transposed view of an (F, N, Ho, Wo)
        array): the matrix product writes it that way, and the per-channel
        statistics of batch norm read it that way.
    cache : :class:`ConvCache` for :func:`conv2d_backward`.
    """
    x = check_images(x, "conv2d")
    w = np.asarray(w)
    if w.ndim != 4:
        raise ValueError(f"conv2d expects filters of shape (F, C, kh, kw); got shape {w.shape}")
    f, c, kh, kw = w.shape
    n, cx, h, wd = x.shape
    if cx != c:
        raise ValueError(f"conv2d: x has {cx} channels but the filters expect {c} "
                         f"(x {x.shape}, w {w.shape})")
    if int(stride) != stride or stride < 1 or int(pad) != pad or pad < 0:
        raise ValueError(f"stride must be >= 1 and pad >= 0 (integers); got {stride!r}, {pad!r}")
    ho, wo = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit in {h}x{wd} images with pad {pad}")
    cols = im2col(x, kh, kw, stride, pad)  # (C*kh*kw, N*Ho*Wo)
    out = w.reshape(f, -1) @ cols  # (F, N*Ho*Wo): one matrix product
    if b is not None:
        out += b[:, None]
    return _channels_first(out.reshape(f, n, ho, wo)), ConvCache(x.shape, cols, w, stride, pad)


def conv2d_backward(dout, cache: ConvCache, need_input_grad: bool = True):
    """Gradients of :func:`conv2d_forward`.

    ``dout`` (N, F, Ho, Wo) -> ``dx`` (N, C, H, W) (None if not
    ``need_input_grad``), ``dw`` (F, C, kh, kw), ``db`` (F,).
    """
    w = cache.w
    f, _, kh, kw = w.shape
    n = cache.x_shape[0]
    dout = np.asarray(dout)
    if dout.ndim != 4 or dout.shape[:2] != (n, f):
        raise ValueError(f"dout must have shape (N={n}, F={f}, Ho, Wo); got {dout.shape}")
    dmat = _channels_first(dout).reshape(f, -1)  # (F, N*Ho*Wo), columns in im2col's order
    dw = (dmat @ cache.cols.T).reshape(w.shape)
    db = dmat.sum(axis=1)
    dx = None
    if need_input_grad:
        dx = col2im(w.reshape(f, -1).T @ dmat, cache.x_shape, kh, kw, cache.stride, cache.pad)
    return dx, dw, db


class Conv2d(Layer):
    """Convolution layer: ``x`` (N, C, H, W) -> (N, F, Ho, Wo).

    ``W`` has shape (F, C, kh, kw) (PyTorch's layout), He-initialized with
    fan-in ``C * kh * kw``; ``b`` shape (F,), zero at the start, or None with
    ``bias=False`` (the usual choice before batch norm, whose ``beta`` takes
    its role).
    """

    param_names = ("W", "b")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, pad: int = 0, bias: bool = True, rng=None, dtype=np.float32):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.pad = int(kernel_size), int(stride), int(pad)
        k = self.kernel_size
        fan_in = self.in_channels * k * k
        w = init_weights(fan_in, self.out_channels, "he", 1.0, rng, dtype)  # (fan_in, F)
        self.W = np.ascontiguousarray(w.T.reshape(self.out_channels, self.in_channels, k, k))
        self.dW = np.zeros_like(self.W)
        self.b = np.zeros(self.out_channels, dtype=dtype) if bias else None
        self.db = np.zeros_like(self.b) if bias else None

    def forward(self, x):
        x = check_images(x, "Conv2d", self.in_channels)
        out, self._saved = conv2d_forward(x, self.W, self.b, self.stride, self.pad)
        return out

    def backward(self, dout, need_input_grad: bool = True):
        """Writes dW and db; returns dx, or None when ``need_input_grad`` is
        False (the first layer, whose input is the data)."""
        dx, dw, db = conv2d_backward(dout, self._saved_for_backward(), need_input_grad)
        self.dW[...] = dw
        if self.b is not None:
            self.db[...] = db
        return dx

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, pad={self.pad}, bias={self.b is not None})")


def _pool_windows(x, who: str):
    """The 2x2 windows of ``x`` (N, C, H, W) as a (C, N, H/2, 2, W/2, 2) array."""
    x = check_images(x, who)
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"{who} (2x2, stride 2) needs an even height and width; got {h}x{w}")
    return _channels_first(x).reshape(c, n, h // 2, 2, w // 2, 2)


class MaxPool2d(Layer):
    """2x2 max pooling with stride 2: (N, C, H, W) -> (N, C, H/2, W/2).

    The gradient goes to the first maximum of each window (in row-major
    order), as in PyTorch.
    """

    def forward(self, x):
        win = _pool_windows(x, "MaxPool2d")  # (C, N, Ho, 2, Wo, 2), channel-major
        a, b = win[:, :, :, 0, :, 0], win[:, :, :, 0, :, 1]  # the four corners,
        c, d = win[:, :, :, 1, :, 0], win[:, :, :, 1, :, 1]  # in row-major order
        top, bottom = np.maximum(a, b), np.maximum(c, d)
        out = np.maximum(top, bottom)
        # index 0..3 of the first maximum of each window: ties go to the earlier corner
        first = np.where(bottom > top, 2 + (d > c), (b > a).astype(np.int8))
        self._saved = (first, win.shape)
        return _channels_first(out)

    def backward(self, dout, need_input_grad: bool = True):
        first, shape = self._saved_for_backward()
        d = _channels_first(dout)
        dx = np.empty(shape, dtype=d.dtype)
        for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            np.multiply(d, first == k, out=dx[:, :, :, i, :, j])
        c, n, ho, _, wo, _ = shape
        return _channels_first(dx.reshape(c, n, 2 * ho, 2 * wo))


class Flatten(Layer):
    """(N, C, H, W) -> (N, C * H * W), for the linear layer after the convolutions."""

    def forward(self, x):
        self._saved = np.shape(x)
        return np.reshape(x, (self._saved[0], -1))

    def backward(self, dout, need_input_grad: bool = True):
        return dout.reshape(self._saved_for_backward())
