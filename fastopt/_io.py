"""Files fastopt writes: ``.npz`` archives written atomically and read without pickle.

An archive holds named arrays plus a JSON header (the ``"header"`` entry, a unicode scalar) that
names the file's kind and format version and carries a SHA-256 checksum of every array, so a
truncated, corrupted or foreign file is refused instead of loaded as garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class FileFormatError(ValueError):
    """A file fastopt was asked to read is missing, corrupt, foreign or of another version."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    sha = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def write_archive(
    path: str | os.PathLike[str], kind: str, version: int, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Write ``arrays`` and ``header`` to ``path`` atomically: a temporary file in the same folder,
    flushed and fsynced, then renamed over the target. A crash leaves the old file intact."""
    path = Path(path)
    if "header" in arrays:
        raise ValueError("'header' is a reserved array name")
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects, which fastopt files never store")
    full_header = dict(header, kind=kind, version=version, checksum=_digest(arrays))
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, header=np.array(json.dumps(full_header)), **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_archive(path: str | os.PathLike[str], kind: str, version: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read an archive written by ``write_archive``, never unpickling; checks kind, version, checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise FileFormatError(f"{path} is not a fastopt file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise FileFormatError(f"{path} holds pickled objects; fastopt refuses to load them") from exc
        raise FileFormatError(f"{path} is not a readable fastopt file: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # a corrupt zip or .npy header raises anything from KeyError to SyntaxError
        raise FileFormatError(f"{path} is not a readable fastopt file (truncated or corrupt): {exc!r}") from exc
    header_array = arrays.pop("header", None)
    if header_array is None or header_array.dtype.kind != "U" or header_array.ndim != 0:
        raise FileFormatError(f"{path} is not a fastopt file (no header)")
    try:
        header = json.loads(str(header_array))
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} has a corrupt header: {exc}") from exc
    if not isinstance(header, dict) or header.get("kind") != kind:
        found = header.get("kind") if isinstance(header, dict) else None
        raise FileFormatError(f"{path} is not a fastopt {kind} file (it says {found!r})")
    if header.get("version") != version:
        raise FileFormatError(
            f"{path} has {kind} format version {header.get('version')!r}; this fastopt reads version {version}"
        )
    if header.get("checksum") != _digest(arrays):
        raise FileFormatError(f"{path} fails its checksum: the file is corrupt")
    return header, arrays
