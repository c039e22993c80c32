"""Tests for bnbook.mnist: downloads from a local HTTP server, IDX parsing,
and (when the files are present) the real MNIST."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from bnbook import mnist
from conftest import QuietHandler

NAMES = list(mnist.CHECKSUMS)  # the four file names, in download order


# ---------------------------------------------------------------- fake files


def idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels, magic: int = 2049) -> bytes:
    labels = np.asarray(labels, dtype=np.uint8)
    return struct.pack(">II", magic, len(labels)) + labels.tobytes()


def fake_mnist_files(n_train: int = 5, n_test: int = 3) -> dict[str, bytes]:
    """Small but valid gzipped IDX files under the real MNIST names."""
    rng = np.random.default_rng(0)
    raw = {
        "train-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_labels(np.arange(n_test) % 10),
    }
    return {name: gzip.compress(data, mtime=0) for name, data in raw.items()}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(mnist, "_MEMO", {})


@pytest.fixture
def fakes(monkeypatch):
    """The fake files, made 'known' by patching the module's checksum table."""
    files = fake_mnist_files()
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    monkeypatch.setattr(mnist, "CHECKSUMS", checksums)
    return files


# ---------------------------------------------------------------- local server


class _Handler(QuietHandler):
    """Serves a folder; under /liar/ it promises the full length of a file in
    good/ but sends only half of it and closes the connection."""

    def do_GET(self):
        if self.path.startswith("/liar/"):
            body = (Path(self.directory) / "good" / self.path[len("/liar/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path, http_server):
    """A folder served over HTTP on 127.0.0.1: returns (folder, base_url)."""
    root = tmp_path / "served"
    root.mkdir()
    with http_server(root, _Handler, poll_interval=0.05) as base:
        yield root, base


@pytest.fixture
def good_mirror(served, fakes):
    root, base = served
    write_files(root / "good", fakes)
    return f"{base}/good/"


def load(folder, mirrors, **kwargs):
    return mnist.load_mnist(folder, mirrors=mirrors, timeout=5, **kwargs)


# ---------------------------------------------------------------- downloading


def test_good_files_download_and_parse(tmp_path, good_mirror, fakes):
    target = tmp_path / "data"
    x_train, y_train, x_test, y_test = load(target, [good_mirror])
    assert x_train.shape == (5, 784) and x_test.shape == (3, 784)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert y_train.dtype == np.int64 and y_train.tolist() == [0, 1, 2, 3, 4]
    assert y_test.tolist() == [0, 1, 2]
    images = np.frombuffer(gzip.decompress(fakes[NAMES[0]]), np.uint8, offset=16)
    np.testing.assert_array_equal(np.rint(x_train * 255).ravel(), images)
    assert sorted(os.listdir(target)) == sorted(NAMES)  # no temporary files left


def test_corrupt_download_is_rejected_and_not_kept(tmp_path, served, fakes):
    root, base = served
    bad = dict(fakes)
    last = NAMES[-1]
    bad[last] = bytes([fakes[last][0] ^ 0xFF]) + fakes[last][1:]
    write_files(root / "bad", bad)
    target = tmp_path / "data"
    with pytest.raises(mnist.DownloadError, match="checksum mismatch") as info:
        load(target, [f"{base}/bad/"])
    assert last in str(info.value)
    # the three good files are kept, the corrupt one and any temp file are not
    assert sorted(os.listdir(target)) == sorted(NAMES[:-1])


def test_truncated_file_on_mirror_leaves_nothing_behind(tmp_path, served, fakes):
    root, base = served
    first = NAMES[0]
    write_files(root / "short", {**fakes, first: fakes[first][:1000]})
    target = tmp_path / "data"
    with pytest.raises(mnist.DownloadError, match="1000 bytes received"):
        load(target, [f"{base}/short/"])
    assert os.listdir(target) == []


def test_truncated_transfer_leaves_nothing_behind(tmp_path, served, fakes):
    root, base = served
    write_files(root / "good", fakes)  # /liar/ sends half of each file
    target = tmp_path / "data"
    with pytest.raises(mnist.DownloadError, match=f"liar/{NAMES[0]}"):
        load(target, [f"{base}/liar/"])
    assert os.listdir(target) == []


def test_second_mirror_used_when_first_404s(tmp_path, served, good_mirror):
    _, base = served
    x_train, *_ = load(tmp_path / "data", [f"{base}/nowhere/", good_mirror])
    assert x_train.shape == (5, 784)


def test_second_mirror_used_when_first_serves_corrupt_file(tmp_path, served, good_mirror, fakes):
    root, base = served
    write_files(root / "bad", {name: b"not mnist" for name in fakes})
    target = tmp_path / "data"
    x_train, *_ = load(target, [f"{base}/bad/", good_mirror])
    assert x_train.shape == (5, 784)
    assert sorted(os.listdir(target)) == sorted(NAMES)


def test_all_mirrors_failing_lists_each_mirror_and_reason(tmp_path, served, fakes):
    root, base = served
    write_files(root / "bad", {name: b"not mnist" for name in fakes})
    mirrors = [f"{base}/nowhere/", f"{base}/bad/", "http://127.0.0.1:1/"]
    target = tmp_path / "data"
    with pytest.raises(mnist.DownloadError) as info:
        load(target, mirrors)
    message = str(info.value)
    for mirror in mirrors:
        assert mirror + NAMES[0] in message
    assert "404" in message and "checksum mismatch" in message
    assert str(target) in message and "BNBOOK_DATA_DIR" in message
    assert os.listdir(target) == []


def test_missing_files_without_download_name_folder_and_files(tmp_path, fakes):
    target = tmp_path / "empty"
    write_files(target, {NAMES[0]: fakes[NAMES[0]]})
    with pytest.raises(FileNotFoundError) as info:
        mnist.load_mnist(target, download=False)
    message = str(info.value)
    assert str(target) in message and "BNBOOK_DATA_DIR" in message
    missing = message.split("\n")[0]
    assert all(name in missing for name in NAMES[1:]) and NAMES[0] not in missing


def test_existing_files_are_not_downloaded_again(tmp_path, fakes):
    target = tmp_path / "data"
    write_files(target, fakes)
    x_train, *_ = load(target, ["http://127.0.0.1:1/"])  # no mirror reachable
    assert x_train.shape == (5, 784)


def test_corrupt_cached_file_raises_and_is_kept(tmp_path, good_mirror, fakes):
    target = tmp_path / "data"
    write_files(target, {**fakes, NAMES[1]: b"garbage"})
    with pytest.raises(ValueError) as info:
        load(target, [good_mirror])
    message = str(info.value)
    actual = hashlib.sha256(b"garbage").hexdigest()
    assert NAMES[1] in message and mnist.CHECKSUMS[NAMES[1]] in message
    assert actual in message and "Delete it" in message
    assert (target / NAMES[1]).read_bytes() == b"garbage"


def test_data_dir_env_var_is_honoured(tmp_path, monkeypatch, good_mirror):
    target = tmp_path / "from-env"
    monkeypatch.setenv("BNBOOK_DATA_DIR", str(target))
    assert mnist.default_data_dir() == target
    x_train, *_ = mnist.load_mnist(mirrors=[good_mirror], timeout=5)
    assert x_train.shape == (5, 784)
    assert sorted(os.listdir(target)) == sorted(NAMES)


def test_default_dir_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("BNBOOK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mnist.default_data_dir() == tmp_path / "bnbook" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert mnist.default_data_dir() == Path.home() / ".cache" / "bnbook" / "mnist"


def test_second_load_is_memoised_and_read_only(tmp_path, fakes):
    target = tmp_path / "data"
    write_files(target, fakes)
    first = mnist.load_mnist(target, download=False)
    for name in NAMES:
        (target / name).unlink()  # a re-parse would now fail
    second = mnist.load_mnist(target, download=False)
    assert all(a is b for a, b in zip(first, second))
    with pytest.raises(ValueError, match="read-only"):
        first[0][0, 0] = 1.0


def test_image_and_label_counts_must_agree(tmp_path, monkeypatch):
    files = fake_mnist_files()
    files[NAMES[1]] = gzip.compress(idx_labels([0, 1, 2, 3]))  # 4 labels, 5 images
    monkeypatch.setattr(
        mnist, "CHECKSUMS", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    )
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        mnist.load_mnist(tmp_path, download=False)


# ---------------------------------------------------------------- IDX parsing


def test_parse_idx_reads_images_and_labels():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    np.testing.assert_array_equal(mnist.parse_idx(idx_images(images), "x"), images)
    assert mnist.parse_idx(idx_labels([3, 9]), "y").tolist() == [3, 9]


def test_parse_idx_rejects_wrong_magic_number():
    with pytest.raises(ValueError, match="bad.idx: bad magic number 2050"):
        mnist.parse_idx(idx_labels([1], magic=2050), "bad.idx")


def test_parse_idx_rejects_labels_file_where_images_expected(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_labels([1, 2])))
    with pytest.raises(ValueError, match="bad magic number 2049, expected 2051"):
        mnist.read_idx_images(path)


def test_parse_idx_rejects_truncated_payload():
    raw = idx_images(np.zeros((3, 28, 28)))[:-10]
    with pytest.raises(ValueError, match="t.idx: payload is 2342 bytes .* truncated"):
        mnist.parse_idx(raw, "t.idx")


def test_parse_idx_rejects_truncated_header():
    with pytest.raises(ValueError, match="h.idx: too short"):
        mnist.parse_idx(b"\x00\x00\x08", "h.idx")
    with pytest.raises(ValueError, match="h.idx: too short for an image header"):
        mnist.parse_idx(struct.pack(">II", 2051, 1), "h.idx")


def test_parse_idx_rejects_images_that_are_not_28x28():
    with pytest.raises(ValueError, match="s.idx: images are 27x28"):
        mnist.parse_idx(idx_images(np.zeros((1, 27, 28))), "s.idx")


def test_parse_idx_rejects_labels_outside_0_to_9():
    with pytest.raises(ValueError, match="l.idx: label 10 outside 0..9"):
        mnist.parse_idx(idx_labels([1, 10, 2]), "l.idx")


def test_read_idx_rejects_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(idx_labels([1, 2]))
    with pytest.raises(ValueError, match="plain.gz: not a valid gzip file"):
        mnist.read_idx_labels(path)


# ---------------------------------------------------------------- real MNIST


def _real_mnist_folder():
    candidates = [
        os.environ.get("BNBOOK_DATA_DIR"),
        mnist._cache_dir(),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist",
    ]
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in mnist.CHECKSUMS):
            return Path(folder)
    return None


@pytest.fixture(scope="module")
def real_mnist():
    folder = _real_mnist_folder()
    if folder is None:
        pytest.skip(
            "real MNIST files not found in $BNBOOK_DATA_DIR, the default cache "
            "or ../shared/data/mnist; set BNBOOK_DATA_DIR to a folder that has them"
        )
    return mnist.load_mnist(folder, download=False)


def test_real_mnist_shapes_dtypes_and_ranges(real_mnist):
    x_train, y_train, x_test, y_test = real_mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0


def test_real_mnist_pixel_sums_and_label_counts(real_mnist):
    x_train, y_train, x_test, y_test = real_mnist
    # sums of the raw uint8 pixel values, measured once from the real files
    assert np.rint(x_train * np.float32(255)).sum(dtype=np.float64) == 1_567_298_545
    assert np.rint(x_test * np.float32(255)).sum(dtype=np.float64) == 264_923_200
    assert np.bincount(y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert np.bincount(y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]
    assert y_train[0] == 5 and y_test[0] == 7
