"""The whole exception tree of abrouter.

Third-party exceptions (httpx, redis, joblib) are translated into these at exactly one
boundary, the module that calls the library. The app renders every `RouterError` with one
handler as ``{"error": {"code", "message", "details"}}`` and the class's HTTP status::

    RouterError
      ConfigError        InvalidConfig (422) · UnknownExperiment (404) · VersionConflict (412)
                         PreconditionRequired (428) · UnknownVersion (422) · UnreadableConfig (503)
      RequestError       MissingUnit (400) · InvalidPayload (422) · PayloadTooLarge (413) · HeadersTooLarge (431)
      AuthError          Unauthorized (401)
      UpstreamError      UpstreamTimeout (504) · UpstreamUnavailable (502)
      VariantError       ModelLoadError (500, start-up only) · PredictionError (500) · ModelOverloaded (503)
      StoreUnavailable   (503; never reaches a prediction caller: the event path buffers instead)
      FeatureDisabled    (503; the gateway was started with that feature off, e.g. ABROUTER_METRICS_ENABLED=false)
      RolloutError       NoRollout (409) · RolloutConflict (409)
      GatewayError       GatewayUnreachable (the CLI's side: a gateway answered with an error, or not at all)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class RouterError(Exception):
    """Base of every error abrouter raises on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_json(self) -> dict[str, Any]:
        """The JSON error body of the HTTP API."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(RouterError):
    """Something is wrong with an experiment's configuration or its version."""

    status_code = 422
    code = "config_error"


class InvalidConfig(ConfigError):
    """A config file or body failed validation; `details` holds one `path: message` per problem."""

    status_code = 422
    code = "invalid_config"


class UnknownExperiment(ConfigError):
    status_code = 404
    code = "unknown_experiment"


class VersionConflict(ConfigError):
    """The caller edited a version that is no longer current."""

    status_code = 412
    code = "version_conflict"


class PreconditionRequired(ConfigError):
    """A replace was sent without `If-Match`, so it could silently overwrite someone else's edit."""

    status_code = 428
    code = "precondition_required"


class UnreadableConfig(ConfigError):
    """A stored config this process cannot parse: most likely written by a newer release (a rolling upgrade)."""

    status_code = 503
    code = "config_unreadable"


class UnknownVersion(ConfigError):
    """A rollback named a version the experiment never had."""

    status_code = 422
    code = "unknown_version"


class RequestError(RouterError):
    status_code = 400
    code = "bad_request"


class MissingUnit(RequestError):
    status_code = 400
    code = "missing_unit"


class InvalidPayload(RequestError):
    status_code = 422
    code = "invalid_payload"


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "payload_too_large"


class HeadersTooLarge(RequestError):
    """The request line and headers are over `ABROUTER_MAX_HEADER_BYTES` (answered by the HTTP protocol itself)."""

    status_code = 431
    code = "headers_too_large"


class AuthError(RouterError):
    status_code = 401
    code = "unauthorized"


class Unauthorized(AuthError):
    pass


class UpstreamError(RouterError):
    """A remote variant did not answer usefully."""

    status_code = 502
    code = "upstream_error"
    #: closed set used as the `kind` label of abrouter_upstream_errors_total
    kind: ClassVar[str] = "connect"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
    kind = "timeout"


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset or closed before a response."""

    status_code = 502
    code = "upstream_unavailable"
    kind = "connect"


class VariantError(RouterError):
    status_code = 500
    code = "variant_error"


class ModelLoadError(VariantError):
    """A local model file could not be loaded; raised at start-up, never on a request."""

    code = "model_load_error"


class PredictionError(VariantError):
    """A local model raised while predicting on well-formed input."""

    code = "prediction_error"


class ModelOverloaded(VariantError):
    """A local model's queue of waiting calls is full: refuse at once rather than queue without bound."""

    status_code = 503
    code = "model_overloaded"


class StoreUnavailable(RouterError):
    status_code = 503
    code = "store_unavailable"


class FeatureDisabled(RouterError):
    """The call needs something this gateway was configured without (event logging, metrics)."""

    status_code = 503
    code = "feature_disabled"


class RolloutError(RouterError):
    """An operator's rollout call that does not apply (SPEC section 7; docs/rollout.md)."""

    status_code = 409
    code = "rollout_error"


class NoRollout(RolloutError):
    """The experiment's config has no `rollout` block."""

    code = "no_rollout"


class RolloutConflict(RolloutError):
    """The action does not apply to the rollout as it stands (e.g. resume one that is running)."""

    code = "rollout_conflict"


class GatewayError(RouterError):
    """The CLI's view of a failed admin call: the gateway's error code and message, and its HTTP status."""

    code = "gateway_error"

    def __init__(
        self, message: str, *, status: int | None = None, remote_code: str | None = None, details: Sequence[Any] = ()
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.remote_code = remote_code


class GatewayUnreachable(GatewayError):
    """No answer from the gateway: refused, reset or timed out."""

    code = "gateway_unreachable"
