"""GET /metrics: every metric in the Prometheus text format (OpenMetrics when the scraper asks for it)."""

from __future__ import annotations

import anyio.to_thread
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from router.errors import FeatureDisabled
from router.metrics import multiprocess_dir, scrape_collector
from router.services import Services


def render(collector: Collector, accept: str | None) -> tuple[bytes, str]:
    """The scrape body in the format the `Accept` header asks for, and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(collector), content_type


async def metrics(request: Request) -> Response:
    """Encoded in a worker thread: merging every worker's files must not stall prediction calls."""
    services: Services = request.app.state.services
    if not services.settings.metrics_enabled:
        raise FeatureDisabled("this gateway keeps no metrics: it runs with ABROUTER_METRICS_ENABLED=false")
    services.metrics.flush()  # on the event loop, where the prediction path counts
    # built here, on the event loop, so it copies the config in force while nothing changes it
    collector = scrape_collector(services.metrics, multiprocess_dir())
    body, content_type = await anyio.to_thread.run_sync(render, collector, request.headers.get("accept"))
    return Response(body, media_type=content_type)
