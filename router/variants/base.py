"""What every variant backend (remote or local) takes and gives on one prediction call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from router.errors import InvalidPayload

_UNPARSED: Any = object()


@dataclass(slots=True)
class PredictCall:
    """One incoming prediction call, as the variants see it; the body is parsed at most once."""

    body: bytes
    headers: list[tuple[str, str]]
    request_id: str
    _parsed: Any = field(default=_UNPARSED, repr=False)

    def json(self) -> Any:
        """The body as JSON; a body that is not JSON is the caller's mistake (422)."""
        if self._parsed is _UNPARSED:
            try:
                self._parsed = orjson.loads(self.body)
            except orjson.JSONDecodeError as exc:
                raise InvalidPayload(f"the request body is not valid JSON: {exc}") from None
        return self._parsed


@dataclass(frozen=True, slots=True)
class VariantResponse:
    """What a variant answered: passed back to the caller as it is."""

    status: int
    body: bytes
    content_type: str | None

    @property
    def failed(self) -> bool:
        """A 5xx from a model server is a failure that `fallback: control` covers."""
        return self.status >= 500


class VariantBackend(Protocol):
    """Serves prediction calls for one variant of one experiment."""

    name: str

    async def predict(self, call: PredictCall) -> VariantResponse:
        """Answer the call, or raise an `UpstreamError`/`VariantError`."""
        ...
