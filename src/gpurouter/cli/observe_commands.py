"""The commands that look at the box: gpus, status, stats, top, tune and report."""

from __future__ import annotations

import json
import sys

import click

from gpurouter.cli.group import cli, exit_codes, warn_skipped
from gpurouter.errors import GpurouterError


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
    warn_skipped(skipped["malformed"])
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
    warn_skipped(summary["malformed"])
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
    warn_skipped(written["malformed"])
    for path in ([written["html"]] if written["html"] else []) + written["png"]:
        click.echo(path)
