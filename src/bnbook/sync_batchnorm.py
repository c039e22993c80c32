"""Batch norm with statistics synchronized across devices (chapter 7).

Data-parallel training splits a batch of n rows over k workers: worker j
holds a shard ``x_j`` of shape (m_j, d), with ``m_1 + ... + m_k = n`` (the
shards may differ in size). Batch norm on each worker alone normalizes every
shard with its own statistics (that is ghost batch norm, with the shards as
groups). To normalize with the statistics of the whole batch, the workers
exchange per-feature summaries in an *all-reduce*: every worker contributes
an array, and every worker receives the combination of all of them.
:func:`all_reduce` is written out as a loop over the workers, so that what
is communicated is visible; :class:`CommLog` counts it.

Two forward variants (:func:`sync_batch_stats`):

* ``method="sums"``: each worker sends ``(m_j, sum_i x_i, sum_i x_i**2)``,
  2d + 1 numbers; the sum over workers gives ``mu = S1 / n`` and
  ``var = S2 / n - mu**2``. Simple, and numerically fragile: when the mean
  is large against the standard deviation, ``S2 / n`` and ``mu**2`` are two
  large, nearly equal numbers, and their difference loses most of its digits
  (catastrophic cancellation).
* ``method="chan"`` (the default): each worker sends ``(m_j, mean_j, M2_j)``
  with ``M2_j = sum_i (x_i - mean_j)**2``, also 2d + 1 numbers, and the
  reduction combines two summaries with the parallel formula of Chan, Golub
  and LeVeque (1982)::

      n = n_a + n_b,   delta = mean_b - mean_a,
      mean = mean_a + delta * n_b / n,
      M2 = M2_a + M2_b + delta**2 * n_a * n_b / n,

  which never subtracts two large sums; ``var = M2 / n``.

The backward (:func:`sync_batchnorm_backward`) needs one more all-reduce, of
the per-worker sums of ``dout`` and of ``dout * xhat`` (2d numbers): with them
each worker computes the full-batch gradient of its own rows.

Shapes: a shard is (m_j, d); statistics, ``gamma`` and ``beta`` are (d,).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import check_eps, check_param
from .normalization import normalize, normalize_backward

__all__ = [
    "CommLog",
    "SyncBNCache",
    "all_reduce",
    "chan_combine",
    "sync_batch_stats",
    "sync_batchnorm_forward",
    "sync_batchnorm_backward",
]


@dataclass
class CommLog:
    """What the all-reduces of a computation sent: one entry per all-reduce,
    ``(name, numbers each worker contributes)``."""

    calls: list = field(default_factory=list)

    def record(self, name: str, size: int) -> None:
        self.calls.append((name, int(size)))

    @property
    def per_worker(self) -> int:
        """Numbers each worker contributed, over all recorded all-reduces."""
        return sum(size for _, size in self.calls)


def all_reduce(contributions, op=np.add, log: CommLog | None = None, name: str = "all-reduce"):
    """Combine one array per worker into the result every worker receives.

    Parameters
    ----------
    contributions : list of k arrays of one shape (each worker's message).
    op : the reduction, ``op(a, b) -> array of the same shape``, associative;
        ``np.add`` (the default) makes it a sum over workers.
    log : a :class:`CommLog`; the size of one contribution is recorded there.

    Returns
    -------
    The reduction of all k contributions (the same shape), as every worker
    receives it. A real all-reduce (ring, tree) sends about twice the message
    size per worker; the count here is the message size itself.
    """
    contributions = [np.asarray(c) for c in contributions]
    if not contributions:
        raise ValueError("all_reduce needs at least one worker's contribution")
    shape = contributions[0].shape
    if any(c.shape != shape for c in contributions):
        raise ValueError(f"all workers must send arrays of one shape; got {[c.shape for c in contributions]}")
    if log is not None:
        log.record(name, contributions[0].size)
    total = contributions[0]
    for c in contributions[1:]:
        total = op(total, c)
    return total


def _pack(count, a, b):
    """One message: ``[count, a (d,), b (d,)]``, 2d + 1 numbers in a's dtype."""
    return np.concatenate([np.asarray([count], dtype=a.dtype), a, b])


def _unpack(msg):
    d = (msg.size - 1) // 2
    return msg[0], msg[1:1 + d], msg[1 + d:]


def chan_combine(msg_a, msg_b):
    """Chan et al.'s parallel update of two summaries ``[n, mean (d,), M2 (d,)]``
    (as packed by the forward): the summary of the union of the two sets."""
    n_a, mean_a, m2_a = _unpack(msg_a)
    n_b, mean_b, m2_b = _unpack(msg_b)
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta ** 2 * (n_a * n_b / n)
    return _pack(n, mean, m2)


def _check_shards(shards):
    shards = [np.asarray(s) for s in shards]
    if not shards:
        raise ValueError("need at least one shard")
    for j, s in enumerate(shards):
        if s.ndim != 2 or s.shape[1] != shards[0].shape[1] or s.shape[0] < 1:
            raise ValueError(f"every shard must be 2-D (m_j >= 1, d) with one d; shard {j} has shape {s.shape}")
        if s.dtype != shards[0].dtype or s.dtype.kind != "f":
            raise ValueError(f"shards must share one floating dtype; shard {j} is {s.dtype}, shard 0 {shards[0].dtype}")
    if sum(s.shape[0] for s in shards) < 2:
        raise ValueError("batch norm in training mode needs at least 2 rows over all shards")
    return shards


def sync_batch_stats(shards, method: str = "chan", log: CommLog | None = None):
    """Mean and biased variance of the whole batch from its shards, with one all-reduce.

    Parameters
    ----------
    shards : list of k arrays (m_j, d), one per worker, of one floating dtype.
    method : ``"chan"`` (per-worker count, mean and M2, combined with
        :func:`chan_combine`) or ``"sums"`` (count, sum and sum of squares,
        summed; ``var = S2 / n - mu**2``, which can come out inaccurate or
        even negative in low precision).
    log : a :class:`CommLog` for the count of numbers sent.

    Returns
    -------
    n : int, the number of rows; mu : (d,); var : (d,) (biased, no eps), in
    the shards' dtype.
    """
    shards = _check_shards(shards)
    if method == "sums":
        msgs = [_pack(len(s), s.sum(axis=0), (s * s).sum(axis=0)) for s in shards]
        n, s1, s2 = _unpack(all_reduce(msgs, np.add, log, "forward: count, sum, sum of squares"))
        mu = s1 / n
        var = s2 / n - mu * mu
    elif method == "chan":
        msgs = []
        for s in shards:
            mean_j = s.sum(axis=0) / len(s)
            msgs.append(_pack(len(s), mean_j, ((s - mean_j) ** 2).sum(axis=0)))
        n, mu, m2 = _unpack(all_reduce(msgs, chan_combine, log, "forward: count, mean, M2"))
        var = m2 / n
    else:
        raise ValueError(f"method must be 'chan' or 'sums'; got {method!r}")
    return int(round(float(n))), mu, var


@dataclass
class SyncBNCache:
    """What the synchronized forward keeps: one kernel cache per worker
    (:class:`~bnbook.normalization.NormCache`, with the whole batch's
    statistics and count) and ``gamma`` (d,)."""

    caches: list
    gamma: np.ndarray

    @property
    def xhat(self) -> list:
        """Each worker's normalized rows (m_j, d)."""
        return [c.xhat for c in self.caches]

    @property
    def inv_std(self) -> np.ndarray:
        """``1 / sqrt(var + eps)`` (d,) of the whole batch, the same on every worker."""
        return self.caches[0].inv_std.reshape(-1)

    @property
    def n(self) -> int:
        """Rows over all workers."""
        return self.caches[0].n


def sync_batchnorm_forward(shards, gamma, beta, eps: float = 1e-5, method: str = "chan",
                           log: CommLog | None = None):
    """Training-mode batch norm of a batch split over workers, with the statistics
    of the whole batch (one all-reduce of 2d + 1 numbers per worker).

    Parameters
    ----------
    shards : list of k arrays (m_j, d), the rows each worker holds.
    gamma, beta : (d,).
    eps : positive float.
    method : ``"chan"`` or ``"sums"``, see :func:`sync_batch_stats`. A
        negative variance from ``"sums"`` (cancellation) is clipped at 0.
    log : a :class:`CommLog`.

    Returns
    -------
    outs : list of k arrays (m_j, d): each worker's output. Their
        concatenation is ``batchnorm_forward(np.concatenate(shards), ...)``,
        up to rounding (the sums run in another order).
    cache : :class:`SyncBNCache` for :func:`sync_batchnorm_backward`.
    """
    n, mu, var = sync_batch_stats(shards, method, log)
    shards = [np.asarray(s) for s in shards]
    d = shards[0].shape[1]
    gamma = check_param(gamma, d, "gamma", shards[0].dtype)
    beta = check_param(beta, d, "beta", shards[0].dtype)
    stats = (mu, np.maximum(var, 0), n)          # the same on every worker
    caches = [normalize(s, (0,), check_eps(eps), stats=stats)[1] for s in shards]
    return [gamma * c.xhat + beta for c in caches], SyncBNCache(caches, gamma)


def sync_batchnorm_backward(douts, cache: SyncBNCache, log: CommLog | None = None):
    """Gradients of :func:`sync_batchnorm_forward`, with one all-reduce of 2d
    numbers per worker.

    Each worker j sends ``[sum_i dout_i, sum_i dout_i * xhat_i]`` over its
    rows; the sums over workers are ``dbeta`` and ``dgamma`` of the whole batch,
    and each worker then computes its rows of
    ``dx = gamma / (n * s) * (n * dout - dbeta - xhat * dgamma)`` with the
    kernel's backward, given those sums.

    Parameters
    ----------
    douts : list of k arrays (m_j, d), the upstream gradient on each worker.
    cache : from :func:`sync_batchnorm_forward`.
    log : a :class:`CommLog`.

    Returns
    -------
    dxs : list of k arrays (m_j, d);  dgamma : (d,);  dbeta : (d,) (the same
    on every worker).
    """
    douts = [np.asarray(g) for g in douts]
    if [g.shape for g in douts] != [xh.shape for xh in cache.xhat]:
        raise ValueError(f"douts must have the shards' shapes {[xh.shape for xh in cache.xhat]}; "
                         f"got {[g.shape for g in douts]}")
    msgs = [np.concatenate([g.sum(axis=0), (g * xh).sum(axis=0)]) for g, xh in zip(douts, cache.xhat)]
    total = all_reduce(msgs, np.add, log, "backward: sum of dout, sum of dout * xhat")
    d = cache.gamma.shape[0]
    dbeta, dgamma = total[:d], total[d:]
    dxs = [normalize_backward(g, c, scale=cache.gamma, sums=(dbeta, dgamma))[0]
           for g, c in zip(douts, cache.caches)]
    return dxs, dgamma, dbeta
