"""Input checks shared by every module, and :class:`NonFiniteError`.

Each check returns its argument in the form the caller computes with, or
raises a ``ValueError`` whose message names the argument and what is wrong.
Shapes: a batch ``x`` is ``(m, d)`` (``m`` samples, ``d`` features); a
per-feature parameter such as ``gamma`` is ``(d,)``.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "NonFiniteError",
    "as_float",
    "check_batch",
    "check_param",
    "check_eps",
    "check_momentum",
    "check_finite",
    "check_dtype",
    "check_images",
]


class NonFiniteError(ValueError):
    """A NaN or inf where a finite number is needed.

    Raised where the value is found (a layer's input or batch statistics);
    :func:`bnbook.training.fit` catches it to tell a diverging run from a bug.
    """


def as_float(x) -> np.ndarray:
    """``x`` as a floating array: float arrays unchanged, integers and bools as float64."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return x


def check_batch(x, features: int | None = None, name: str = "x") -> np.ndarray:
    """``x`` as a floating 2-D array of shape (m, features) (any width if None)."""
    x = as_float(x)
    if x.ndim != 2 or (features is not None and x.shape[1] != features):
        width = "d" if features is None else features
        raise ValueError(
            f"{name} must be 2-D of shape (m, {width}) (batch, features); got shape {x.shape}"
        )
    return x


def check_param(p, d: int, name: str, dtype) -> np.ndarray:
    """A finite (d,) parameter, in ``dtype``."""
    p = np.asarray(p)
    if p.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},) to match x; got shape {p.shape}")
    if not np.isfinite(p).all():
        raise NonFiniteError(f"{name} contains non-finite values (NaN or inf)")
    return p.astype(dtype, copy=False)


def check_eps(eps: float) -> float:
    """A positive finite ``eps``, as a float."""
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    return float(eps)


def check_momentum(momentum: float | None, upper_open: bool = False,
                   allow_none: bool = False) -> float | None:
    """A momentum in [0, 1] (in [0, 1) with ``upper_open``), as a float.

    With ``allow_none`` (batch norm's running averages) ``None`` passes
    through: it asks for a cumulative average instead of an exponential one."""
    if momentum is None:
        if allow_none:
            return None
        raise ValueError("momentum must be a number here; got None")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum must be a number{' or None' if allow_none else ''}; "
                         f"got {momentum!r}")
    if not (0.0 <= momentum < 1.0 if upper_open else 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must lie in [0, {'1)' if upper_open else '1]'}"
                         f"{' or be None' if allow_none else ''}; got {momentum!r}")
    return float(momentum)


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``values`` holds NaN or inf; ``what``
    completes "x contains non-finite values ..."; the indices of the bad rows
    (of ``values`` without its size-1 axes) follow."""
    if not np.isfinite(values).all():
        v = np.atleast_1d(np.squeeze(values))  # statistics kept with size-1 axes lose them
        bad = np.flatnonzero((~np.isfinite(v.reshape(len(v), -1))).any(axis=1))
        raise NonFiniteError(
            f"x contains non-finite values (NaN or inf){what} {bad[:10].tolist()}"
        )


def check_dtype(x: np.ndarray, dtype, who: str) -> None:
    """Refuse ``x`` unless its dtype is the layer's ``dtype``, naming both."""
    if x.dtype != dtype:
        raise ValueError(
            f"{who} holds {dtype} parameters but x has dtype {x.dtype}; convert x with "
            f"x.astype(np.{dtype}) or build the layer with dtype=np.{x.dtype}"
        )


def check_images(x, who: str, channels: int | None = None) -> np.ndarray:
    """``x`` as a floating batch of images (N, C, H, W), with ``channels``
    channels unless None; a ValueError naming ``who`` otherwise."""
    x = as_float(x)
    if x.ndim != 4:
        raise ValueError(f"{who} expects a 4-D batch of images (N, C, H, W); "
                         f"got an array of rank {x.ndim} with shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} channels (axis 1 of (N, C, H, W)); "
                         f"got shape {x.shape}")
    return x
