"""Reading a call's unit id from where the experiment's `unit` says: header, cookie, query or JSON body."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl

from router.variants.base import PredictCall

MAX_UNIT_ID_LENGTH: Final = 256


@functools.lru_cache(maxsize=1024)
def parse_unit_source(unit: str) -> tuple[str, str]:
    """'header:X-User-Id' -> ('header', 'x-user-id'); 'json:user.id' -> ('json', 'user.id')."""
    source, _, key = unit.partition(":")
    return source, key.lower() if source == "header" else key


def unit_id_of(unit: str, *, headers: Mapping[str, str], query_string: bytes, call: PredictCall) -> str | None:
    """The unit id of one call, or None when the call carries none (empty or absurdly long ids count as none).

    `headers` maps lower-case names to their first value; the query string is parsed only for `query:` units.
    """
    source, key = parse_unit_source(unit)
    value: Any
    if source == "header":
        value = _utf8(headers.get(key))
    elif source == "query":
        value = _query(query_string, key)
    elif source == "cookie":
        value = _utf8(_cookie(headers.get("cookie"), key))
    else:
        value = _json_path(call.json(), key.split("."))
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if 0 < len(text) <= MAX_UNIT_ID_LENGTH else None


def _utf8(value: str | None) -> str | None:
    """A header value as the text the client sent: ASGI servers decode header bytes as latin-1, but clients
    send UTF-8, and the GrowthBook hash of 'é' must see the bytes C3 A9, as a front-end SDK does."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8 after all: hash what came
        return value


def _query(query_string: bytes, name: str) -> str | None:
    # As Starlette reads query parameters: latin-1 bytes, blank values kept, the last of repeated names wins.
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)).get(name)


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else None


def _json_path(document: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document
