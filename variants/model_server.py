"""The example REMOTE model server: what a remote variant's `url` points at in the demo and the tests.

``python -m variants.model_server --port 9001 [--model PATH] [--host 127.0.0.1]``. Without a model
file it answers with the synthetic world's true churn probability, so it starts with nothing trained.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.errors import InvalidPayload, RouterError
from router.variants.local import LocalModel, Rows, instances_array
from variants.churn import N_FEATURES, churn_probability


class Predictor(Protocol):
    async def predict(self, payload: Any) -> dict[str, Any]: ...


class ChurnRule:
    """A deterministic stand-in model: the true churn probability, thresholded at one half."""

    async def predict(self, payload: Any) -> dict[str, Any]:
        """Answer like a loaded classifier, computing off the event loop like one."""
        rows = instances_array(payload, N_FEATURES)
        return await anyio.to_thread.run_sync(self._run, rows)

    def _run(self, rows: Rows) -> dict[str, Any]:
        churn = churn_probability(rows)
        return {
            "predictions": (churn >= 0.5).astype(np.int64).tolist(),
            "probabilities": np.column_stack([1.0 - churn, churn]).tolist(),
        }


def create_model_server(
    model_path: Path | None = None,
    *,
    name: str = "churn-current",
    delay_s: float = 0.0,
    fail_status: int | None = None,
) -> Starlette:
    """Build the server; `delay_s` and `fail_status` make a slow or failing upstream for tests, set at construction."""
    if fail_status is not None and not 400 <= fail_status <= 599:
        raise ValueError(f"fail_status must be an HTTP error status (400..599), got {fail_status}")
    # Loading here, not on the first call, makes a bad file fail before the server listens.
    predictor: Predictor = ChurnRule() if model_path is None else LocalModel.load(model_path)

    async def predict(request: Request) -> Response:
        if delay_s > 0:
            await anyio.sleep(delay_s)
        if fail_status is not None:
            message = f"model server {name} is configured to fail with {fail_status}"
            return _json({"error": {"code": "injected_failure", "message": message, "details": []}}, fail_status)
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidPayload(f"the body is not valid JSON: {exc}") from None
        answer = await predictor.predict(payload)
        return _json({**answer, "model": name})

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "model": name})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={RouterError: _render_error},
    )


def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)  # registered for RouterError only; Starlette types handlers for any Exception
    return _json(exc.to_json(), exc.status_code)


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: serve one model with uvicorn until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m variants.model_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9001, help="port to listen on (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None, help="joblib model file (default: a built-in rule)")
    parser.add_argument("--name", default=None, help='name echoed as "model" (default: the file stem, or "churn-rule")')
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--fail-status", type=int, default=None, help="answer every prediction with this status")
    args = parser.parse_args(argv)
    name = args.name or (args.model.stem if args.model is not None else "churn-rule")
    try:
        app = create_model_server(args.model, name=name, delay_s=args.delay, fail_status=args.fail_status)
    except RouterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
