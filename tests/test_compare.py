"""fastopt compare: the study spec and its run ids, runs in this process and on Dask (a LocalCluster whose worker is
killed with SIGKILL mid-study, and a separately started scheduler with two workers), results.csv and study.json,
reruns that do no work, the report and the command line."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastopt.compare import PRESETS, Study
from fastopt.compare import execute as compare_execute
from fastopt.compare.task import checkpoint_path, record_path, train_run

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240  # seconds for a subprocess study (the CI machine has 2 cores and runs other tests)


def tiny_study(**changes: object) -> Study:
    """8 runs of the XOR network, 20 one-batch epochs each, checkpointed every 10 batches."""
    spec = {
        "name": "tiny", "datasets": ["xor"], "architectures": [[4]], "activation": "tanh", "epochs": 20,
        "batch_size": 4, "seeds": 2, "metric": "val_loss", "checkpoint_every": 10,
        "optimizers": [{"name": "sgd", "label": "SGD momentum", "lr": [0.1, 0.3], "momentum": 0.9},
                       {"name": "adam", "lr": [0.01, 0.03]}],
    }  # fmt: skip
    spec.update(changes)
    return Study.from_dict(spec)


def results_without_seconds(directory: Path) -> list[list[str]]:
    """results.csv without its one column that may differ between two runs of the same study: seconds."""
    with open(directory / "results.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    keep = [index for index, name in enumerate(rows[0]) if name != "seconds"]
    return [[row[index] for index in keep] for row in rows]


def records(directory: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((directory / "runs").glob("*.json"))}


def file_states(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a study folder with its modification time and content."""
    return {str(path): (path.stat().st_mtime_ns, path.read_bytes()) for path in directory.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------------ the spec
def test_the_grid_has_one_run_per_combination_with_stable_distinct_ids():
    study = tiny_study(backends="all")
    runs = study.runs()
    n_backends = len(study.backends)
    assert len(runs) == (2 + 2) * 2 * n_backends
    assert len({run.run_id for run in runs}) == len(runs)
    assert [run.run_id for run in tiny_study(backends="all").runs()] == [run.run_id for run in runs]
    # the label and the checkpoint cadence do not change a result, so they do not change the id
    relabelled = tiny_study(checkpoint_every="epoch", optimizers=[
        {"name": "sgd", "label": "another name", "lr": [0.1, 0.3], "momentum": 0.9},
        {"name": "adam", "lr": [0.01, 0.03]}])  # fmt: skip
    assert [run.run_id for run in relabelled.runs()] == [run.run_id for run in tiny_study().runs()]
    # a default given explicitly is the same run; a different epoch count is not
    explicit = tiny_study(optimizers=[{"name": "adam", "lr": 0.001, "betas": [0.9, 0.999]}])
    assert explicit.runs()[0].run_id == tiny_study(optimizers=[{"name": "adam"}]).runs()[0].run_id
    assert tiny_study(epochs=21).runs()[0].run_id != tiny_study().runs()[0].run_id


def test_every_hyperparameter_is_resolved_and_a_pair_valued_one_can_be_a_grid():
    study = tiny_study(optimizers=[{"name": "adam", "betas": [[0.9, 0.999], [0.8, 0.99]]}], seeds=1)
    runs = study.runs()
    assert [dict(run.hyperparameters)["betas"] for run in runs] == [(0.9, 0.999), (0.8, 0.99)]
    assert dict(runs[0].hyperparameters) == {"amsgrad": False, "betas": (0.9, 0.999), "decay": 0.0, "eps": 1e-8,
                                             "lr": 0.001, "weight_decay": 0.0}  # fmt: skip


def test_a_spec_round_trips_through_json_and_toml(tmp_path):
    study = tiny_study(optimizers=[{"name": "sgd", "lr": [0.1, 0.3], "momentum": 0.9,
                                    "schedule": {"name": "StepLR", "step_size": 5, "gamma": 0.5}}])  # fmt: skip
    assert Study.from_dict(study.to_dict()) == study
    (tmp_path / "spec.json").write_text(json.dumps(study.to_dict()))
    assert Study.from_file(tmp_path / "spec.json") == study
    pytest.importorskip("tomllib", reason="TOML specs need Python 3.11 (or tomli)")
    (tmp_path / "spec.toml").write_text(
        'name = "tiny"\ndatasets = ["xor"]\narchitectures = [[4]]\nactivation = "tanh"\nepochs = 20\nbatch_size = 4\n'
        'seeds = 2\nmetric = "val_loss"\ncheckpoint_every = 10\n\n[[optimizers]]\nname = "sgd"\nlr = [0.1, 0.3]\n'
        'momentum = 0.9\nschedule = { name = "StepLR", step_size = 5, gamma = 0.5 }\n'
    )
    assert Study.from_file(tmp_path / "spec.toml") == study


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name):
    study = Study.preset(name)
    runs = study.runs()
    assert len(runs) == len({run.run_id for run in runs})
    labels = {run.label for run in runs}
    expected = {"optimizers": {"SGD momentum", "AdaGrad", "RMSProp", "Adam"}, "backends": {"SGD momentum",
                "AdaGrad", "RMSProp", "Adam"}, "xor": {"SGD momentum", "RMSProp", "Adam"}}  # fmt: skip
    assert labels == expected[name]
    if name != "xor":  # the documents' network and settings (the README's "Measured accuracy")
        assert study.architectures == ((128, 64),) and study.batch_size == 32 and study.epochs == 10
        rates = {(run.label, dict(run.hyperparameters)["lr"]) for run in runs}
        assert {("Adam", 0.001), ("SGD momentum", 0.05), ("AdaGrad", 0.01), ("RMSProp", 0.001)} <= rates
        sgd = next(dict(run.hyperparameters) for run in runs if run.optimizer == "sgd")
        assert (sgd["momentum"], sgd["decay"]) == (0.9, 1e-4)
    if name == "backends":
        assert len(runs) == 4 * 3 * len(study.backends)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"optimizers": [{"name": "adamm"}]}, ValueError, "name must be one of"),
        ({"optimizers": [{"name": "adam", "momentum": 0.9}]}, ValueError, "Adam has no hyperparameter 'momentum'"),
        ({"optimizers": [{"name": "adam", "lr": [0.1, -1.0]}]}, ValueError, r"optimizers\[0\] \(Adam, .*lr"),
        ({"optimizers": [{"name": "adam", "lr": []}]}, ValueError, "empty list"),
        ({"optimizers": [{"name": "adam", "lr": [0.1, 0.1]}]}, ValueError, "repeats a value"),
        ({"optimizers": [{"name": "adam"}, {"name": "adam", "lr": 0.1}]}, ValueError, "share a label"),
        ({"optimizers": [{"name": "adam"}, {"name": "adam", "label": "again"}]}, ValueError, "names one run twice"),
        ({"optimizers": [{"name": "sgd", "schedule": {"name": "SequentialLR"}}]}, ValueError, "schedule"),
        ({"optimizers": []}, TypeError, "non-empty list"),
        ({"datasets": ["no-such-data"]}, ValueError, "neither one of"),
        ({"architectures": [128, 64]}, TypeError, r"\[\[128, 64\]\]"),
        ({"architectures": [[128, 0]]}, ValueError, "hidden layer size"),
        ({"seeds": 0}, ValueError, "seeds"),
        ({"seeds": [1, 1]}, ValueError, "distinct"),
        ({"backends": ["gpu"]}, ValueError, "backend 'gpu' is not available"),
        ({"validation": 1.5}, ValueError, "validation"),
        ({"validation": None, "metric": "val_loss"}, ValueError, "metric must be one of loss, accuracy"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"activation": "gelu"}, ValueError, "activation"),
        ({"checkpoint_every": "never"}, TypeError, "checkpoint_every"),
        ({"colour": "blue"}, ValueError, "unknown key 'colour'"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_problem(changes, error, message):
    with pytest.raises(error, match=message):
        tiny_study(**changes)


def test_bad_spec_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        Study.from_file(tmp_path / "missing.json")
    (tmp_path / "spec.yaml").write_text("name: x")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        Study.from_file(tmp_path / "spec.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        Study.from_file(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(TypeError, match="table"):
        Study.from_file(tmp_path / "list.json")


# ------------------------------------------------------------------------------------------ runs in this process
def test_a_serial_study_writes_tidy_results_and_a_rerun_does_no_work(tmp_path):
    study = tiny_study()
    result = study.run(tmp_path, scheduler="serial", progress=False)
    assert (result.runs, result.finished_before, result.trained, result.stopped_early) == (8, 0, 8, 0)
    with open(tmp_path / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8 * 20
    for column in ("run", "dataset", "architecture", "optimizer", "lr", "momentum", "betas", "seed", "backend",
                   "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "stop_reason"):  # fmt: skip
        assert column in rows[0], column
    assert rows[0]["architecture"] == "2-4-2 tanh" and rows[0]["dataset"] == "xor"
    assert {row["optimizer"] for row in rows} == {"SGD momentum", "Adam"}
    assert all(row["stop_reason"] == "completed" for row in rows)
    # each row holds its run's history exactly (repr of the floats)
    found = records(tmp_path)
    first = found[rows[0]["run"]]
    assert [float(row["loss"]) for row in rows[:20]] == first["history"]["loss"]
    assert first["threads"]["blas"] == 1 and first["threads"].get("fastopt", 1) == 1
    study_file = json.loads((tmp_path / "study.json").read_text())
    assert study_file["spec"] == study.to_dict() and study_file["finished"] == 8
    assert "fastopt backend in use" in study_file["config"]
    before = file_states(tmp_path)
    again = study.run(tmp_path, scheduler="serial", progress=False)
    assert (again.finished_before, again.trained) == (8, 0)
    assert file_states(tmp_path) == before  # nothing trained, no file written


def test_serial_runs_restore_the_callers_thread_settings(tmp_path):
    """The runs use 1 thread (their ``threads``); the caller's 2 threads are back afterwards."""
    from threadpoolctl import threadpool_limits

    import fastopt
    from fastopt.backend import resolve_backend
    from fastopt.compare.task import thread_counts

    kernels = thread_counts("numpy").get("fastopt")
    with threadpool_limits(limits=None):  # puts this process's BLAS threads back at the end
        try:
            fastopt.set_num_threads(2)
            before = thread_counts("numpy")
            tiny_study(seeds=1, epochs=2).run(tmp_path, scheduler="serial", progress=False)
            assert thread_counts("numpy") == before
        finally:
            if kernels is not None:
                resolve_backend("cython").set_num_threads(kernels)
    assert all(record["threads"]["blas"] == 1 for record in records(tmp_path).values())


def test_a_diverging_run_is_recorded_and_the_study_goes_on(tmp_path):
    study = tiny_study(activation="relu", architectures=[[8, 8]], seeds=1,
                       optimizers=[{"name": "sgd", "lr": [0.1, 1e20], "momentum": 0.9}])  # fmt: skip
    result = study.run(tmp_path, scheduler="serial", progress=False)
    assert (result.trained, result.stopped_early) == (2, 1)
    stopped = [record for record in records(tmp_path).values() if record["stop_reason"] != "completed"]
    assert len(stopped) == 1 and "nan" in stopped[0]["stop_reason"].lower()


def test_an_interrupted_run_resumes_from_its_checkpoint_bit_identically(tmp_path):
    """The task itself: a run whose checkpoint is half-way (as a killed worker leaves it) ends as a fresh one."""
    study = tiny_study(seeds=1, optimizers=[{"name": "adam", "lr": 0.01}])
    (run,) = study.runs()
    fresh, interrupted = tmp_path / "fresh", tmp_path / "interrupted"
    for folder in (fresh, interrupted):
        (folder / "runs").mkdir(parents=True)
    whole = train_run(run, str(fresh), compare_execute.__version__)
    half = study.replace(epochs=10).runs()[0]
    train_run(half, str(interrupted), compare_execute.__version__)
    checkpoint_path(interrupted, half).rename(checkpoint_path(interrupted, run))  # the first 10 epochs of `run`
    resumed = train_run(run, str(interrupted), compare_execute.__version__)
    assert resumed["resumed"] and not whole["resumed"]
    assert resumed["parameters_sha256"] == whole["parameters_sha256"]
    assert {key: v for key, v in resumed["history"].items() if key != "seconds"} == {
        key: v for key, v in whole["history"].items() if key != "seconds"
    }


def test_a_worker_without_the_study_folder_or_with_another_version_refuses(tmp_path):
    (run,) = tiny_study(seeds=1, optimizers=[{"name": "adam"}]).runs()
    with pytest.raises(FileNotFoundError, match="shared filesystem"):
        train_run(run, str(tmp_path / "elsewhere"), compare_execute.__version__)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="same fastopt version"):
        train_run(run, str(tmp_path), "0.0.0")
    assert not record_path(tmp_path, run).exists()


def test_a_folder_with_files_fastopt_compare_did_not_write_is_refused(tmp_path):
    (tmp_path / "results.csv").write_text("precious\n")
    with pytest.raises(ValueError, match=r"no study\.json"):
        tiny_study().run(tmp_path, scheduler="serial", progress=False)
    (tmp_path / "study.json").write_text('{"something": "else"}')
    with pytest.raises(ValueError, match=r"not a study\.json"):
        tiny_study().run(tmp_path, scheduler="serial", progress=False)
    assert (tmp_path / "results.csv").read_text() == "precious\n"
    with pytest.raises(ValueError, match="workers applies to the local cluster"):
        tiny_study().run(tmp_path / "new", scheduler="tcp://127.0.0.1:8786", workers=2)


def test_without_dask_a_study_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fastopt\[distributed\]'"):
        tiny_study().run(tmp_path, progress=False)


# ------------------------------------------------------------------------------------------ on Dask
def kill_study() -> Study:
    """4 runs of about 1-3 s each on this machine (784-32-10 on the shipped subset, checkpointed every 20 batches):
    long enough to kill a worker mid-run."""
    return Study(name="kill", datasets=["mini"], architectures=[[32]], epochs=12, batch_size=32, seeds=[0, 1],
                 checkpoint_every=20, optimizers=[{"name": "adam", "lr": [1e-3, 3e-3]}])  # fmt: skip


def kill_a_worker_mid_run(client, directory: Path, killed: list, timeout: float = 120) -> None:
    """SIGKILL the worker process running a run that has a checkpoint and no record yet (mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        for address, keys in client.processing().items():
            run_id = next((str(key).removeprefix("fastopt-run-") for key in keys
                           if (directory / "runs" / f"{str(key).removeprefix('fastopt-run-')}.ckpt").exists()
                           and not (directory / "runs" / f"{str(key).removeprefix('fastopt-run-')}.json").exists()),
                          None)  # fmt: skip
            if run_id is not None:
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                killed.append((run_id, pid))
                return
        time.sleep(0.01)


def test_a_worker_killed_mid_study_has_its_run_resumed_bit_identically(tmp_path):
    distributed = pytest.importorskip("distributed")
    study = kill_study()
    reference, killed_study = tmp_path / "serial", tmp_path / "dask"
    study.run(reference, scheduler="serial", progress=False)
    killed: list = []
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)  # fmt: skip
    with cluster, distributed.Client(cluster) as client:
        compare_execute.prepare_folder(killed_study)
        killer = threading.Thread(target=kill_a_worker_mid_run, args=(client, killed_study, killed))
        killer.start()
        result = study.run(killed_study, scheduler=client, progress=False)
        killer.join()
    assert killed, "no worker was seen mid-run"
    assert result.trained == 4
    run_id, pid = killed[0]
    by_run = records(killed_study)
    assert by_run[run_id]["resumed"] and by_run[run_id]["pid"] != pid  # continued from its checkpoint elsewhere
    assert all(record["threads"]["blas"] == 1 and record["threads"].get("fastopt", 1) == 1
               for record in by_run.values())  # fmt: skip
    assert results_without_seconds(killed_study) == results_without_seconds(reference)
    serial = records(reference)
    assert {k: r["parameters_sha256"] for k, r in by_run.items()} == {
        k: r["parameters_sha256"] for k, r in serial.items()
    }
    # a rerun does no work: it does not even reach for a scheduler (this address has none)
    before = file_states(killed_study)
    again = study.run(killed_study, scheduler="tcp://127.0.0.1:9", progress=False)
    assert (again.finished_before, again.trained) == (4, 0)
    assert {n: s for n, s in file_states(killed_study).items() if not n.endswith("study.json")} == {
        n: s for n, s in before.items() if not n.endswith("study.json")
    }


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(compare_execute, "CONNECT_TIMEOUT", 2)
    with pytest.raises(OSError, match=r"cannot reach the Dask scheduler tcp://127\.0\.0\.1:9"):
        tiny_study().run(tmp_path, scheduler="tcp://127.0.0.1:9", progress=False)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
    return subprocess.run([sys.executable, "-m", "fastopt", "compare", *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, cwd=cwd)  # fmt: skip


def assert_study_folder(directory: Path, runs: int, epochs: int) -> None:
    with open(directory / "results.csv", newline="") as stream:
        assert len(list(csv.DictReader(stream))) == runs * epochs
    assert json.loads((directory / "study.json").read_text())["finished"] == runs
    assert (directory / "report.html").is_file()


@pytest.fixture
def dask_scheduler_and_two_workers(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes (one thread each) on 127.0.0.1, started as separate
    commands the way a cluster is; stopped (SIGTERM, then SIGKILL) at the end. Yields the scheduler's address."""
    distributed = pytest.importorskip("distributed")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
    scheduler_file, started = tmp_path / "scheduler.json", []

    def start(*args: str) -> None:
        log = open(tmp_path / f"dask-{len(started)}.log", "w")  # closed when the process has ended
        started.append((subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, cwd=tmp_path, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True), log))  # fmt: skip

    try:
        start(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)
        )
        for _ in range(2):
            start("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1",
                  "--host", "127.0.0.1", "--no-dashboard")  # fmt: skip
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=90) as client:
            client.wait_for_workers(2, timeout=90)
            yield client.scheduler.address
    finally:
        for process, _ in reversed(started):
            process.terminate()
        for process, log in reversed(started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            log.close()


def test_the_cli_runs_a_study_on_a_separately_started_scheduler_and_two_workers(
    tmp_path, dask_scheduler_and_two_workers
):
    address = dask_scheduler_and_two_workers
    (tmp_path / "spec.json").write_text(json.dumps(tiny_study().to_dict()))
    out = tmp_path / "study"
    result = run_cli("--spec", "spec.json", "--out", str(out), "--scheduler", address, "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_study_folder(out, runs=8, epochs=20)
    study_file = json.loads((out / "study.json").read_text())
    assert address in study_file["scheduler"]
    assert sum(len(group["workers"]) for group in study_file["worker_config"]) == 2
    assert all("OpenMP: on, 1 threads" in group["config"] or "OpenMP: off" in group["config"]
               for group in study_file["worker_config"])  # fmt: skip
    assert study_file["command"].startswith("fastopt compare --spec spec.json")
    assert all(record["threads"]["blas"] == 1 for record in records(out).values())
    again = run_cli("--spec", "spec.json", "--out", str(out), "--scheduler", address, "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 runs trained or resumed, 8 finished before" in again.stdout


def test_the_cli_runs_a_study_on_a_local_cluster_and_redraws_its_report(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("matplotlib")
    out = tmp_path / "study"
    result = run_cli("--preset", "xor", "--seeds", "1", "--epochs", "30", "--out", str(out), "--workers", "2",
                     "--no-progress", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "on a local Dask cluster of 2 single-threaded worker processes" in result.stdout
    assert re.search(r"SGD momentum\s+lr 0\.\d+, momentum 0\.9\s+1\s", result.stdout), result.stdout
    assert_study_folder(out, runs=9, epochs=30)
    (out / "report.html").unlink()
    redrawn = run_cli("--report", str(out), cwd=tmp_path)
    assert redrawn.returncode == 0, redrawn.stderr
    assert (out / "report.html").is_file()


# ------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("report")
    tiny_study(backends="all").run(directory, scheduler="serial", progress=False)
    return directory


def test_the_report_is_self_contained_with_its_tables_and_figures(finished_study):
    pytest.importorskip("matplotlib")
    from fastopt.compare.report import write_report

    page = write_report(finished_study).read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 2 * len(
        Study.from_dict(json.loads((finished_study / "study.json").read_text())["spec"]).backends
    )
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page and "http" not in page.split("<pre>")[0]
    assert "SGD momentum" in page and "Adam" in page and "epochs to test loss" in page


def test_the_best_setting_and_the_table_follow_the_study_metric(finished_study):
    from fastopt.compare.report import read_runs, sections

    study = json.loads((finished_study / "study.json").read_text())
    runs = read_runs(finished_study, study)
    (section, *_) = sections(study, runs)
    for optimizer, best in section.best.items():
        finals = {setting.values: setting.score("val_loss", 20) for setting in section.settings
                  if setting.optimizer == optimizer}  # fmt: skip
        assert best.score("val_loss", 20) == min(finals.values())  # a loss: the lowest mean final value is best
        by_hand = np.mean([run.metrics["val_loss"][-1] for run in best.runs])
        assert best.score("val_loss", 20) == by_hand
    header, rows = section.best_table()
    assert len(rows) == 2 and header[0] == "optimizer"
    threshold = section.threshold  # default: the worst best setting's final mean, which every best setting reaches
    assert all(row[header.index(next(h for h in header if h.startswith("epochs to")))] != "not reached" for row in rows)
    assert threshold == max(best.score("val_loss", 20) for best in section.best.values())


def test_a_setting_with_a_run_that_ended_early_is_never_best():
    from fastopt.compare.report import RunCurves, Setting, best_settings, epochs_to_reach

    def run(seed: str, values: list[float], stop: str = "completed") -> RunCurves:
        return RunCurves("r" + seed, "SGD", (), seed, "cython", ("d", "a"), stop,
                         {"val_accuracy": np.array(values), "seconds": np.ones(len(values))})  # fmt: skip

    good = Setting("SGD", (("lr", "0.1"),), [run("0", [0.5, 0.7, 0.8]), run("1", [0.6, 0.8, 0.9])])
    ended = Setting(
        "SGD", (("lr", "1.0"),), [run("0", [0.9, 0.95, 0.99]), run("1", [0.9, 0.95], "the loss became nan")]
    )
    assert best_settings([ended, good], "val_accuracy", epochs=3) == {"SGD": good}
    assert best_settings([ended], "val_accuracy", epochs=3) == {}
    assert epochs_to_reach(good, "val_accuracy", 0.75) == 2  # the mean curve: 0.55, 0.75, 0.85
    assert epochs_to_reach(good, "val_accuracy", 0.9) is None


def test_a_backend_study_reports_time_ratios_and_the_largest_difference(finished_study):
    from fastopt import available_backends
    from fastopt.compare.report import backend_table, read_runs, summary_text

    if len(available_backends()) < 2:
        pytest.skip("one backend is available here")
    study = json.loads((finished_study / "study.json").read_text())
    runs = read_runs(finished_study, study)
    header, rows = backend_table(runs)
    assert [row[0] for row in rows] == list(available_backends())
    reference = next(row for row in rows if row[0] == "numpy")
    assert reference[3] == "1.00x" and reference[4] == "reference"
    other = next(row for row in rows if row[0] != "numpy")
    column = header.index("max |Δ val_loss|")
    pairs = [(a, b) for a in runs for b in runs if a.backend == "numpy" != b.backend
             and (b.optimizer, b.setting, b.seed) == (a.optimizer, a.setting, a.seed)]  # fmt: skip
    by_hand = max(float(np.max(np.abs(a.metrics["val_loss"] - b.metrics["val_loss"]))) for a, b in pairs)
    assert float(other[column]) == pytest.approx(by_hand, rel=1e-2)
    assert "backends" in summary_text(finished_study)


# ------------------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "xor"], "--out DIR is required"),
        (["--preset", "xor", "--spec", "x.json", "--out", "o"], "not allowed with argument"),
        (["--spec", "missing.json", "--out", "o"], "missing.json"),
        (["--report", "nowhere"], "nowhere is not a study folder"),
        (["--report", ".", "--out", "o"], "takes no --out"),
        (["--preset", "xor", "--out", "o", "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "--workers"),
        (["--preset", "xor", "--out", "o", "--epochs", "0"], "positive integer"),
        (["--preset", "xor", "--out", "o", "--dataset", "nowhere"], "neither one of"),
    ],
)
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()
