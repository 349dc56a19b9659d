"""`threshold = "auto"`: each decision takes its threshold from the fit and the live free VRAM."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Box, make_media
from journal_factory import monitored_run, write

AUTO = """
[profiles.transcribe]
probe = "duration"
threshold = "auto"
[profiles.transcribe.gpu]
args = ["--device", "cuda"]
[profiles.transcribe.cpu]
args = ["--device", "cpu"]
"""


def devices(path: Path, free_mib: int) -> None:
    path.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-0",
                        "name": "T",
                        "memory_total_mib": 16000,
                        "memory_used_mib": 16000 - free_mib,
                        "processes": [],
                    }
                ]
            }
        )
    )


def learn(box: Box) -> None:
    """Monitored runs following peak = 500 + 40 MiB per minute (so 2 s ≈ 501 MiB, 8 s ≈ 505 MiB)."""
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    runs = [
        r
        for i, minutes in enumerate((10, 20, 30, 40))
        for r in monitored_run("transcribe", minutes, 500 + 40 * minutes, run_id=f"{i:012x}")
    ]
    write(box.journal, runs)


def test_the_gpu_is_used_while_the_predicted_peak_fits_the_free_vram(
    box: Box, media: dict[str, Path]
) -> None:
    box.write_config(AUTO)
    learn(box)
    gpus = box.root / "gpus.json"
    devices(gpus, free_mib=756)  # budget 756 - 256 = 500 MiB... 2 s needs ~501: just too much
    env = {"GPUROUTER_NVML_FILE": str(gpus)}
    assert (
        box.run("run", "--", "transcribe", str(media["wav2"]), env=env)
        .stdout.strip()
        .endswith("--device cpu")
    )
    devices(gpus, free_mib=4000)
    done = box.run("run", "--", "transcribe", str(media["wav8"]), env=env)
    assert done.stdout.strip().endswith("--device cuda"), done.stderr
    assert "threshold" in box.records()[-1]["reason"]


def test_without_enough_monitored_runs_the_fallback_route_is_taken(box: Box, media: dict[str, Path]) -> None:
    box.write_config(AUTO)
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    write(box.journal, monitored_run("transcribe", 10, 900))
    done = box.run("run", "--", "transcribe", str(media["wav2"]))
    assert done.stdout.strip().endswith("--device cpu")
    assert "needs 3 monitored GPU runs" in box.records()[-1]["reason"]


def test_the_budget_is_a_slots_share_beside_what_other_users_held(box: Box, media: dict[str, Path]) -> None:
    # issue 15: the card is free now (12000 MiB), but a resident and a trainer held 10752 MiB
    # beside the monitored runs; a job may plan for 16000 - 256 - 10752 = 4992 MiB, not 11744.
    box.write_config(AUTO)
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    runs = [
        r
        for i, minutes in enumerate((10, 20, 30, 40))
        for r in monitored_run(
            "transcribe", minutes, 500 + 40 * minutes, run_id=f"{i:012x}", others_vram_mib=10752 - 1000 * i
        )
    ]
    write(box.journal, runs)
    gpus = box.root / "gpus.json"
    devices(gpus, free_mib=12000)
    done = box.run("run", "--", "transcribe", str(media["wav8"]), env={"GPUROUTER_NVML_FILE": str(gpus)})
    assert done.stdout.strip().endswith("--device cuda"), done.stderr
    reason = box.records()[-1]["reason"]
    # (4992 - 500) / 40 MiB per minute = 112.3 minutes, rounded down to whole minutes for people
    assert "< threshold 112m (auto from the fit and 4992 MiB for this job: 12000 MiB free on GPU 0" in reason
    assert "a slot's share 4992 MiB beside up to 10752 MiB of other users" in reason


REGISTER = """\
import fcntl, json, os, sys, time
# a GPU job as NVML shows it: the shell that runs it holds 500 MiB + 40 MiB per second of input
seconds = float(sys.argv[1])
with open(os.environ["GPUROUTER_NVML_FILE"] + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    path = os.environ["GPUROUTER_NVML_FILE"]
    document = json.load(open(path))
    document["devices"][0]["processes"] = [{"pid": os.getppid(), "used_mib": int(500 + 40 * seconds)}]
    open(path + ".tmp", "w").write(json.dumps(document))
    os.replace(path + ".tmp", path)
time.sleep(0.5)
"""


def test_threshold_start_routes_until_monitored_runs_teach_the_fit(box: Box, media: dict[str, Path]) -> None:
    # issue 15: with an empty journal, "auto" sent every job to the fallback (the CPU), so no GPU
    # run ever came to learn from. threshold_start routes meanwhile; the monitored GPU runs it
    # lets through are the evidence, and the next decision after them reads the fit.
    box.write_config(
        AUTO.replace('threshold = "auto"\n', 'threshold = "auto"\nthreshold_start = "10s"\n')
        .replace("[profiles.transcribe]", '[profiles.sh]\nmonitor = true\nmonitor_interval = "100ms"')
        .replace("profiles.transcribe.", "profiles.sh.")
    )
    box.lock_dir.mkdir(mode=0o1777, exist_ok=True)
    (box.root / "register.py").write_text(REGISTER)
    gpus = box.root / "gpus.json"
    devices(gpus, free_mib=4000)
    env = {"GPUROUTER_NVML_FILE": str(gpus)}
    wav5 = make_media(box.root / "five.wav", "-f", "lavfi", "-i", "sine=frequency=440:duration=5")
    job = f'python3 {box.root / "register.py"} "$(basename "$1" | tr -dc 0-9)" ; echo "$@"'
    for wav, seconds in ((media["wav2"], 2), (wav5, 5), (media["wav8"], 8)):
        linked = box.root / f"take{seconds}.wav"  # the seconds in the name tell the job its size
        linked.symlink_to(wav)
        done = box.run("run", "--", "sh", "-c", job, "sh", str(linked), env=env)
        assert done.stdout.strip().endswith("--device cuda"), done.stderr
        assert "threshold_start 10s until the fit has its runs" in box.records()[-2]["reason"]
    peaks = [r["peak_vram_mib"] for r in box.records() if r["event"] == "end"]
    assert peaks == [580, 700, 820]
    devices(gpus, free_mib=756)  # 500 MiB of budget: the fit says no input fits any more
    done = box.run("run", "--", "sh", "-c", 'echo "$@"', "sh", str(media["wav2"]), env=env)
    assert done.stdout.strip().endswith("--device cpu"), done.stderr
    reason = box.records()[-1]["reason"]
    assert "auto from the fit and 500 MiB for this job" in reason, reason


def test_threshold_start_is_refused_without_auto_and_when_it_does_not_parse(box: Box) -> None:
    box.write_config(AUTO.replace('threshold = "auto"\n', 'threshold = "1h"\nthreshold_start = "5s"\n'))
    done = box.run("config")
    assert done.returncode == 78
    assert 'profiles.transcribe.threshold_start: is only used with threshold = "auto"' in done.stderr
    box.write_config(
        AUTO.replace('threshold = "auto"\n', 'threshold = "auto"\nthreshold_start = "5 parsecs"\n')
    )
    done = box.run("config")
    assert done.returncode == 78 and "profiles.transcribe.threshold_start" in done.stderr
    assert "Traceback" not in done.stderr
