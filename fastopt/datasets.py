"""Datasets: the shipped Fashion-MNIST subset, full Fashion-MNIST and MNIST (IDX files), and XOR.

Image loaders return ``(X_train, y_train, X_test, y_test)``: X float32 (N, 784) scaled to [0, 1],
y int64 (N,) class labels 0-9.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from importlib import resources
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from fastopt._io import DEFLATE_MAX_RATIO, FileFormatError, read_into

# IDX type codes (the third byte of the magic number) and the big-endian dtypes they mean.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {  # of the published .gz files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MINI_FILE = "fashion-mnist-mini.npz"
Dataset = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, by content) into an array of its own dtype and shape.

    The header is read first; the data it declares must then be exactly what the file holds. A plain
    file's length is checked before any data is read; a gzipped one is decompressed as a stream into an
    array of the declared size (refused beforehand if the declaration exceeds what deflate can expand the
    file to, 1032:1), and refused if its data ends early or goes on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            return _read_idx_stream(path, stream, path.stat().st_size, compressed)
    except (OSError, EOFError, zlib.error) as exc:
        raise FileFormatError(f"{path}: cannot decompress ({exc})") from exc


def _read_idx_header(path: Path, stream: BinaryIO) -> tuple[np.dtype, tuple[int, ...]]:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise FileFormatError(f"{path}: not an IDX file (bad magic number {magic.hex()})")
    ndim = magic[3]
    dims = stream.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise FileFormatError(f"{path}: truncated or invalid IDX header")
    return np.dtype(IDX_DTYPES[magic[2]]), tuple(int(dim) for dim in np.frombuffer(dims, dtype=">u4"))


def _read_idx_stream(path: Path, stream: BinaryIO, file_size: int, compressed: bool) -> np.ndarray:
    dtype, shape = _read_idx_header(path, stream)
    header_size = 4 + 4 * len(shape)
    expected = header_size + math.prod(shape) * dtype.itemsize
    if compressed and expected > DEFLATE_MAX_RATIO * file_size:
        raise FileFormatError(
            f"{path}: the header announces {expected} bytes, more than its {file_size} compressed bytes can hold"
        )
    if not compressed and file_size != expected:
        _refuse_idx_size(path, file_size, expected)
    data = np.empty(expected - header_size, dtype=np.uint8)
    received = header_size + read_into(stream, data)
    if received < expected:
        _refuse_idx_size(path, received, expected)
    if stream.read(1):
        raise FileFormatError(f"{path}: has trailing bytes beyond the {expected} the header announces")
    values = data.view(dtype).reshape(shape)
    return values if dtype.isnative else values.byteswap(inplace=True).view(dtype.newbyteorder("="))


def _refuse_idx_size(path: Path, size: int, expected: int) -> NoReturn:
    problem = "truncated" if size < expected else "has trailing bytes"
    raise FileFormatError(f"{path}: {problem}: {size} bytes, the header announces {expected}")


def load_idx(images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file (N, rows, cols) of bytes and its label file (N,): returns X float32
    (N, rows*cols) in [0, 1] and y int64."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FileFormatError(
            f"{images_path}: expected unsigned-byte images (N, rows, cols), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise FileFormatError(f"{labels_path}: expected unsigned-byte labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise FileFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return _scale(images.reshape(len(images), -1)), labels.astype(np.int64)


def _scale(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_folder(folder: Path) -> Dataset:
    paths = {key: _find_file(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} (with or without .gz)")
    X_train, y_train = load_idx(paths["train_images"], paths["train_labels"])  # type: ignore[arg-type]
    X_test, y_test = load_idx(paths["test_images"], paths["test_labels"])  # type: ignore[arg-type]
    return X_train, y_train, X_test, y_test


def cache_dir() -> Path:
    """Where downloads are kept: ``$XDG_CACHE_HOME/fastopt`` or ``~/.cache/fastopt``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastopt"


def _candidates(name: str, system_dir: Path | None) -> list[Path]:
    folders = []
    if os.environ.get("FASTOPT_DATA"):
        root = Path(os.environ["FASTOPT_DATA"])
        folders += [root / name, root]
    if system_dir is not None:
        folders.append(system_dir)
    folders.append(cache_dir() / name)
    return folders


def _load_first(name: str, folders: list[Path]) -> Dataset | None:
    for folder in folders:
        if all(_find_file(folder, stem) for stem in IDX_FILES.values()):
            return _load_folder(folder)
    return None


def load_fashion_mnist(path: str | os.PathLike[str] | None = None) -> Dataset:
    """Full Fashion-MNIST (60,000 + 10,000 images) from IDX files, looked up in order: ``path``,
    ``$FASTOPT_DATA/fashion-mnist`` and ``$FASTOPT_DATA``, /usr/share/datasets/fashion-mnist (Debian's
    ``dataset-fashion-mnist`` package), the cache folder."""
    if path is not None:
        return _load_folder(Path(path))
    folders = _candidates("fashion-mnist", FASHION_MNIST_SYSTEM_DIR)
    found = _load_first("fashion-mnist", folders)
    if found is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found in " + ", ".join(map(str, folders)) + "; install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass path= a folder holding its four IDX files"
        )
    return found


def _download(url: str, target: Path, md5: str) -> None:
    """Fetch ``url`` into ``target`` if its MD5 matches (written atomically)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        payload = response.read()
    digest = hashlib.md5(payload).hexdigest()
    if digest != md5:
        raise FileFormatError(f"{url}: checksum mismatch (md5 {digest}, expected {md5})")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as stream:
        stream.write(payload)
    os.replace(temporary, target)


def load_mnist(path: str | os.PathLike[str] | None = None, download: bool = True) -> Dataset:
    """Full MNIST from IDX files: ``path``, ``$FASTOPT_DATA/mnist``, ``$FASTOPT_DATA``, the cache folder;
    if absent and ``download``, fetched into the cache with MD5 checks (needs a network)."""
    if path is not None:
        return _load_folder(Path(path))
    folders = _candidates("mnist", None)
    found = _load_first("mnist", folders)
    if found is not None:
        return found
    if not download:
        raise FileNotFoundError("MNIST not found in " + ", ".join(map(str, folders)))
    target_dir = cache_dir() / "mnist"
    errors = []
    for name, md5 in MNIST_MD5.items():
        if (target_dir / name).is_file():
            continue
        for mirror in MNIST_MIRRORS:
            try:
                _download(mirror + name, target_dir / name, md5)
                break
            except (urllib.error.URLError, OSError, FileFormatError) as exc:
                errors.append(f"{mirror + name}: {exc}")
        else:
            raise FileNotFoundError(f"MNIST not found locally and could not be downloaded: {'; '.join(errors)}")
    return _load_folder(target_dir)


def mini() -> Dataset:
    """The Fashion-MNIST subset shipped inside the package (5,000 training and 1,000 test images,
    500 and 100 per class, made by ``scripts/make_mini.py``; MIT licence, see data/LICENSE-fashion-mnist)."""
    source = resources.files("fastopt") / "data" / MINI_FILE
    with resources.as_file(source) as file, np.load(file, allow_pickle=False) as archive:
        return (
            _scale(archive["X_train"]),
            archive["y_train"].astype(np.int64),
            _scale(archive["X_test"]),
            archive["y_test"].astype(np.int64),
        )


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points: X float32 (4, 2) and labels int64 (4,) = x0 xor x1."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return X, np.array([0, 1, 1, 0], dtype=np.int64)


NAMES = ("mini", "fashion-mnist", "mnist", "xor")


def load(name: str | os.PathLike[str]) -> Dataset:
    """A dataset by name: ``"mini"``, ``"fashion-mnist"``, ``"mnist"``, ``"xor"`` (its four points are also its test
    set) or a folder of IDX files; ``(X_train, y_train, X_test, y_test)``."""
    if name == "mini":
        return mini()
    if name == "fashion-mnist":
        return load_fashion_mnist()
    if name == "mnist":
        return load_mnist()
    if name == "xor":
        X, y = xor()
        return X, y, X, y
    if Path(name).is_dir():
        return load_fashion_mnist(name)
    raise ValueError(f"dataset must be one of {', '.join(NAMES)} or a folder of IDX files, got {str(name)!r}")
