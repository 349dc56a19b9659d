"""The commands around one job: run, route (dry run), probe, config, install and uninstall."""

from __future__ import annotations

import json
import os
import sys

import click

from gpurouter.cli.group import FORWARDING, cli, exit_codes, run_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@cli.command(context_settings=FORWARDING)
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


@cli.command(context_settings=FORWARDING)
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


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
