"""The `typing-processor` command line (DESIGN §5).

Each subcommand imports its implementation lazily, so `schemas` or `apply` do not pay
for the emulator's or the runtime's imports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from processor import __version__
from processor.settings import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _cmd_schemas(args: argparse.Namespace) -> int:
    from processor.schemas import check_schemas, write_schemas

    directory: Path = args.dir
    if args.check:
        problems = check_schemas(directory)
        if problems:
            sys.stderr.write("schemas drifted from the models; run `typing-processor schemas`\n")
            for problem in problems:
                sys.stderr.write(problem if problem.endswith("\n") else problem + "\n")
            return 1
        print(f"schemas in {directory} match the models")
        return 0
    for path in write_schemas(directory):
        print(f"wrote {path}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from processor.settings import describe_settings, load_settings

    for name, value in describe_settings(load_settings()):
        print(f"{name}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="typing-processor",
        description="Keeps Genesys Cloud web-messaging typing indicators truthful.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schemas = commands.add_parser("schemas", help="write or verify the payload JSON Schemas")
    schemas.add_argument("--check", action="store_true", help="exit 1 if schemas/ drifted")
    schemas.add_argument("--dir", type=Path, default=Path("schemas"), help="default: schemas")
    schemas.set_defaults(handler=_cmd_schemas)

    config = commands.add_parser(
        "config", help="validate the configuration and print it (secrets masked)"
    )
    config.set_defaults(handler=_cmd_config)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
