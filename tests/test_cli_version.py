"""`mtlsweep --version` prints `mtlsweep <version>` and exits 0, installed or not."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orchestrator import cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_prints_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"mtlsweep {importlib.metadata.version('mtlsweep')}\n"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch, capsys) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.package_version() == PYPROJECT_VERSION
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"mtlsweep {PYPROJECT_VERSION}\n"


def test_version_from_the_console_script() -> None:
    script = Path(sys.executable).with_name("mtlsweep")
    if not script.is_file():
        pytest.skip("the mtlsweep console script is not installed in this environment")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().startswith("mtlsweep ")
    assert done.stdout.split()[1] == importlib.metadata.version("mtlsweep")


def test_help_lists_every_command_and_each_command_parses_alone(capsys) -> None:
    """`mtlsweep --help` imports every command module; a named command imports only its own."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in out
    for command in cli.COMMANDS:
        with pytest.raises(SystemExit) as stop:
            cli.build_parser([command, "--help"]).parse_args([command, "--help"])
        assert stop.value.code == 0
        assert f"usage: mtlsweep {command}" in capsys.readouterr().out


def test_unknown_command_names_the_allowed_ones(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["analyse", "x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'analyse'" in err and "analyze" in err and "resume" in err
