"""A stand-in upstream for machines without nginx: fixed JSON from a bare ASGI app on uvicorn.

Used only by the fallback path (CI's smoke run); its figures are not comparable to nginx's.
``uvicorn bench.fixed_upstream:app``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

FIXED_JSON: Final = b'{"predictions": [0], "probabilities": [[0.9, 0.1]]}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """Answer every HTTP request with FIXED_JSON after reading its body."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(FIXED_JSON)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": FIXED_JSON})
