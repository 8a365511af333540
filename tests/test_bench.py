"""``fastopt bench``'s promises that hold on any machine: the floor it prints is never above a median measured
beside it, its probes compute what they claim, and its workloads' products are the networks' own. No timing
thresholds: the speeds themselves are measured by ``fastopt bench``, never asserted here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import bench_floor, benchmark
from fastopt.bench_floor import SEED_NETWORK, Machine, Network, Product
from fastopt.benchmark import Report, Row, format_report

HAVE_CYTHON = "cython" in fastopt.available_backends()


def _x_floor_column(text: str) -> list[float]:
    return [float(match) for match in re.findall(r"\s([0-9.]+)x$", text, flags=re.MULTILINE)]


def test_the_floor_is_at_most_every_median_when_the_model_overestimates():
    report = Report(
        "optim", "a workload", modelled_floor_seconds=2.0, rows=[Row("a", [1.0, 1.5, 3.0]), Row("b", [4.0])]
    )
    assert report.floor_seconds == 1.5
    text = format_report(report)
    assert min(_x_floor_column(text)) >= 1.0
    assert "was above a median" in text


def test_the_modelled_floor_stays_when_it_is_below_every_median():
    report = Report("optim", "a workload", modelled_floor_seconds=0.5, rows=[Row("a", [1.0]), Row("b", [2.0])])
    assert report.floor_seconds == 0.5
    assert "was above a median" not in format_report(report)


def test_a_measured_workload_never_runs_below_its_printed_floor():
    """A real (small) optimizer workload: its floor, from this machine's probes, is at most each median."""
    report = benchmark.bench_optim(4096, rounds=2, machine=Machine())
    assert report.rows and 0 < report.modelled_floor_seconds < float("inf")
    assert all(report.floor_seconds <= row.median for row in report.rows)
    assert min(_x_floor_column(format_report(report))) >= 1.0


def test_training_products_count_a_steps_flops():
    """Forward 2*in*out per layer, backward twice that, less the first layer's input gradient."""
    pairs = [(784, 128), (128, 64), (64, 10)]
    forward = sum(2 * 32 * n_in * n_out for n_in, n_out in pairs)
    assert SEED_NETWORK.training_flops(32) == 3 * forward - 2 * 32 * 784 * 128
    assert SEED_NETWORK.n_params == 109386
    assert Network("x", (3, 2), "mse").training_products(5) == [Product(5, 3, 2), Product(3, 5, 2, trans_a=True)]


def test_the_numpy_bandwidth_probe_runs_without_the_compiled_backend(monkeypatch):
    monkeypatch.setattr(bench_floor, "_compiled_probes", lambda: None)
    assert Machine().bandwidth(1000) > 0


@pytest.mark.skipif(not HAVE_CYTHON, reason="the compiled backend is not built")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_stream_probe_adds_the_gradient_in_place(threads):
    from fastopt.cython_backend import stream_probe

    n = 1000
    rng = np.random.default_rng(threads)
    param, grad, a, b = (rng.random(n, dtype=np.float32) for _ in range(4))
    expected = [param + grad, a + grad, b + grad]
    stream_probe(param, grad, a, b, threads)
    for got, want in zip((param, a, b), expected):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="one length"):
        stream_probe(param, grad[:-1], a, b, 1)


@pytest.mark.skipif(not HAVE_CYTHON, reason="the compiled backend is not built")
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_gemm_probe_computes_the_product(trans_a, trans_b, threads):
    from fastopt.cython_backend import gemm_probe

    probe = gemm_probe()
    if probe is None:
        pytest.skip("the dense kernels use numpy.matmul here: no direct GEMM to probe")
    m, k, n = 33, 20, 17
    rng = np.random.default_rng(0)
    a = rng.random((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.random((n, k) if trans_b else (k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    probe(a, b, c, trans_a, trans_b, threads, 2)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=k * np.finfo(np.float32).eps)
    with pytest.raises(ValueError, match="must agree"):
        probe(a, b, np.empty((m, n - 1), dtype=np.float32), trans_a, trans_b, threads, 1)


def test_the_predict_workload_reports_every_batch_with_floors_below_its_medians(tmp_path, capsys):
    """The whole command path of one small workload: printed tables, JSON with the machine's rates, and no
    implementation below the floor printed beside it."""
    reports = benchmark.run("predict", 1, rounds=1, json_path=str(tmp_path / "bench.json"))
    assert [report.label for report in reports] == ["predict, batch 1"]
    assert any(row.name == "fastopt numpy" for row in reports[0].rows)
    assert all(report.floor_seconds <= row.median for report in reports for row in report.rows)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["machine"]["gemm_gflop_per_s"] and saved["reports"][0]["floor_seconds"] > 0
    assert min(_x_floor_column(capsys.readouterr().out)) >= 1.0


def test_a_json_path_it_must_not_replace_is_refused_before_measuring(tmp_path, capsys):
    """``--json`` at a file that is not an earlier report, at a folder or in a missing folder is refused before any
    measurement (a text file was replaced, and a bad path reported after the whole benchmark ran); an earlier
    report is replaced."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for path, match in ((notes, "is not a report of fastopt bench"), (tmp_path, "is not a file"),
                        (tmp_path / "missing" / "b.json", "does not exist")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            benchmark.run("predict", 1, rounds=1, json_path=str(path))
    assert notes.read_text() == "my notes" and capsys.readouterr().out == ""
    report = tmp_path / "bench.json"
    for _ in range(2):
        benchmark.run("predict", 1, rounds=1, json_path=str(report))
    assert json.loads(report.read_text())["reports"]


def test_the_matrix_summary_has_a_row_per_cell_with_round_by_round_ratios():
    from fastopt.bench_workloads import matrix_summary

    cell = Report("matrix", "d", modelled_floor_seconds=0.5, unit="us", runs_per_case=10, label="net, batch 32")
    cell.rows = [
        Row("fastopt cython", [1.0, 2.0]),
        Row("fastopt numpy", [3.0, 4.0]),
        Row("pytorch x (fused Adam)", [4.0, 4.0]),
    ]
    lines = matrix_summary([cell]).splitlines()
    assert len(lines) == 2 and lines[1].startswith("net, batch 32")
    assert lines[1].split()[-3:] == ["3.00x", "2.50x", "3.00x"]  # torch/cython (4, 2), numpy/cython (3, 2), 1.5/0.5


def test_an_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="workload must be one of"):
        benchmark.run("nope", None, 1, None)


def test_the_bench_directory_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every case of ``bench/`` (pytest-benchmark: kernels, optimizers, the matrix, predict, the epoch) runs once;
    its own basetemp keeps the inner session away from this one's temporary directories."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if not bench.is_dir():
        pytest.skip("bench/ is not beside the tests (an installed wheel's tests)")
    pytest.importorskip("pytest_benchmark")
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(bench), "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         f"--basetemp={tmp_path / 'bench'}"],
        capture_output=True, text=True, timeout=600, cwd=bench.parent,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
