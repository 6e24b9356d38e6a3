"""Process settings, read from `ABROUTER_*` environment variables (CLI flags override them).

pydantic-settings parses and validates the environment with the same machinery as the config
schema, so a bad `ABROUTER_PORT=abc` fails at start-up with the variable named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the libraries behind `router.proxy.UpstreamClient`
UpstreamClientKind = Literal["httpx", "httpx2", "aiohttp", "httptools"]


class Settings(BaseSettings):
    """Everything a gateway process needs to start; one instance per process."""

    model_config = SettingsConfigDict(env_prefix="ABROUTER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(default=True, description="one line per request at info level (uvicorn's access log)")

    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="request line and headers, bytes; larger requests get 431"
    )

    redis_url: str | None = Field(default=None, description="None starts the embedded Redis under data_dir")
    redis_cluster: bool = Field(default=False, description="treat redis_url as a Redis Cluster node")
    redis_prefix: str = "abr:"
    redis_timeout_s: float = Field(default=0.5, gt=0, description="socket timeout of every Redis command")
    data_dir: Path = Path(".abrouter")
    config_paths: list[Path] = Field(default_factory=list, description="files or directories applied at start-up")
    models_dir: Path | None = Field(
        default=None,
        description="when set, local `model:` paths are taken under it and may not leave it (joblib files are pickles)",
    )

    # Bearer tokens of the control plane; repr=False keeps them out of logs and tracebacks.
    admin_token: str | None = Field(default=None, repr=False, description="token of the actor `admin`")
    admin_tokens: str | None = Field(default=None, repr=False, description="`name:token,...`: one token per actor")

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    config_refresh_s: float = Field(default=1.0, gt=0, description="how often the stored config versions are checked")

    upstream_client: UpstreamClientKind = Field(
        default="httptools", description="HTTP client of remote variants (docs/performance.md compares them)"
    )
    upstream_max_connections: int = Field(default=512, gt=0)
    upstream_keepalive_s: float = Field(default=30.0, gt=0)

    shutdown_grace_s: float = Field(default=10.0, ge=0, description="in-flight calls get this long on SIGTERM")

    events_buffer_size: int = Field(default=100_000, gt=0, description="events kept in memory before spilling")
    events_batch_size: int = Field(default=500, gt=0, le=10_000, description="events per script call to Redis")
    events_flush_interval_s: float = Field(default=0.1, gt=0, description="longest wait before a short batch is sent")
    events_stream_maxlen: int = Field(default=1_000_000, gt=0, description="approximate length of each event stream")
    events_pending_max_units: int = Field(
        default=100_000, ge=0, description="units per experiment whose outcomes wait for their exposure"
    )
    events_spill_dir: Path | None = Field(default=None, description="spill files; default DATA_DIR/spill")
    events_spill_max_bytes: int = Field(default=1 << 30, gt=0, description="size at which a spill file stops growing")
    events_write_timeout_s: float = Field(default=2.0, gt=0, description="deadline of one batch write")
    events_shutdown_timeout_s: float = Field(
        default=5.0, ge=0, description="how long shutdown tries Redis before spilling the queue"
    )
    events_enabled: bool = Field(
        default=True, description="log exposures, call counts and outcomes to Redis (off: no analysis, no outcomes)"
    )
    metrics_enabled: bool = Field(default=True, description="keep Prometheus metrics and serve /metrics")
    rollout_enabled: bool = Field(
        default=True, description="run the progressive-rollout controller here (one process per rollout acts)"
    )
    rollout_tick_s: float = Field(
        default=1.0, gt=0, description="how often the rollout controller looks for a due decision"
    )
    local_batching: bool = Field(
        default=True, description="gather concurrent calls of one local model into one model call"
    )
    local_max_batch_rows: int = Field(default=256, gt=0, description="most rows of one batched local model call")
    local_max_queue: int = Field(
        default=1024, gt=0, description="calls waiting for one local model; past it they get 503 model_overloaded"
    )
    local_inline_max_ms: float = Field(
        default=2.0,
        ge=0,
        description="a local model whose largest batch costs at most this much CPU (probed at load) runs on "
        "the event loop instead of a worker thread; 0: always a worker thread",
    )
    shadow_max_in_flight: int = Field(
        default=64, ge=0, description="mirrored (shadow) calls in flight per process; past it they are dropped"
    )
    sticky_cache_size: int = Field(default=100_000, ge=0, description="units' first variants cached per process")
    sticky_timeout_s: float = Field(default=0.05, gt=0, description="deadline of a sticky lookup on the request path")

    @property
    def spill_dir(self) -> Path:
        """Where event spill files live: one per process, replayed by the next process to start."""
        return self.events_spill_dir if self.events_spill_dir is not None else self.data_dir / "spill"

    def to_environment(self) -> dict[str, str]:
        """These settings as ABROUTER_* variables, so worker processes started by uvicorn read the same."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
            env[f"ABROUTER_{name.upper()}"] = text
        return env
