"""bnbook.convolution: convolution, pooling and flattening (chapter 9).

* float64 gradient checks of conv2d (x, w, b), max and average pooling, and
  a small convolutional network end to end; relative error below 1e-7;
* parity with torch (conv2d forward and backward, pooling) to 1e-12 in float64;
* bad input raises a ValueError that names the problem.
"""

import numpy as np
import pytest

from bnbook import (Linear, ReLU, Sequential, numerical_gradient, relative_error, softmax_cross_entropy)
from bnbook.convolution import (Conv2d, Flatten, MaxPool2d, col2im, conv2d_backward, conv2d_forward, im2col)
from bnbook.models import build_cnn
from bnbook.gradcheck import check_layer_gradients
from bnbook.normalization import BatchNorm2d

GRAD_TOL = 1e-7  # relative error of a correct float64 gradient with h = 1e-5


def conv_loop(x, w, b, stride, pad):
    """The definition, with loops: the reference for conv2d_forward."""
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nckl,fckl->nf", patch, w) + b
    return out


@pytest.mark.parametrize("stride, pad", [(1, 0), (1, 1), (2, 1), (2, 0)])
def test_conv2d_forward_matches_the_definition(stride, pad):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, _ = conv2d_forward(x, w, b, stride, pad)
    np.testing.assert_allclose(out, conv_loop(x, w, b, stride, pad), rtol=1e-12, atol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for all x, c: the defining property of the backward pass
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5))
    cols = im2col(x, 3, 3, 2, 1)
    c = rng.standard_normal(cols.shape)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * col2im(c, x.shape, 3, 3, 2, 1))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (1, 0)])
def test_conv2d_backward_matches_numerical_gradient(stride, pad):
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    out, cache = conv2d_forward(x, w, b, stride, pad)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)
    assert relative_error(dx, numerical_gradient(lambda v: conv2d_forward(v, w, b, stride, pad)[0], x, dout)) < GRAD_TOL
    assert relative_error(dw, numerical_gradient(lambda v: conv2d_forward(x, v, b, stride, pad)[0], w, dout)) < GRAD_TOL
    assert relative_error(db, numerical_gradient(lambda v: conv2d_forward(x, w, v, stride, pad)[0], b, dout)) < GRAD_TOL


@pytest.mark.parametrize("pool", [MaxPool2d])
def test_pooling_backward_matches_numerical_gradient(pool):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 6))  # continuous values: no ties in a max window
    layer = pool()
    out = layer.forward(x)
    assert out.shape == (2, 3, 2, 3)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    num = numerical_gradient(lambda v: pool().forward(v), x, dout)
    assert relative_error(dx, num) < GRAD_TOL


def test_max_pool_sends_the_gradient_of_a_tie_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 2))
    layer = MaxPool2d()
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1))).ravel(), [1, 0, 0, 0])


def test_small_cnn_gradients_match_numerical_gradients():
    rng = np.random.default_rng(4)
    model = Sequential(Conv2d(1, 2, 3, pad=1, bias=False, rng=rng, dtype=np.float64),
                       BatchNorm2d(2, dtype=np.float64), ReLU(), MaxPool2d(),
                       Conv2d(2, 3, 3, pad=1, rng=rng, dtype=np.float64), ReLU(), MaxPool2d(),
                       Flatten(), Linear(12, 4, rng=rng, dtype=np.float64))
    x = rng.standard_normal((3, 1, 8, 8))
    y = np.array([0, 3, 1])
    errors = check_layer_gradients(model, softmax_cross_entropy, x, y)
    assert set(errors) == {"0.W", "1.gamma", "1.beta", "4.W", "4.b", "8.W", "8.b", "x"}
    assert max(errors.values()) < 1e-6, errors


def test_first_layer_can_skip_the_input_gradient():
    rng = np.random.default_rng(5)
    layer = Conv2d(1, 2, 3, rng=0)
    out = layer.forward(rng.standard_normal((2, 1, 5, 5)).astype(np.float32))
    assert layer.backward(np.ones_like(out), need_input_grad=False) is None
    assert np.any(layer.dW != 0)
    dw = layer.dW.copy()  # the parameter gradients are the same either way
    assert layer.backward(np.ones_like(out)).shape == (2, 1, 5, 5)
    np.testing.assert_array_equal(layer.dW, dw)


def test_conv2d_layer_keeps_float32():
    layer = Conv2d(3, 4, 3, pad=1, rng=0)
    out = layer.forward(np.ones((2, 3, 5, 5), dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (2, 4, 5, 5)
    assert layer.backward(np.ones_like(out)).dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 5)), "rank 3"),
    (np.zeros((2, 2, 5, 5)), "expects 3 channels"),
])
def test_conv2d_layer_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        Conv2d(3, 4, 3, rng=0).forward(bad)


def test_conv2d_rejects_a_kernel_larger_than_the_image_and_pooling_odd_sizes():
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="even height and width"):
        MaxPool2d().forward(np.zeros((1, 1, 3, 4)))
    with pytest.raises(ValueError, match="rank 2"):
        MaxPool2d().forward(np.zeros((3, 4)))


# --------------------------------------------------------------------------
# torch parity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0)])
def test_conv2d_equals_torch_forward_and_backward_float64(stride, pad):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((4, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    out, cache = conv2d_forward(x, w, b, stride, pad)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ot = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad)
    dout = rng.standard_normal(out.shape)
    ot.backward(torch.from_numpy(dout))
    dx, dw, db = conv2d_backward(dout, cache)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool, torch_name", [(MaxPool2d, "max_pool2d")])
def test_pooling_equals_torch_float64(pool, torch_name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 6, 4))
    layer = pool()
    out = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    ot = getattr(torch.nn.functional, torch_name)(xt, 2)
    dout = rng.standard_normal(out.shape)
    ot.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-14, atol=1e-14)


def test_build_cnn_shapes_and_same_initial_weights_with_and_without_norm():
    plain, bn = build_cnn(None, seed=3), build_cnn("batch", seed=3)
    np.testing.assert_array_equal(plain[0].W, bn[0].W)
    np.testing.assert_array_equal(plain[-1].W, bn[-1].W)
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    assert plain.forward(x).shape == (2, 10)
    assert build_cnn("group", groups=4).forward(x).shape == (2, 10)
    with pytest.raises(ValueError, match="norm must be"):
        build_cnn("layer")
