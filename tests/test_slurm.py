"""The Slurm backend against a real single-node Slurm with Gres=gpu:2 (scripts/slurm-up installs and
starts it). The cluster tests skip, with the reason, only where Slurm cannot be installed.

The issue's checks: five concurrent fail-fast GPU jobs → two run, three get 75; five blocking →
all run, never more than two at once; the job sees CUDA_VISIBLE_DEVICES; its exit status and a
kill are passed through; no allocation is left behind after kill -9 of the caller.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster as cluster
from conftest import GPUROUTER, Box, wait_for

from gpurouter.backends import slurm, srun
from gpurouter.errors import NoFreeSlot
from gpurouter.job import config
from gpurouter.job import settings as settings_model
from gpurouter.observe import slurm_queue

# ---------------------------------------------------------------- the srun request (no cluster needed)


def _slurm(**table: object) -> settings_model.SlurmSettings:
    return settings_model.SlurmSettings(
        **{"partition": None, "account": None, "srun_args": (), "time": None, "srun": "srun", **table}
    )


def _spec(route: str = "gpu", **table: object) -> settings_model.RouteSpec:
    document = {"backend": {"kind": "slurm"}, "profiles": {"p": {route: table}}}
    return config.validate(document, "test", None).profiles["p"].route(route)


@pytest.mark.parametrize(
    ("wait_s", "expected"),
    [(0.0, ["--immediate"]), (9.2, ["--immediate=10"]), (0.3, ["--immediate=1"]), (math.inf, [])],
)
def test_the_wait_policy_maps_to_immediate(wait_s: float, expected: list[str]) -> None:
    argv, env = srun.srun_argv(_slurm(), _spec(), wait_s, 75, ["/bin/job"], "gpurouter:p")
    assert [a for a in argv if a.startswith("--immediate")] == expected
    assert env == {"SLURM_EXIT_IMMEDIATE": "75"}


def test_the_gpu_route_asks_gres_cpus_memory_time_partition_and_account() -> None:
    settings = _slurm(partition="gpu", account="media", time="2:00:00", srun_args=("--constraint=a4000",))
    argv, _ = srun.srun_argv(
        settings,
        _spec(gpus=2, threads=4, ram_mib=8000),
        0,
        75,
        ["/bin/job", "-x"],
        "gpurouter:p",
        prolog="/proc/self/fd/5",
        comment="c",
    )
    assert argv[0] == "srun" and argv[-3:] == ["--", "/bin/job", "-x"]
    for option in (
        "--job-name=gpurouter:p",
        "--partition=gpu",
        "--account=media",
        "--time=2:00:00",
        "--gres=gpu:2",
        "--cpus-per-task=4",
        "--mem=8000M",
        "--prolog=/proc/self/fd/5",
    ):
        assert option in argv
    assert argv.index("--constraint=a4000") > argv.index("--gres=gpu:2")  # srun_args come last: they win


def test_the_cpu_route_asks_cpus_and_memory_and_no_gpu() -> None:
    argv, _ = srun.srun_argv(_slurm(), _spec("cpu", threads=3, ram_mib=100), math.inf, 75, ["/j"], "n")
    assert "--cpus-per-task=3" in argv and "--mem=100M" in argv
    assert not any(a.startswith("--gres") for a in argv)


def test_gpus_auto_asks_the_jobs_world_size() -> None:
    argv, _ = srun.srun_argv(_slurm(), _spec(gpus="auto"), 0, 75, ["/j"], "n")
    assert "--gres=gpu:1" in argv
    argv, _ = srun.srun_argv(
        _slurm(), _spec(gpus="auto"), 0, 75, ["/vllm", "serve", "--tensor-parallel-size", "2"], "n"
    )
    assert "--gres=gpu:2" in argv


def test_srun_args_may_not_replace_the_prolog() -> None:
    with pytest.raises(srun.SlurmError, match="prolog"):
        srun.srun_argv(_slurm(srun_args=("--prolog=/x",)), _spec(), 0, 75, ["/j"], "n")


def test_inherited_slurm_variables_do_not_reach_srun() -> None:
    env = srun.srun_environment(
        {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "9", "SLURM_CONF": "/c", "PATH": "/bin"},
        {"SLURM_EXIT_IMMEDIATE": "75"},
    )
    assert env == {"SLURM_CONF": "/c", "PATH": "/bin", "SLURM_EXIT_IMMEDIATE": "75"}


PROLOG_ENV = {
    "SLURM_JOB_ID": "12",
    "SLURM_STEP_ID": "0",
    "SLURM_NODELIST": "node7",
    "PATH": "/usr/bin:/bin",
    "SLURM_SCRIPT_CONTEXT": "prolog_srun",
}


@pytest.fixture
def prolog(tmp_path: Path) -> Path:
    path = tmp_path / "prolog"
    path.write_text(srun.PROLOG)
    path.chmod(0o700)
    return path


def test_the_prolog_reports_the_job_and_prints_nothing(prolog: Path) -> None:
    read_end, write_end = os.pipe()
    # bash as srun's stand-in: it hands the pipe over as fd 9 and stays the prolog's parent
    done = subprocess.run(
        ["bash", "-c", f'"$0" job arg 9>&{write_end}; echo parent-alive', str(prolog)],
        env=PROLOG_ENV,
        capture_output=True,
        text=True,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    assert (done.returncode, done.stdout, done.stderr) == (0, "parent-alive\n", "")
    assert os.read(read_end, 100) == b"12 0 node7\n"
    os.close(read_end)


def test_the_prolog_without_fd_9_does_nothing(prolog: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", '"$0"; echo parent-alive', str(prolog)], env=PROLOG_ENV, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "parent-alive\n", "")


def test_the_prolog_kills_srun_when_gpurouter_is_gone(prolog: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # gpurouter died: nobody reads the report
    done = subprocess.run(
        ["bash", "-c", f'"$0" 9>&{write_end}; echo parent-alive', str(prolog)],
        env=PROLOG_ENV,
        capture_output=True,
        text=True,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    assert done.returncode == -signal.SIGKILL and done.stdout == ""


def test_the_gpu_hours_still_refuse_before_any_srun(box: Box) -> None:
    """Routing policy verdicts (here: outside the GPU hours, outside_hours = "busy") come first."""
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + 12 * 60) % (24 * 60)  # a window 12 hours away
    window = f"{start // 60:02d}:{start % 60:02d}-{(start + 1) // 60 % 24:02d}:{(start + 1) % 60:02d}"
    box.write_config(f"""
        [backend]
        kind = "slurm"
        [backend.slurm]
        srun = "/nonexistent/srun"
        [profiles.p]
        hours = "{window}"
        outside_hours = "busy"
    """)
    from gpurouter.job import entry

    settings = config.load(str(box.config), box.env)
    decision = entry.prepare(settings, {"profile": "p"}, ["true"], box.env)
    assert (decision.route, decision.action) == ("gpu", "busy")
    with pytest.raises(NoFreeSlot):
        slurm.run_slurm(settings, decision, box.env)
    (busy,) = box.records()
    assert (busy["event"], busy["backend"]) == ("busy", "slurm")


def test_importing_the_backend_loads_nothing_heavy() -> None:
    code = "import sys, gpurouter.backends.slurm; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert not loaded & {"subprocess", "enum", "signal", "json", "ctypes", "threading", "re", "typing"}


# ---------------------------------------------------------------- against the cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Install (when missing) and start the single-node cluster; the node's name."""
    ready, why = cluster.cluster_up()
    if not ready:
        pytest.skip(why)
    return cluster.hostname()


class SlurmBox:
    """A Box whose config selects the Slurm backend, with a profile of its own (its own job names)."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.profile = f"t{uuid.uuid4().hex[:8]}"
        self.job_name = srun.JOB_NAME_PREFIX + self.profile
        self.processes: list[subprocess.Popen[str]] = []
        self.env = {**box.env}
        if os.environ.get("PYTHONPATH"):  # a checkout other than the installed one
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]

    def configure(self, wait: str = "fail", gpu: str = "", cpu: str = "", top: str = "") -> None:
        self.box.write_config(f"""
            {top}
            [backend]
            kind = "slurm"
            [profiles.{self.profile}]
            wait = "{wait}"
            [profiles.{self.profile}.gpu]
            args = ["--device", "cuda"]
            {gpu}
            [profiles.{self.profile}.cpu]
            args = ["--device", "cpu"]
            {cpu}
        """)

    def start(
        self, *command: str, route: str = "gpu", wait: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        options = ["--profile", self.profile, "--route", route] + (["--wait", wait] if wait else [])
        argv = cluster.gpurouter_command(GPUROUTER, "run", *options, "--", *command)
        process = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def run(self, *command: str, timeout: float = 60, **kwargs: object) -> tuple[int, str, str]:
        process = self.start(*command, **kwargs)  # type: ignore[arg-type]
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err

    def records(self, event: str | None = None) -> list[dict[str, object]]:
        return [r for r in self.box.records() if event is None or r["event"] == event]

    def wait_for_start(self, count: int = 1, timeout: float = 30) -> list[dict[str, object]]:
        assert wait_for(lambda: len(self.records("start")) >= count, timeout=timeout), self.records()
        return self.records("start")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        cluster.cancel_leftovers(self.job_name)


@pytest.fixture
def sbox(slurm_cluster: str, box: Box) -> Iterator[SlurmBox]:
    """A Slurm-backed box on an idle cluster (both GPUs free when the test begins), used by one test
    at a time on this machine: several test runs at once (two checkouts, CI and a developer) would
    otherwise take each other's GPUs and miscount."""
    with cluster.exclusive_use():
        assert wait_for(lambda: cluster.free_gpus_node()[1] == 0, timeout=60), (
            "the node's GPUs stay allocated"
        )
        made = SlurmBox(box)
        made.configure()
        yield made
        made.close()


def test_five_concurrent_fail_fast_gpu_jobs_two_run_three_get_75(sbox: SlurmBox) -> None:
    jobs = [sbox.start("transcribe", str(i), env={"JOB_SLEEP": "4"}) for i in range(5)]
    results = [(job.wait(timeout=60), job.stderr.read()) for job in jobs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 0, 75, 75, 75], results
    for code, stderr in results:
        if code == 75:
            assert "gpurouter: no free slot: Slurm has no room for gpu:1" in stderr
            assert "srun --immediate" in stderr
    starts, busy = sbox.records("start"), sbox.records("busy")
    assert (len(starts), len(busy)) == (2, 3)
    assert {s["slurm_job_id"] for s in starts} and all(isinstance(s["slurm_job_id"], int) for s in starts)
    assert len(sbox.box.job_lines()) == 4  # two starts, two ends: the refused jobs never ran


def test_five_blocking_jobs_all_run_never_more_than_two_at_once(sbox: SlurmBox) -> None:
    sbox.configure(wait="block")
    jobs = [sbox.start("transcribe", str(i), env={"JOB_SLEEP": "1"}) for i in range(5)]
    assert [job.wait(timeout=90) for job in jobs] == [0] * 5, [job.stderr.read() for job in jobs]  # type: ignore[union-attr]
    lines = sbox.box.job_lines()
    assert sorted(fields[3] for fields in lines if fields[0] == "start") == ["0", "1", "2", "3", "4"]
    assert cluster.max_concurrency(lines) == 2  # both GPUs used, never a third job on them
    assert len({s["slurm_job_id"] for s in sbox.records("start")}) == 5


def test_the_job_sees_cuda_visible_devices_from_the_allocation(sbox: SlurmBox, slurm_cluster: str) -> None:
    sbox.configure(gpu="gpus = 2")
    show = "echo CVD=$CUDA_VISIBLE_DEVICES JOB=$SLURM_JOB_ID HELD=$GPUROUTER_HELD"
    code, out, err = sbox.run("sh", "-c", show, "sh")
    assert code == 0, err
    assert "CVD=0,1 " in out
    (start,) = sbox.records("start")
    assert f"JOB={start['slurm_job_id']} " in out and "HELD=gpu" in out
    assert (start["node"], start["gres"], start["backend"]) == (slurm_cluster, "gpu:2", "slurm")
    for field in ("ts", "event", "profile", "route", "metric", "reason", "pid", "argv"):
        assert field in start


def test_the_cpu_route_gets_its_cpus_and_memory_and_no_gpu(sbox: SlurmBox) -> None:
    sbox.configure(cpu="threads = 3\nram_mib = 100")
    show = (
        "echo CVD=${CUDA_VISIBLE_DEVICES:-none} CPUS=$SLURM_CPUS_PER_TASK OMP=$OMP_NUM_THREADS; "
        "scontrol show job -o $SLURM_JOB_ID"
    )
    code, out, err = sbox.run("sh", "-c", show, "sh", "--device", route="cpu")
    assert code == 0, err
    assert "CVD=none CPUS=3 OMP=3" in out
    assert " MinMemoryNode=100M " in out and " NumCPUs=3 " in out and "gres/gpu" not in out


def test_the_jobs_exit_status_is_the_callers(sbox: SlurmBox) -> None:
    code, out, _ = sbox.run("transcribe", "x", env={"JOB_EXIT": "42"})
    assert code == 42
    assert "args: x --device cuda" in out
    (end,) = sbox.records("end")
    assert (end["exit_status"], end["signal"]) == (42, None)


def test_a_job_killed_by_a_signal_passes_its_status_through(sbox: SlurmBox) -> None:
    code, _, _ = sbox.run("sh", "-c", "kill -KILL $$")
    assert code == 128 + signal.SIGKILL  # srun reports the task's death as 137, like a shell
    (end,) = sbox.records("end")
    assert end["exit_status"] == 137


def test_a_nested_call_inside_the_job_runs_in_the_same_allocation(sbox: SlurmBox) -> None:
    inner = shlex.join(
        cluster.gpurouter_command(
            GPUROUTER,
            "run",
            "--profile",
            sbox.profile,
            "--route",
            "gpu",
            "--",
            "sh",
            "-c",
            "echo inner=$SLURM_JOB_ID",
        )
    )
    code, out, err = sbox.run("sh", "-c", f"echo outer=$SLURM_JOB_ID; {inner}")
    assert code == 0, err
    outer_id = out.split("outer=")[1].split()[0]
    assert f"inner={outer_id}" in out  # no second srun: GPUROUTER_HELD says the pool is ours already
    assert len(sbox.records("start")) == 2 and sbox.records("start")[1].get("backend") is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_gpurouter_cancels_the_slurm_step(sbox: SlurmBox, signum: int, tmp_path: Path) -> None:
    marker, ready = tmp_path / "job-saw", tmp_path / "trap-set"
    script = f"trap 'echo TERM > {marker}; exit 143' TERM; touch {ready}; echo started; sleep 30 & wait"
    job = sbox.start("sh", "-c", script)
    (start,) = sbox.wait_for_start()
    # The start record comes when srun launches the step; the job's shell sets its trap a moment later
    # (seen under load: a SIGTERM in between killed sh before its trap, so the marker never came).
    assert wait_for(ready.exists, timeout=20)
    assert [j["state"] for j in cluster.squeue(sbox.job_name)] == ["RUNNING"]
    began = time.monotonic()
    job.send_signal(signum)
    assert job.wait(timeout=20) == 143  # the job got SIGTERM from Slurm's cancel and exited 143
    assert marker.read_text() == "TERM\n"  # a clean-up chance, as with the local backend
    gone = cluster.wait_queue_empty(sbox.job_name, 20)
    assert gone is not None, cluster.squeue(sbox.job_name)
    assert time.monotonic() - began < 10
    (end,) = sbox.records("end")
    assert (end["slurm_job_id"], end["cancelled_by"]) == (start["slurm_job_id"], signal.Signals(signum).name)


def test_kill_9_of_gpurouter_leaves_no_allocation_behind(sbox: SlurmBox, tmp_path: Path) -> None:
    running = tmp_path / "task-running"
    job = sbox.start("sh", "-c", f"touch {running}; sleep 60")  # sh -c: the route args land in $0, $1
    sbox.wait_for_start()
    # The start record comes when srun launches the step. A kill -9 within ~30 ms of it (srun still
    # setting the step up) was seen twice in ~30 runs to leave the allocation COMPLETING for ~70 s
    # (slurmd: "Abandoning IO 60 secs after job shutdown initiated"): Slurm's, noted in issue 16's
    # note. This test pins the running job's case: the task has started.
    assert wait_for(running.exists, timeout=20)
    (srun,) = cluster.children_of(job.pid)
    assert cluster.squeue(sbox.job_name)[0]["state"] == "RUNNING"
    began = time.monotonic()
    job.kill()  # SIGKILL: no handler runs; the kernel's PDEATHSIG tells srun
    assert job.wait(timeout=10) == -signal.SIGKILL
    gone = cluster.wait_queue_empty(sbox.job_name, 30)
    assert gone is not None, f"allocation still there: {cluster.squeue(sbox.job_name)}"
    assert time.monotonic() - began < 10
    assert wait_for(lambda: not cluster.pid_alive(srun), timeout=10)
    assert wait_for(lambda: cluster.free_gpus_node()[1] == 0, timeout=10)


def test_a_gpurouter_killed_right_after_the_start_report_still_takes_its_job_along(
    sbox: SlurmBox, tmp_path: Path
) -> None:
    """srun blocks SIGTERM until the step is launched, ~1 ms after the prolog: a PDEATHSIG in that gap
    is lost. The prolog looks again 0.2 s later and SIGKILLs srun (its helper cancels the job)."""
    prolog = tmp_path / "prolog"
    prolog.write_text(srun.PROLOG)
    prolog.chmod(0o700)
    for _ in range(3):
        read_end, write_end = os.pipe()
        srun_process = subprocess.Popen(
            [
                "bash",
                "-c",
                f"exec srun --quiet --job-name={sbox.job_name} --gres=gpu:1 "
                f"--prolog={prolog} -- sleep 30 9>&{write_end}",
            ],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
        )
        os.close(write_end)
        assert os.read(read_end, 100).endswith(b"\n")
        os.close(read_end)  # gpurouter "dies" the instant it has the report...
        srun_process.send_signal(signal.SIGTERM)  # ...and its PDEATHSIG reaches srun (often lost right now)
        assert srun_process.wait(timeout=10) in (137, -signal.SIGKILL)
        assert cluster.wait_queue_empty(sbox.job_name, 10) is not None, cluster.squeue(sbox.job_name)


def test_kill_9_of_gpurouters_process_group_leaves_no_allocation_behind(sbox: SlurmBox) -> None:
    """What `kill -9 -PGID` and many runners do: srun is in a group of its own and outlives it briefly."""
    argv = cluster.gpurouter_command(
        GPUROUTER, "run", "--profile", sbox.profile, "--route", "gpu", "--", "sh", "-c", "exec sleep 300"
    )  # no child left to outlive the task
    job = subprocess.Popen(
        argv,
        env=sbox.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sbox.processes.append(job)  # type: ignore[arg-type]
    sbox.wait_for_start()
    os.killpg(job.pid, signal.SIGKILL)
    assert job.wait(timeout=10) == -signal.SIGKILL
    assert cluster.wait_queue_empty(sbox.job_name, 10) is not None, cluster.squeue(sbox.job_name)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_of_gpurouter_and_srun_together_is_cleaned_up_by_inactive_limit(sbox: SlurmBox) -> None:
    """The backstop: gpurouter, srun and srun's helper all SIGKILLed at once (a cgroup kill, the OOM
    killer): nothing of ours is left to cancel; slurmctld's InactiveLimit revokes the job."""
    argv = cluster.gpurouter_command(
        GPUROUTER, "run", "--profile", sbox.profile, "--route", "gpu", "--", "sh", "-c", "exec sleep 300"
    )  # no child left to outlive the task
    job = subprocess.Popen(
        argv,
        env=sbox.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sbox.wait_for_start()
        (srun,) = cluster.children_of(job.pid)
        os.kill(srun, signal.SIGSTOP)  # so that it cannot act on the PDEATHSIG before the group kill
        os.killpg(job.pid, signal.SIGKILL)
        os.killpg(srun, signal.SIGKILL)  # srun and its helper (srun's own group)
        assert job.wait(timeout=10) == -signal.SIGKILL
        gone = cluster.wait_queue_empty(sbox.job_name, 100)
        assert gone is not None, f"allocation still there after 100 s: {cluster.squeue(sbox.job_name)}"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_a_bounded_wait_is_a_bounded_wait_for_the_allocation(sbox: SlurmBox) -> None:
    holders = [sbox.start("transcribe", str(i), env={"JOB_SLEEP": "6"}) for i in range(2)]
    sbox.wait_for_start(2)
    began = time.monotonic()
    code, _, err = sbox.run("transcribe", "late", wait="2s")
    waited = time.monotonic() - began
    assert code == 75, err
    assert 1.9 <= waited < 5
    (busy,) = sbox.records("busy")
    assert 1.9 <= float(busy["waited_s"]) < 5  # type: ignore[arg-type]
    assert [h.wait(timeout=30) for h in holders] == [0, 0]


def test_a_signal_while_queued_withdraws_the_job(sbox: SlurmBox) -> None:
    holders = [sbox.start("transcribe", str(i), env={"JOB_SLEEP": "8"}) for i in range(2)]
    sbox.wait_for_start(2)
    queued = sbox.start("transcribe", "queued", wait="block")
    assert wait_for(lambda: any(j["state"] == "PENDING" for j in cluster.squeue(sbox.job_name)), timeout=10)
    queued.send_signal(signal.SIGTERM)
    assert queued.wait(timeout=10) == -signal.SIGTERM  # never started: gpurouter dies of the signal
    assert wait_for(
        lambda: not any(j["state"] == "PENDING" for j in cluster.squeue(sbox.job_name)), timeout=10
    )
    (cancelled,) = sbox.records("cancelled")
    assert cancelled["cancelled_by"] == "SIGTERM"
    for holder in holders:
        holder.kill()


def test_status_shows_gpurouters_running_and_pending_jobs(sbox: SlurmBox, slurm_cluster: str) -> None:
    sbox.configure(wait="block")
    for i in range(3):
        sbox.start("transcribe", str(i), env={"JOB_SLEEP": "20"})
    sbox.wait_for_start(2)
    settings = config.load(str(sbox.box.config), sbox.env)
    assert wait_for(
        lambda: len([j for j in slurm_queue.slurm_jobs(settings) if j["profile"] == sbox.profile]) == 3,
        timeout=10,
    )
    mine = [j for j in slurm_queue.slurm_jobs(settings) if j["profile"] == sbox.profile]
    assert sorted(j["state"] for j in mine) == ["PENDING", "RUNNING", "RUNNING"]
    running = [j for j in mine if j["state"] == "RUNNING"]
    assert {j["nodes"] for j in running} == {slurm_cluster}
    assert {j["route"] for j in mine} == {"gpu"}
    assert {j["gres"] for j in mine} == {"gpu:1"}
    json.dumps(mine)  # JSON-ready for `status --json`
    text = slurm_queue.jobs_text(mine, settings)
    assert "PENDING" in text and "RUNNING" in text and sbox.profile in text


def test_a_missing_srun_is_one_clear_line_and_exit_125(sbox: SlurmBox) -> None:
    sbox.box.config.write_text(
        sbox.box.config.read_text().replace(
            'kind = "slurm"', 'kind = "slurm"\n[backend.slurm]\nsrun = "no-such-srun"'
        )
    )
    code, _, err = sbox.run("transcribe", "x")
    assert code == 125, err
    assert "no-such-srun" in err and err.count("\n") == 1
