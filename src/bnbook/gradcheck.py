"""Numerical gradients by centred differences, and how to compare them (chapter 4).

The discipline: compute the analytic gradient, compute a numerical one, and
look at the *relative* error. In float64 with a good step, a correct
gradient agrees to about 1e-7 or better; 1e-2 means a bug.

A full check costs two forward passes per parameter entry. Chapter 4 (the
gradient check) also uses the two cheaper checks here: a random sample of
entries (:func:`check_sampled_entries`) and one random direction in the
space of all parameters (:func:`check_random_direction`, two forward passes).
"""
from __future__ import annotations

import numpy as np

from .layers import running_stats_kept

__all__ = [
    "check_layer_gradients",
    "check_random_direction",
    "check_sampled_entries",
    "numerical_gradient",
    "relative_error",
]


def numerical_gradient(f, x, dout, h: float = 1e-5) -> np.ndarray:
    """Centred-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    Parameters
    ----------
    f : callable taking ``x`` (any shape) and returning an array shaped like ``dout``.
        It is called with ``x`` itself, modified in place one entry at a time.
    x : float array (any shape); restored to its original values afterwards.
    dout : array, the upstream gradient (the "weights" of the sum).
    h : step size.

    Returns
    -------
    grad : array of the shape of ``x``: ``(L(x + h e_i) - L(x - h e_i)) / (2 h)``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be a float array to be perturbed in place; got {x.dtype}")
    if not h > 0:
        raise ValueError(f"step h must be positive; got {h!r}")
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: writing to it writes to x
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(np.asarray(f(x), dtype=np.float64) * dout)
        flat[i] = old - h
        minus = np.sum(np.asarray(f(x), dtype=np.float64) * dout)
        flat[i] = old
        g[i] = (plus - minus) / (2.0 * h)
    return grad


def relative_error(a, b) -> float:
    """``max |a - b| / max(1e-8, |a| + |b|)``, elementwise, then the maximum."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))) if a.size else 0.0


def check_layer_gradients(model, loss_fn, x, y, h: float = 1e-5) -> dict:
    """Relative error of every parameter gradient of ``model`` (and of dx).

    ``loss_fn(logits, y) -> (loss, dlogits)``. The model should be in float64
    and in the mode to check. Batch norm in training mode is fine: each
    perturbed forward pass recomputes the batch statistics, which is what the
    analytic gradient differentiates. Running statistics, which every
    training-mode forward pass updates, are restored when the check ends.

    Returns ``{name: relative error}`` with ``"x"`` for the input gradient.
    """
    x = np.array(x, dtype=np.float64)
    with running_stats_kept(model):
        return _check(model, loss_fn, x, y, h)


def _check(model, loss_fn, x, y, h):
    def loss_at(_):
        return np.asarray(loss_fn(model.forward(x), y)[0])

    logits = model.forward(x)
    _, dlogits = loss_fn(logits, y)
    dx = model.backward(dlogits)
    errors = {}
    analytic = {name: g.copy() for name, _, g in model.params()}
    for name, p, _ in model.params():
        num = numerical_gradient(loss_at, p, np.float64(1.0), h)
        errors[name] = relative_error(analytic[name], num)
    num_x = numerical_gradient(loss_at, x, np.float64(1.0), h)
    errors["x"] = relative_error(dx, num_x)
    return errors


def _loss_and_backward(model, loss_fn, x, y):
    _, dlogits = loss_fn(model.forward(x), y)
    model.backward(dlogits)
    return {name: g.copy() for name, _, g in model.params()}


def check_sampled_entries(model, loss_fn, x, y, n: int, rng, h: float = 1e-5) -> dict:
    """Relative error of each parameter gradient of ``model`` on ``n`` random entries.

    Like :func:`check_layer_gradients` (``x`` of shape (m, in), ``y`` the
    labels, ``loss_fn(logits, y) -> (loss, dlogits)``), but each parameter
    array is checked only at ``min(n, size)`` entries drawn without
    replacement by the generator ``rng``: ``2 * n`` forward passes per
    parameter array instead of two per entry. Running statistics are
    restored. Returns ``{name: relative error over the sampled entries}``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    x = np.array(x, dtype=np.float64)
    with running_stats_kept(model):
        analytic = _loss_and_backward(model, loss_fn, x, y)
        errors = {}
        for name, p, _ in model.params():
            flat = p.reshape(-1)
            if not np.shares_memory(flat, p):
                raise ValueError(f"parameter {name} must be contiguous to be perturbed in place")
            idx = rng.choice(flat.size, size=min(int(n), flat.size), replace=False)
            num = np.empty(idx.size)
            for k, i in enumerate(idx):
                old = flat[i]
                flat[i] = old + h
                plus = float(loss_fn(model.forward(x), y)[0])
                flat[i] = old - h
                minus = float(loss_fn(model.forward(x), y)[0])
                flat[i] = old
                num[k] = (plus - minus) / (2.0 * h)
            errors[name] = relative_error(analytic[name].reshape(-1)[idx], num)
        return errors


def check_random_direction(model, loss_fn, x, y, rng, h: float = 1e-5):
    """Directional derivative of the loss along one random direction of all parameters.

    Draws a direction ``u`` (one standard-normal array per parameter, shaped
    like it), and compares ``(L(theta + h u) - L(theta - h u)) / (2 h)``,
    two forward passes, with the analytic ``sum_p <grad_p, u_p>``. Every
    parameter is restored bit for bit, and so are running statistics.

    Returns ``(numerical, analytic, relative error)``, three floats.
    """
    x = np.array(x, dtype=np.float64)
    with running_stats_kept(model):
        analytic = _loss_and_backward(model, loss_fn, x, y)
        params = [(name, p) for name, p, _ in model.params()]
        saved = [p.copy() for _, p in params]
        dirs = [rng.standard_normal(p.shape) for _, p in params]
        predicted = float(sum(np.sum(analytic[name] * u) for (name, _), u in zip(params, dirs)))
        try:
            values = []
            for sign in (1.0, -1.0):
                for (_, p), p0, u in zip(params, saved, dirs):
                    p[...] = p0 + sign * h * u
                values.append(float(loss_fn(model.forward(x), y)[0]))
        finally:
            for (_, p), p0 in zip(params, saved):
                p[...] = p0
        numerical = (values[0] - values[1]) / (2.0 * h)
        return numerical, predicted, relative_error(np.array([numerical]), np.array([predicted]))
