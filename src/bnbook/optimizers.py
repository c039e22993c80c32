"""Optimizers: objects that own an update rule and apply it to the parameters they are given.

Used through :func:`bnbook.training.fit` by every chapter that trains (1 and 5-9);
chapter 8 gives ``fit`` an :class:`SGD` with weight decay.

Parameters are ``(name, value, gradient)`` triples, as ``model.params()``
lists them; an optimizer updates the value arrays in place from the gradient
arrays, which the layers' ``backward`` writes in place.
"""
from __future__ import annotations

import numpy as np

from .checks import check_momentum

__all__ = ["SGD"]


class SGD:
    """Stochastic gradient descent, with momentum and weight decay as in ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g``, ``step()`` does
    ``g = g + weight_decay * p``, then ``v = momentum * v + g`` (``v = g``
    without momentum), then ``p -= lr * v``.

    ``params`` is a model (anything with ``params()``), a list of
    ``(name, value, gradient)`` triples, or a list of groups, dicts with the
    key ``"params"`` (triples) and optionally ``"lr"``, ``"momentum"`` and
    ``"weight_decay"`` overriding the defaults for that group (chapter 8
    decays the weights and not the batch-norm parameters).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        defaults = self._checked(dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        if hasattr(params, "params"):
            params = params.params()
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.groups = []
        for group in params:
            unknown = set(group) - {"params", *defaults}
            if unknown:
                raise ValueError(f"unknown optimizer option(s) {sorted(unknown)}; "
                                 f"use {sorted(defaults)}")
            g = self._checked(defaults | group)
            g["params"] = list(g["params"])
            self.groups.append(g)
        self.defaults = defaults
        self._velocity: dict[int, np.ndarray] = {}

    @staticmethod
    def _checked(group: dict) -> dict:
        """The group's settings checked, as Python floats: a NumPy float64 rate
        would turn a float32 parameter's update into a float64 product."""
        if not group["lr"] > 0:
            raise ValueError(f"learning rate must be positive; got {group['lr']!r}")
        if not group["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {group['weight_decay']!r}")
        return group | {"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"]),
                        "momentum": check_momentum(group["momentum"], upper_open=True)}

    @property
    def lr(self) -> float:
        """The default learning rate (a group may override it)."""
        return self.defaults["lr"]

    def step(self) -> None:
        for group in self.groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for _, p, g in group["params"]:
                if wd:
                    g = g + wd * p
                if mom:
                    v = self._velocity.setdefault(id(p), np.zeros_like(p))
                    v *= mom
                    v += g
                    g = v
                p -= lr * g

    def __repr__(self) -> str:
        g = self.defaults
        return f"SGD(lr={g['lr']:g}, momentum={g['momentum']:g}, weight_decay={g['weight_decay']:g})"
