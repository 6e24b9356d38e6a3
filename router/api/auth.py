"""Bearer-token auth of the control plane and the reports (SPEC section 4).

Endpoints opt in with `@admin_only`, which also records who is calling for the history. The
public routes are few and named in a test that walks the app's route table and calls every other
route without a token, so an endpoint added without the guard fails that test.

Tokens come from `ABROUTER_ADMIN_TOKEN` (actor `admin`) and `ABROUTER_ADMIN_TOKENS=name:token,...`.
With neither, `abrouter serve` makes one before its workers start (`provision_admin_token`), so all
workers share it; an app given no token at all refuses every admin call.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from router.api.responses import error_response
from router.errors import RouterError, Unauthorized
from router.settings import Settings

DEFAULT_ACTOR: Final = "admin"
TOKEN_FILE_NAME: Final = "admin-token"
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="abrouter"'}

Endpoint = Callable[[Request], Awaitable[Response]]


def parse_credentials(token: str | None, named: str | None) -> dict[str, str]:
    """`ABROUTER_ADMIN_TOKEN` and `ABROUTER_ADMIN_TOKENS=name:token,...` as token -> actor name.

    A malformed `named` raises `ValueError` with a message that never quotes the secret. So does a
    token that is not printable ASCII: HTTP clients send header bytes that no such token matches.
    """
    credentials: dict[str, str] = {}
    if token and token.strip():
        credentials[token.strip()] = DEFAULT_ACTOR
    for position, item in enumerate((named or "").split(",")):
        if not item.strip():
            continue
        name, sep, secret = item.partition(":")
        if not sep or not name.strip() or not secret.strip():
            raise ValueError(
                f"ABROUTER_ADMIN_TOKENS item {position + 1} is not `name:token` "
                "(the variable is `name:token,name:token,...`)"
            )
        credentials[secret.strip()] = name.strip()
    for secret, actor in credentials.items():
        if not (secret.isascii() and secret.isprintable()):
            raise ValueError(
                f"the admin token of actor {actor!r} has characters other than printable ASCII: "
                "no HTTP client could send it (use letters, digits and punctuation)"
            )
    return credentials


class Authenticator:
    """Checks a request's bearer token against the configured ones in constant time."""

    def __init__(self, credentials: Mapping[str, str]) -> None:
        self._credentials = [(token.encode(), actor) for token, actor in credentials.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        return cls(parse_credentials(settings.admin_token, settings.admin_tokens))

    def actor(self, authorization: str | None) -> str:
        """The actor name of a valid `Authorization: Bearer <token>` header; `Unauthorized` otherwise."""
        if not self._credentials:
            raise Unauthorized(
                "no admin token is configured on this gateway: set ABROUTER_ADMIN_TOKEN or ABROUTER_ADMIN_TOKENS"
            )
        scheme, _, supplied = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not supplied.strip():
            raise Unauthorized("this endpoint needs an `Authorization: Bearer <admin token>` header")
        candidate = supplied.strip().encode()
        found: str | None = None
        # every token is compared, matched or not, so the time taken does not tell which one was close
        for token, actor in self._credentials:
            if hmac.compare_digest(candidate, token) and found is None:
                found = actor
        if found is None:
            raise Unauthorized("the admin token is not valid")
        return found


def admin_only(endpoint: Endpoint) -> Endpoint:
    """Guard an endpoint: 401 without a valid admin token; the caller's actor name in `request.state.actor`."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        authenticator: Authenticator = request.app.state.authenticator
        try:
            request.state.actor = authenticator.actor(request.headers.get("authorization"))
        except Unauthorized as exc:
            return error_response(exc, headers=_CHALLENGE)
        return await endpoint(request)

    return guarded


def actor_of(request: Request) -> str:
    """Who made this admin call, for the history (set by `admin_only`)."""
    actor: str = request.state.actor
    return actor


def token_file(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE_NAME


def provision_admin_token(data_dir: Path) -> tuple[str, bool]:
    """The token kept in `data_dir/admin-token`, made (random, mode 0600) if there is none; True when made now.

    An existing file is reused, so a restart or a second gateway on the same data directory
    keeps the token the CLI already has.
    """
    path = token_file(data_dir)
    try:
        try:
            existing = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            path.chmod(0o600)
            return existing, False
        token = secrets.token_urlsafe(32)
        data_dir.mkdir(parents=True, exist_ok=True)
        # created with mode 0600 from the start: no moment where another user could read it
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(token + "\n")
        path.chmod(0o600)  # O_CREAT's mode does not apply to a file that already existed (empty)
    except (OSError, UnicodeDecodeError) as exc:
        raise RouterError(f"cannot read or write the admin token file {path}: {exc}") from None
    return token, True
