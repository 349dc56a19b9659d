"""The click command line: parse, call one core function, render, map errors to exit codes.

`run` and the interception form normally never get here (see `__main__.py`); click only
renders `run --help` and reports `run` usage errors in its usual form.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from gpurouter import __version__
from gpurouter.errors import GpurouterError, NoFreeSlot
from gpurouter.job.options import RUN_OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

_FORWARDING = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@contextlib.contextmanager
def exit_codes(busy_exit_code: int = 75) -> Iterator[None]:
    """GpurouterError -> 'gpurouter: ...' on stderr and its exit code; nothing else is caught."""
    try:
        yield
    except GpurouterError as error:
        click.echo(f"gpurouter: {error}", err=True)
        sys.exit(busy_exit_code if isinstance(error, NoFreeSlot) else error.exit_code)


def run_options(function: F) -> F:
    """The options of `run` and `route`, from the one table in options.py."""
    for name, metavar, help_text in reversed(RUN_OPTIONS):
        if metavar is None:
            function = click.option(name, is_flag=True, help=help_text)(function)
        else:
            function = click.option(
                name, metavar=metavar.upper() if "|" not in metavar else metavar, help=help_text
            )(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpurouter")
def cli() -> None:
    """Probe a job's input, pick GPU or CPU arguments, take a flock slot, exec the job.

    \b
    Example:
        gpurouter run -- whisper-ctranslate2 talk.wav
        ln -s "$(command -v gpurouter)" /usr/local/bin/whisper-ctranslate2   # or: gpurouter install
    """


@cli.command(context_settings=_FORWARDING)
@run_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], **opts: Any) -> None:
    """Route COMMAND to GPU or CPU, take a slot, and exec it.

    Exit codes: the job's own; 75 no free slot; 78 bad config; 2 usage; 126/127 binary
    not executable / not found; 125 gpurouter failed before exec.

    \b
    Example:
        gpurouter run --wait 10m -- whisper-ctranslate2 talk.wav
    """
    from gpurouter.job.entry import run_command

    sys.exit(run_command({k: v for k, v in opts.items() if v not in (None, False)}, list(command)))


@cli.command(context_settings=_FORWARDING)
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def route(command: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """Dry run: print the decision for COMMAND; execute nothing, take no slot.

    \b
    Example:
        gpurouter route -- whisper-ctranslate2 talk.wav
    """
    from gpurouter.job import config
    from gpurouter.job.entry import prepare

    opts = {k: v for k, v in opts.items() if v not in (None, False)}
    with exit_codes():
        settings = config.load(opts.get("config"))
        decision = prepare(settings, opts, list(command), os.environ)
    summary = decision.summary()
    if as_json:
        click.echo(json.dumps(summary))
        return
    for key in (
        "profile",
        "route",
        "action",
        "reason",
        "metric",
        "input",
        "via",
        "executable",
        "pool",
        "slots",
        "wait",
        "priority",
        "gpus",
        "vram_mib",
        "no_slot_because",
    ):
        if summary.get(key) is not None:
            click.echo(f"{key + ':':<17}{summary[key]}")
    click.echo(f"{'argv:':<17}{' '.join(_shell_quote(a) for a in summary['argv'])}")
    for name, value in summary["env"].items():
        click.echo(f"{'env:':<17}{name}={value}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def probe(files: tuple[str, ...], as_json: bool, config_file: str | None) -> None:
    """Show the metrics of FILES: size, duration and pixels, and how each was found.

    \b
    Example:
        gpurouter probe talk.wav clip.mp4 --json
    """
    from gpurouter.job import config, units
    from gpurouter.job.probe import probe_file

    with exit_codes():
        settings = config.load(config_file)
    for path in files:
        results = {kind: probe_file(path, kind, settings) for kind in ("size", "duration", "pixels")}
        if as_json:
            row: dict[str, Any] = {"file": path}
            for kind, result in results.items():
                row[kind] = result.metric
                row[f"{kind}_via"] = result.via
                if result.problem:
                    row[f"{kind}_problem"] = result.problem
            click.echo(json.dumps(row))
            continue
        click.echo(path)
        for kind, result in results.items():
            shown = units.format_metric(result.metric, kind)
            detail = f"(via {result.via})" if result.metric is not None else f"({result.problem})"
            click.echo(f"  {kind + ':':<10}{shown} {detail}")


@cli.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--check", is_flag=True, help="Check the memory budget against this box's GPUs and RAM.")
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def config_command(as_json: bool, check: bool, config_file: str | None) -> None:
    """Print the effective, validated configuration and where each value came from.

    With --check, work through the memory budget with the box's real figures: slots x vram_mib
    against each GPU's total VRAM, CPU slots x ram_mib against RAM less a reserve. Exit 1 when
    it does not fit.

    \b
    Example:
        gpurouter config --json
        gpurouter config --check
    """
    from gpurouter.job import config
    from gpurouter.observe import render

    with exit_codes():
        settings = config.load(config_file)
    if check:
        from gpurouter.observe import budget

        report = budget.check(settings)
        click.echo(json.dumps(report, indent=2) if as_json else render.budget_text(report))
        sys.exit(0 if report["ok"] else 1)
    document = render.effective_config(settings)
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(render.config_text(document))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def gpus(as_json: bool, config_file: str | None) -> None:
    """Show the GPUs (memory, use, temperature, power, score) and the resident services.

    Reads NVML, or the device file named by $GPUROUTER_NVML_FILE (to rehearse a config).

    \b
    Example:
        gpurouter gpus --json
    """
    from gpurouter.job import config
    from gpurouter.observe import gpus_view, render

    with exit_codes():
        settings = config.load(config_file)
    view = gpus_view.view(settings)
    click.echo(json.dumps(view, indent=2) if as_json else render.gpus_text(view))


@cli.command()
@click.argument("target", metavar="NAME|PATH")
def install(target: str) -> None:
    """Intercept a binary: rename it to NAME-real and put gpurouter in its place.

    \b
    Example:
        sudo gpurouter install whisper-ctranslate2
    """
    from gpurouter import install as installer

    with exit_codes():
        click.echo(installer.install(target))


@cli.command()
@click.argument("target", metavar="NAME|PATH")
def uninstall(target: str) -> None:
    """Undo install: put NAME-real back as NAME.

    \b
    Example:
        sudo gpurouter uninstall whisper-ctranslate2
    """
    from gpurouter import install as installer

    with exit_codes():
        click.echo(installer.uninstall(target))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per slot.")
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def status(as_json: bool, config_file: str | None) -> None:
    """Show every slot: free or held, by whom, and who waits (read from the kernel).

    \b
    Example:
        gpurouter status --json
    """
    from gpurouter.job import config
    from gpurouter.observe import render
    from gpurouter.observe import status as status_core

    with exit_codes():
        settings = config.load(config_file)
    if settings.backend.kind == "slurm":
        from gpurouter.observe import slurm_queue

        with exit_codes():
            jobs = slurm_queue.slurm_jobs(settings)
        for job in jobs if as_json else ():
            click.echo(json.dumps(job))
        if not as_json:
            click.echo(slurm_queue.jobs_text(jobs, settings))
        return
    problem = status_core.lock_dir_problem(settings.lock_dir)
    if problem is not None and problem[1]:  # every slot "free" would be a lie (issue 12)
        from gpurouter.errors import LockDirError

        with exit_codes():
            raise LockDirError(settings.lock_dir, problem[0])
    if problem is not None:
        click.echo(f"gpurouter: {settings.lock_dir}: {problem[0]}", err=True)
    skipped = {"malformed": 0}
    rows = status_core.slot_rows(settings, skipped)
    _warn_skipped(skipped["malformed"])
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict()))
    else:
        click.echo(render.status_text(rows))


@cli.command()
@click.option("--since", metavar="DURATION", help="Only records newer than this (e.g. 24h).")
@click.option("--profile", metavar="NAME", help="Only this profile.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--journal",
    "journals",
    metavar="FILE",
    multiple=True,
    help="Read this journal file (.gz too) instead of the configured one and its rotations; repeatable.",
)
@click.option(
    "--prometheus",
    "prometheus_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Write node_exporter textfile metrics (counters, slots, GPUs) to FILE, atomically.",
)
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def stats(
    since: str | None,
    profile: str | None,
    as_json: bool,
    journals: tuple[str, ...],
    prometheus_file: str | None,
    config_file: str | None,
) -> None:
    """Count jobs by profile and route, refusals by pool, waits, run times, peak VRAM,
    evictions, escapes and OOM fallbacks, from the journal and its rotated files; and advise.

    \b
    Example:
        gpurouter stats --since 24h
        gpurouter stats --journal old.jsonl.gz --json
        gpurouter stats --prometheus /var/lib/node_exporter/textfile_collector/gpurouter.prom
    """
    from gpurouter.errors import UsageError
    from gpurouter.job import config, units
    from gpurouter.observe import render
    from gpurouter.observe import stats as stats_core

    with exit_codes():
        settings = config.load(config_file)
        if prometheus_file:
            if since:
                raise UsageError(
                    "--since does not apply to --prometheus: its counters count the whole journal"
                )
            from gpurouter.observe import prometheus

            try:
                prometheus.write_textfile(settings, prometheus_file, profile=profile, journals=journals)
            except OSError as error:
                raise GpurouterError(f"--prometheus {prometheus_file}: {error.strerror or error}") from None
            return
        try:
            since_s = units.parse_duration(since) if since else None
        except ValueError as error:
            raise UsageError(f"--since: {error}") from None
        summary = stats_core.summarise(settings, since_s=since_s, profile=profile, journals=journals)
    _warn_skipped(summary["malformed"])
    click.echo(json.dumps(summary, indent=2) if as_json else render.stats_report_text(summary))


@cli.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (plain text when not a terminal).")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes.",
)
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def top(once: bool, interval_s: float, config_file: str | None) -> None:
    """Live view: GPUs (memory, use, heat, power), slots with holders and waiters, last events.

    Refreshes in place; q or Ctrl-C quits. --once prints one frame for scripts.

    \b
    Example:
        gpurouter top
        gpurouter top --once | grep held
    """
    from gpurouter.errors import UsageError
    from gpurouter.job import config
    from gpurouter.observe import top as top_core

    with exit_codes():
        settings = config.load(config_file)
        if once:
            top_core.once(settings, sys.stdout)
            return
        if not sys.stdout.isatty():
            raise UsageError("top needs a terminal; use --once for one frame of plain text")
        sys.exit(top_core.live(settings, interval_s, sys.stdin, sys.stdout))


@cli.command()
@click.argument("profile")
@click.option(
    "--apply",
    "apply_threshold",
    is_flag=True,
    help="Write the proposed threshold into the config file (comments kept; FILE.bak first).",
)
@click.option("--since", metavar="DURATION", help="Only runs newer than this (e.g. 30d).")
@click.option(
    "--journal", "journals", metavar="FILE", multiple=True, help="Read this journal file instead; repeatable."
)
@click.option(
    "--budget-mib",
    type=click.FloatRange(min=1),
    metavar="MIB",
    help="VRAM per job, instead of vram_mib or (device total - cushion) / GPU slots.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def tune(
    profile: str,
    apply_threshold: bool,
    since: str | None,
    journals: tuple[str, ...],
    budget_mib: float | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Fit peak VRAM against the probe's metric from monitored GPU runs; propose a threshold.

    Needs at least 3 monitored GPU runs (monitor = true) of PROFILE in the journal. Exit 1
    when there is not enough to go on.

    \b
    Example:
        gpurouter tune whisper-ctranslate2
        gpurouter tune whisper-ctranslate2 --apply
    """
    from gpurouter.errors import UsageError
    from gpurouter.job import config, units
    from gpurouter.observe import render
    from gpurouter.observe import tune as tune_core

    with exit_codes():
        settings = config.load(config_file)
        try:
            since_s = units.parse_duration(since) if since else None
        except ValueError as error:
            raise UsageError(f"--since: {error}") from None
        result = tune_core.propose(
            settings, profile, since_s=since_s, journals=journals, budget_mib=budget_mib
        )
        backup = None
        if apply_threshold:
            if settings.path is None:
                raise tune_core.TuneRefused("no configuration file to write: give --config FILE")
            if result["threshold_text"] is None:
                raise tune_core.TuneRefused(
                    "nothing to apply: " + render.tune_text(result).splitlines()[-1].strip()
                )
            backup = tune_core.apply(settings.path, profile, result["threshold_text"])
    ignored = tune_core.ignored_text(result)
    if ignored:
        click.echo(f"gpurouter: warning: {ignored}", err=True)
    if as_json:
        click.echo(
            json.dumps(
                {**result, "applied_to": settings.path if backup else None, "backup": backup}, indent=2
            )
        )
        return
    click.echo(render.tune_text(result))
    if backup:
        click.echo(
            f'applied:    threshold = "{result["threshold_text"]}" in {settings.path} (backup {backup})'
        )


@cli.command()
@click.option(
    "--html",
    "html_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML page (inline SVG charts, no script, no network).",
)
@click.option(
    "--png",
    "png_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Also write each chart as DIR/NAME.png (needs Pillow: gpurouter[report]).",
)
@click.option("--since", metavar="DURATION", help="Only records newer than this (e.g. 7d).")
@click.option(
    "--journal", "journals", metavar="FILE", multiple=True, help="Read this journal file instead; repeatable."
)
@click.option("--config", "config_file", metavar="FILE", help="Configuration file.")
def report(
    html_file: str | None,
    png_dir: str | None,
    since: str | None,
    journals: tuple[str, ...],
    config_file: str | None,
) -> None:
    """Charts from the journal: routing per hour, peak VRAM vs metric with the threshold,
    waits, per-device utilization and memory.

    \b
    Example:
        gpurouter report --html report.html --since 7d
        gpurouter report --html report.html --png charts/
    """
    from gpurouter.errors import UsageError
    from gpurouter.job import config, units
    from gpurouter.observe import report as report_core

    with exit_codes():
        if not html_file and not png_dir:
            raise UsageError("say where: --html FILE and/or --png DIR")
        settings = config.load(config_file)
        try:
            since_s = units.parse_duration(since) if since else None
        except ValueError as error:
            raise UsageError(f"--since: {error}") from None
        try:
            written = report_core.write(settings, html_file, png_dir, since_s=since_s, journals=journals)
        except ImportError:
            raise GpurouterError("--png needs Pillow: pip install 'gpurouter[report]'") from None
        except OSError as error:
            raise GpurouterError(
                f"report not written: {error.filename or ''}: {error.strerror or error}"
            ) from None
    _warn_skipped(written["malformed"])
    for path in ([written["html"]] if written["html"] else []) + written["png"]:
        click.echo(path)


def _warn_skipped(count: int, what: str = "malformed journal record") -> None:
    """One stderr line when a reader skipped journal records (issue 12: the journal is world-writable)."""
    if count:
        from gpurouter.job.journal_reader import skipped_text

        click.echo(f"gpurouter: warning: {skipped_text(count, what)}", err=True)


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def main(args: list[str] | None = None) -> int:
    """Run the click group; returns the exit code."""
    try:
        cli.main(args=args, prog_name="gpurouter", standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0
