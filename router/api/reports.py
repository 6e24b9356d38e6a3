"""GET /v1/experiments/{name}/report: the experiment report (SPEC section 6) as JSON or as one HTML page.

The numbers come from the per-variant sufficient statistics in Redis (one HGETALL, whatever the
traffic), never from raw events, and the document is built by the pure `router.reports.report`.
Each report is a look of the sequential SRM test, whose running minimum is kept in Redis
(`router.store.srm`), so it stays valid however often any replica is asked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from router.api.auth import admin_only
from router.api.responses import JSONResponse
from router.config.schema import Experiment
from router.errors import InvalidPayload, UnknownExperiment
from router.reports.model import Report
from router.reports.render import render_html
from router.reports.report import build_report
from router.reports.stats import sequential_srm_p_value, srm_log_bayes_factor
from router.services import Services
from router.store.configs import StoredExperiment
from router.store.srm import shares_window
from router.store.stats import LATENCY_BUCKETS_MS


class ReportFormat(StrEnum):
    """The `format` query parameter."""

    JSON = "json"
    HTML = "html"


# The page fetches nothing (inline CSS and SVG): a browser that honours this refuses anything
# a future change might add by mistake, instead of leaking that a report was opened.
HTML_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)


def report_format(request: Request) -> ReportFormat:
    """The requested format, JSON by default; 422 naming the choices for anything else."""
    raw = request.query_params.get("format", ReportFormat.JSON.value)
    try:
        return ReportFormat(raw.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in ReportFormat)
        raise InvalidPayload(
            f"unknown report format {raw!r}; choose one of {choices}", details=[{"format": raw, "choices": choices}]
        ) from None


async def experiment_report(services: Services, name: str) -> Report:
    """The report of experiment `name` as it stands now, recording this look of the sequential SRM test."""
    stored = await _reported_version(services, name)
    experiment = stored.experiment
    variants = [v.name for v in experiment.variants]
    metrics = [m.name for m in experiment.metrics]
    stats = await services.stats.read(name, variants=variants, metrics=metrics)
    since = shares_window(await services.store.readable_history(name))
    srm_units = {v: stats.variant(v).units if since is None else stats.variant(v).units_since(since) for v in variants}
    running_min = await _srm_look(services, experiment, list(srm_units.values()), stored.version)
    return build_report(
        experiment,
        config_version=stored.version,
        generated_at=datetime.now(UTC),
        operations={v: stats.variant(v) for v in variants},
        metrics={m: {v: stats.variant(v).metric(m) for v in variants} for m in metrics},
        latency_bounds_ms=LATENCY_BUCKETS_MS,
        srm_running_min=running_min,
        srm_units=srm_units,
        srm_since_version=since,
    )


async def _reported_version(services: Services, name: str) -> StoredExperiment:
    """The version in force; for an archived experiment, its last version: its data are kept to be read."""
    try:
        return await services.store.get(name)
    except UnknownExperiment:
        return (await services.store.history(name))[-1]  # UnknownExperiment again when it never existed


async def _srm_look(services: Services, experiment: Experiment, units: list[int], version: int) -> float | None:
    """This look folded into the stored running minimum; None while there is nothing to test."""
    weights = list(experiment.weights)
    if srm_log_bayes_factor(units, weights) is None:
        return None
    p_value = sequential_srm_p_value(units, weights)
    shares = {v.name: v.weight for v in experiment.variants}
    return await services.srm.record(experiment.name, shares=shares, p_value=p_value, version=version)


@admin_only
async def report(request: Request) -> Response:
    """The report as JSON (default) or, with `?format=html`, one self-contained page."""
    fmt = report_format(request)
    services: Services = request.app.state.services
    document = await experiment_report(services, request.path_params["name"])
    headers = {"X-Config-Version": str(document["config_version"]), "Cache-Control": "no-store"}
    if fmt is ReportFormat.HTML:
        headers |= {"Content-Security-Policy": HTML_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}
        return HTMLResponse(render_html(document), headers=headers)
    return JSONResponse(document, headers=headers)


ROUTES: Final = [Route("/v1/experiments/{name}/report", report, methods=["GET"])]
