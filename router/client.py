"""A small synchronous client of a gateway's control plane, for the CLI.

The one place the CLI calls httpx: transport failures become `GatewayUnreachable`, error answers
`GatewayError` with the gateway's own code, message and details.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx

from router.errors import GatewayError, GatewayUnreachable

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S: Final = 10.0


class AdminClient:
    """The admin API of one gateway: JSON in, JSON out."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def list(self) -> list[dict[str, Any]]:
        experiments: list[dict[str, Any]] = self._call("GET", "/v1/experiments")["experiments"]
        return experiments

    def get(self, name: str) -> dict[str, Any]:
        return self._call("GET", _path(name))

    def find(self, name: str) -> dict[str, Any] | None:
        """The experiment, or None when the gateway has none of that name (or it is archived)."""
        try:
            return self.get(name)
        except GatewayError as exc:
            if exc.status == 404 and exc.remote_code == "unknown_experiment":
                return None
            raise

    def put(self, name: str, config: Mapping[str, Any], *, if_match: int | None) -> dict[str, Any]:
        """Create (`if_match=None`) or replace the version `if_match`."""
        return self._call("PUT", _path(name), body=config, if_match=if_match)

    def patch(self, name: str, changes: Mapping[str, Any], *, if_match: int | None = None) -> dict[str, Any]:
        return self._call("PATCH", _path(name), body=changes, if_match=if_match)

    def preview(self, name: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", _path(name, "preview"), body=changes)

    def promote(self, name: str, variant: str, *, if_match: int | None = None) -> dict[str, Any]:
        return self._call("POST", _path(name, "promote"), body={"variant": variant}, if_match=if_match)

    def rollback(self, name: str, *, to_version: int | None = None, if_match: int | None = None) -> dict[str, Any]:
        body = {"to_version": to_version} if to_version is not None else {}
        return self._call("POST", _path(name, "rollback"), body=body, if_match=if_match)

    def history(self, name: str) -> dict[str, Any]:
        return self._call("GET", _path(name, "history"))

    def archive(self, name: str, *, if_match: int | None = None) -> dict[str, Any]:
        return self._call("DELETE", _path(name), if_match=if_match)

    def rollout(self, name: str, action: str | None = None) -> dict[str, Any]:
        """Where the rollout stands (GET), or after an operator's `action` (pause, resume, advance, abort)."""
        if action is None:
            return self._call("GET", _path(name, "rollout"))
        return self._call("POST", _path(name, f"rollout/{quote(action, safe='')}"))

    def report(self, name: str) -> dict[str, Any]:
        """The experiment report as JSON (SPEC section 6)."""
        return self._call("GET", _path(name, "report"))

    def report_html(self, name: str) -> str:
        """The experiment report as one self-contained HTML page."""
        response = self._send("GET", _path(name, "report"), params={"format": "html"}, accept="text/html")
        if response.is_error:
            raise _error(response, _json(response))
        return response.text

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        if_match: int | None = None,
        params: Mapping[str, str] | None = None,
        accept: str | None = None,
    ) -> httpx.Response:
        """One request; transport failures become `GatewayUnreachable`, an error answer is returned as it is."""
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        try:
            return self._http.request(method, path, json=body, headers=headers, params=params)
        except httpx.TimeoutException:
            raise GatewayUnreachable(f"{method} {self.url}{path}: no answer within {self._timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach the gateway at {self.url}: {exc}") from None

    def _call(
        self, method: str, path: str, *, body: Mapping[str, Any] | None = None, if_match: int | None = None
    ) -> dict[str, Any]:
        response = self._send(method, path, body=body, if_match=if_match)
        data = _json(response)
        if response.is_error:
            raise _error(response, data)
        if not isinstance(data, dict):
            raise GatewayError(f"{method} {path}: expected a JSON object from the gateway", status=response.status_code)
        return data


def _path(name: str, action: str | None = None) -> str:
    path = f"/v1/experiments/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error(response: httpx.Response, data: Any) -> GatewayError:
    """The gateway's `{"error": {...}}` as a `GatewayError`; anything else by its status and text."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        details = error.get("details")
        return GatewayError(
            error["message"],
            status=response.status_code,
            remote_code=str(error.get("code", "")),
            details=details if isinstance(details, list) else (),
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return GatewayError(f"HTTP {response.status_code} from {response.request.url}: {text}", status=response.status_code)
