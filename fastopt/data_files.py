"""Inputs from files, for ``fastopt predict``: ``.npy``, ``.npz`` and ``.csv``/``.txt`` files of numbers.

Reading trusts nothing in the file: no pickles, and no allocation beyond what the file's length can hold (an
``.npy`` file is mapped, so a header that declares more data than the file has is refused; an ``.npz`` member's
header is checked against its ZIP entry before any data is read, as ``fastopt._io`` reads fastopt's own files).
A file that cannot be read raises ``FileFormatError`` naming it and the problem.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fastopt._io import FileFormatError, _fill, _members, _open_member

SUFFIXES = (".npy", ".npz", ".csv", ".txt")
NPZ_ARRAY_NAME = "X"  # the member read from an .npz archive of several arrays


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a forged shape cannot allocate


def _read_npz(path: Path) -> np.ndarray:
    """The archive's array ``X``, or its only array."""
    with zipfile.ZipFile(path) as archive:
        members = _members(path, archive)
        if len(members) != 1 and NPZ_ARRAY_NAME not in members:
            raise FileFormatError(
                f"{path} holds the arrays {sorted(members)}: name the inputs {NPZ_ARRAY_NAME!r} "
                f"(np.savez(path, {NPZ_ARRAY_NAME}=inputs)) or store them alone"
            )
        name = NPZ_ARRAY_NAME if NPZ_ARRAY_NAME in members else next(iter(members))
        stream, dtype, shape = _open_member(path, archive, members[name])
        with stream:
            return _fill(path, members[name].filename, stream, np.empty(shape, dtype))


def _read_text(path: Path) -> np.ndarray:
    """Rows of numbers separated by commas (``.csv``) or white space (``.txt``); a first line that is not numbers
    is a header, skipped. An empty file gives no rows (refused as empty by the caller)."""
    delimiter = "," if path.suffix.lower() == ".csv" else None
    with open(path, encoding="utf-8", errors="replace") as stream:
        first_line = stream.readline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the caller says it is empty
        return np.loadtxt(
            path, delimiter=delimiter, ndmin=2, dtype=np.float64, skiprows=int(_is_header(first_line, delimiter))
        )


def _is_header(line: str, delimiter: str | None) -> bool:
    try:
        [float(field) for field in line.split(delimiter)]
    except ValueError:
        return True
    return False


READERS = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_text, ".txt": _read_text}


def read_features(path: str | os.PathLike[str]) -> np.ndarray:
    """The samples of an ``.npy``, ``.npz`` (its array ``X``, or its only array) or ``.csv``/``.txt`` file as a 2-D
    array (samples, features) in the file's dtype: images (N, 28, 28) are flattened to (N, 784); a 1-D array is
    one feature per sample. Raises ``FileNotFoundError``, or ``FileFormatError`` for a file that is not such a
    file, holds pickled objects, is truncated or corrupt, or holds a single number."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise FileFormatError(f"{path}: expected a {', '.join(SUFFIXES)} file, got the suffix {suffix or '(none)'!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        array = READERS[suffix](path)
    except (FileFormatError, MemoryError):
        raise
    except Exception as exc:  # a corrupt file raises anything from ValueError to EOFError or zipfile.BadZipFile
        raise FileFormatError(f"{path} is not a readable {suffix} file: {type(exc).__name__}: {exc}") from exc
    if array.ndim == 0:
        raise FileFormatError(f"{path} holds a single number, not samples")
    return array.reshape(array.shape[0], math.prod(array.shape[1:]))
