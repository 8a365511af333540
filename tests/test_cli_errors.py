"""Every failure of the command line is one line on stderr: exit status 2 for bad input, 1 for a fault,
never a traceback unless ``--debug`` is given. Files it would write never replace foreign files."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import cli

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("--dataset", "xor", "--hidden", "4", "--epochs", "2", "--batch-size", "4", "--no-progress")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
    env.pop("FASTOPT_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "fastopt", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def assert_one_line(result: subprocess.CompletedProcess, status: int, *mentions: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastopt"), result.stderr
    for text in mentions:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ faults: exit 1
@pytest.mark.parametrize(
    ("hidden", "status", "problem"),
    [
        ("100000000,100000000", 1, "out of memory"),  # 10**16 parameters: beyond any address space
        ("3000000000,3000000000,3000000000", 2, "Maximum allowed dimension"),  # beyond what NumPy can index
    ],
)
def test_a_model_too_large_for_memory_is_one_line(hidden, status, problem):
    """No allocation of these sizes can succeed on any machine, overcommit or not."""
    line = assert_one_line(run("train", "--hidden", hidden, "--no-progress"), status, problem, "parameters")
    assert "784-" + hidden.replace(",", "-") + "-10 MLP" in line


def test_the_issue_s_hidden_100000000_is_one_line_and_exit_1():
    """``--hidden 100000000``: 296 GiB of float32 parameters, refused by Linux's heuristic overcommit on a
    machine with less memory than that (with overcommit always on, it would be allocated lazily)."""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    total_kib = sum(int(n) for n in re.findall(r"^(?:MemTotal|SwapTotal):\s+(\d+)", meminfo, re.MULTILINE))
    if not overcommit.exists() or overcommit.read_text().strip() != "0" or total_kib * 1024 > 2**38:
        pytest.skip("needs Linux's heuristic overcommit and less than 256 GiB of memory and swap")
    assert_one_line(run("train", "--hidden", "100000000", "--no-progress"), 1, "out of memory", "79,500,000,010")


@pytest.mark.parametrize("debug_first", [False, True], ids=["train---debug", "--debug-train"])
def test_debug_shows_the_traceback(debug_first):
    args = ["train", "--hidden", "100000000,100000000", "--no-progress"]
    result = run(*(["--debug", *args] if debug_first else [*args, "--debug"]))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1].startswith("MemoryError")


def fail_with(exc: BaseException):
    def load(name: str):
        raise exc

    return load


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("boom"), KeyError("missing"), AssertionError(), NotImplementedError("a\nmulti-line\nmessage")],
    ids=["RuntimeError", "KeyError", "AssertionError", "multi-line"],
)
def test_an_unexpected_exception_is_one_line_and_exit_1(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli, "_load_dataset", fail_with(exc))
    assert cli.main(["train", *QUICK]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"internal error: {type(exc).__name__}" in err and "--debug" in err
    with pytest.raises(type(exc)):
        cli.main(["train", *QUICK, "--debug"])


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad"), TypeError("bad"), FloatingPointError("nan"), PermissionError(13, "denied"), OSError("disk")],
    ids=["ValueError", "TypeError", "FloatingPointError", "PermissionError", "OSError"],
)
def test_bad_input_stays_exit_2(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli, "_load_dataset", fail_with(exc))
    assert cli.main(["train", *QUICK]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fastopt: error: ")


def test_ctrl_c_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_dataset", fail_with(KeyboardInterrupt()))
    assert cli.main(["train", *QUICK]) == 130
    assert capsys.readouterr().err == "fastopt: interrupted\n"


@pytest.mark.parametrize(
    "args", [["train", "--epochs", "0", "--debug"], ["--debug", "fly"], ["train", "--hidden", "x", "--debug"]]
)
def test_argument_errors_exit_2_with_or_without_debug(args):
    assert_one_line(run(*args), 2, "error")


# ------------------------------------------------------------------------------------ files: exit 2
def test_a_corrupt_dataset_file_is_one_line_and_exit_2(tmp_path):
    images = np.zeros((3, 2, 2), np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / stem).write_bytes(header + images.tobytes())
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):  # labels: a gzip bomb of trailing bytes
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 2]) + bytes(10**7)))
    assert_one_line(run("train", "--dataset", str(tmp_path), "--no-progress"), 2, "trailing bytes")


@pytest.mark.parametrize("option", ["--save", "--checkpoint"])
def test_a_foreign_file_is_refused_before_training_unless_overwrite(tmp_path, option):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = run("train", *QUICK, option, str(target))
    assert_one_line(result, 2, str(target), "--overwrite")
    assert "epoch" not in result.stdout, "trained before refusing"
    assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    result = run("train", *QUICK, option, str(target), "--overwrite")
    assert result.returncode == 0, result.stderr
    kind = fastopt._io.archive_kind(target)
    assert kind == ("fastopt-model" if option == "--save" else "fastopt-checkpoint")


def test_save_over_a_model_and_checkpoint_over_a_checkpoint_need_no_option(tmp_path):
    for _ in range(2):
        result = run("train", *QUICK, "--save", str(tmp_path / "m.npz"), "--checkpoint", str(tmp_path / "r.ckpt"))
        assert result.returncode == 0, result.stderr
    crossed = run("train", *QUICK, "--save", str(tmp_path / "r.ckpt"))
    assert_one_line(crossed, 2, "not a fastopt fastopt-model file")


def test_help_documents_overwrite_and_debug():
    for args in (["train", "--help"], ["bench", "--help"], ["--help"]):
        assert re.search(r"^\s+--debug\b", run(*args).stdout, re.MULTILINE), args
    assert re.search(r"^\s+--overwrite\b", run("train", "--help").stdout, re.MULTILINE)
