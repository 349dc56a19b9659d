"""The module layering and the hot path's import budget, policed by tests."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "gpurouter"
ONLY_IN = {"click": {"cli.py"}, "pynvml": {"nvml.py"}, "ffmpeg": {"probe.py"}, "psutil": {"status.py"},
           "gpurouter.cli": {"__main__.py"}}  # fmt: skip
# Never loaded by `run` or the interception form: each costs milliseconds on every job.
HEAVY = ("click", "psutil", "pynvml", "filelock", "ffmpeg", "re", "typing", "dataclasses", "enum", "json",
         "tomllib", "subprocess", "shlex", "threading")  # fmt: skip


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_only_what_its_layer_allows(path: Path) -> None:
    for name in imported_names(path):
        for banned, allowed in ONLY_IN.items():
            if name == banned or name.startswith(banned + "."):
                assert path.name in allowed, f"{path.name} must not import {name}"


def _modules_loaded_by(args: list[str], tmp_path: Path) -> set[str]:
    code = ("import sys, os\n"
            "loaded = set()\n"
            "real_execve = os.execve\n"
            "def report(*a):\n"
            "    print(' '.join(sorted(sys.modules)), flush=True); os._exit(0)\n"
            "os.execve = report\n"
            f"sys.argv = {args!r}\n"
            "from gpurouter.__main__ import main\n"
            "sys.exit(main())\n")  # fmt: skip
    env = {"GPUROUTER_CONFIG": "", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(f'lock_dir = "{tmp_path}/locks"\njournal = "{tmp_path}/locks/j.jsonl"\n')
    env["GPUROUTER_CONFIG"] = str(config)
    # The first call parses the TOML and memoises it (tomllib is heavy); every later call reads the memo.
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return set(done.stdout.split())


def test_run_loads_no_heavy_module(tmp_path: Path) -> None:
    loaded = _modules_loaded_by(["gpurouter", "run", "--route", "cpu", "--", "/bin/true"], tmp_path)
    assert "gpurouter.job.runner" in loaded
    assert sorted(set(HEAVY) & loaded) == []


def test_the_interception_form_loads_no_heavy_module(tmp_path: Path) -> None:
    (tmp_path / "tool-real").symlink_to("/bin/true")
    loaded = _modules_loaded_by([str(tmp_path / "tool"), "x"], tmp_path)
    assert "gpurouter.job.runner" in loaded
    assert sorted(set(HEAVY) & loaded) == []


def test_importing_gpurouter_loads_nothing_heavy() -> None:
    code = "import sys, gpurouter; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert sorted(set(HEAVY) & set(done.stdout.split())) == []
