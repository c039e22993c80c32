"""bnbook's batch norm against PyTorch (skipped when torch is not importable).

* BatchNorm1d: running statistics after several training steps on different
  batches (of different sizes), then the eval-mode output, equal those of
  torch.nn.BatchNorm1d;
* batchnorm_forward / batchnorm_backward equal torch autograd in float64.
"""

import numpy as np
import pytest

from bnbook.normalization import BatchNorm1d
from bnbook.batchnorm import batchnorm_backward, batchnorm_forward

torch = pytest.importorskip("torch")


def torch_bn(d, eps, momentum, dtype, gamma, beta):
    tbn = torch.nn.BatchNorm1d(d, eps=eps, momentum=momentum, dtype=dtype)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(gamma))
        tbn.bias.copy_(torch.from_numpy(beta))
    return tbn


@pytest.mark.parametrize("eps, momentum", [(1e-5, 0.1), (1e-3, 0.5), (0.1, 1.0), (1e-5, 0.0)])
def test_layer_running_statistics_and_eval_output_equal_torch_float64(eps, momentum):
    d = 6
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 2.0, d)
    beta = rng.standard_normal(d)
    ours = BatchNorm1d(d, eps=eps, momentum=momentum, dtype=np.float64)
    ours.gamma[...] = gamma
    ours.beta[...] = beta
    theirs = torch_bn(d, eps, momentum, torch.float64, gamma, beta).train()
    for m in [2, 5, 16, 3, 32, 7]:
        x = rng.normal(loc=np.arange(d) - 2.0, scale=0.5 + np.arange(d), size=(m, d))
        out = ours.forward(x)
        tout = theirs(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, tout, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(),
                                   rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(),
                                   rtol=1e-13, atol=1e-15)
    ours.eval()
    theirs.eval()
    for m in (1, 4, 50):
        x = rng.normal(1.0, 3.0, (m, d))
        np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-12, atol=1e-12)


def test_layer_equals_torch_in_float32():
    d = 10
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.5, 2.0, d).astype(np.float32)
    beta = rng.standard_normal(d).astype(np.float32)
    ours = BatchNorm1d(d)  # float32, eps 1e-5, momentum 0.1: torch's defaults
    ours.gamma[...] = gamma
    ours.beta[...] = beta
    theirs = torch_bn(d, 1e-5, 0.1, torch.float32, gamma, beta).train()
    for m in (64, 8, 100, 2, 30):
        x = rng.normal(3.0, 2.0, (m, d)).astype(np.float32)
        out = ours.forward(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-5, atol=1e-6)
    ours.eval()
    theirs.eval()
    x = rng.normal(3.0, 2.0, (20, d)).astype(np.float32)
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_forward_and_backward_equal_torch_autograd_float64(seed):
    rng = np.random.default_rng(seed)
    m, d = int(rng.integers(2, 30)), int(rng.integers(1, 8))
    eps = float(10.0 ** rng.uniform(-6, -1))
    x = rng.normal(rng.uniform(-5, 5), 10.0 ** rng.uniform(-2, 2), (m, d))
    gamma = rng.standard_normal(d)
    beta = rng.standard_normal(d)
    dout = rng.standard_normal((m, d))

    out, cache = batchnorm_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(gamma, requires_grad=True)
    tb = torch.tensor(beta, requires_grad=True)
    tout = torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True, eps=eps)
    tout.backward(torch.from_numpy(dout))

    def close(a, b):
        scale = np.max(np.abs(b)) + 1e-300
        return np.max(np.abs(a - b)) <= 1e-10 * scale

    assert close(out, tout.detach().numpy())
    assert close(dgamma, tg.grad.numpy())
    assert close(dbeta, tb.grad.numpy())
    # dx is a cancellation of terms of size |gamma / std| |dout|: compare on that scale
    dx_scale = np.max(np.abs(gamma * cache.inv_std)) * np.max(np.abs(dout))
    assert np.max(np.abs(dx - tx.grad.numpy())) <= 1e-10 * dx_scale
