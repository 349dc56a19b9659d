"""The layers, the direction of imports between them, and the per-job import budget, policed by tests.

The folders are the layers (docs/design.md has the map):

    job/       the per-job path: stdlib only, import-budgeted, in front of every job
    gpu/       NVML, device selection and placement, residents, the VRAM fit (per-job for GPU jobs)
    backends/  monitored runs and Slurm: a job's alternative to exec
    observe/   stats, status, top, prometheus, report, tune: run by hand, never on a job's path
    (top)      cli, api, aio, install, errors: the surface
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "gpurouter"
MODULES = sorted(SRC.rglob("*.py"))
LAYERS = ("job", "gpu", "backends", "observe")
# Which layers each layer may import. `job` reaches `gpu` only lazily (a CPU job never loads it) and
# `backends` only from the runner, lazily: see the tests below.
MAY_IMPORT = {
    "job": {"job", "gpu", "backends", "errors"},
    "gpu": {"gpu", "job", "errors"},
    "backends": {"backends", "job", "gpu", "errors"},
    "observe": {"observe", "job", "gpu", "backends", "errors"},
}
ONLY_IN = {  # a package -> the modules (or, ending in "/", the folder) that may import it
    "click": {"cli/"},
    "pynvml": {"gpu/nvml.py"},
    "tomlkit": {"observe/tune.py"},
    "PIL": {"observe/drawing.py"},
    "gpurouter.cli": {"__main__.py", "cli/"},
}
# Never loaded by `run` or the interception form: each costs milliseconds on every job.
HEAVY = (
    "click",
    "psutil",
    "pynvml",
    "filelock",
    "ffmpeg",
    "re",
    "typing",
    "dataclasses",
    "enum",
    "json",
    "tomllib",
    "subprocess",
    "shlex",
    "threading",
)


def rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def layer_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else "surface"  # cli/ is the surface too


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            type_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in ("gpurouter", *(f"gpurouter.{layer}" for layer in LAYERS)):
                found += [(f"{node.module}.{alias.name}", id(node) in top_level) for alias in node.names]
            else:
                found.append((node.module, id(node) in top_level))
    return found


def target_layer(module: str) -> str | None:
    """The layer of a gpurouter module (errors and the surface modules by name), None outside gpurouter."""
    parts = module.split(".")
    if parts[0] != "gpurouter" or len(parts) < 2:
        return None
    if parts[1] in LAYERS:
        return parts[1]
    # errors and the version (the package root, loaded before any of its modules) are the base of all
    return "errors" if parts[1] in ("errors", "__version__") else "surface"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_third_party_packages_are_imported_only_where_their_layer_allows(path: Path) -> None:
    for name, _ in imports(path):
        for banned, allowed in ONLY_IN.items():
            if name == banned or name.startswith(banned + "."):
                where = rel(path)
                permitted = where in allowed or any(a.endswith("/") and where.startswith(a) for a in allowed)
                assert permitted, f"{where} must not import {name}"


@pytest.mark.parametrize("path", [p for p in MODULES if layer_of(p) != "surface"], ids=rel)
def test_a_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = layer_of(path)
    for name, _ in imports(path):
        target = target_layer(name)
        if target is not None:
            assert target in MAY_IMPORT[layer], f"{rel(path)} ({layer}) must not import {name} ({target})"


@pytest.mark.parametrize("path", [p for p in MODULES if layer_of(p) == "job"], ids=rel)
def test_the_job_layer_reaches_the_gpu_and_the_backends_only_lazily(path: Path) -> None:
    for name, at_module_level in imports(path):
        target = target_layer(name)
        if target == "gpu":
            assert not at_module_level, f"{rel(path)} imports {name} at module level: a CPU job would load it"
        if target == "backends":
            assert rel(path) == "job/runner.py" and not at_module_level, f"{rel(path)} must not import {name}"


@pytest.mark.parametrize("path", [p for p in MODULES if layer_of(p) in ("job", "gpu")], ids=rel)
def test_the_per_job_layers_import_nothing_heavy_at_module_level(path: Path) -> None:
    for name, at_module_level in imports(path):
        if at_module_level:
            assert name.split(".")[0] not in HEAVY, f"{rel(path)} imports {name} on every job"


def test_there_is_no_import_cycle() -> None:
    def module_name(path: Path) -> str:
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    known = {module_name(p): p for p in MODULES}
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported, _ in imports(path):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if (
                imported
                and imported != name
                and imported not in ("gpurouter", *(f"gpurouter.{x}" for x in LAYERS))
            ):
                targets.add(imported)
        graph[name] = targets

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in (cycle_from(name) for name in sorted(graph)) if c]
    assert cycles == []


def test_no_module_is_over_500_lines() -> None:
    long = {rel(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def _modules_loaded_by(args: list[str], tmp_path: Path) -> set[str]:
    code = (
        "import sys, os\n"
        "loaded = set()\n"
        "real_execve = os.execve\n"
        "def report(*a):\n"
        "    print(' '.join(sorted(sys.modules)), flush=True); os._exit(0)\n"
        "os.execve = report\n"
        f"sys.argv = {args!r}\n"
        "from gpurouter.__main__ import main\n"
        "sys.exit(main())\n"
    )
    env = {
        "GPUROUTER_CONFIG": "",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
    }
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
    # The validated config is memoised: a job whose config did not change loads no validation code.
    assert (
        sorted(m for m in loaded if m.startswith(("gpurouter.job.validate", "gpurouter.job.config_values")))
        == []
    )
    assert (
        sorted(
            m for m in loaded if m.startswith(("gpurouter.gpu.", "gpurouter.observe.", "gpurouter.backends."))
        )
        == []
    )


def test_the_interception_form_loads_no_heavy_module(tmp_path: Path) -> None:
    (tmp_path / "tool-real").symlink_to("/bin/true")
    loaded = _modules_loaded_by([str(tmp_path / "tool"), "x"], tmp_path)
    assert "gpurouter.job.runner" in loaded
    assert sorted(set(HEAVY) & loaded) == []


def test_importing_gpurouter_loads_nothing_heavy() -> None:
    code = "import sys, gpurouter; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert sorted(set(HEAVY) & set(done.stdout.split())) == []
