"""Datasets: the IDX reader, the shipped subset, Fashion-MNIST and MNIST lookup and (offline) download, XOR."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fastopt import datasets
from fastopt._io import FileFormatError

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B}
TYPE_CODES.update({np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E})
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, type_code: int | None = None) -> bytes:
    """The IDX encoding of ``array``: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    big_endian = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = TYPE_CODES[big_endian.dtype] if type_code is None else type_code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big_endian.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def tiny_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def tiny_labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 12, n_test: int = 5, compress: bool = False, seed: int = 0) -> dict:
    """The four IDX files of an MNIST-style dataset; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": tiny_images(n_train, seed),
        "train-labels-idx1-ubyte": tiny_labels(n_train),
        "t10k-images-idx3-ubyte": tiny_images(n_test, seed + 1),
        "t10k-labels-idx1-ubyte": tiny_labels(n_test)[::-1].copy(),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + suffix), array, compress=compress)
    return arrays


def check_dataset(result, arrays: dict) -> None:
    X_train, y_train, X_test, y_test = result
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    assert X_train.shape == (len(images), 784) and X_train.dtype == np.float32
    assert X_test.shape == (len(arrays["t10k-images-idx3-ubyte"]), 784) and X_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(X_train, images.reshape(len(images), -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(y_train, labels)
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """No FASTOPT_DATA, no system folder, an empty cache: nothing can be found locally."""
    monkeypatch.delenv("FASTOPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-dir")
    return tmp_path


# ------------------------------------------------------------------------------------------ read_idx
def test_read_idx_ubyte_3d_and_1d(tmp_path):
    images = tiny_images(3)
    labels = np.array([9, 0, 255], dtype=np.uint8)
    read_images = datasets.read_idx(write_idx(tmp_path / "images", images))
    read_labels = datasets.read_idx(write_idx(tmp_path / "labels", labels))
    assert read_images.dtype == np.uint8 and read_images.shape == (3, 28, 28)
    assert np.array_equal(read_images, images)
    assert read_labels.dtype == np.uint8 and read_labels.shape == (3,)
    assert np.array_equal(read_labels, labels)


def test_read_idx_header_by_hand(tmp_path):
    path = tmp_path / "hand"
    path.write_bytes(b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes([1, 2, 3, 4, 5, 6]))
    assert np.array_equal(datasets.read_idx(path), [[1, 2, 3], [4, 5, 6]])


def test_read_idx_gzip_is_detected_by_content(tmp_path):
    images = tiny_images(4)
    path = tmp_path / "images-without-gz-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(datasets.read_idx(path), images)
    assert np.array_equal(datasets.read_idx(write_idx(tmp_path / "x.gz", images, compress=True)), images)


@pytest.mark.parametrize(
    ("values", "code"),
    [
        (np.array([[-5, 0], [7, 2**31 - 1]], dtype=np.int32), 0x0C),
        (np.array([-(2**31), 1, 2], dtype=np.int32), 0x0C),
        (np.array([[1.5, -0.25, 3e38], [np.pi, 0.0, -1e-30]], dtype=np.float32), 0x0D),
        (np.array([np.e, -1e300], dtype=np.float64), 0x0E),
        (np.array([-128, 127, 0], dtype=np.int8), 0x09),
        (np.array([-300, 300], dtype=np.int16), 0x0B),
    ],
    ids=["int32-2d", "int32-extremes", "float32", "float64", "int8", "int16"],
)
def test_read_idx_other_type_codes(tmp_path, values, code):
    data = idx_bytes(values)
    assert data[2] == code
    # The payload really is big-endian: check the first element's bytes by hand.
    first = values.reshape(-1)[:1]
    assert data[4 + 4 * values.ndim :][: values.itemsize] == first.astype(values.dtype.newbyteorder(">")).tobytes()
    if sys.byteorder == "little":
        assert data[4 + 4 * values.ndim :][: values.itemsize] == first.tobytes()[::-1]
    path = tmp_path / "values"
    path.write_bytes(data)
    result = datasets.read_idx(path)
    assert result.shape == values.shape
    assert result.dtype == values.dtype  # native byte order, same kind and size
    assert result.dtype.isnative
    np.testing.assert_array_equal(result, values)


def test_read_idx_float32_known_bytes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02" + struct.pack(">ff", 1.5, -2.0))
    result = datasets.read_idx(path)
    assert result.dtype == np.float32
    assert result.tolist() == [1.5, -2.0]


def _write_raw(tmp_path, data):
    path = tmp_path / "bad"
    path.write_bytes(data)
    return path


GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


def _corrupt_gzip_deflate_block():
    data = bytearray(gzip.compress(GOOD))
    data[10] = 0x07  # the first deflate block header: final block with the reserved block type 3
    return bytes(data)


def _corrupt_gzip_crc():
    data = bytearray(gzip.compress(GOOD))
    data[-5] ^= 0xFF  # inside the CRC-32 of the trailer
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"PK\x03\x04 not an idx file", "bad magic"),
        (b"\x00\x00", "bad magic"),
        (b"", "bad magic"),
        (b"\x00\x00\x08\x00", "invalid IDX header"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated or invalid IDX header"),
        (GOOD[:-1], "truncated"),
        (GOOD[:9], "truncated"),
        (GOOD + b"\x00", "trailing bytes"),
        (gzip.compress(GOOD)[:-12], "cannot decompress"),
        (b"\x1f\x8b" + b"garbage that is not gzip", "cannot decompress"),
        (_corrupt_gzip_crc(), "cannot decompress"),
        (_corrupt_gzip_deflate_block(), "cannot decompress"),
        (gzip.compress(GOOD + b"\x00\x00"), "trailing bytes"),
    ],
    ids=[
        "magic-first-byte",
        "magic-type-code",
        "zip-file",
        "two-bytes",
        "empty",
        "zero-dims",
        "header-cut",
        "data-one-byte-short",
        "data-missing",
        "trailing-byte",
        "gzip-truncated",
        "gzip-garbage",
        "gzip-bad-crc",
        "gzip-bad-deflate-block",
        "gzip-trailing-bytes",
    ],
)
def test_read_idx_refuses_malformed_files(tmp_path, data, match):
    path = _write_raw(tmp_path, data)
    with pytest.raises(FileFormatError, match=match) as info:
        datasets.read_idx(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        datasets.read_idx(tmp_path / "nothere")


def test_file_format_error_is_a_value_error():
    assert issubclass(FileFormatError, ValueError)


# ------------------------------------------------------------------------------------------ load_idx
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_idx_scales_images_and_widens_labels(tmp_path, compress):
    images = tiny_images(7)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = tiny_labels(7)
    X, y = datasets.load_idx(
        write_idx(tmp_path / "i", images, compress=compress), write_idx(tmp_path / "l", labels, compress=compress)
    )
    assert X.shape == (7, 784) and X.dtype == np.float32
    assert y.shape == (7,) and y.dtype == np.int64
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert X[0, 0] == 0.0 and X[0, 1] == 1.0
    np.testing.assert_array_equal(X, images.reshape(7, -1) / np.float32(255))
    np.testing.assert_array_equal(y, labels)


def test_load_idx_refuses_count_mismatch(tmp_path):
    with pytest.raises(FileFormatError, match=r"holds 3 images but .* holds 2 labels"):
        datasets.load_idx(write_idx(tmp_path / "i", tiny_images(3)), write_idx(tmp_path / "l", tiny_labels(2)))


def test_load_idx_refuses_swapped_files(tmp_path):
    images, labels = write_idx(tmp_path / "i", tiny_images(3)), write_idx(tmp_path / "l", tiny_labels(3))
    with pytest.raises(FileFormatError, match=r"expected unsigned-byte images \(N, rows, cols\)"):
        datasets.load_idx(labels, images)


def test_load_idx_refuses_non_byte_images_and_labels(tmp_path):
    labels = write_idx(tmp_path / "l", tiny_labels(2))
    float_images = write_idx(tmp_path / "f", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(FileFormatError, match=r"expected unsigned-byte images.*float32"):
        datasets.load_idx(float_images, labels)
    int_labels = write_idx(tmp_path / "il", np.zeros(2, dtype=np.int32))
    with pytest.raises(FileFormatError, match=r"expected unsigned-byte labels.*int32"):
        datasets.load_idx(write_idx(tmp_path / "i", tiny_images(2)), int_labels)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_idx(tmp_path / "none", write_idx(tmp_path / "l", tiny_labels(2)))


# ------------------------------------------------------------------------------------------ mini
def test_mini_subset():
    X_train, y_train, X_test, y_test = datasets.mini()
    assert X_train.shape == (5000, 784) and y_train.shape == (5000,)
    assert X_test.shape == (1000, 784) and y_test.shape == (1000,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
        assert X.flags.c_contiguous
    assert np.array_equal(np.bincount(y_train, minlength=10), [500] * 10)
    assert np.array_equal(np.bincount(y_test, minlength=10), [100] * 10)
    # Not all images are the same (a real subset), and the two splits differ.
    assert len(np.unique(X_train[:50], axis=0)) == 50
    assert not np.array_equal(X_train[:1000], X_test)


def test_mini_returns_fresh_arrays():
    first = datasets.mini()
    first[0][:] = 0
    assert datasets.mini()[0].max() == 1.0


# ------------------------------------------------------------------------------------------ Fashion-MNIST
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_fashion_mnist_from_a_path(tmp_path, compress):
    arrays = write_dataset(tmp_path / "data", compress=compress)
    check_dataset(datasets.load_fashion_mnist(path=tmp_path / "data"), arrays)
    check_dataset(datasets.load_fashion_mnist(path=str(tmp_path / "data")), arrays)


def test_load_fashion_mnist_path_lacking_files(tmp_path):
    write_dataset(tmp_path / "data")
    (tmp_path / "data" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_fashion_mnist(path=tmp_path / "data")


@pytest.mark.parametrize("subfolder", ["fashion-mnist", ""], ids=["root/fashion-mnist", "root"])
def test_load_fashion_mnist_from_fastopt_data(no_data_anywhere, monkeypatch, subfolder):
    root = no_data_anywhere / "root"
    arrays = write_dataset(root / subfolder if subfolder else root, compress=True)
    monkeypatch.setenv("FASTOPT_DATA", str(root))
    check_dataset(datasets.load_fashion_mnist(), arrays)


def test_fastopt_data_subfolder_wins_over_the_root(no_data_anywhere, monkeypatch):
    root = no_data_anywhere / "root"
    write_dataset(root, n_train=3)
    arrays = write_dataset(root / "fashion-mnist", n_train=4)
    monkeypatch.setenv("FASTOPT_DATA", str(root))
    check_dataset(datasets.load_fashion_mnist(), arrays)


def test_load_fashion_mnist_from_the_system_folder_and_cache(no_data_anywhere, monkeypatch):
    arrays = write_dataset(no_data_anywhere / "system", n_train=5)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", no_data_anywhere / "system")
    check_dataset(datasets.load_fashion_mnist(), arrays)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", no_data_anywhere / "gone")
    cached = write_dataset(no_data_anywhere / "cache" / "fastopt" / "fashion-mnist", n_train=6)
    check_dataset(datasets.load_fashion_mnist(), cached)


def test_load_fashion_mnist_missing(no_data_anywhere):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        datasets.load_fashion_mnist()
    assert "no-system-dir" in str(info.value)


def test_load_fashion_mnist_incomplete_folder_is_skipped(no_data_anywhere, monkeypatch):
    root = no_data_anywhere / "root"
    write_dataset(root)
    (root / "train-images-idx3-ubyte").unlink()
    monkeypatch.setenv("FASTOPT_DATA", str(root))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist()


@pytest.mark.skipif(not SYSTEM_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("FASTOPT_DATA", raising=False)
    X_train, y_train, X_test, y_test = datasets.load_fashion_mnist()
    assert X_train.shape == (60000, 784) and y_train.shape == (60000,)
    assert X_test.shape == (10000, 784) and y_test.shape == (10000,)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    assert np.array_equal(np.bincount(y_train), [6000] * 10)
    assert np.array_equal(np.bincount(y_test), [1000] * 10)


# ------------------------------------------------------------------------------------------ MNIST
def test_load_mnist_from_a_path(tmp_path):
    arrays = write_dataset(tmp_path / "mnist", compress=True, seed=3)
    check_dataset(datasets.load_mnist(path=tmp_path / "mnist", download=False), arrays)


def test_load_mnist_from_fastopt_data(no_data_anywhere, monkeypatch):
    arrays = write_dataset(no_data_anywhere / "root" / "mnist")
    monkeypatch.setenv("FASTOPT_DATA", str(no_data_anywhere / "root"))
    check_dataset(datasets.load_mnist(download=False), arrays)


def test_load_mnist_without_download_and_without_files(no_data_anywhere, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_mnist(download=False) must not touch the network")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError, match="MNIST not found"):
        datasets.load_mnist(download=False)


class FakeServer:
    """Replaces ``urllib.request.urlopen``: serves ``files[name]`` for any mirror URL ending in ``name``."""

    def __init__(self, files: dict[str, bytes], failing_mirrors: tuple[str, ...] = ()):
        self.files = files
        self.failing_mirrors = failing_mirrors
        self.requests: list[str] = []

    def __call__(self, url, timeout=None):
        self.requests.append(url)
        if url.startswith(self.failing_mirrors):
            raise urllib.error.URLError("mirror down")
        name = url.rsplit("/", 1)[-1]
        if name not in self.files:
            raise urllib.error.HTTPError(url, 404, "not found", None, None)
        return io.BytesIO(self.files[name])


def _gz_payloads(seed: int = 0) -> tuple[dict[str, bytes], dict]:
    arrays = {
        "train-images-idx3-ubyte": tiny_images(8, seed),
        "train-labels-idx1-ubyte": tiny_labels(8),
        "t10k-images-idx3-ubyte": tiny_images(3, seed + 1),
        "t10k-labels-idx1-ubyte": tiny_labels(3),
    }
    payloads = {name + ".gz": gzip.compress(idx_bytes(array), mtime=0) for name, array in arrays.items()}
    return payloads, arrays


def test_load_mnist_download_with_matching_checksums(no_data_anywhere, monkeypatch):
    payloads, arrays = _gz_payloads()
    server = FakeServer(payloads, failing_mirrors=(datasets.MNIST_MIRRORS[0],))
    monkeypatch.setattr(datasets.urllib.request, "urlopen", server)
    monkeypatch.setattr(datasets, "MNIST_MD5", {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()})
    check_dataset(datasets.load_mnist(), arrays)
    cache = no_data_anywhere / "cache" / "fastopt" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(payloads)
    for name, data in payloads.items():
        assert (cache / name).read_bytes() == data
    # The first mirror failed for each file, the second served it.
    assert len(server.requests) == 8
    # A second call reads the cache and does not download again.
    server.requests.clear()
    check_dataset(datasets.load_mnist(), arrays)
    assert server.requests == []


def test_load_mnist_download_refuses_a_checksum_mismatch(no_data_anywhere, monkeypatch):
    payloads, _ = _gz_payloads()
    server = FakeServer(payloads)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", server)
    # MNIST_MD5 keeps the published checksums, which the tiny files do not match.
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        datasets.load_mnist()
    cache = no_data_anywhere / "cache" / "fastopt" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []
    assert len(server.requests) == len(datasets.MNIST_MIRRORS)  # every mirror tried for the first file, then stop


def test_download_helper_raises_file_format_error_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.urllib.request, "urlopen", FakeServer({"f.gz": b"payload"}))
    target = tmp_path / "cache" / "f.gz"
    with pytest.raises(FileFormatError, match="checksum mismatch"):
        datasets._download("https://example.invalid/f.gz", target, "0" * 32)
    assert not target.exists()
    datasets._download("https://example.invalid/f.gz", target, hashlib.md5(b"payload").hexdigest())
    assert target.read_bytes() == b"payload"
    assert [p.name for p in target.parent.iterdir()] == ["f.gz"]


def test_load_mnist_download_when_every_mirror_fails(no_data_anywhere, monkeypatch):
    monkeypatch.setattr(datasets.urllib.request, "urlopen", FakeServer({}, failing_mirrors=("http",)))
    with pytest.raises(FileNotFoundError, match=r"could not be downloaded.*mirror down"):
        datasets.load_mnist()


# ------------------------------------------------------------------------------------------ XOR
def test_xor():
    X, y = datasets.xor()
    assert X.shape == (4, 2) and X.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int64
    assert {tuple(row) for row in X.tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for row, label in zip(X, y):
        assert label == int(row[0]) ^ int(row[1])
