"""The `abrouter` commands that edit experiments through a running gateway's control plane (SPEC section 9).

apply, list, get, set-weights, promote, rollback, history, rollout, report. Each takes `--url`, `--token` and
`--json`; tables are for people, `--json` prints the gateway's answers for scripts. Exit codes as
for every command: 0 ok, 1 failure, 2 bad usage (a missing token counts as bad usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

import yaml
from rich.console import Console
from rich.prompt import Confirm
from rich.table import Table
from rich.text import Text

from router.api.auth import TOKEN_FILE_NAME
from router.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AdminClient
from router.config.loader import load_files
from router.errors import GatewayError, GatewayUnreachable
from router.reports.model import Report
from router.reports.render import render_table, report_renderable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
TOKEN_ENV: Final = "ABROUTER_ADMIN_TOKEN"
REPORT_FORMATS: Final = ("table", "json", "html")
ROLLOUT_ACTIONS: Final = ("pause", "resume", "advance", "abort")
#: decisions `abrouter rollout` prints (the gateway sends up to 100; --json shows them all)
ROLLOUT_DECISIONS_SHOWN: Final = 10

# Piped output is not wrapped at 80 columns: scripts grep lines, and a folded table row breaks that.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Handler = Callable[[argparse.Namespace, AdminClient], int]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the gateway commands; each sets `handler`, which `run` calls with a connected client."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    common.add_argument(
        "--token", help=f"admin token (default ${TOKEN_ENV}, then the file .abrouter/{TOKEN_FILE_NAME})"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    common.add_argument(
        "--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS", help="per HTTP call"
    )

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    apply = command("apply", apply_files, "validate config files, then create or update each experiment")
    apply.add_argument("files", nargs="+", metavar="FILE", help="config files or directories")

    command("list", list_experiments, "list the experiments in force")

    get = command("get", get_experiment, "show one experiment's config and version")
    get.add_argument("name")

    set_weights = command("set-weights", set_weights_command, "change weights, after a preview of who moves")
    set_weights.add_argument("name")
    set_weights.add_argument("weights", nargs="+", type=_weight, metavar="VARIANT=WEIGHT")
    set_weights.add_argument("-y", "--yes", action="store_true", help="apply without asking for confirmation")

    promote = command("promote", promote_command, "conclude the experiment: all traffic to VARIANT")
    promote.add_argument("name")
    promote.add_argument("variant")

    rollback = command("rollback", rollback_command, "restore an earlier version's config as a new version")
    rollback.add_argument("name")
    rollback.add_argument("--to-version", type=_positive_int, metavar="N", help="default: the previous version")

    history = command("history", history_command, "every version: time, actor and what changed")
    history.add_argument("name")

    rollout = command(
        "rollout", rollout_command, "a progressive rollout: where it stands and its decisions, or step in"
    )
    rollout.add_argument("name")
    rollout.add_argument(
        "action", nargs="?", choices=ROLLOUT_ACTIONS, help="pause, resume, advance or abort (default: only show it)"
    )

    report = command("report", report_command, "the experiment report: sample-ratio check, variants, metrics")
    report.add_argument("name")
    report.add_argument(
        "--format", choices=REPORT_FORMATS, help="table (default; --json means json), json, or html: one page"
    )
    report.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report to FILE, not stdout")


def run(args: argparse.Namespace) -> int:
    """Run a gateway command; `GatewayError`s propagate to `main`, which prints them and exits 1."""
    token = resolve_token(args.token)
    if token is None:
        err.print(
            f"error: no admin token: pass --token, set {TOKEN_ENV}, or run where `abrouter serve` "
            f"wrote .abrouter/{TOKEN_FILE_NAME}",
            markup=False,
        )
        return EXIT_USAGE
    handler: Handler = args.handler
    with AdminClient(args.url, token, timeout_s=args.timeout) as client:
        return handler(args, client)


def resolve_token(explicit: str | None) -> str | None:
    """--token, else $ABROUTER_ADMIN_TOKEN, else the token file `abrouter serve` writes (under $ABROUTER_DATA_DIR)."""
    if explicit:
        return explicit
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = Path(os.environ.get("ABROUTER_DATA_DIR") or ".abrouter") / TOKEN_FILE_NAME
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# --- commands ---------------------------------------------------------------------------------------------------


def apply_files(args: argparse.Namespace, client: AdminClient) -> int:
    """Create what is missing, replace what differs (If-Match: the version compared), leave the rest."""
    experiments = load_files(args.files)  # every file valid, or InvalidConfig and nothing applied
    if not experiments:
        err.print("error: no experiments in " + ", ".join(args.files), markup=False)
        return EXIT_FAILURE
    results: list[dict[str, Any]] = []
    for experiment in experiments:
        config = experiment.model_dump(mode="json")
        try:
            current = client.find(experiment.name)
            if current is None:
                stored, result = client.put(experiment.name, config, if_match=None), "created"
            elif current["config"] == config:
                stored, result = current, "unchanged"
            else:
                stored = client.put(experiment.name, config, if_match=current["version"])
                result = "updated" if stored["version"] != current["version"] else "unchanged"
        except GatewayUnreachable:
            raise
        except GatewayError as exc:
            # one experiment's failure (e.g. a concurrent edit) does not stop the others
            results.append({"name": experiment.name, "result": "failed", "error": exc.message, "details": exc.details})
            continue
        change = stored["change"] if result != "unchanged" else ""
        results.append({"name": experiment.name, "result": result, "version": stored["version"], "change": change})
    if args.json:
        _print_json({"results": results})
    else:
        table = _table("EXPERIMENT", "RESULT", "VERSION", "CHANGE")
        for r in results:
            table.add_row(
                Text(r["name"]),
                Text(r["result"], style="red" if r["result"] == "failed" else ""),
                Text(str(r.get("version", "-"))),
                Text(r.get("change") or _error_text(r)),
            )
        out.print(table)
    return EXIT_FAILURE if any(r["result"] == "failed" for r in results) else EXIT_OK


def list_experiments(args: argparse.Namespace, client: AdminClient) -> int:
    experiments = client.list()
    if args.json:
        _print_json({"experiments": experiments})
        return EXIT_OK
    table = _table("EXPERIMENT", "VERSION", "STATUS", "WEIGHTS", "UPDATED", "BY")
    for e in experiments:
        config = e["config"]
        table.add_row(
            Text(e["name"]),
            Text(str(e["version"])),
            Text(_status(config)),
            Text(_weights(config)),
            Text(e["updated_at"]),
            Text(e["updated_by"]),
        )
    out.print(table if experiments else Text("no experiments"))
    return EXIT_OK


def get_experiment(args: argparse.Namespace, client: AdminClient) -> int:
    experiment = client.get(args.name)
    if args.json:
        _print_json(experiment)
        return EXIT_OK
    out.print(
        Text(
            f"{experiment['name']}: version {experiment['version']}, {_status(experiment['config'])}, "
            f"updated {experiment['updated_at']} by {experiment['updated_by']}"
        )
    )
    out.print(Text(f"weights: {_weights(experiment['config'])}"))
    out.print(Text(yaml.safe_dump(experiment["config"], sort_keys=False).rstrip()))
    return EXIT_OK


def set_weights_command(args: argparse.Namespace, client: AdminClient) -> int:
    """Preview who moves, confirm, then PATCH with If-Match: the version previewed is the one changed."""
    weights = dict(args.weights)
    if len(weights) != len(args.weights):
        err.print("error: name each variant once", markup=False)
        return EXIT_USAGE
    preview = client.preview(args.name, {"weights": weights})
    if not args.json:
        _print_preview(preview)
    if not args.yes and not _confirm(f"apply to {args.name} version {preview['version']}?"):
        err.print("nothing changed", markup=False)
        return EXIT_FAILURE
    stored = client.patch(args.name, {"weights": weights}, if_match=preview["version"])
    if args.json:
        _print_json({"preview": preview, "experiment": stored})
    else:
        _print_outcome(preview["version"], stored)
    return EXIT_OK


def promote_command(args: argparse.Namespace, client: AdminClient) -> int:
    before = client.get(args.name)
    stored = client.promote(args.name, args.variant)
    return _report(args, before["version"], stored)


def rollback_command(args: argparse.Namespace, client: AdminClient) -> int:
    before = client.get(args.name)
    stored = client.rollback(args.name, to_version=args.to_version)
    return _report(args, before["version"], stored)


def history_command(args: argparse.Namespace, client: AdminClient) -> int:
    history = client.history(args.name)
    if args.json:
        _print_json(history)
        return EXIT_OK
    table = _table("VERSION", "TIME", "BY", "CHANGE")
    for v in history["versions"]:
        table.add_row(Text(str(v["version"])), Text(v["updated_at"]), Text(v["updated_by"]), Text(v["change"]))
    out.print(table)
    return EXIT_OK


def rollout_command(args: argparse.Namespace, client: AdminClient) -> int:
    """Show the rollout (after the action, if one is given): its share, phase and latest decisions."""
    rollout = client.rollout(args.name, args.action)
    if args.json:
        _print_json(rollout)
        return EXIT_OK
    percent = rollout["percent"]
    share = f"{percent:g}%" if percent is not None else "-"
    steps = ", ".join(f"{step:g}" for step in rollout["steps"])
    headline = f"{rollout['experiment']}: canary {rollout['canary']} at {share}, {rollout['phase']}"
    out.print(Text(f"{headline} (steps {steps}; next decision {rollout['next_decision_at'] or '-'})"))
    table = _table("TIME", "DECISION", "BY", "SHARE", "WHY", title="latest decisions")
    for decision in rollout["decisions"][:ROLLOUT_DECISIONS_SHOWN]:
        table.add_row(
            Text(decision["at"]),
            Text(decision["decision"]),
            Text(decision["actor"]),
            Text(f"{decision['percent']:g}%"),
            Text(decision["reason"]),
        )
    out.print(table)
    return EXIT_OK


def report_command(args: argparse.Namespace, client: AdminClient) -> int:
    """Fetch the report and show it as a terminal table, or write the gateway's JSON or HTML page."""
    fmt = args.format or ("json" if args.json else "table")
    if fmt == "html":
        text = client.report_html(args.name)
    else:
        # the gateway's JSON is a Report: the same document the renderers are typed for
        report = cast(Report, client.report(args.name))
        if fmt == "json":
            text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        elif args.output is None:
            out.print(report_renderable(report))
            return EXIT_OK
        else:
            text = render_table(report)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        err.print(f"error: cannot write the report to {args.output}: {exc.strerror or exc}", markup=False)
        return EXIT_FAILURE
    err.print(f"{args.name}: {fmt} report written to {args.output}", markup=False)
    return EXIT_OK


# --- output -----------------------------------------------------------------------------------------------------


def _report(args: argparse.Namespace, before: int, stored: Mapping[str, Any]) -> int:
    if args.json:
        _print_json(stored)
    else:
        _print_outcome(before, stored)
    return EXIT_OK


def _print_outcome(before: int, stored: Mapping[str, Any]) -> None:
    if stored["version"] == before:
        out.print(Text(f"{stored['name']}: unchanged at version {before}"))
    else:
        out.print(Text(f"{stored['name']}: version {before} -> {stored['version']}: {stored['change']}"))


def _print_preview(preview: Mapping[str, Any]) -> None:
    moves = preview["moves"]
    if not moves:
        out.print(Text(f"{preview['experiment']}: no unit would change variant"))
        return
    table = _table("FROM", "TO", "SHARE OF UNITS", title=f"{preview['experiment']} version {preview['version']}")
    for move in moves:
        table.add_row(Text(move["from"]), Text(move["to"]), Text(_percent(move["share"])))
    out.print(table)
    out.print(Text(f"{_percent(preview['moved'])} of units would be served another variant"))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _status(config: Mapping[str, Any]) -> str:
    status = str(config.get("status", "running"))
    return f"{status} (winner {config.get('winner')})" if status == "concluded" else status


def _weights(config: Mapping[str, Any]) -> str:
    variants = config.get("variants", [])
    total = sum(float(v["weight"]) for v in variants) or 1.0
    return ", ".join(f"{v['name']} {_percent(float(v['weight']) / total)}" for v in variants)


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


def _error_text(result: Mapping[str, Any]) -> str:
    details = "; ".join(str(d) for d in result.get("details") or [])
    return f"{result.get('error', '')} {details}".strip()


def _confirm(question: str) -> bool:
    try:
        return Confirm.ask(question, console=err, default=False)
    except EOFError:  # stdin closed (a script without --yes): nothing was agreed to
        return False


# --- argument types ---------------------------------------------------------------------------------------------


def _weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not name or not weight >= 0 or weight == float("inf"):
        raise argparse.ArgumentTypeError(f"expected VARIANT=WEIGHT with a number >= 0, got {text!r}")
    return name, weight


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value
