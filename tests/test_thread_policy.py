"""The thread policy of the compiled kernels (``fastopt/_kernels/_threads.pyx``): one function decides a call's
thread count (``decide`` is it, from Python), from each kind of work's size threshold, the training-time settings,
a fork, and the stall guard, which a test drives with an injected clock (``use_test_clock(wall, cpu)``).

The stall guard's constants are those the module documents: a region whose calling thread waited at the barrier
longer than STALL_SECONDS (and than its own share took) is a stall, unless it started more than WAKE_GAP_SECONDS
after the previous region ended (the wait was the other threads' wake-up), and so is a calling thread that got less than
MIN_CPU_SHARE of the wall time over a probe period of PROBE_SECONDS; a stall starts a serial spell of FIRST_SPELL,
doubled (up to LONGEST_SPELL) when it comes within SPELL_MEMORY of the end of the previous spell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernel_arguments import call_public, kernel_arguments

from fastopt.backend import resolve_backend
from fastopt.kernel_table import KERNELS

_threads = pytest.importorskip("fastopt._kernels._threads", reason="the compiled extension is not built")
pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
if not _threads.build_info()["openmp"]:
    pytest.skip("the compiled extension was built without OpenMP: every kernel is serial", allow_module_level=True)

STALL_SECONDS = 1e-3
WAKE_GAP_SECONDS = 2e-3
PROBE_SECONDS = 0.05
MIN_CPU_SHARE = 0.8
FIRST_SPELL = 0.02
LONGEST_SPELL = 2.0
SPELL_MEMORY = 0.1

Work = _threads.Work
THRESHOLD_KEYS = {
    Work.UPDATE: "update_threshold",
    Work.LIGHT_UPDATE: "light_update_threshold",
    Work.GEMM: "gemm_threshold",
    Work.GATHER: "gather_threshold",
    Work.SCAN: "scan_threshold",
}
BIG = 2.0**30  # work above every threshold
THREADS = 2
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def policy() -> Iterator[Any]:
    """The policy with two threads and a fresh stall guard; every setting, the clock and the trainings restored."""
    info = _threads.build_info()
    _threads.use_real_clock()
    _threads.set_num_threads(THREADS)
    try:
        yield _threads
    finally:
        _threads.use_real_clock()
        _threads.set_stall_guard(info["stall_guard"])
        _threads.set_num_threads(info["num_threads"])
        _threads.set_update_threshold(info["parallel_threshold"])
        while _threads.build_info()["trainings"] > info["trainings"]:
            _threads.end_training()


class Clock:
    """The injected clocks: ``advance(wall, cpu)`` moves them (the calling thread's CPU time by ``cpu``, by default
    as much as the wall time: a thread that has the CPU to itself)."""

    def __init__(self, wall: float = 100.0) -> None:
        self.wall, self.cpu = wall, wall / 2
        _threads.use_test_clock(self.wall, self.cpu)

    def advance(self, wall: float, cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += wall if cpu is None else cpu
        _threads.use_test_clock(self.wall, self.cpu)

    def stall_at_barrier(self, waited: float = 0.01, own_share: float = 1e-4, idle_before: float = 1e-5) -> None:
        """Report a region that ends now, whose calling thread did its share in ``own_share`` and then waited, and
        that started ``idle_before`` seconds after the previous region (a short one, reported first) ended."""
        started = self.wall - waited - own_share
        _threads.use_test_clock(started - idle_before, self.cpu)
        _threads.report(started - idle_before - 2e-5, started - idle_before - 1e-5)  # the previous region: no stall
        _threads.use_test_clock(self.wall, self.cpu)
        _threads.report(started, self.wall - waited)


def threads_now(kind: Work = Work.UPDATE, work: float = BIG, pieces: int = 1 << 20) -> int:
    return _threads.decide(kind, work, pieces)


def counters() -> tuple[int, int, int]:
    info = _threads.build_info()
    return info["serial_spells"], info["stalls_at_barriers"], info["stalls_by_cpu_share"]


def assert_spell(clock: Clock, length: float) -> None:
    """A serial spell of ``length`` seconds starts now: one thread until just before its end, all after it."""
    assert threads_now() == 1
    clock.advance(length - 1e-4)
    assert threads_now() == 1, f"the spell ended before {length} s"
    clock.advance(2e-4)
    assert threads_now() == THREADS, f"the spell lasted beyond {length} s"


# ------------------------------------------------------------------------------------------- the stall guard
def test_a_long_wait_at_a_barrier_starts_a_serial_spell(policy: Any) -> None:
    policy.set_stall_guard(True)
    clock = Clock()
    assert threads_now() == THREADS
    spells, barrier_stalls, _ = counters()
    clock.stall_at_barrier()
    assert counters()[:2] == (spells + 1, barrier_stalls + 1)
    assert_spell(clock, FIRST_SPELL)
    clock.advance(SPELL_MEMORY / 2)  # soon after the spell: the other process is still there
    clock.stall_at_barrier()
    assert_spell(clock, 2 * FIRST_SPELL)
    clock.advance(2 * SPELL_MEMORY)  # long after: a stray interruption, the first spell again
    clock.stall_at_barrier()
    assert_spell(clock, FIRST_SPELL)
    assert counters()[:2] == (spells + 3, barrier_stalls + 3)


def test_a_long_wait_after_an_idle_gap_is_a_wake_up_not_a_stall(policy: Any) -> None:
    """The other threads stop spinning and sleep when no region comes for a while; waking them can take
    milliseconds (a 2-core AMD EPYC Zen 4 VM: 5.8 ms after 0.25 s idle). Such a wait is not another process's."""
    policy.set_stall_guard(True)
    clock = Clock()
    before = counters()
    clock.stall_at_barrier(waited=0.006, idle_before=2 * WAKE_GAP_SECONDS)
    assert counters() == before and threads_now() == THREADS
    clock.advance(1e-3)
    clock.stall_at_barrier(waited=0.006, idle_before=WAKE_GAP_SECONDS / 2)  # the same wait between close regions
    assert counters()[:2] == (before[0] + 1, before[1] + 1) and threads_now() == 1


def test_spells_double_up_to_the_longest(policy: Any) -> None:
    policy.set_stall_guard(True)
    clock, length = Clock(), FIRST_SPELL
    clock.stall_at_barrier()
    while length < LONGEST_SPELL:
        clock.advance(length + 1e-3)  # just after each spell ends, another stall
        clock.stall_at_barrier()
        length = min(2 * length, LONGEST_SPELL)
    assert_spell(clock, LONGEST_SPELL)


def test_short_or_even_waits_are_no_stall(policy: Any) -> None:
    """A wait below STALL_SECONDS, or no longer than the calling thread's own share (uneven shares), is no stall."""
    policy.set_stall_guard(True)
    clock = Clock()
    before = counters()
    clock.stall_at_barrier(waited=STALL_SECONDS / 2)
    clock.stall_at_barrier(waited=0.01, own_share=0.02)
    assert counters() == before
    assert threads_now() == THREADS


def test_a_calling_thread_starved_of_cpu_starts_a_serial_spell(policy: Any) -> None:
    policy.set_stall_guard(True)
    clock = Clock()
    assert threads_now() == THREADS  # the first probe after a long gap only starts the measurement
    spells, _, share_stalls = counters()
    clock.advance(1.2 * PROBE_SECONDS, cpu=0.9 * 1.2 * PROBE_SECONDS)  # 90% of the wall time: not starved
    assert threads_now() == THREADS
    clock.advance(1.2 * PROBE_SECONDS, cpu=0.5 * 1.2 * PROBE_SECONDS)  # 50%: starved
    assert threads_now() == 1
    assert counters()[::2] == (spells + 1, share_stalls + 1)
    assert_spell(clock, FIRST_SPELL)


def test_an_idle_gap_is_no_starvation(policy: Any) -> None:
    """A gap of more than two probe periods between calls is idleness, whatever the CPU time in it."""
    policy.set_stall_guard(True)
    clock = Clock()
    assert threads_now() == THREADS
    before = counters()
    clock.advance(3 * PROBE_SECONDS, cpu=0.0)
    assert threads_now() == THREADS
    assert counters() == before


def test_a_kernel_asks_the_policy(policy: Any) -> None:
    """An Adam step over 2**20 elements consults the stall guard: under a starved clock it counts a stall."""
    policy.set_stall_guard(True)
    kernel = KERNELS["adam_step"]
    values = kernel_arguments(kernel, "float32", star=(1 << 20,))
    clock = Clock()
    assert threads_now() == THREADS
    _, _, share_stalls = counters()
    clock.advance(1.2 * PROBE_SECONDS, cpu=0.0)
    call_public(resolve_backend("cython"), kernel, values)
    assert counters()[2] == share_stalls + 1
    assert threads_now() == 1


def test_stall_guard_off(policy: Any) -> None:
    policy.set_stall_guard(False)
    assert policy.build_info()["stall_guard"] is False
    clock = Clock()
    before = counters()
    assert threads_now() == THREADS
    clock.stall_at_barrier()
    clock.advance(1.2 * PROBE_SECONDS, cpu=0.0)
    assert threads_now() == THREADS
    assert counters() == before


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this fastopt, with ``environment`` added."""
    env = dict(os.environ, FASTOPT_QUIET_FALLBACK="1", **environment)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


GUARD_PROBE = """
from fastopt._kernels import _threads
_threads.set_num_threads(2)
_threads.use_test_clock(100.0, 50.0)
_threads.report(99.9899, 99.99)
print(_threads.build_info()["stall_guard"], _threads.decide(_threads.Work.UPDATE, 2.0**30, 1 << 20))
"""


@pytest.mark.parametrize(
    ("setting", "expected"), [("0", "False 2"), ("off", "False 2"), ("1", "True 1"), ("", "True 1")]
)
def test_environment_switch(setting: str, expected: str) -> None:
    """``FASTOPT_STALL_GUARD=0`` (or off) turns the guard off at import: a stalled region leaves the threads on."""
    done = run_python(GUARD_PROBE, FASTOPT_STALL_GUARD=setting)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == expected.split()


def test_bad_environment_switch_makes_the_compiled_backend_unavailable() -> None:
    code = (
        "import fastopt.backend as b\n"
        "print('cython' in b.available_backends(), b.get_backend())\n"
        "print(b.backend_problems()['cython'])\n"
    )
    done = run_python(code, FASTOPT_STALL_GUARD="maybe")
    assert done.returncode == 0, done.stderr[-2000:]
    available, reason = done.stdout.split("\n", 1)
    assert available.split() == ["False", "numpy"]
    assert "FASTOPT_STALL_GUARD" in reason and "'maybe'" in reason, reason


# ------------------------------------------------------------------------------------------- thresholds and training
@pytest.mark.parametrize("kind", list(THRESHOLD_KEYS), ids=lambda kind: kind.name)
def test_threshold_of_each_kind(policy: Any, kind: Work) -> None:
    policy.set_stall_guard(False)
    threshold = policy.build_info()[THRESHOLD_KEYS[kind]]
    assert threshold >= 1
    assert threads_now(kind, threshold - 1) == 1
    assert threads_now(kind, threshold) == THREADS
    assert threads_now(kind, threshold, pieces=1) == 1  # one piece: nothing to share
    policy.set_num_threads(4)
    assert threads_now(kind, threshold, pieces=3) == 3  # never more threads than pieces
    policy.set_num_threads(1)
    assert threads_now(kind, BIG) == 1


def test_update_threshold_setting(policy: Any) -> None:
    """``set_update_threshold`` moves the update threshold, and the streaming updates' with it (four times it)."""
    policy.set_stall_guard(False)
    info = policy.build_info()
    assert info["light_update_threshold"] == 4 * info["update_threshold"]
    policy.set_update_threshold(1000)
    assert (threads_now(Work.UPDATE, 999), threads_now(Work.UPDATE, 1000)) == (1, THREADS)
    assert (threads_now(Work.LIGHT_UPDATE, 3999), threads_now(Work.LIGHT_UPDATE, 4000)) == (1, THREADS)
    assert threads_now(Work.GEMM, info["gemm_threshold"] - 1) == 1
    with pytest.raises(ValueError):
        policy.set_update_threshold(0)
    with pytest.raises(ValueError):
        policy.set_num_threads(0)


def test_training_lowers_and_restores_the_update_threshold(policy: Any) -> None:
    policy.set_stall_guard(False)
    policy.set_update_threshold(2**18)  # a user's setting above the training threshold
    info = policy.build_info()
    training = info["training_update_threshold"]
    assert training < info["update_threshold"]
    policy.begin_training(False)
    assert policy.build_info()["update_threshold"] == training
    assert (threads_now(Work.UPDATE, training - 1), threads_now(Work.UPDATE, training)) == (1, THREADS)
    assert (threads_now(Work.LIGHT_UPDATE, 4 * training - 1), threads_now(Work.LIGHT_UPDATE, 4 * training)) == (1, 2)
    assert threads_now(Work.GEMM, info["gemm_threshold"] - 1) == 1  # GEMMs keep their own
    policy.end_training()
    assert policy.build_info()["update_threshold"] == info["update_threshold"]
    assert threads_now(Work.UPDATE, training) == 1
    policy.end_training()  # one too many: no effect
    assert policy.build_info()["trainings"] == info["trainings"]


def test_training_keeps_a_lower_user_threshold(policy: Any) -> None:
    policy.set_update_threshold(1000)
    policy.begin_training(False)
    assert policy.build_info()["update_threshold"] == 1000


def test_training_beside_a_threaded_blas_makes_updates_serial(policy: Any) -> None:
    policy.set_stall_guard(False)
    policy.begin_training(True)
    assert policy.build_info()["training_serial_updates"] is True
    assert threads_now(Work.UPDATE) == threads_now(Work.LIGHT_UPDATE) == 1
    assert threads_now(Work.GEMM) == threads_now(Work.GATHER) == threads_now(Work.SCAN) == THREADS
    policy.begin_training(False)  # a fit inside a fit: the outer one's setting holds
    assert threads_now(Work.UPDATE) == 1
    policy.end_training()
    policy.end_training()
    assert policy.build_info()["training_serial_updates"] is False
    assert threads_now(Work.UPDATE) == THREADS


def test_backend_training_brackets_the_policy(policy: Any) -> None:
    backend = resolve_backend("cython")
    trainings = policy.build_info()["trainings"]
    with pytest.raises(RuntimeError), backend.training():
        assert policy.build_info()["trainings"] == trainings + 1
        raise RuntimeError("a failing fit")
    assert policy.build_info()["trainings"] == trainings


def test_a_fit_that_chose_one_thread_runs_every_kernel_serially(policy: Any) -> None:
    from fastopt.cython_backend import StepThreads

    policy.set_stall_guard(False)
    with resolve_backend("cython").training() as timing:
        assert isinstance(timing, StepThreads)
        assert threads_now(Work.GEMM) == threads_now(Work.UPDATE) == THREADS
        timing.choose(threaded_us=120.0, serial_us=100.0)
        assert timing.serial is True and policy.build_info()["training_serial"] is True
        assert {threads_now(kind) for kind in THRESHOLD_KEYS} == {1}
    assert policy.build_info()["training_serial"] is False  # reset when the fit ends
    assert threads_now(Work.GEMM) == THREADS
    with resolve_backend("cython").training() as timing:
        timing.choose(threaded_us=100.0, serial_us=120.0)
        assert timing.serial is False and threads_now(Work.GEMM) == THREADS


def test_step_threads_probes_blocks_of_each_mode_then_keeps_the_faster(
    policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastopt.cython_backend import StepThreads

    policy.set_stall_guard(False)
    monkeypatch.setattr(StepThreads, "WARMUP_SECONDS", 0.001)  # shorter than one threaded step here: one step
    warmup, block, rounds = 1, StepThreads.BLOCK_STEPS, StepThreads.ROUNDS
    with resolve_backend("cython").training() as timing:
        modes = []
        for _ in range(warmup + 2 * rounds * block):
            timing.begin_step()
            modes.append(threads_now(Work.GEMM))
            time.sleep(0.002 if modes[-1] == THREADS else 0.0)  # threaded steps made slower
            timing.end_step()
        assert modes == [THREADS] * warmup + ([THREADS] * block + [1] * block) * rounds
        assert timing.serial is True and threads_now(Work.GEMM) == 1
        timing.begin_step()  # chosen: no more probing
        assert threads_now(Work.GEMM) == 1
        timing.end_step()
    choice = resolve_backend("cython").build_info()["training_threads"]
    assert choice["threads"] == 1 and choice["threaded_step_us"] > choice["serial_step_us"] + 1000


def test_step_threads_probes_again_after_a_while(policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastopt.cython_backend import StepThreads

    policy.set_stall_guard(False)
    with resolve_backend("cython").training() as timing:
        timing.choose(threaded_us=100.0, serial_us=50.0)
        timing.begin_step()  # soon after the choice: it holds
        assert timing.serial is True and threads_now(Work.GEMM) == 1
        timing.end_step()
        monkeypatch.setattr(StepThreads, "REPROBE_SECONDS", 0.0)
        timing.begin_step()  # the choice is old: a threaded probe block starts
        assert timing.serial is None and threads_now(Work.GEMM) == THREADS
        timing.end_step()


def test_one_thread_fits_time_no_steps(policy: Any) -> None:
    from fastopt.cython_backend import StepThreads

    policy.set_num_threads(1)
    with resolve_backend("cython").training() as timing:
        assert not isinstance(timing, StepThreads)


# ------------------------------------------------------------------------------------------- fork
def _child(parent_result: np.ndarray, values: dict[str, Any], write: int) -> None:
    """In the forked child: report the policy and run the same Adam step serially; never returns."""
    status = 1
    try:
        kernel = KERNELS["adam_step"]
        info = _threads.build_info()
        threads = _threads.decide(Work.UPDATE, BIG, 1 << 20)
        call_public(resolve_backend("cython"), kernel, values)
        same = values["param"].tobytes() == parent_result.tobytes()
        message = f"forked={info['forked']} num_threads={info['num_threads']} threads={threads} same={same}"
        status = 0
    except BaseException as exc:  # the child must always reach os._exit
        message = f"{type(exc).__name__}: {exc}"
    finally:
        os.write(write, message.encode())
        os._exit(status)


def _wait(pid: int, read: int, timeout: float) -> tuple[int, str]:
    """The child's exit status and message; a child still running after ``timeout`` seconds is killed: a hang."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            message = os.read(read, 4096).decode()  # every write end is closed: never blocks
            return os.waitstatus_to_exitcode(status), message
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child hung for {timeout} s in an Adam step")
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_child_runs_serially(policy: Any) -> None:
    """After a multi-threaded kernel in the parent, a forked child (whose OpenMP thread pool did not survive the
    fork) runs every kernel serially: it says so, decides one thread, and completes an Adam step over 2**20
    elements with the parent's bits."""
    policy.set_stall_guard(False)  # the parent's step runs on two threads for sure
    kernel = KERNELS["adam_step"]
    assert threads_now(Work.UPDATE, 1 << 20, 1 << 20) == THREADS
    parent = kernel_arguments(kernel, "float32", star=(1 << 20,), seed=2)
    child = {name: value.copy() if isinstance(value, np.ndarray) else value for name, value in parent.items()}
    call_public(resolve_backend("cython"), kernel, parent)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns of fork with threads running
        pid = os.fork()
    if pid == 0:
        _child(parent["param"], child, write)
    os.close(write)
    try:
        status, message = _wait(pid, read, timeout=60)
    finally:
        os.close(read)
    assert status == 0, message
    assert message == "forked=True num_threads=1 threads=1 same=True"
    assert policy.build_info()["forked"] is False


def test_a_thread_count_libgomp_could_not_start_is_refused() -> None:
    """``set_num_threads`` refuses more than 8 threads per processor (or 64): 100,000 made libgomp fail to start
    them and the next fit crash; the setting stays as it was."""
    import fastopt

    before = _threads.build_info()["num_threads"]
    with pytest.raises(ValueError, match=r"n must be at most \d+ \(8 per processor"):
        fastopt.set_num_threads(100_000)
    fastopt.set_num_threads(64)  # always allowed
    fastopt.set_num_threads(before)
    assert _threads.build_info()["num_threads"] == before
    result = subprocess.run([sys.executable, "-m", "fastopt", "bench", "--workload", "dense", "--rounds", "1",
                             "--threads", "100000"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode in (1, 2) and "n must be at most" in result.stderr
