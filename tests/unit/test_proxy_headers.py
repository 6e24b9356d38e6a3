"""Which codings the gateway offers an upstream: only those every upstream client decodes."""

from __future__ import annotations

import pytest

from router.api.predict import read_headers
from router.proxy import decodable_accept_encoding


@pytest.mark.parametrize(
    ("accepted", "offered"),
    [
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "gzip, deflate"),
        ("GZip ;q=0.8,BR", "GZip ;q=0.8"),
        ("br;q=1.0, deflate;q=0.5, identity;q=0.1", "deflate;q=0.5"),
        ("gzip;q=0, deflate", "deflate"),
        ("gzip; Q=0.000, br", "identity"),
        ("gzip;q=bad", "gzip;q=bad"),
        ("x-gzip", "identity"),
        ("br", "identity"),
        ("br, identity;q=0", "identity"),
        ("*", "identity"),
        ("", "identity"),
    ],
)
def test_accept_encoding_keeps_only_the_codings_the_gateway_decodes(accepted: str, offered: str) -> None:
    assert decodable_accept_encoding(accepted) == offered


def test_the_predict_route_forwards_the_filtered_accept_encoding() -> None:
    first, forwarded = read_headers([(b"accept-encoding", b"gzip, br"), (b"x-user-id", b"u")])
    assert forwarded == [("accept-encoding", "gzip"), ("x-user-id", "u")]
    assert first["accept-encoding"] == "gzip, br"  # what the caller sent stays readable to the gateway
    _, forwarded = read_headers([(b"x-user-id", b"u")])
    assert forwarded == [("x-user-id", "u")]  # none sent, none made up
