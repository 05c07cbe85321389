"""`mtlsweep` command line: a thin dispatcher over `orchestrator/commands/<name>.py`."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from orchestrator.exits import SweepBusyError, SweepInterrupted, is_disk_full

# Sub-command -> its module in orchestrator/commands/. Each module exposes
# add_parser(subparsers), which registers its sub-commands and sets `func(args) -> int | None`
# on them. Only the module of the command being run is imported (so `mtlsweep analyze` never
# imports torch or Ray); `--help`, no command or an unknown one import them all.
COMMANDS = {"layouts": "layouts", "train": "train", "attack": "attack", "run": "run",
            "resume": "run", "analyze": "analyze", "demo": "demo", "submit": "submit",
            "status": "submit", "logs": "submit"}


def package_version() -> str:
    """The installed mtlsweep's version, else the one in the source tree's pyproject.toml."""
    try:
        return importlib.metadata.version("mtlsweep")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _modules_for(argv: list[str] | None) -> list[str]:
    """The command modules to import for `argv`: the named command's only, else all."""
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    if command in COMMANDS:
        return [COMMANDS[command]]
    return list(dict.fromkeys(COMMANDS.values()))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default: sys.argv[1:]): every command when `argv` names none."""
    parser = argparse.ArgumentParser(
        prog="mtlsweep",
        description="Sweeps of adversarial attacks (DGBA, ...) on multi-task models, run by Ray Tune.")
    parser.add_argument("--version", action="version", version=f"mtlsweep {package_version()}",
                        help="print mtlsweep's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _modules_for(argv):
        try:
            module = importlib.import_module(f"orchestrator.commands.{name}")
        except ModuleNotFoundError as err:  # a command whose module is not written yet
            if err.name == f"orchestrator.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 0 done, 1 failed or refused, 2 bad input, 130 (128 +
    signal) interrupted, each with one line on stderr instead of a traceback."""
    args = build_parser(argv).parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"mtlsweep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SweepInterrupted as stop:
        print(f"mtlsweep {args.command}: interrupted; finished trials and epochs are kept. "
              f"To continue: mtlsweep resume {stop.experiment_dir}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"mtlsweep {args.command}: interrupted", file=sys.stderr)
        return 130
    except SweepBusyError as err:
        print(f"mtlsweep {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if not is_disk_full(err):
            raise
        where = getattr(err, "filename", None) or "the results' filesystem"
        print(f"mtlsweep {args.command}: error: no space left on {where}; free some space, "
              "then run the same command again (finished work is kept)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
