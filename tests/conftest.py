"""Fixtures shared by the test files: small labelled data sets and a local HTTP server."""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading

import numpy as np
import pytest


def make_two_blobs(n: int, seed: int, d: int = 20):
    """n points in d dimensions: class 0 around -0.5 * ones, class 1 around
    +0.5 * ones, unit variance (about 4.5 standard deviations apart in 20-D).
    Returns x (n, d) float32 and y (n,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centres = np.stack([np.full(d, -0.5), np.full(d, 0.5)])
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y.astype(np.int64)


def make_blobs(n: int = 120, d: int = 8, c: int = 3, seed: int = 0):
    """c well separated Gaussian blobs (centres 3 * N(0, 1)): ``(x_train,
    y_train, x_test, y_test)`` with n points each, x float32."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((c, d))
    y = rng.integers(0, c, size=2 * n)
    x = (centres[y] + rng.standard_normal((2 * n, d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


@pytest.fixture(scope="session")
def two_blobs_data():
    """Two blobs in 20-D: 400 training and 200 test points, as fit's data tuple."""
    x_train, y_train = make_two_blobs(400, seed=0)
    x_test, y_test = make_two_blobs(200, seed=1)
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def blobs():
    """The function :func:`make_blobs` (call it with the sizes a test needs)."""
    return make_blobs


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request to stderr."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder, handler=QuietHandler, poll_interval: float = 0.5):
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) in a thread;
    yields the base URL ``http://127.0.0.1:PORT`` and stops the server after."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def http_server():
    """The context manager :func:`serve_folder` (usable from fixtures of any scope)."""
    return serve_folder
