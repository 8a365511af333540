"""Files fastopt writes: ``.npz`` archives written atomically and read without pickle.

An archive holds named arrays plus a JSON header (the ``"header"`` entry, a unicode scalar) that
names the file's kind and format version and carries a SHA-256 checksum of every array, so a
truncated, corrupted or foreign file is refused instead of loaded as garbage.

Reading trusts nothing in the file before checking it: the ZIP directory's sizes against the file's
length, each member's ``.npy`` header against its ZIP sizes, and the header's declared arrays (the
``layout`` the reader derives from the JSON header, e.g. the parameter count of a model's architecture)
against each member, all before any array data is read. A member is then read into an array of its
declared size, never more, so no file makes fastopt allocate more than its header declares (nor, with
deflate's 1032:1 limit, more than 1032 times the file's length). Every malformed file raises
``FileFormatError``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import secrets
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format


class FileFormatError(ValueError):
    """A file fastopt was asked to read is missing, corrupt, foreign or of another version."""


class OverwriteRefusedError(FileExistsError, ValueError):
    """A write would replace a file that is not a fastopt file of the same kind (see ``check_replaceable``)."""


#: ``{array name: (dtype, shape)}``: the arrays an archive's header declares.
Layout = dict[str, tuple[np.dtype, tuple[int, ...]]]

DEFLATE_MAX_RATIO = 1032  # deflate emits at most 258 bytes per 2 bits of input
MAX_HEADER_CHARACTERS = 16 * 2**20  # JSON header; a checkpoint's grows by ~100 characters per epoch of history
MAX_HEADER_DEPTH = 64  # nesting of the JSON header; fastopt's own headers nest 5 deep
READ_CHUNK_BYTES = 2**20
TEMPORARY_TOKEN_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # as tempfile.mkstemp's names
_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    sha = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.reshape(-1).view(np.uint8))  # the bytes in place, no copy
    return sha.hexdigest()


# ---------------------------------------------------------------------------------------------- writing
def write_archive(
    path: str | os.PathLike[str],
    kind: str,
    version: int,
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
    overwrite: bool = False,
) -> None:
    """Write ``arrays`` and ``header`` to ``path`` atomically: a temporary file in the same folder,
    flushed and fsynced, then renamed over the target. A crash leaves the old file intact.

    An existing file at ``path`` is replaced only if it is a fastopt file of the same ``kind`` or
    ``overwrite`` is true (else ``OverwriteRefusedError``, see ``check_replaceable``). The file gets the
    permissions an ordinary ``open(path, "w")`` would give it: those of the file it replaces, else
    ``0o666`` less the umask (and the folder's default ACL)."""
    path = Path(path)
    if "header" in arrays:
        raise ValueError("'header' is a reserved array name")
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects, which fastopt files never store")
    check_replaceable(path, kind, overwrite)
    full_header = dict(header, kind=kind, version=version, checksum=_digest(arrays))
    _replace_atomically(path, lambda stream: np.savez(stream, header=np.array(json.dumps(full_header)), **arrays))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as ``write_archive`` writes archives: a reader sees the old
    file or the new one, never a part. Replaces whatever file is at ``path`` (for fastopt's own text outputs)."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``write_text_atomic``)."""
    _replace_atomically(Path(path), lambda stream: stream.write(data))


def _replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, flush and fsync it, give it the permissions of the
    file it replaces (if any), rename it over ``path`` and fsync the folder. A crash leaves the old file intact."""
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        _copy_mode_of_replaced_file(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent if str(path.parent) else Path("."))


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create ``path``'s temporary file ``.<name>.<8 random characters>.tmp`` (named as ``tempfile.mkstemp``
    names them, see ``temporaries_of``) exclusively, with mode 0o666 for the kernel to apply the umask to,
    as ``open()`` does: ``mkstemp`` creates its files 0o600 whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_EXCL: never through a symlink
    for _ in range(100):
        token = "".join(secrets.choice(TEMPORARY_TOKEN_CHARACTERS) for _ in range(8))
        temporary = path.with_name(f".{path.name}.{token}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for a temporary file next to {path}")


def _copy_mode_of_replaced_file(path: Path, temporary: Path) -> None:
    """Give ``temporary`` the permission bits of the file it is about to replace, if any."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)


def _fsync_folder(folder: Path) -> None:
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def check_replaceable(path: str | os.PathLike[str], kind: str, overwrite: bool = False) -> None:
    """Raise ``OverwriteRefusedError`` unless a ``kind`` file written at ``path`` may replace what is
    there: nothing, a fastopt ``kind`` file (of any version), or with ``overwrite`` any file. A folder or
    other non-file is never replaced."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise OverwriteRefusedError(f"{path} exists and is not a file; fastopt never replaces it")
    if overwrite or archive_kind(path) == kind:
        return
    raise OverwriteRefusedError(
        f"{path} exists and is not a fastopt {kind} file; refusing to replace it "
        "(pass overwrite=True, or --overwrite on the command line, to replace it)"
    )


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind a fastopt archive at ``path`` declares (only its header is read), or None if it is not
    a readable fastopt archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            header = _read_header(Path(path), archive, _members(Path(path), archive).get("header"))
    except Exception:  # whatever cannot be read is not a fastopt file
        return None
    kind = header.get("kind")
    return kind if isinstance(kind, str) else None


def temporaries_of(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files ``write_archive`` leaves next to ``path`` when killed while writing it:
    regular files named ``.<name>.<8 random characters>.tmp`` (``tempfile.mkstemp``'s names), matched
    exactly, so that another file's temporaries (``.runX.ckpt.*`` for ``run[XY].ckpt``, or those of
    ``run.ckpt.2`` for ``run.ckpt``) never are."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    exact = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.tmp")
    candidates = folder.glob(glob.escape(prefix) + "*.tmp")
    return [found for found in candidates if exact.fullmatch(found.name) and found.is_file() and not found.is_symlink()]


# ---------------------------------------------------------------------------------------------- reading
def read_archive(
    path: str | os.PathLike[str],
    kind: str,
    version: int | tuple[int, ...],
    layout: Callable[[dict[str, Any]], Layout] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read an archive written by ``write_archive``, never unpickling; checks kind, version (or one of the
    versions given, the header then says which), checksum.

    ``layout(header)`` returns the arrays the (kind- and version-checked) header declares, by name, with
    their dtype (either byte order is accepted; arrays are returned in native order) and shape; it raises
    ``ValueError``/``TypeError`` for a header that declares nothing valid. Every member must then be one
    of those arrays, and every declared array present, before any data is read. Without ``layout`` any
    arrays are accepted, each still read only up to the size its own header and ZIP entry declare.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise FileFormatError(f"{path} is not a fastopt file (not an .npz archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(path, archive)
            header = _read_header(path, archive, members.pop("header", None))
            _check_kind_and_version(path, header, kind, version)
            declared = _declared_arrays(path, archive, members, header, layout)
            arrays = {name: _read_array(path, archive, members[name], *shape) for name, shape in declared.items()}
    except (FileFormatError, MemoryError):
        raise
    except Exception as exc:  # a corrupt zip or .npy header raises anything from KeyError to SyntaxError
        raise FileFormatError(
            f"{path} is not a readable fastopt file (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    if header.get("checksum") != _digest(arrays):
        raise FileFormatError(f"{path} fails its checksum: the file is corrupt")
    return header, {name: _native(array) for name, array in arrays.items()}


def _members(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's ``.npy`` members by array name, each checked against the file's length, with a
    compression method that cannot inflate beyond deflate's ratio, and not encrypted."""
    file_size = path.stat().st_size
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in members:
            raise FileFormatError(f"{path} is not a fastopt file (unexpected member {info.filename!r})")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x61:
            raise FileFormatError(f"{path}: member {info.filename!r} is encrypted or in an unsupported compression")
        if info.header_offset + info.compress_size > file_size:
            raise FileFormatError(f"{path} is truncated: member {info.filename!r} extends beyond the file's end")
        limit = (
            info.compress_size if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO * info.compress_size
        )
        if info.file_size > limit:
            raise FileFormatError(
                f"{path}: member {info.filename!r} declares {info.file_size} bytes, more than its "
                f"{info.compress_size} stored bytes can hold"
            )
        members[name] = info
    return members


def _open_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[IO[bytes], np.dtype, tuple]:
    """Open a member and parse its ``.npy`` header; check that the ZIP entry holds exactly the data it
    declares. Returns the stream positioned at the data, the dtype and the shape."""
    stream = archive.open(info)
    version = npy_format.read_magic(stream)
    if version not in _NPY_HEADER_READERS:
        raise FileFormatError(f"{path}: member {info.filename!r} has .npy format version {version}")
    shape, fortran_order, dtype = _NPY_HEADER_READERS[version](stream)
    if dtype.hasobject:
        raise FileFormatError(f"{path} holds pickled objects; fastopt refuses to load them")
    if any(size < 0 for size in shape) or (fortran_order and len(shape) > 1):
        raise FileFormatError(f"{path}: member {info.filename!r} has an invalid .npy header")
    data_bytes = math.prod(shape) * dtype.itemsize
    if info.file_size != stream.tell() + data_bytes:
        raise FileFormatError(
            f"{path}: member {info.filename!r} declares {dtype} {shape} ({data_bytes} bytes) in an entry of "
            f"{info.file_size - stream.tell()} bytes of data"
        )
    return stream, dtype, shape


def _read_header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> dict[str, Any]:
    """The JSON header: a unicode scalar of at most ``MAX_HEADER_CHARACTERS``, nested at most
    ``MAX_HEADER_DEPTH`` deep, holding an object."""
    if info is None:
        raise FileFormatError(f"{path} is not a fastopt file (no header)")
    stream, dtype, shape = _open_member(path, archive, info)
    with stream:
        if dtype.kind != "U" or shape != ():
            raise FileFormatError(f"{path} is not a fastopt file (no header)")
        if dtype.itemsize // 4 > MAX_HEADER_CHARACTERS:
            raise FileFormatError(f"{path}: its header of {dtype.itemsize // 4} characters exceeds the limit")
        text = str(_fill(path, info.filename, stream, np.empty(shape, dtype))[()])
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise FileFormatError(f"{path} has a corrupt header: {type(exc).__name__}: {exc}") from exc
    if _nesting_depth(header) > MAX_HEADER_DEPTH:
        raise FileFormatError(f"{path} has a corrupt header: nested more than {MAX_HEADER_DEPTH} deep")
    if not isinstance(header, dict):
        raise FileFormatError(f"{path} is not a fastopt file (its header is a {type(header).__name__})")
    return header


def _nesting_depth(value: Any) -> int:
    """How deep lists and dicts nest in a JSON value (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_kind_and_version(path: Path, header: dict[str, Any], kind: str, version: int | tuple[int, ...]) -> None:
    if header.get("kind") != kind:
        raise FileFormatError(f"{path} is not a fastopt {kind} file (it says {header.get('kind')!r})")
    versions = version if isinstance(version, tuple) else (version,)
    found = header.get("version")
    if isinstance(found, bool) or found not in versions:
        readable = " or ".join(str(v) for v in versions)
        raise FileFormatError(f"{path} has {kind} format version {found!r}; this fastopt reads version {readable}")


def _declared_arrays(
    path: Path,
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    header: dict[str, Any],
    layout: Callable[[dict[str, Any]], Layout] | None,
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each member's dtype and shape from its ``.npy`` header, checked against ``layout(header)``."""
    found = {}
    for name, info in members.items():
        stream, dtype, shape = _open_member(path, archive, info)
        stream.close()
        found[name] = (dtype, shape)
    if layout is None:
        return found
    try:
        expected = layout(header)
    except (TypeError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{path}: {exc}") from exc
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        problems = [f"missing arrays {missing}"] * bool(missing) + [f"unexpected arrays {unexpected}"] * bool(
            unexpected
        )
        raise FileFormatError(f"{path}: {' and '.join(problems)} for what its header declares")
    for name, (dtype, shape) in found.items():
        want_dtype, want_shape = expected[name]
        if dtype.newbyteorder("=") != want_dtype or shape != want_shape:
            raise FileFormatError(
                f"{path}: its arrays do not fit its header: array {name} must be {want_dtype} of shape "
                f"{want_shape}, got {dtype} {shape}"
            )
    return found


def _read_array(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple
) -> np.ndarray:
    stream, _, _ = _open_member(path, archive, info)
    with stream:
        return _fill(path, info.filename, stream, np.empty(shape, dtype))


def _fill(path: Path, member: str, stream: IO[bytes], array: np.ndarray) -> np.ndarray:
    """Read exactly ``array``'s bytes from ``stream`` into it, then check the stream ends there (which
    makes zipfile verify the member's CRC)."""
    if read_into(stream, array.reshape(-1).view(np.uint8)) != array.nbytes or stream.read(1):
        raise FileFormatError(f"{path}: member {member!r} does not hold the data its header declares")
    return array


def read_into(stream: IO[bytes], buffer: np.ndarray) -> int:
    """Read from ``stream`` into the uint8 array ``buffer`` until it is full or the stream ends, in chunks
    (no temporary of the whole size); returns the number of bytes read."""
    filled = 0
    while filled < buffer.size:
        chunk = stream.read(min(READ_CHUNK_BYTES, buffer.size - filled))
        if not chunk:
            break
        buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        filled += len(chunk)
    return filled


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (swapped in place: the file's bytes were checksummed already)."""
    if array.dtype.isnative:
        return array
    return array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))
