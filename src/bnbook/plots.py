"""Figures shared by the chapters (matplotlib).

Every helper takes an optional ``ax`` and returns it, so a chapter can place
figures side by side; titles, axis labels and legends are always set.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["new_axes", "plot_percentile_bands", "plot_loss_contours", "show_digits",
           "plot_error_vs_step", "plot_grouped_bars", "plot_descent"]


def new_axes(ncols: int = 1, nrows: int = 1, width: float = 4.8, height: float = 3.6, **kw):
    """A figure with ``nrows x ncols`` axes of the given size each (inches)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             constrained_layout=True, **kw)
    return fig, axes


def plot_percentile_bands(steps, values, percentiles=(15, 50, 85), ax=None, title="",
                          ylabel="value", label_prefix=""):
    """Lines of the given percentiles of ``values`` (n_steps, n_samples) against ``steps``."""
    if ax is None:
        _, ax = new_axes()
    q = np.percentile(np.asarray(values), percentiles, axis=1)
    for p, row in zip(percentiles, q):
        ax.plot(steps, row, label=f"{label_prefix}{p}th percentile")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_loss_contours(loss, xlim, ylim, path=None, ax=None, levels=20, title="",
                       xlabel="$w_1$", ylabel="$w_2$", n: int = 200, log_levels: bool = True):
    """Contours of ``loss(w1, w2)`` (vectorized over grids) with an optional descent path.

    ``path`` is an array (k, 2) of iterates, drawn as a line with markers.
    """
    if ax is None:
        _, ax = new_axes()
    w1, w2 = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    z = loss(w1, w2)
    if log_levels:
        lo, hi = np.log10(max(z.min(), 1e-12)), np.log10(z.max())
        levels = np.logspace(lo, hi, levels)
    ax.contour(w1, w2, z, levels=levels, cmap="viridis", linewidths=0.8)
    if path is not None:
        path = np.asarray(path)
        ax.plot(path[:, 0], path[:, 1], "-o", color="crimson", ms=2.5, lw=1, label="gradient descent")
        ax.plot(*path[0], "s", color="black", ms=6, label="start")
        ax.legend(loc="upper right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def show_digits(x, y, n: int = 10, ax=None, title: str = "MNIST digits"):
    """A row of ``n`` images from ``x`` (n, 784) with their labels ``y``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * n, 1.6), constrained_layout=True)
    strip = np.concatenate([np.asarray(x[i]).reshape(28, 28) for i in range(n)], axis=1)
    ax.imshow(strip, cmap="gray_r")
    ax.set_xticks(14 + 28 * np.arange(n), [str(int(v)) for v in y[:n]])
    ax.set_yticks([])
    ax.set_xlabel("label")
    ax.set_title(title)
    return ax


def plot_error_vs_step(steps, errors, ax=None, title: str = "", xlabel: str = "step $h$",
                       ylabel: str = "relative error", mark_min: bool = True, styles=None):
    """Log-log curves of ``errors[label]`` (n,) against ``steps`` (n,).

    With ``mark_min`` the smallest error of each curve gets a large dot of the
    curve's colour (the step to pick). Returns the axes.
    """
    if ax is None:
        _, ax = new_axes()
    styles = styles or {}
    steps = np.asarray(steps, dtype=float)
    for label, err in errors.items():
        err = np.asarray(err, dtype=float)
        (line,) = ax.loglog(steps, err, marker=".", ms=4, label=label, **styles.get(label, {}))
        if mark_min:
            k = int(np.nanargmin(err))
            ax.loglog(steps[k], err[k], "o", color=line.get_color(), ms=9, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return ax


def plot_grouped_bars(labels, values, ax=None, title: str = "", ylabel: str = "value",
                      xlabel: str = "", log: bool = False):
    """Bars of ``values[series]`` (one number per label), grouped by label.

    ``labels`` name the groups (x axis); ``values`` maps a series name (legend)
    to a sequence of ``len(labels)`` numbers. ``log`` puts the y axis on a log
    scale. Returns the axes.
    """
    if ax is None:
        _, ax = new_axes()
    n = len(values)
    width = 0.8 / max(n, 1)
    pos = np.arange(len(labels))
    for k, (name, vals) in enumerate(values.items()):
        ax.bar(pos + (k - (n - 1) / 2) * width, np.asarray(vals, dtype=float), width, label=name)
    ax.set_xticks(pos, [str(s) for s in labels])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend()
    return ax


def plot_descent(problem, result, ax=None, title: str = "", xlabel: str = "$w_1$",
                 ylabel: str = "$w_2$", margin: float = 0.15, equal: bool = False,
                 max_points: int = 400):
    """Loss contours of a two-weight problem with a gradient-descent path on them.

    ``problem`` has ``loss_grid(w1, w2)`` and ``w_star`` (2,) (for example a
    :class:`bnbook.input_normalization.LeastSquares`); ``result`` has ``path`` (k + 1, 2)
    (a :class:`bnbook.input_normalization.DescentResult`). The window holds the start,
    the minimum and the path (points farther than 100 times the
    start-to-minimum distance, from a diverging run, are left out); the
    minimum is marked with a star. ``equal=True`` makes the window square with
    equal axis scales (so a round bowl looks round). Long paths are thinned
    for drawing to the first 50 iterates plus ``max_points - 50`` evenly
    spaced ones (the last one included).
    """
    if ax is None:
        _, ax = new_axes()
    path = np.asarray(result.path)
    if len(path) > max_points:
        rest = np.unique(np.linspace(50, len(path) - 1, max_points - 50).astype(int))
        path = np.vstack([path[:50], path[rest]])
    w_star = np.asarray(problem.w_star)
    span = np.abs(path[0] - w_star) + 1e-12
    keep = np.all(np.abs(path - w_star) <= 100 * span, axis=1)
    pts = np.vstack([path[keep], w_star])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if equal:
        centre, half = (lo + hi) / 2, (hi - lo).max() / 2
        lo, hi = centre - half, centre + half
    pad = margin * (hi - lo) + 1e-12
    xlim, ylim = (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])
    plot_loss_contours(problem.loss_grid, xlim, ylim, path=path, ax=ax, title=title,
                       xlabel=xlabel, ylabel=ylabel)
    ax.plot(*w_star, "*", color="gold", mec="black", ms=12, label="minimum")
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    if equal:
        ax.set_aspect("equal")
    ax.legend(loc="best", fontsize="small")
    return ax
