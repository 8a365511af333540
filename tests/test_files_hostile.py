"""Hostile files: decompression bombs, crafted headers, and files fastopt must neither read past nor replace.

The promises (README, Reliability): every malformed model, checkpoint or IDX file is refused with
``FileFormatError`` (a ``ValueError``), never another exception type; no file makes fastopt allocate more
than the arrays its header declares (peak memory is measured with ``tracemalloc``, which counts NumPy's
buffers and zlib's output alike).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import _io, datasets, layers, losses, optim
from fastopt._io import FileFormatError
from fastopt.checkpoint import CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, TrainingState
from fastopt.model import MODEL_FILE_VERSION

POSIX = os.name == "posix"  # symlinks without privileges, permission bits, '*' and '?' in file names
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX file system semantics")
MiB = 2**20
BOMB_BYTES = 48 * MiB  # what the bombs below inflate to; the allowance is far below it
ALLOWANCE = 4 * MiB  # peak memory a refused or small file may cost (chunks, headers, Python objects)


def small_model() -> fastopt.Sequential:
    return fastopt.Sequential([layers.Dense(3, 4), layers.ReLU(), layers.Dense(4, 2)], seed=0, backend="numpy")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape: tuple, descr: str, version: tuple[int, int] = (1, 0), fortran_order: bool = False) -> bytes:
    """The ``.npy`` header alone: a member that claims ``shape`` of ``descr`` and holds no data."""
    buffer = io.BytesIO()
    writer = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    writer(buffer, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buffer.getvalue()


def header_member(header: dict | str) -> bytes:
    return npy(np.array(header if isinstance(header, str) else json.dumps(header)))


def model_header(model: fastopt.Sequential, parameters: np.ndarray | None = None) -> dict:
    parameters = model.parameters if parameters is None else parameters
    return {
        "model": model.config(),
        "kind": "fastopt-model",
        "version": MODEL_FILE_VERSION,
        "checksum": _io._digest({"parameters": parameters}),
    }


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data, compress_type=method)
    return path


def peak_memory(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Peak traced memory (bytes) while ``call`` runs, and the exception it raised (None if it returned)."""
    tracemalloc.start()
    error = None
    try:
        call()
    except BaseException as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def assert_refused_cheaply(call: Callable[[], object], match: str = "") -> FileFormatError:
    peak, error = peak_memory(call)
    assert isinstance(error, FileFormatError), f"expected FileFormatError, got {error!r}"
    assert not match or match in str(error), str(error)
    assert peak < ALLOWANCE, f"refusing cost {peak / MiB:.1f} MiB"
    return error


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Overwrite the uncompressed size of ``member`` in its local header and central directory entry
    (a crafted file that understates how far its data inflates)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(name)] == name:
                data[at + offset : at + offset + 4] = size.to_bytes(4, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ decompression bombs
def test_a_deflated_member_larger_than_its_architecture_is_refused_before_inflating(tmp_path):
    """The parameters member inflates to 48 MiB (honest ZIP sizes, an .npy header to match), the
    architecture declares 26 parameters: refused on the headers alone."""
    model = small_model()
    bomb = np.zeros(BOMB_BYTES // 4, np.float32)
    path = write_zip(
        tmp_path / "bomb.npz",
        {"header": header_member(model_header(model, bomb)), "parameters": npy(bomb)},
        zipfile.ZIP_DEFLATED,
    )
    assert path.stat().st_size < BOMB_BYTES / 500
    assert_refused_cheaply(lambda: fastopt.load(path), "do not fit")


def test_a_member_that_inflates_beyond_its_declared_size_is_read_only_up_to_it(tmp_path):
    """ZIP entry and .npy header both claim 26 float32, the deflate stream goes on for 48 MiB: fastopt
    reads the declared bytes, then the CRC (over the whole stream) refuses the rest."""
    model = small_model()
    honest_size = len(npy(model.parameters))
    lying = npy(model.parameters) + bytes(BOMB_BYTES)
    path = write_zip(
        tmp_path / "lying.npz",
        {"header": header_member(model_header(model)), "parameters": lying},
        zipfile.ZIP_DEFLATED,
    )
    set_declared_size(path, "parameters.npy", honest_size)
    assert_refused_cheaply(lambda: fastopt.load(path))


def test_a_header_member_bomb_is_refused_before_inflating(tmp_path):
    """A JSON header of 48 MiB of spaces (valid JSON around it) would exceed the header limit."""
    model = small_model()
    text = json.dumps(model_header(model)) + " " * BOMB_BYTES
    path = write_zip(
        tmp_path / "header-bomb.npz",
        {"header": npy(np.array(text)), "parameters": npy(model.parameters)},
        zipfile.ZIP_DEFLATED,
    )
    assert_refused_cheaply(lambda: fastopt.load(path), "exceeds the limit")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_compression_methods_without_a_known_ratio_are_refused(tmp_path, method):
    model = small_model()
    members = {"header": header_member(model_header(model)), "parameters": npy(model.parameters)}
    path = write_zip(tmp_path / "other.npz", members, method)
    assert_refused_cheaply(lambda: fastopt.load(path), "unsupported compression")


def test_a_member_declaring_more_than_deflate_can_hold_is_refused(tmp_path):
    """An entry whose declared size exceeds 1032 times its compressed size cannot be genuine deflate."""
    model = small_model()
    path = write_zip(
        tmp_path / "ratio.npz",
        {"header": header_member(model_header(model)), "parameters": npy(model.parameters)},
        zipfile.ZIP_DEFLATED,
    )
    set_declared_size(path, "parameters.npy", 2**31)
    assert_refused_cheaply(lambda: fastopt.load(path), "can hold")


def test_a_checkpoint_bomb_is_refused_before_inflating(tmp_path):
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    path = tmp_path / "run.ckpt"
    small_model().fit(X, y, loss=losses.CrossEntropy(), optimizer=optim.Adam(), epochs=1, batch_size=2, checkpoint=path)
    header, arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    fingerprint = header["training"]["fingerprint"]
    for name in arrays:  # each array in turn becomes a 48 MiB deflate bomb
        bombed = dict(arrays, **{name: np.zeros(BOMB_BYTES // 4, np.float32)})
        members = {"header": header_member(dict(header, checksum=_io._digest(bombed)))}
        members.update({key: npy(value) for key, value in bombed.items()})
        target = write_zip(tmp_path / f"bomb-{name}.ckpt", members, zipfile.ZIP_DEFLATED)
        assert_refused_cheaply(lambda target=target: TrainingState.load(target, fingerprint), "do not fit")


def idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(int(size).to_bytes(4, "big") for size in shape)


RANDOM_BYTES = np.random.default_rng(0).integers(0, 256, MiB // 2, dtype=np.uint8).tobytes()  # incompressible


@pytest.mark.parametrize(
    ("content", "match", "declared"),
    [
        (idx_header(0x08, (10, 28, 28)) + bytes(10 * 28 * 28 + BOMB_BYTES), "trailing bytes", 10 * 28 * 28),
        (idx_header(0x08, (2**32 - 1, 2**32 - 1)) + bytes(1000), "can hold", 0),
        (idx_header(0x0E, (2**31, 4)) + bytes(1000), "can hold", 0),
        (idx_header(0x08, (BOMB_BYTES,)) + bytes(1000), "can hold", 0),
        (idx_header(0x08, (MiB,)) + RANDOM_BYTES, "truncated", MiB),
    ],
    ids=["data-beyond-header", "huge-shape", "huge-float64", "zeros-declaring-more", "random-declaring-more"],
)
def test_gzipped_idx_bombs_are_refused_within_the_declared_size(tmp_path, content, match, declared):
    """A gzipped IDX file costs at most the array its header declares (refused beforehand when the
    declaration exceeds what deflate can expand the file to), however far its stream inflates."""
    path = tmp_path / "bomb-idx.gz"
    path.write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
    peak, error = peak_memory(lambda: datasets.read_idx(path))
    assert isinstance(error, FileFormatError) and match in str(error), repr(error)
    assert peak < ALLOWANCE + declared, f"refusing cost {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("shape", [(2**32 - 1, 2**32 - 1), (2**20, 2**20, 255), (BOMB_BYTES,)])
def test_a_plain_idx_file_declaring_more_than_it_holds_is_refused_before_reading(tmp_path, shape):
    path = tmp_path / "big.idx"
    path.write_bytes(idx_header(0x08, shape) + bytes(100))
    assert_refused_cheaply(lambda: datasets.read_idx(path), "truncated")


def test_a_gzipped_idx_file_at_deflates_limit_still_loads(tmp_path):
    """Legitimate, highly compressible data (all zeros, about 1000:1) is not mistaken for a bomb."""
    images = np.zeros((2000, 28, 28), np.uint8)
    path = tmp_path / "zeros.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, images.shape) + images.tobytes(), compresslevel=9))
    assert path.stat().st_size * 500 < images.nbytes
    assert np.array_equal(datasets.read_idx(path), images)


# ------------------------------------------------------------------------------------ crafted headers
def malformed_model_files(tmp_path: Path) -> dict[str, Path]:
    """Files that each break one rule of the format; every one must be refused with FileFormatError."""
    model = small_model()
    header = model_header(model)
    parameters = npy(model.parameters)
    deep_list = "[" * 200_000 + "]" * 200_000
    deep_object = '{"model":' * 200_000 + "1" + "}" * 200_000
    cases: dict[str, dict[str, bytes]] = {
        "json-nested-200000-list": {"header": header_member(deep_list), "parameters": parameters},
        "json-nested-200000-object": {"header": header_member(deep_object), "parameters": parameters},
        "json-nested-100": {"header": header_member(dict(header, model={"x": json.loads("[" * 100 + "]" * 100)}))},
        "json-huge-integer": {"header": header_member('{"kind": ' + "9" * 5000 + "}"), "parameters": parameters},
        "json-not-utf": {"header": npy(np.frombuffer(b"\x00\x00\x11\x00" * 4, "<U4").copy())},
        "npy-claims-1e11-float64": {"header": header_member(header), "parameters": npy_header((10**11,), "<f8")},
        "npy-claims-1e11-in-header": {"header": npy_header((), "<U100000000000"), "parameters": parameters},
        "npy-negative-shape": {"header": header_member(header), "parameters": npy_header((-26,), "<f4")},
        "npy-fortran-2d": {
            "header": header_member(header),
            "parameters": npy_header((2, 13), "<f4", fortran_order=True),
        },
        "npy-version-3": {"header": header_member(header), "parameters": b"\x93NUMPY\x03\x00" + parameters[8:]},
        "npy-bad-magic": {"header": header_member(header), "parameters": b"\x93NUMPX" + parameters[6:]},
        "npy-truncated-header": {"header": header_member(header), "parameters": parameters[:20]},
        "npy-object-dtype": {"header": header_member(header), "parameters": npy_header((26,), "|O")},
        "npy-structured-dtype": {"header": header_member(header), "parameters": npy_header((26,), "<i4,<f4")},
        "npy-wrong-dtype": {"header": header_member(header), "parameters": npy(model.parameters.astype(np.float64))},
        "npy-data-short": {"header": header_member(header), "parameters": parameters[:-4]},
        "npy-data-long": {"header": header_member(header), "parameters": parameters + bytes(4)},
        "header-not-unicode": {"header": npy(np.zeros(3)), "parameters": parameters},
        "header-1-d": {"header": npy(np.array([json.dumps(header)])), "parameters": parameters},
        "no-parameters": {"header": header_member(header)},
        "extra-array": {"header": header_member(header), "parameters": parameters, "extra": npy(np.zeros(2))},
        "huge-architecture": {
            "header": header_member(
                dict(
                    header,
                    model=dict(
                        header["model"], layers=[{"type": "Dense", "in_features": 10**6, "out_features": 10**6}]
                    ),
                )
            ),
            "parameters": parameters,
        },
        "architecture-not-a-list": {
            "header": header_member(dict(header, model={"layers": 3})),
            "parameters": parameters,
        },
    }
    paths = {name: write_zip(tmp_path / f"{name}.npz", members) for name, members in cases.items()}
    with zipfile.ZipFile(tmp_path / "not-npy.npz", "w") as archive:
        archive.writestr("header.txt", b"{}")
    paths["member-not-npy"] = tmp_path / "not-npy.npz"
    with zipfile.ZipFile(tmp_path / "duplicate.npz", "w") as archive:
        for _ in range(2):
            archive.writestr("parameters.npy", parameters)
        archive.writestr("header.npy", header_member(header))
    paths["duplicate-member"] = tmp_path / "duplicate.npz"
    return paths


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_every_malformed_model_file_is_refused_with_file_format_error(tmp_path):
    for name, path in malformed_model_files(tmp_path).items():
        peak, error = peak_memory(lambda path=path: fastopt.load(path))
        assert type(error) is FileFormatError, f"{name}: {error!r}"
        assert str(path) in str(error), f"{name}: {error}"
        assert peak < ALLOWANCE + 16 * MiB, f"{name}: refusing cost {peak / MiB:.1f} MiB"


def test_a_deep_header_is_refused_in_a_checkpoint_too(tmp_path):
    path = write_zip(tmp_path / "deep.ckpt", {"header": header_member("[" * 200_000 + "]" * 200_000)})
    with pytest.raises(FileFormatError, match="corrupt header"):
        TrainingState.load(path, {})


def test_a_big_endian_model_file_loads_in_native_order(tmp_path):
    """A file written on a big-endian machine holds '>f4' parameters; they load, in native order."""
    model = small_model()
    swapped = model.parameters.astype(">f4")
    path = write_zip(
        tmp_path / "be.npz", {"header": header_member(model_header(model, swapped)), "parameters": npy(swapped)}
    )
    loaded = fastopt.load(path)
    assert loaded.parameters.dtype.isnative and np.array_equal(loaded.parameters, model.parameters)


_VALID = {}


def test_a_version_1_model_file_loads_into_the_new_layout(tmp_path):
    """Format 1 kept each layer's weight then bias; format 2 every weight, then every bias. A version-1 file's
    parameters go to the right layers."""
    model = small_model()
    interleaved = np.concatenate([array.ravel() for array in model.get_weights()])
    header = dict(model_header(model, interleaved), version=1)
    path = write_zip(tmp_path / "v1.npz", {"header": header_member(header), "parameters": npy(interleaved)})
    loaded = fastopt.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    assert np.array_equal(loaded.parameters, model.parameters)


def _valid_model_bytes(tmp_path_factory) -> bytes:
    if "model" not in _VALID:
        path = tmp_path_factory.mktemp("valid") / "model.npz"
        small_model().save(path)
        _VALID["model"] = path.read_bytes()
    return _VALID["model"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**6), byte=st.integers(0, 255), cut=st.booleans())
def test_a_mutated_model_file_loads_intact_or_raises_file_format_error(tmp_path_factory, position, byte, cut):
    """One byte set (or the file cut there): the same model, or FileFormatError, never another type."""
    valid = _valid_model_bytes(tmp_path_factory)
    data = bytearray(valid)
    at = position % len(data)
    if cut:
        del data[at:]
    else:
        data[at] = byte
    path = tmp_path_factory.getbasetemp() / "mutated.npz"
    path.write_bytes(bytes(data))
    try:
        loaded = fastopt.load(path)
    except FileFormatError:
        return
    assert loaded.parameters.tobytes() == small_model().parameters.tobytes()


# ------------------------------------------------------------------------------------ stale temporaries
OTHER_NAMES = {
    "run[XY].ckpt": ["runX.ckpt", "runY.ckpt"],  # what the unescaped glob .run[XY].ckpt.*.tmp matched
    "run*.ckpt": ["runA.ckpt", "run.ckpt", "run-2.ckpt"],
    "run?.ckpt": ["run1.ckpt", "runA.ckpt"],
    "run.ckpt": ["run.ckpt.2", "run.ckpt.old.ckpt", "run.ckpt.abcdefgh"],  # names that extend this one
    "r[!a]n.ckpt": ["rbn.ckpt", "r[!a]n.ckpt.x"],
}


def temporary_of(name: str, token: str = "k3x_9q0a") -> str:
    return f".{name}.{token}.tmp"


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[] if name == "run.ckpt" else posix_only) for name in OTHER_NAMES]
)
def test_resume_removes_only_its_own_temporaries(tmp_path, name):
    """The temporaries of ``name`` go; those of every other file, and anything that only looks like one
    (a folder, a symlink, a name of another length), stay."""
    own = [tmp_path / temporary_of(name), tmp_path / temporary_of(name, "abcdefgh")]
    others = [tmp_path / temporary_of(other) for other in OTHER_NAMES[name]]
    others += [tmp_path / temporary_of(name, "short"), tmp_path / temporary_of(name, "abcdefghi")]
    for file in own + others:
        file.write_bytes(b"partial")
    folder = tmp_path / temporary_of(name, "folder00")
    folder.mkdir()
    links = [tmp_path / temporary_of(name, "symlink0")] if POSIX else []
    for link in links:
        link.symlink_to(others[0])
    from fastopt.checkpoint import remove_stale_temporaries

    assert remove_stale_temporaries(tmp_path / name) == len(own)
    assert not any(file.exists() for file in own)
    assert all(file.exists() for file in others) and folder.is_dir() and all(link.is_symlink() for link in links)


def test_a_real_temporary_name_is_recognised(tmp_path, monkeypatch):
    """The writer's own temporary (caught before its rename) is what the cleanup removes."""
    seen = []
    real_replace = _io.os.replace

    def crash(source, target):
        seen.append(Path(source))
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        small_model().save(tmp_path / "m[1].npz")
    monkeypatch.setattr(_io.os, "replace", real_replace)
    seen[0].write_bytes(b"left by a killed process")  # the writer deleted it; a SIGKILL would not have
    assert _io.temporaries_of(tmp_path / "m[1].npz") == [seen[0]]
    assert _io.temporaries_of(tmp_path / "m1.npz") == []


def test_resuming_a_bracketed_checkpoint_keeps_another_runs_temporary(tmp_path):
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    options = dict(loss=losses.CrossEntropy(), epochs=1, batch_size=2, resume=True)
    other = tmp_path / temporary_of("runX.ckpt")
    other.write_bytes(b"another run's checkpoint, being written")
    mine = tmp_path / temporary_of("run[XY].ckpt")
    mine.write_bytes(b"stale")
    small_model().fit(X, y, optimizer=optim.Adam(), checkpoint=tmp_path / "run[XY].ckpt", **options)
    assert other.read_bytes() == b"another run's checkpoint, being written" and not mine.exists()


# ------------------------------------------------------------------------------------ never clobber
def foreign_files(folder: Path) -> dict[str, Path]:
    """Files a model or checkpoint must not silently replace."""
    model_path, checkpoint_path = folder / "a-model.npz", folder / "a-checkpoint.ckpt"
    small_model().save(model_path)
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    small_model().fit(X, y, loss=losses.CrossEntropy(), optimizer=optim.SGD(), batch_size=4, checkpoint=checkpoint_path)
    files = {"model": model_path, "checkpoint": checkpoint_path}
    for name, content in {
        "text": b"root:x:0:0:root:/root:/bin/bash\n",
        "empty": b"",
        "npz": b"",
        "truncated-model": model_path.read_bytes()[:-10],
    }.items():
        files[name] = folder / f"{name}.file"
        files[name].write_bytes(content)
    np.savez(files["npz"], parameters=np.zeros(3))
    if POSIX:
        files["link-to-text"] = folder / "link"
        files["link-to-text"].symlink_to(files["text"])
        files["dangling-link"] = folder / "dangling"
        files["dangling-link"].symlink_to(folder / "nowhere")
    return files


def snapshot(files: dict[str, Path]) -> dict[str, tuple[bool, bytes | str]]:
    return {
        name: (path.is_symlink(), str(path.readlink()) if path.is_symlink() else path.read_bytes())
        for name, path in files.items()
    }


def test_save_replaces_only_a_model_file_unless_told(tmp_path):
    files = foreign_files(tmp_path)
    before = snapshot(files)
    model = small_model()
    for name, path in files.items():
        if name == "model":
            continue
        with pytest.raises(_io.OverwriteRefusedError, match="overwrite=True") as error:
            model.save(path)
        assert isinstance(error.value, ValueError) and str(path) in str(error.value)
    assert snapshot(files) == before
    model.save(files["model"])  # a model file: replaced as before
    if POSIX:
        model.save(files["link-to-text"], overwrite=True)  # the link is replaced, its target is not written through
        assert files["text"].read_bytes() == before["text"][1] and not files["link-to-text"].is_symlink()
    for name, path in files.items():
        model.save(path, overwrite=True)
        assert np.array_equal(fastopt.load(path).parameters, model.parameters), name


def test_a_folder_is_never_replaced(tmp_path):
    folder = tmp_path / "model.npz"
    folder.mkdir()
    with pytest.raises(_io.OverwriteRefusedError, match="not a file"):
        small_model().save(folder, overwrite=True)
    assert folder.is_dir()


def test_a_fresh_checkpointed_fit_refuses_a_foreign_file_before_training(tmp_path):
    files = foreign_files(tmp_path)
    before = snapshot(files)
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    for name, path in files.items():
        if name == "checkpoint":
            continue
        model = small_model()
        with pytest.raises(_io.OverwriteRefusedError, match="fastopt-checkpoint") as error:
            model.fit(X, y, loss=losses.CrossEntropy(), checkpoint=path)
        assert str(path) in str(error.value)
        assert np.array_equal(model.parameters, small_model().parameters), "trained before refusing"
    assert snapshot(files) == before
    small_model().fit(X, y, loss=losses.CrossEntropy(), checkpoint=files["checkpoint"])  # replaces a checkpoint


def test_the_checkpoint_writer_honours_overwrite(tmp_path):
    from fastopt import checkpoint

    text = tmp_path / "notes.txt"
    text.write_text("keep me")
    assert checkpoint.check_options(text, None, resume=False, overwrite=True) == "epoch"
    with pytest.raises(_io.OverwriteRefusedError):
        checkpoint.check_options(text, None, resume=False)
    with pytest.raises(TypeError, match="overwrite"):
        checkpoint.check_options(text, None, resume=False, overwrite="yes")
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    path = tmp_path / "run.ckpt"
    small_model().fit(X, y, loss=losses.CrossEntropy(), checkpoint=path)
    state = TrainingState.load(
        path, _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)[0]["training"]["fingerprint"]
    )
    with pytest.raises(_io.OverwriteRefusedError):
        state.save(text)
    assert text.read_text() == "keep me"
    state.save(text, overwrite=True)
    assert _io.archive_kind(text) == CHECKPOINT_FILE_KIND


# ------------------------------------------------------------------------------------ permissions


@pytest.fixture
def umask():
    original = os.umask(0o022)
    os.umask(original)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(original)


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o000, 0o027], ids=oct)
def test_new_files_get_the_permissions_open_would_give(tmp_path, umask, mask):
    umask(mask)
    reference = tmp_path / "reference"
    with open(reference, "w"):
        pass
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    small_model().save(tmp_path / "model.npz")
    small_model().fit(X, y, loss=losses.CrossEntropy(), checkpoint=tmp_path / "run.ckpt", checkpoint_every=1)
    assert mode_of(reference) == 0o666 & ~mask
    assert mode_of(tmp_path / "model.npz") == mode_of(reference)
    assert mode_of(tmp_path / "run.ckpt") == mode_of(reference)


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o664], ids=oct)
def test_a_replaced_file_keeps_its_permissions(tmp_path, umask, mode):
    umask(0o022)
    path = tmp_path / "model.npz"
    small_model().save(path)
    path.chmod(mode)
    small_model().save(path)
    assert mode_of(path) == mode


def test_fit_overwrite_replaces_a_foreign_file_with_its_checkpoint(tmp_path):
    X, y = np.eye(4, 3), np.array([0, 1, 1, 0])
    path = tmp_path / "notes.txt"
    path.write_text("replace me")
    small_model().fit(X, y, loss=losses.CrossEntropy(), epochs=2, checkpoint=path, checkpoint_every=1, overwrite=True)
    assert _io.archive_kind(path) == CHECKPOINT_FILE_KIND
