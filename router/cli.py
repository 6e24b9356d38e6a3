"""The `abrouter` command. Exit codes: 0 ok, 1 failure, 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape

from router import __version__, cli_admin, demo
from router.config.loader import config_files, load_file, load_files
from router.config.schema import Experiment
from router.errors import InvalidConfig, RouterError
from router.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

err = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrapping: lines get grepped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abrouter", description="A/B-testing and canary router for ML models.")
    parser.add_argument("--version", action="version", version=f"abrouter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (embedded Redis unless --redis-url)")
    serve.add_argument(
        "--config",
        action="append",
        metavar="PATH",
        help="config file or directory to apply "
        "for experiments not yet stored (repeatable; default ABROUTER_CONFIG_PATHS)",
    )
    serve.add_argument("--redis-url", help="Redis to use (default ABROUTER_REDIS_URL, else an embedded one)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument(
        "--data-dir", type=Path, help="where the embedded Redis and local state live (default .abrouter)"
    )
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one log line per request (default ABROUTER_ACCESS_LOG, else on; printed at --log-level info or debug)",
    )

    validate = commands.add_parser("validate", help="check config files; print `ok` or every problem")
    validate.add_argument("files", nargs="+", metavar="FILE", help="config files or directories")

    cli_admin.add_commands(commands)  # apply, list, get, set-weights, promote, rollback, history, report

    demo_parser = commands.add_parser(
        "demo",
        help="start example models and a gateway, send users with a known effect, print the report",
        description=demo.__doc__.splitlines()[0] if demo.__doc__ else None,
    )
    demo_parser.add_argument(
        "--units", type=_demo_units, default=demo.DEFAULT_UNITS, help="synthetic users to send (default %(default)s)"
    )
    demo_parser.add_argument(
        "--seed", type=int, default=demo.DEFAULT_SEED, help="seed of the synthetic users (default %(default)s)"
    )
    demo_parser.add_argument(
        "-o", "--output", type=Path, default=demo.DEFAULT_OUTPUT, help="the HTML report (default %(default)s)"
    )
    return parser


def _demo_units(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 10 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a number of users from 10 to 100000, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "validate":
            return validate(args.files)
        if args.command == "demo":
            console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # piped: no 80 columns
            return demo.run(args.units, seed=args.seed, output=args.output, console=console)
        if getattr(args, "handler", None) is not None:
            return cli_admin.run(args)
    except RouterError as exc:
        # escaped: messages quote user values, and rich would take `[a, b]` for markup
        err.print(f"[red]error:[/] {escape(exc.message)}")
        for detail in exc.details:
            err.print(f"  {escape(str(detail))}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    raise AssertionError(f"unhandled command {args.command}")


def validate(paths: Sequence[str]) -> int:
    """Print `FILE: ok` per valid file and each problem of the others as `FILE: path: message`."""
    failed = False
    files = config_files(paths)
    if not files:
        err.print("no config files found in " + ", ".join(paths))
        return EXIT_FAILURE
    for path in files:
        try:
            load_file(path)
        except InvalidConfig as exc:
            failed = True
            for detail in exc.details:
                print(detail)
        else:
            print(f"{path}: ok")
    return EXIT_FAILURE if failed else EXIT_OK


def _serve_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "config_paths": args.config,
        "redis_url": args.redis_url,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "access_log": args.access_log,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


#: thread-pool sizes of the native libraries models run on (OpenMP, OpenBLAS, MKL)
NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_native_thread_each() -> None:
    """One thread per native library unless the user chose otherwise: the gateway's parallelism is its workers.

    Idle OpenMP/BLAS threads spin waiting for work: with one pool per core in every worker they
    take the CPU the event loops need (docs/performance.md). Set before the libraries load, so
    they read it, and inherited by the worker processes.
    """
    for name in NATIVE_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def serve(args: argparse.Namespace) -> int:
    """Start the embedded Redis if needed, apply example configs, check local models, run uvicorn."""
    one_native_thread_each()  # first: before any model library is loaded, here or in a worker
    import uvicorn

    from router.http_protocol import HTTP_PROTOCOL
    from router.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
    from router.store.embedded import RedisServer
    from router.workers import reuse_port_supported, run_workers

    settings = _serve_settings(args)
    experiments = load_files(settings.config_paths)  # nothing half-valid is applied
    with contextlib.ExitStack() as cleanup:
        if settings.redis_url is None:
            redis_server = RedisServer(settings.data_dir / "redis")
            redis_server.start()
            cleanup.callback(redis_server.stop)
            err.print(f"embedded Redis at {redis_server.url} (data in {settings.data_dir / 'redis'})")
            settings = settings.model_copy(update={"redis_url": redis_server.url})
        asyncio.run(_prepare(settings, experiments))
        settings = _with_admin_token(settings)  # here, before the workers start, so they all share it
        os.environ.update(settings.to_environment())
        if settings.workers > 1:
            # Workers count in files of their own there and /metrics adds them up; the variable must
            # be set before they start. One worker counts in memory: exact, cheaper, no files.
            metrics_dir = prepare_multiprocess_dir(settings.data_dir)
            cleanup.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
            os.environ[MULTIPROC_ENV] = str(metrics_dir)
        # uvicorn drains in-flight calls on SIGTERM/SIGINT, then re-raises the signal; turning it
        # into an exception here lets the cleanup (stopping the embedded Redis cleanly) run.
        signal.signal(signal.SIGTERM, _stop_requested)
        signal.signal(signal.SIGINT, _stop_requested)
        options: dict[str, Any] = {
            "app": "router.app:app_from_environment",
            "factory": True,
            "host": settings.host,
            "port": settings.port,
            "workers": settings.workers,
            "loop": "uvloop",
            "http": HTTP_PROTOCOL,  # uvicorn's httptools protocol, sending each answer in one write
            "log_level": settings.log_level,
            # uvicorn formats each access line before the logger drops it: costly at 1 000s of calls a second
            "access_log": settings.access_log and settings.log_level in ("info", "debug"),
            "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_s),  # uvicorn takes whole seconds
            "server_header": False,
        }
        with contextlib.suppress(StopRequested):
            if settings.workers > 1 and reuse_port_supported():
                run_workers(uvicorn.Config(**options))  # a listening socket per worker (router/workers.py)
            else:
                uvicorn.run(**options)
    return EXIT_OK


def _with_admin_token(settings: Settings) -> Settings:
    """The settings with an admin token: the configured ones, else the token file's (made and printed once)."""
    from router.api.auth import parse_credentials, provision_admin_token, token_file

    try:
        configured = parse_credentials(settings.admin_token, settings.admin_tokens)
    except ValueError as exc:
        raise RouterError(str(exc)) from None
    if configured:
        return settings
    token, created = provision_admin_token(settings.data_dir)
    path = token_file(settings.data_dir)
    if created:
        err.print(f"admin token (shown once; saved to {path}, mode 0600): {token}", markup=False)
    else:
        err.print(f"admin token: the one saved in {path}", markup=False)
    return settings.model_copy(update={"admin_token": token})


class StopRequested(Exception):
    """SIGTERM or SIGINT after uvicorn's graceful shutdown: leave `serve` through its cleanup."""


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


async def _prepare(settings: Settings, experiments: Sequence[Experiment]) -> None:
    """Store the config-file experiments that do not exist yet, then load every model in force once.

    Loading here, before any worker starts, turns a broken model file into one clear error
    instead of workers that crash and restart forever.
    """
    from router.services import open_services

    async with open_services(settings) as services:
        if not services.live.loaded:
            raise RouterError(f"Redis at {settings.redis_url} does not answer; start it or fix --redis-url")
        for experiment in experiments:
            created = await services.store.create_if_absent(experiment, actor="config-file")
            if created is not None:
                err.print(f"applied {experiment.name} (version {created.version}) from the config files")
        await services.live.refresh(strict=True)
        err.print(f"{len(services.live.names())} experiment(s) in force: {', '.join(services.live.names()) or '-'}")


if __name__ == "__main__":
    sys.exit(main())
