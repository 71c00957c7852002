"""The `typing-processor` command line (DESIGN §5).

Each subcommand imports its implementation lazily, so `schemas` or `apply` do not pay
for the emulator's or the runtime's imports, and `run` and `crm-webhook` catch a stop
signal before any slow import (`processor.stopsignals`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from processor import __version__

Handler = Callable[[argparse.Namespace], int]


def _cmd_schemas(args: argparse.Namespace) -> int:
    from processor.schemas import check_schemas, write_schemas
    from processor.settings import ConfigError

    directory: Path = args.dir
    try:
        if args.check:
            problems = check_schemas(directory)
            if problems:
                sys.stderr.write(
                    "schemas drifted from the models; run `typing-processor schemas`\n"
                )
                for problem in problems:
                    sys.stderr.write(problem if problem.endswith("\n") else problem + "\n")
                return 1
            print(f"schemas in {directory} match the models")
            return 0
        for path in write_schemas(directory):
            print(f"wrote {path}")
    except OSError as exc:
        raise ConfigError(f"--dir {directory} is invalid: {exc.strerror}") from None
    return 0


def _port(text: str) -> int:
    """A TCP port number (0: any free port), for argparse."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is no port number (0..65535)")
    return port


def _cmd_config(args: argparse.Namespace) -> int:
    from processor.settings import (
        ConfigError,
        audit_log_file_problem,
        cleartext_credentials,
        describe_settings,
        load_otel,
        load_settings,
        misspelt_settings,
    )

    settings = load_settings()
    load_otel()  # checked as `run` checks it; the SDK reads them itself
    # `run` opens it before anything else and stops when it cannot: checked alike, but
    # without creating the file or its folders
    audit_file = settings.typing.audit_log_file
    if audit_file is not None and (problem := audit_log_file_problem(audit_file)) is not None:
        raise ConfigError(f"TYPING_AUDIT_LOG_FILE is invalid: {problem}")
    for name, value in describe_settings(settings):
        print(f"{name}={value}")
    for warning in (
        *misspelt_settings(),
        *cleartext_credentials(settings.genesys, settings.typing),
    ):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from processor.emulator.config import EmulatorConfig
    from processor.emulator.faults import Faults
    from processor.emulator.server import run
    from processor.settings import ConfigError

    for flag, value in (("--client-id", args.client_id), ("--client-secret", args.client_secret)):
        if not value:
            raise ConfigError(f"{flag} is invalid: must not be empty or blank")
    try:
        faults = Faults(
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            error_rate=args.error_rate,
            conflict_rate=args.conflict_rate,
            token_lifetime_s=args.token_lifetime_s,
            rate_limit_per_minute=args.rate_limit_per_minute,
            rate_limit_burst=args.rate_limit_burst,
            seed=args.seed,
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        flag = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
        raise ConfigError(f"{flag} is invalid: {error['msg']}") from None
    if not 0 <= args.history_kept <= 1_000_000:
        raise ConfigError("--history-kept is invalid: give 0 to 1000000 changes per session")
    config = EmulatorConfig.single_client(
        args.client_id, args.client_secret, faults, history_kept=args.history_kept
    )
    try:
        run(config, host=args.host, port=args.port, log_level=args.log_level)
    except OSError as exc:  # the address is taken, or not this machine's
        raise ConfigError(
            f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror})"
        ) from None
    return 0


def _add_emulator_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    import os

    from processor.emulator.faults import (
        DEFAULT_RATE_LIMIT_BURST,
        DEFAULT_RATE_LIMIT_PER_MINUTE,
        DEFAULT_TOKEN_LIFETIME_S,
    )
    from processor.emulator.store import DEFAULT_HISTORY_KEPT

    emulator = commands.add_parser(
        "emulator",
        help="serve a Genesys Cloud emulator (OAuth, web-chat sessions, messaging typing, faults)",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    emulator.add_argument("--port", type=_port, default=8787, help="default: 8787")
    # Stripped as the processor strips its own, so both agree on a Secret made from a file;
    # argparse applies `type` to a flag's value and to a string default alike.
    emulator.add_argument(
        "--client-id",
        type=str.strip,
        default=os.environ.get("GENESYSCLOUD_OAUTHCLIENT_ID", "local-client"),
        help="OAuth client id (default: $GENESYSCLOUD_OAUTHCLIENT_ID or local-client)",
    )
    emulator.add_argument(
        "--client-secret",
        type=str.strip,
        default=os.environ.get("GENESYSCLOUD_OAUTHCLIENT_SECRET", "local-secret"),
        help="OAuth client secret (default: $GENESYSCLOUD_OAUTHCLIENT_SECRET or local-secret)",
    )
    emulator.add_argument("--latency-ms", type=float, default=0.0, help="added to every API call")
    emulator.add_argument("--jitter-ms", type=float, default=0.0, help="random extra latency")
    emulator.add_argument("--error-rate", type=float, default=0.0, help="share of API calls → 5xx")
    emulator.add_argument(
        "--conflict-rate", type=float, default=0.0, help="share of valid PATCHes → 412"
    )
    emulator.add_argument(
        "--token-lifetime-s", type=float, default=DEFAULT_TOKEN_LIFETIME_S, help="default: 86400"
    )
    emulator.add_argument(
        "--rate-limit-per-minute",
        type=int,
        default=DEFAULT_RATE_LIMIT_PER_MINUTE,
        help="API calls per minute per OAuth client; 0 = off (default: 300)",
    )
    emulator.add_argument(
        "--rate-limit-burst", type=int, default=DEFAULT_RATE_LIMIT_BURST, help="default: 20"
    )
    emulator.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    emulator.add_argument(
        "--history-kept",
        type=int,
        default=DEFAULT_HISTORY_KEPT,
        help="changes of the typing indicator each session keeps for its history; older"
        f" ones are dropped and counted (default: {DEFAULT_HISTORY_KEPT})",
    )
    emulator.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: warning)",
    )
    emulator.set_defaults(handler=_cmd_emulator)


def _cmd_apply(args: argparse.Namespace) -> int:
    from processor.domain import AgentTypingTarget, OpenMessagingTarget, is_uuid
    from processor.sink.oneshot import run_apply

    target: AgentTypingTarget | OpenMessagingTarget | None = None
    if args.agent_typing is not None:
        conversation_id, communication_id = args.agent_typing
        target = AgentTypingTarget(conversation_id.lower(), communication_id.lower())
        ids = [conversation_id, communication_id]
    elif args.open_messaging is not None:
        integration_id, from_id = args.open_messaging
        target = OpenMessagingTarget(
            integration_id.lower(), from_id, args.from_id_type, args.nickname
        )
        ids = [integration_id]
    if target is not None and not all(is_uuid(value) for value in ids):
        print("typing-processor apply: error: Genesys ids must be UUIDs", file=sys.stderr)
        return 2
    return run_apply(args.session_id, args.status, args.timeout_ms, target)


def _timeout_ms(text: str) -> int:
    from processor.models import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS

    value = int(text)
    if not MIN_TIMEOUT_MS <= value <= MAX_TIMEOUT_MS:
        raise argparse.ArgumentTypeError(f"must be {MIN_TIMEOUT_MS}..{MAX_TIMEOUT_MS}")
    return value


def _add_apply_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`apply`: one conditional PATCH of one session's indicator (exit 0 when applied)."""
    apply = commands.add_parser(
        "apply",
        help="set or clear one session's typing indicator and print the outcome",
        description="Set or clear one session's typing indicator and print the outcome.",
        epilog=(
            "A set sends the shown indicator's version + 1. A clear removes the indicator,"
            " the only place Genesys keeps a version, so a set after a clear starts again at"
            " version 1; `run` remembers versions in its changelog and goes on counting."
        ),
    )
    apply.add_argument("session_id", metavar="SESSION_ID")
    apply.add_argument("status", metavar="STATUS", choices=("typing", "paused", "stopped"))
    apply.add_argument(
        "--timeout-ms",
        type=_timeout_ms,
        default=None,
        help="indicator lifetime (default: the timeout matrix, customer role)",
    )
    targets = apply.add_mutually_exclusive_group()
    targets.add_argument(
        "--agent-typing",
        nargs=2,
        metavar=("CONVERSATION_ID", "COMMUNICATION_ID"),
        help="show agent typing in a messaging conversation instead (one typing call)",
    )
    targets.add_argument(
        "--open-messaging",
        nargs=2,
        metavar=("INTEGRATION_ID", "FROM_ID"),
        help="show customer typing from an Open Messaging integration instead",
    )
    apply.add_argument(
        "--from-id-type",
        choices=("Opaque", "Email", "Phone"),
        default="Opaque",
        help="how FROM_ID identifies the customer (--open-messaging; default: Opaque)",
    )
    apply.add_argument("--nickname", default=None, help="the customer's name (--open-messaging)")
    apply.set_defaults(handler=_cmd_apply)


def _warn_of_settings(*more: str) -> None:
    """Log a warning for each variable named like a setting but none, then each of `more`
    (once logging is set up, in the service's log format)."""
    import logging

    from processor.settings import misspelt_settings

    for warning in (*misspelt_settings(), *more):
        logging.getLogger("processor.settings").warning("%s", warning)


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from processor.logs import configure_logging
    from processor.settings import cleartext_credentials, load_otel, load_settings

    settings = load_settings()
    load_otel()  # before the SDK is imported: it reads some `OTEL_*` on import, and raises
    from processor.runtime.command import run_service
    from processor.runtime.outbound import check_audit_log_file

    check_audit_log_file(settings.typing)
    configure_logging(settings.typing.log_level)
    _warn_of_settings(*cleartext_credentials(settings.genesys))
    return asyncio.run(run_service(settings))


def _cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from processor.demo.runner import DemoError, DemoOptions, run_demo
    from processor.demo.summary import summary_table
    from processor.logs import configure_logging

    configure_logging("WARNING")
    console = Console()
    options = DemoOptions(
        sessions=args.sessions,
        duration_s=args.duration,
        seed=args.seed,
        partitions=args.partitions,
        api_rate_per_minute=args.rate_limit,
        rate_limit_burst=args.rate_limit_burst,
        targets=args.targets,
        typists=args.typists,
    )
    try:
        result = asyncio.run(run_demo(options, console))
    except DemoError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    console.print(summary_table(result))
    return 0


def _typists_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--typists",
        choices=("uniform", "varied", "agents-long"),
        default="uniform",
        help="how participants differ: all alike, each at its own pace (bursts 0.3x to 3x),"
        " or agents typing four times as long as customers; default: uniform",
    )


def _cmd_loadgen(args: argparse.Namespace) -> int:
    import asyncio

    from processor.loadgen import TYPIST_MIXES, LoadProfile, TrafficError, run_loadgen
    from processor.settings import ConfigError, load_kafka, load_typing

    spread, agent_scale = TYPIST_MIXES[args.typists]
    profile = LoadProfile(
        sessions=args.sessions,
        duration_s=args.duration,
        seed=args.seed,
        typist_spread=spread,
        agent_burst_scale=agent_scale,
    )
    import logging

    from aiokafka.errors import KafkaConnectionError

    kafka = load_kafka()
    # the client's own retries and reconnects would flood the terminal; a failure ends
    # the command with one line that says what it means
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        sent = asyncio.run(run_loadgen(kafka, load_typing(), profile, max_rate=args.rate))
    except KafkaConnectionError:
        raise ConfigError(
            f"KAFKA_BOOTSTRAP_SERVERS is invalid: no broker answers at {kafka.bootstrap_servers}"
        ) from None
    except TrafficError as exc:
        sys.stderr.write(f"typing-processor loadgen: {exc}\n")
        return 1
    print(f"sent {sent} events")
    return 0


def _cmd_crm_webhook(args: argparse.Namespace) -> int:
    import asyncio

    from processor.logs import configure_logging
    from processor.settings import (
        ConfigError,
        cleartext_credentials,
        load_kafka,
        load_otel,
        load_typing,
    )

    kafka, typing = load_kafka(), load_typing()
    if not typing.crm_webhook_url:
        raise ConfigError("TYPING_CRM_WEBHOOK_URL is not set (required by crm-webhook)")
    load_otel()  # before the SDK is imported: it reads some `OTEL_*` on import, and raises
    from processor.webhook_command import run_webhook

    configure_logging(typing.log_level)
    _warn_of_settings(*cleartext_credentials(typing=typing))
    return asyncio.run(run_webhook(kafka, typing, typing.crm_webhook_url))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    # nan and inf are floats too, but no duration or rate: a traceback or no end
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


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

    run = commands.add_parser("run", help="the processor, configured from the environment")
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser(
        "demo", help="local broker + Genesys emulator + traffic + processor, then a summary"
    )
    demo.add_argument("--sessions", type=_positive_int, default=40, help="default: 40")
    demo.add_argument("--duration", type=_positive_float, default=20.0, help="seconds; default: 20")
    demo.add_argument("--seed", type=int, default=7, help="traffic and fault seed; default: 7")
    demo.add_argument("--partitions", type=_positive_int, default=4, help="default: 4")
    demo.add_argument(
        "--rate-limit",
        type=_positive_int,
        default=6000,
        help="Genesys API calls per minute (emulator and processor); default: 6000",
    )
    demo.add_argument(
        "--rate-limit-burst",
        type=_positive_int,
        default=None,
        help="calls the emulator admits back to back (a stricter service than the processor"
        " assumes); default: a twelfth of --rate-limit, 5 s of it",
    )
    demo.add_argument(
        "--targets",
        choices=("webchat", "messaging", "mixed"),
        default="webchat",
        help="where indicators are shown: webchat sessions, messaging typing, or a mix;"
        " default: webchat",
    )
    _typists_option(demo)
    demo.set_defaults(handler=_cmd_demo)

    loadgen = commands.add_parser(
        "loadgen", help="synthetic typing traffic into the input topic (KAFKA_*, TYPING_*)"
    )
    loadgen.add_argument("--sessions", type=_positive_int, default=50, help="default: 50")
    loadgen.add_argument(
        "--duration", type=_positive_float, default=30.0, help="seconds; default: 30"
    )
    loadgen.add_argument("--seed", type=int, default=7, help="default: 7")
    loadgen.add_argument(
        "--rate", type=_positive_float, default=None, help="cap on events per second; default: none"
    )
    _typists_option(loadgen)
    loadgen.set_defaults(handler=_cmd_loadgen)

    webhook = commands.add_parser(
        "crm-webhook",
        help="deliver CRM-sync records to TYPING_CRM_WEBHOOK_URL"
        " (/healthz, /readyz, /metrics on TYPING_HTTP_PORT)",
    )
    webhook.set_defaults(handler=_cmd_crm_webhook)

    _add_emulator_parser(commands)
    _add_apply_parser(commands)

    return parser


# Commands that run until SIGTERM/SIGINT, and exit 0 on either from their first moment.
_SERVICES = ("run", "crm-webhook")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] and arguments[0] in _SERVICES:
        from processor.stopsignals import catch_stop_signals

        catch_stop_signals()  # before the imports and the configuration, which take a while
    from processor.settings import ConfigError

    args = build_parser().parse_args(arguments)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
