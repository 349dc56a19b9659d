"""Configuration: the search order, validation that names file, key and problem, and `config`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Box

from gpurouter.errors import ConfigError
from gpurouter.job import config


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("colour = 1", "colour", "unknown key"),
        ("busy_exit_code = 'x'", "busy_exit_code", "must be an integer"),
        ("[profiles.w]\nprobe = 'loudness'\nthreshold = '1h'", "profiles.w.probe", "must be one of"),
        (
            "[profiles.w]\nprobe = 'duration'\nthreshold = 'soon'",
            "profiles.w.threshold",
            "is not a duration threshold",
        ),
        (
            "[profiles.w]\nprobe = 'duration'\nthreshold = '500MB'",
            "profiles.w.threshold",
            "unknown duration unit",
        ),
        ("[profiles.w]\nprobe = 'duration'", "profiles.w.threshold", "is required"),
        ("[profiles.w]\nthreshold = '1h'", "profiles.w.threshold", "has no effect without a probe"),
        ("[profiles.w]\nwait = 'forever'", "profiles.w.wait", 'must be "fail", "block" or a duration'),
        ("[profiles.w]\nwait = '10 parsecs'", "profiles.w.wait", "unknown duration unit"),
        ("[profiles.w.gpu]\nslots = 0", "profiles.w.gpu.slots", "must be an integer from 1 to 1024"),
        ("[profiles.w.cpu]\nargs = '--device cpu'", "profiles.w.cpu.args", "must be a list of strings"),
        ("[profiles.w.gpu]\npool = '../etc'", "profiles.w.gpu.pool", "must be a name"),
        ("[profiles.w]\nfallback = 'maybe'", "profiles.w.fallback", "must be one of"),
        ("[profiles.w]\ninput = 'middle'", "profiles.w.input", 'must be "last", "first"'),
        ("[profiles.w]\nprobe = 'command'\nthreshold = 3", "profiles.w.probe_command", "needs probe_command"),
        ("probe_timeout = '-1s'", "probe_timeout", "must not be negative"),
        (
            "[profiles.w]\nprobe = 'duration'\nthreshold = ['1h']",
            "profiles.w.threshold",
            "must be a number or",
        ),
        (
            "[profiles.w]\nprobe = 'duration'\nthreshold = 'auto'\nthreshold_start = {h = 1}",
            "profiles.w.threshold_start",
            "must be a number or",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unknown-probe",
        "threshold-unparsable",
        "threshold-wrong-unit",
        "threshold-missing",
        "threshold-without-probe",
        "bad-wait",
        "bad-wait-unit",
        "slots-below-1",
        "args-not-a-list",
        "unsafe-pool",
        "bad-fallback",
        "bad-input",
        "command-without-command",
        "negative-timeout",
        "threshold-a-list",
        "threshold-start-a-table",
    ],
)
def test_a_bad_config_exits_78_naming_file_key_and_problem(
    box: Box, body: str, key: str, problem: str
) -> None:
    box.write_config(body + "\n")
    done = box.run("run", "--", "true")
    assert done.returncode == 78
    assert done.stderr.startswith(f"gpurouter: {box.config}: {key}: ")
    assert problem in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_config_that_is_not_toml_exits_78(box: Box) -> None:
    box.config.write_text("lock_dir = \n")
    done = box.run("config")
    assert done.returncode == 78 and "not valid TOML" in done.stderr


def test_a_named_config_that_does_not_exist_is_an_error_not_a_fallback(box: Box) -> None:
    done = box.run("run", "--", "true", env={"GPUROUTER_CONFIG": str(box.root / "missing.toml")})
    assert done.returncode == 78 and "no such file (named by GPUROUTER_CONFIG)" in done.stderr
    done = box.run("run", "--config", str(box.root / "nope.toml"), "--", "true")
    assert done.returncode == 78 and "named by --config" in done.stderr


def test_the_search_order_is_option_env_xdg_then_etc(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg" / "gpurouter" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    named = tmp_path / "named.toml"
    named.write_text("")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "GPUROUTER_CONFIG": str(named)}
    assert config.find_config(str(named), {}) == str(named)
    assert config.find_config(None, env) == str(named)
    assert config.find_config(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == str(xdg)
    assert config.find_config(None, {"HOME": str(tmp_path / "nohome")}) in (
        None,
        "/etc/gpurouter/config.toml",
    )


def test_with_no_file_at_all_everything_works_on_the_built_in_defaults(tmp_path: Path) -> None:
    settings = (
        config.load(None, {"HOME": str(tmp_path)})
        if not Path("/etc/gpurouter/config.toml").exists()
        else None
    )
    if settings is None:
        pytest.skip("/etc/gpurouter/config.toml exists on this machine")
    profile = settings.profile("anything")
    assert (settings.lock_dir, profile.probe, profile.wait_s, profile.gpu.slots) == (
        "/tmp/gpurouter",
        None,
        0.0,
        1,
    )


def test_config_json_shows_each_value_and_where_it_came_from(box: Box) -> None:
    box.write_config(
        "[profiles.whisper]\nprobe = 'duration'\nthreshold = '1h'\n[profiles.whisper.gpu]\nslots = 2\n"
    )
    done = box.run("config", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["file"] == str(box.config)
    assert document["values"]["profiles"]["whisper"]["gpu"]["slots"] == 2
    assert document["sources"]["profiles.whisper.gpu.slots"] == str(box.config)
    assert document["sources"]["profiles.whisper.cpu.slots"] == "built-in"
    assert document["sources"]["busy_exit_code"] == "built-in"
    text = box.run("config").stdout
    assert f'profiles.whisper.threshold = "1h"    # {box.config}' in text


def test_an_edited_config_is_picked_up_at_once_despite_the_memo(box: Box) -> None:
    box.write_config("[profiles.sleep.gpu]\nargs = ['1']\n")
    assert box.run("route", "--json", "--", "sleep").stdout.count('"1"') == 1
    box.write_config("[profiles.sleep.gpu]\nargs = ['2']\n")
    assert json.loads(box.run("route", "--json", "--", "sleep").stdout)["argv"] == ["sleep", "2"]


def test_an_unknown_profile_named_on_the_command_line_is_a_config_error(box: Box) -> None:
    done = box.run("run", "--profile", "nope", "--", "true")
    assert done.returncode == 78 and "no such profile (named by --profile" in done.stderr


def test_validation_errors_carry_their_parts() -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate({"profiles": {"w": {"gpu": {"slots": 0}}}}, "/etc/x.toml", "/etc/x.toml")
    assert (caught.value.source, caught.value.key) == ("/etc/x.toml", "profiles.w.gpu.slots")


def test_a_bug_in_a_tool_command_is_one_line_and_125_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `threshold = ["1h"]` reached `gpurouter config` as a raw AttributeError traceback (exit 1):
    # the click commands now end in the run path's internal-error line
    from gpurouter import cli

    def broken(*args: object, **kwargs: object) -> None:
        raise AttributeError("'list' object has no attribute 'strip'")

    monkeypatch.setattr(config, "load", broken)
    monkeypatch.delenv("GPUROUTER_DEBUG", raising=False)
    assert cli.main(["config"]) == 125
    err = capsys.readouterr().err
    assert err.startswith("gpurouter: internal error: AttributeError: ") and "Traceback" not in err
