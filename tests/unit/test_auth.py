"""Admin tokens: parsing the settings, checking a bearer header, and the token file `serve` writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from router.api.auth import Authenticator, parse_credentials, provision_admin_token
from router.errors import RouterError, Unauthorized


def test_the_single_token_belongs_to_the_actor_admin() -> None:
    assert parse_credentials("s3cret", None) == {"s3cret": "admin"}


def test_named_tokens_map_each_token_to_its_actor() -> None:
    assert parse_credentials(None, "alice:tok-a, bob:tok-b") == {"tok-a": "alice", "tok-b": "bob"}


def test_a_malformed_named_token_is_refused_without_quoting_the_secret() -> None:
    with pytest.raises(ValueError, match=r"item 2 is not `name:token`") as refused:
        parse_credentials(None, "alice:tok-a,very-secret-value")
    assert "very-secret-value" not in str(refused.value)


@pytest.mark.parametrize(
    ("token", "named", "actor"),
    [
        pytest.param("pässwörd", None, "admin", id="latin-1"),
        pytest.param(None, "alice:tok-a,bob:日本語", "bob", id="named-cjk"),
        pytest.param("tab\tinside", None, "admin", id="control-character"),
    ],
)
def test_a_token_no_http_client_could_send_is_refused_at_start_without_quoting_it(
    token: str | None, named: str | None, actor: str
) -> None:
    with pytest.raises(ValueError, match=rf"admin token of actor '{actor}' has characters other than printable ASCII"):
        parse_credentials(token, named)


@pytest.mark.parametrize(
    ("header", "actor"),
    [
        pytest.param("Bearer tok-a", "alice", id="first-token"),
        pytest.param("Bearer tok-b", "bob", id="second-token"),
        pytest.param("bearer   tok-b ", "bob", id="scheme-is-case-insensitive"),
    ],
)
def test_a_valid_bearer_token_gives_its_actor(header: str, actor: str) -> None:
    assert Authenticator({"tok-a": "alice", "tok-b": "bob"}).actor(header) == actor


@pytest.mark.parametrize(
    ("header", "message"),
    [
        pytest.param(None, r"needs an `Authorization: Bearer", id="no-header"),
        pytest.param("Basic dG9rLWE=", r"needs an `Authorization: Bearer", id="other-scheme"),
        pytest.param("Bearer", r"needs an `Authorization: Bearer", id="no-token"),
        pytest.param("Bearer tok-", r"not valid", id="prefix-of-a-token"),
        pytest.param("Bearer tok-aa", r"not valid", id="longer-than-a-token"),
        pytest.param("Bearer tök-a", r"not valid", id="non-ascii"),
    ],
)
def test_anything_but_a_valid_bearer_token_is_unauthorized(header: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message) as refused:
        Authenticator({"tok-a": "alice"}).actor(header)
    assert refused.value.status_code == 401


def test_a_gateway_without_tokens_refuses_every_admin_call() -> None:
    with pytest.raises(Unauthorized, match=r"no admin token is configured"):
        Authenticator({}).actor("Bearer anything")


def test_provisioning_writes_a_random_token_readable_by_the_owner_only(tmp_path: Path) -> None:
    token, created = provision_admin_token(tmp_path / "data")
    path = tmp_path / "data" / "admin-token"
    assert created
    assert len(token) >= 40
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_provisioning_again_reuses_the_saved_token(tmp_path: Path) -> None:
    first, _ = provision_admin_token(tmp_path)
    again, created = provision_admin_token(tmp_path)
    assert (again, created) == (first, False)


def test_provisioning_tightens_the_mode_of_an_existing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("kept\n")
    path.chmod(0o644)
    assert provision_admin_token(tmp_path) == ("kept", False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RouterError, match=r"cannot read or write the admin token file"):
        provision_admin_token(blocker / "data")
