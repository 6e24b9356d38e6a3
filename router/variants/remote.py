"""A remote variant: the call is proxied to a model server through the shared `UpstreamClient`."""

from __future__ import annotations

from router.proxy import UpstreamClient
from router.variants.base import PredictCall, VariantResponse


class RemoteVariant:
    """Forwards the body and end-to-end headers to `url` and passes the answer back unchanged."""

    def __init__(self, name: str, *, url: str, timeout_s: float, client: UpstreamClient) -> None:
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self._client = client

    async def predict(self, call: PredictCall) -> VariantResponse:
        answer = await self._client.post(self.url, body=call.body, headers=call.headers, timeout_s=self.timeout_s)
        return VariantResponse(status=answer.status, body=answer.body, content_type=answer.content_type)
