"""Load MNIST from the four original gzipped IDX files, with checksums.

The files are looked for in a folder (see :func:`default_data_dir`); missing
ones are downloaded from public mirrors. Every file's sha256 is checked, both
after a download and whenever a cached file is read, so a half-written or
tampered file is never parsed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

# sha256 of each gzipped file (the canonical files, also used by torchvision).
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# Tried in turn; the file name is appended to each.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
ROWS = COLS = 28

_MEMO: dict[Path, tuple[np.ndarray, ...]] = {}  # folder -> loaded arrays


class DownloadError(OSError):
    """No mirror delivered a file with the expected checksum."""


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "bnbook" / "mnist"


def default_data_dir() -> Path:
    """The folder used when no ``data_dir`` is given.

    ``$BNBOOK_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/bnbook/mnist``,
    else ``~/.cache/bnbook/mnist``.
    """
    env = os.environ.get("BNBOOK_DATA_DIR")
    return Path(env).expanduser() if env else _cache_dir()


def _folder(data_dir: str | os.PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _how_to_provide(folder: Path, missing: list[str]) -> str:
    return (
        f"MNIST files missing from {folder}: {', '.join(missing)}.\n"
        f"Put the four files ({', '.join(CHECKSUMS)}) in that folder, "
        "or set the BNBOOK_DATA_DIR environment variable (or pass data_dir=) "
        "to a folder that has them."
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path, expected: str, timeout: float) -> None:
    """Download url to target atomically; remove the partial file on any failure."""
    tmp = tempfile.NamedTemporaryFile(
        delete=False, dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with tmp, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                tmp.write(block)
        actual = sha256_of(Path(tmp.name))
        if actual != expected:
            size = os.path.getsize(tmp.name)
            raise ValueError(
                f"checksum mismatch ({size} bytes received): "
                f"expected sha256 {expected}, got {actual}"
            )
        os.replace(tmp.name, target)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def download_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: list[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download the MNIST files missing from ``data_dir``; return the folder.

    Each file is written to a temporary file in the same folder, its sha256
    checked, and only then renamed into place. If a mirror fails (network
    error, HTTP error, wrong checksum) the next one in ``mirrors`` (default
    :data:`MIRRORS`) is tried; if all fail, :class:`DownloadError` lists
    every mirror and why it failed. Files already present are left alone.
    """
    folder = _folder(data_dir)
    mirrors = MIRRORS if mirrors is None else mirrors
    folder.mkdir(parents=True, exist_ok=True)
    for name, expected in CHECKSUMS.items():
        target = folder / name
        if target.exists():
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                _fetch(url, target, expected, timeout)
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"  {url}: {exc}")
        else:
            missing = [n for n in CHECKSUMS if not (folder / n).exists()]
            raise DownloadError(
                f"Could not download {name}; every mirror failed:\n"
                + "\n".join(failures or ["  (no mirrors given)"])
                + "\n"
                + _how_to_provide(folder, missing)
            )
    return folder


def parse_idx(raw: bytes, name: str, expected_magic: int | None = None) -> np.ndarray:
    """Parse the (uncompressed) bytes of an MNIST IDX file.

    Returns uint8 images of shape (count, 28, 28) for magic 2051, or uint8
    labels of shape (count,) for magic 2049. Raises ValueError naming the
    file and the problem if the header or payload is malformed.
    """
    if len(raw) < 8:
        raise ValueError(f"{name}: too short for an IDX header ({len(raw)} bytes)")
    magic, count = struct.unpack(">II", raw[:8])
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{name}: bad magic number {magic}, expected {expected_magic}")
    if magic == IMAGES_MAGIC:
        if len(raw) < 16:
            raise ValueError(f"{name}: too short for an image header ({len(raw)} bytes)")
        rows, cols = struct.unpack(">II", raw[8:16])
        if (rows, cols) != (ROWS, COLS):
            raise ValueError(f"{name}: images are {rows}x{cols}, expected 28x28")
        header, shape = 16, (count, rows, cols)
    elif magic == LABELS_MAGIC:
        header, shape = 8, (count,)
    else:
        raise ValueError(
            f"{name}: bad magic number {magic}, expected "
            f"{IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels)"
        )
    payload = len(raw) - header
    if payload != math.prod(shape):
        raise ValueError(
            f"{name}: payload is {payload} bytes but the header promises "
            f"{math.prod(shape)} ({count} items); truncated or malformed file"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    if magic == LABELS_MAGIC and count and data.max() > 9:
        raise ValueError(f"{name}: label {data.max()} outside 0..9")
    return data


def _read_gz(path: Path) -> bytes:
    try:
        return gzip.decompress(Path(path).read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Images of a gzipped IDX file as uint8, shape (count, 28, 28)."""
    return parse_idx(_read_gz(Path(path)), str(path), IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Labels of a gzipped IDX file as uint8, shape (count,)."""
    return parse_idx(_read_gz(Path(path)), str(path), LABELS_MAGIC)


def _verify(path: Path) -> None:
    expected, actual = CHECKSUMS[path.name], sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"{path} is corrupt: expected sha256 {expected}, got {actual}. "
            "Delete it (it will be downloaded again) or replace it with a good copy."
        )


def _load_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx_images(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_labels(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(
            f"{folder}: {prefix} has {len(images)} images but {len(labels)} labels"
        )
    x = images.reshape(len(images), -1) / np.float32(255)  # float32 in [0, 1]
    y = labels.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    mirrors: list[str] | None = None,
    timeout: float = 30.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the full MNIST as ``(x_train, y_train, x_test, y_test)``.

    - ``x_train``: float32, shape (60000, 784), pixel values in [0, 1]
    - ``y_train``: int64, shape (60000,), digits 0..9
    - ``x_test``: float32, shape (10000, 784)
    - ``y_test``: int64, shape (10000,)

    Files are read from ``data_dir``, else :func:`default_data_dir`. Missing
    files are downloaded (see :func:`download_mnist`) if ``download`` is true,
    otherwise FileNotFoundError says which files are missing and where.

    Every file's sha256 is checked. A corrupt cached file raises ValueError
    and is never deleted or re-downloaded automatically: delete it yourself.

    The result is memoised per folder, so a second call in the same process
    is free. The arrays are read-only; use ``x.copy()`` to modify them.
    """
    folder = _folder(data_dir)
    key = folder.resolve()
    if key not in _MEMO:
        missing = [n for n in CHECKSUMS if not (folder / n).is_file()]
        if missing and not download:
            raise FileNotFoundError(_how_to_provide(folder, missing))
        if missing:
            download_mnist(folder, mirrors=mirrors, timeout=timeout)
        for name in CHECKSUMS:
            _verify(folder / name)
        _MEMO[key] = _load_split(folder, "train") + _load_split(folder, "t10k")
    return _MEMO[key]
