"""bnbook.normalization: batch, layer, instance and group norm of images (chapter 9).

* float64 gradient checks (x, gamma, beta) of every member; relative error below 1e-6;
* BatchNorm2d equals BatchNorm1d on the (N*H*W, C) reshape, running statistics included;
* parity with torch (BatchNorm2d with running statistics and eval mode, GroupNorm,
  LayerNorm, InstanceNorm) in float64 to 1e-12;
* folding an eval-mode BatchNorm2d into the convolution before it;
* bad input raises a ValueError that names the problem.
"""

import numpy as np
import pytest

from bnbook import BatchNorm1d, numerical_gradient, relative_error
from bnbook.checks import NonFiniteError
from bnbook.convolution import conv2d_forward
from bnbook.normalization import (BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm2d, fold_batchnorm, normalize,
                                  normalize_backward, recompute_bn_statistics, statistic_groups)

# Relative error of a correct float64 gradient with h = 1e-5. Each numerical
# derivative sums 360 outputs, which leaves about 1e-9 of rounding noise, and
# relative_error divides by entries as small as 1e-3: a correct gradient scores
# up to a few 1e-7 here, a wrong one 1e-2 or more.
GRAD_TOL = 1e-6
FAMILY = {
    "batch": lambda: BatchNorm2d(6, dtype=np.float64),
    "layer": lambda: LayerNorm2d(6, dtype=np.float64),
    "instance": lambda: InstanceNorm2d(6, dtype=np.float64),
    "group": lambda: GroupNorm(3, 6, dtype=np.float64),
}


def with_random_affine(layer, rng):
    layer.gamma[...] = rng.uniform(0.5, 2.0, layer.num_channels)
    layer.beta[...] = rng.standard_normal(layer.num_channels)
    return layer


@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_backward_matches_numerical_gradient(kind):
    rng = np.random.default_rng(0)
    layer = with_random_affine(FAMILY[kind](), rng)
    x = rng.normal(1.0, 2.0, (3, 6, 4, 5))
    dout = rng.standard_normal(x.shape)
    layer.forward(x)
    dx = layer.backward(dout)
    dgamma, dbeta = layer.dgamma.copy(), layer.dbeta.copy()

    def out_of(**change):
        fresh = FAMILY[kind]()
        fresh.gamma[...], fresh.beta[...] = change.get("gamma", layer.gamma), change.get("beta", layer.beta)
        return fresh.forward(change.get("x", x))

    gamma, beta = layer.gamma.copy(), layer.beta.copy()
    assert relative_error(dx, numerical_gradient(lambda v: out_of(x=v), x, dout)) < GRAD_TOL
    assert relative_error(dgamma, numerical_gradient(lambda v: out_of(gamma=v), gamma, dout)) < GRAD_TOL
    assert relative_error(dbeta, numerical_gradient(lambda v: out_of(beta=v), beta, dout)) < GRAD_TOL


@pytest.mark.parametrize("kind, groups", [("batch", 6), ("layer", 3), ("instance", 18), ("group", 9)])
def test_each_member_normalizes_over_its_axes(kind, groups):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 5.0, (3, 6, 4, 5))
    layer = FAMILY[kind]()
    out = layer.forward(x)
    ids = statistic_groups(layer, x.shape)
    assert len(np.unique(ids)) == groups
    for g in np.unique(ids):
        values = out[ids == g]
        assert abs(values.mean()) < 1e-12
        assert abs(values.var() - 1) < 1e-5  # var / (var + eps) with eps = 1e-5


def test_normalize_backward_matches_numerical_gradient_for_any_axes():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 3.0, (4, 3, 5))
    dxhat = rng.standard_normal(x.shape)
    for axes in [(0,), (1, 2), (0, 2), (0, 1, 2)]:
        xhat, cache = normalize(x, axes)
        num = numerical_gradient(lambda v, axes=axes: normalize(v, axes)[0], x, dxhat)
        dx, sum_g, sum_g_xhat = normalize_backward(dxhat, cache)
        assert relative_error(dx, num) < GRAD_TOL
        # the two sums over the normalized axes, kept as size 1 (batch norm's dbeta and dgamma)
        np.testing.assert_allclose(sum_g, dxhat.sum(axis=axes, keepdims=True), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sum_g_xhat, (dxhat * xhat).sum(axis=axes, keepdims=True), rtol=1e-12, atol=1e-12)


def test_batchnorm2d_equals_batchnorm1d_on_the_reshape():
    rng = np.random.default_rng(3)
    bn2, bn1 = BatchNorm2d(4, momentum=0.3, dtype=np.float64), BatchNorm1d(4, momentum=0.3, dtype=np.float64)
    for n in (2, 5, 3):
        x = rng.normal(2.0, 3.0, (n, 4, 3, 5))
        dout = rng.standard_normal(x.shape)
        flat = x.transpose(0, 2, 3, 1).reshape(-1, 4)  # (N*H*W, C)
        out1 = bn1.forward(flat).reshape(n, 3, 5, 4).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(bn2.forward(x), out1, rtol=1e-12, atol=1e-12)
        dx1 = bn1.backward(dout.transpose(0, 2, 3, 1).reshape(-1, 4)).reshape(n, 3, 5, 4).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(bn2.backward(dout), dx1, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn2.dgamma, bn1.dgamma, rtol=1e-12)
        np.testing.assert_allclose(bn2.running_mean, bn1.running_mean, rtol=1e-12)
        np.testing.assert_allclose(bn2.running_var, bn1.running_var, rtol=1e-12)
    x = rng.normal(size=(2, 4, 3, 5))
    bn1.eval(), bn2.eval()
    flat_out = bn1.forward(x.transpose(0, 2, 3, 1).reshape(-1, 4))
    np.testing.assert_allclose(bn2.forward(x), flat_out.reshape(2, 3, 5, 4).transpose(0, 3, 1, 2),
                               rtol=1e-12, atol=1e-12)


def test_group_norm_extremes_are_layer_and_instance_norm():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 3, 3))
    np.testing.assert_array_equal(GroupNorm(1, 6, dtype=np.float64).forward(x),
                                  LayerNorm2d(6, dtype=np.float64).forward(x))
    np.testing.assert_array_equal(GroupNorm(6, 6, dtype=np.float64).forward(x),
                                  InstanceNorm2d(6, dtype=np.float64).forward(x))


def test_per_sample_norms_ignore_the_rest_of_the_batch():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6, 3, 3))
    for layer in (GroupNorm(3, 6, dtype=np.float64), LayerNorm2d(6, dtype=np.float64),
                  InstanceNorm2d(6, dtype=np.float64)):
        np.testing.assert_allclose(layer.forward(x)[1:2], layer.forward(x[1:2]), rtol=0, atol=1e-15)


def test_fold_batchnorm_into_the_convolution_gives_the_same_outputs():
    rng = np.random.default_rng(6)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    bn = with_random_affine(BatchNorm2d(4, dtype=np.float64), rng)
    for _ in range(5):
        bn.forward(conv2d_forward(rng.normal(1.0, 2.0, (8, 3, 6, 6)), w, b, 1, 1)[0])
    bn.eval()
    x = rng.normal(1.0, 2.0, (2, 3, 6, 6))
    wf, bf = fold_batchnorm(w, b, bn)
    np.testing.assert_allclose(conv2d_forward(x, wf, bf, 1, 1)[0],
                               bn.forward(conv2d_forward(x, w, b, 1, 1)[0]), rtol=1e-12, atol=1e-12)
    wf0, bf0 = fold_batchnorm(w, None, bn)  # a bias-free convolution
    np.testing.assert_allclose(conv2d_forward(x, wf0, bf0, 1, 1)[0],
                               bn.forward(conv2d_forward(x, w, None, 1, 1)[0]), rtol=1e-12, atol=1e-12)


def test_eval_mode_uses_running_statistics_and_keeps_them():
    rng = np.random.default_rng(7)
    bn = BatchNorm2d(2, dtype=np.float64)
    bn.running_mean[...] = [1.0, -2.0]
    bn.running_var[...] = [4.0, 0.25]
    bn.eval()
    x = rng.normal(size=(1, 2, 3, 3))  # a single image is fine in eval mode
    expected = (x - bn.running_mean[:, None, None]) / np.sqrt(bn.running_var[:, None, None] + bn.eps)
    np.testing.assert_allclose(bn.forward(x), expected, rtol=1e-14)
    np.testing.assert_array_equal(bn.running_mean, [1.0, -2.0])


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_wrong_rank_is_refused(kind):
    with pytest.raises(ValueError, match="rank 2"):
        FAMILY[kind]().forward(np.zeros((4, 6)))


def test_channels_not_divisible_by_groups_is_refused():
    with pytest.raises(ValueError, match=r"num_channels \(6\) is not divisible by num_groups \(4\)"):
        GroupNorm(4, 6)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="expects 6 channels"):
        BatchNorm2d(6).forward(np.zeros((2, 5, 3, 3)))


def test_one_value_per_channel_in_training_is_refused():
    with pytest.raises(ValueError, match="single value per channel"):
        BatchNorm2d(3).forward(np.ones((1, 3, 1, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="single value per group"):
        InstanceNorm2d(3).forward(np.ones((5, 3, 1, 1), dtype=np.float32))
    bn = BatchNorm2d(3).eval()
    assert bn.forward(np.ones((1, 3, 1, 1), dtype=np.float32)).shape == (1, 3, 1, 1)


def test_non_finite_input_is_refused():
    x = np.ones((2, 3, 2, 2), dtype=np.float32)
    x[0, 1, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="non-finite"):
        BatchNorm2d(3).forward(x)
    with pytest.raises(NonFiniteError, match="non-finite"):
        GroupNorm(3, 3).forward(x)


def test_input_of_another_dtype_is_refused_naming_both():
    for layer in (BatchNorm2d(3), GroupNorm(3, 3), LayerNorm2d(3), InstanceNorm2d(3)):
        with pytest.raises(ValueError, match="float32.*float64"):
            layer.forward(np.ones((2, 3, 2, 2)))


# --------------------------------------------------------------------------
# torch parity
# --------------------------------------------------------------------------
def test_batchnorm2d_equals_torch_with_running_statistics_and_eval_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    ours = with_random_affine(BatchNorm2d(3, eps=1e-3, momentum=0.2, dtype=np.float64), rng)
    theirs = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, dtype=torch.float64).train()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.gamma))
        theirs.bias.copy_(torch.from_numpy(ours.beta))
    for n in (2, 5, 1, 8):  # a batch of one image still has H*W values per channel
        x = rng.normal(np.arange(3)[:, None, None], 2.0, (n, 3, 4, 3))
        xt = torch.tensor(x, requires_grad=True)
        ot = theirs(xt)
        dout = rng.standard_normal(x.shape)
        ot.backward(torch.from_numpy(dout))
        np.testing.assert_allclose(ours.forward(x), ot.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.dgamma, theirs.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.dbeta, theirs.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
        theirs.zero_grad()
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-13)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-13)
    ours.eval(), theirs.eval()
    x = rng.normal(size=(2, 3, 4, 3))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["group", "layer", "instance"])
def test_per_sample_norms_equal_torch_float64(kind):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    ours = with_random_affine(FAMILY[kind](), rng)
    x = rng.normal(1.0, 3.0, (3, 6, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = (torch.tensor(a, requires_grad=True) for a in (ours.gamma, ours.beta))
    if kind == "group":
        ot = F.group_norm(xt, 3, gt, bt, eps=ours.eps)
    elif kind == "layer":  # torch's LayerNorm([C, H, W]) with the per-channel affine spread over (H, W)
        ot = F.layer_norm(xt, (6, 4, 5), gt[:, None, None].expand(6, 4, 5),
                          bt[:, None, None].expand(6, 4, 5), eps=ours.eps)
    else:
        ot = F.instance_norm(xt, weight=gt, bias=bt, eps=ours.eps)
    dout = rng.standard_normal(x.shape)
    ot.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(ours.forward(x), ot.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.dgamma, gt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.dbeta, bt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_recompute_bn_statistics_gives_population_statistics_of_images():
    from bnbook import Sequential
    from bnbook.convolution import Conv2d

    rng = np.random.default_rng(10)
    conv = Conv2d(2, 3, 3, pad=1, rng=0, dtype=np.float64)
    model = Sequential(conv, BatchNorm2d(3, dtype=np.float64))
    x = rng.normal(1.0, 2.0, (7, 2, 5, 5))
    recompute_bn_statistics(model, x, batch_size=3)
    h = conv.forward(x)
    np.testing.assert_allclose(model[1].running_mean, h.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(model[1].running_var, h.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    assert model.training
