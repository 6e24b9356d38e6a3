"""Every Redis key abrouter uses, on one screen.

Each per-experiment key carries the experiment name in a hash tag (``{name}``), so all of an
experiment's keys live in one Redis Cluster slot and a Lua script or MULTI can touch them
together. Keys shared by all experiments get their own slot; nothing writes them in the same
script as a per-experiment key. With the default prefix ``abr:``:

=============================  ===========  ====================================================
key                            type         holds
=============================  ===========  ====================================================
``abr:{NAME}:config``          hash         the version in force: ``config`` (JSON), ``version``,
                                            ``updated_at``, ``updated_by``, ``archived`` (0/1),
                                            ``change``
``abr:{NAME}:history``         list         one JSON entry per version, oldest first
``abr:experiments``            set          every experiment name ever created (archived too)
``abr:config-changes``         pub/sub      ``{"name", "version", "archived"}`` after each change
``abr:{NAME}:events``          stream       exposures and outcomes as written, trimmed to about
                                            ``ABROUTER_EVENTS_STREAM_MAXLEN`` entries
``abr:{NAME}:exposed``         hash         unit id -> variant of its first exposure; also the
                                            sticky record and the attribution of outcomes
``abr:{NAME}:stats``           hash         sufficient statistics, one field per variant and
                                            figure (``VARIANT:units``, ``VARIANT:units:vVERSION``
                                            (first exposed under that config version),
                                            ``VARIANT:requests``,
                                            ``VARIANT:errors``, ``VARIANT:latency:BUCKET``,
                                            ``VARIANT:metric:METRIC:sum|sum_squares|outcomes``,
                                            ``*:unattributed:METRIC``, ``*:overflow:METRIC``); see
                                            ``store/stats.py``
``abr:{NAME}:values``          hash         ``METRIC:UNIT`` -> the unit's total so far (binomial: 1)
``abr:{NAME}:pending``         hash         unit id -> its outcomes written before its exposure (JSON:
                                            metric -> [kind, total, count]), claimed by the unit's
                                            first exposure; holds at most
                                            ``ABROUTER_EVENTS_PENDING_MAX_UNITS`` units
``abr:{NAME}:pending-since``   sorted set   the units of ``pending`` by when they were parked, so
                                            the oldest are given up first when it is full
``abr:{NAME}:writers``         hash         event writer id -> last event sequence applied, so a
                                            retried or replayed batch is applied once
``abr:{NAME}:srm``             hash         the sequential SRM test's running minimum across report
                                            looks: ``weights`` (the shares it is for), ``p_value``,
                                            ``looks``, ``since_version``, ``updated_at_ms``; see
                                            ``store/srm.py``
=============================  ===========  ====================================================
"""

from __future__ import annotations

from typing import Final

DEFAULT_PREFIX: Final = "abr:"


class Keys:
    """Builds every key from one prefix (`ABROUTER_REDIS_PREFIX`), so several gateways can share a Redis."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        # A brace in the prefix would become the hash tag and put every experiment in one slot.
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a Redis key prefix cannot contain '{{' or '}}', got {prefix!r}")
        self.prefix = prefix

    def _experiment(self, name: str, suffix: str) -> str:
        return f"{self.prefix}{{{name}}}:{suffix}"

    def config(self, name: str) -> str:
        """The hash holding the version of `name` in force."""
        return self._experiment(name, "config")

    def history(self, name: str) -> str:
        """The list of every version of `name`, oldest first."""
        return self._experiment(name, "history")

    def index(self) -> str:
        """The set of experiment names, so listing needs no SCAN."""
        return f"{self.prefix}experiments"

    def events(self, name: str) -> str:
        """The stream of exposure and outcome events of `name`, for audits and re-analysis."""
        return self._experiment(name, "events")

    def exposed(self, name: str) -> str:
        """The hash of each exposed unit's first variant: attribution and sticky assignment read it."""
        return self._experiment(name, "exposed")

    def stats(self, name: str) -> str:
        """The hash of per-variant sufficient statistics a report reads in one command."""
        return self._experiment(name, "stats")

    def values(self, name: str) -> str:
        """The hash of per-unit metric totals, kept so a unit's change updates the sums of squares."""
        return self._experiment(name, "values")

    def pending(self, name: str) -> str:
        """The hash of outcomes waiting for their unit's exposure, which may come from another process."""
        return self._experiment(name, "pending")

    def pending_since(self, name: str) -> str:
        """The sorted set of parked units by time parked: the oldest go first when `pending` is full."""
        return self._experiment(name, "pending-since")

    def writers(self, name: str) -> str:
        """The hash of the last event sequence applied per writer: what makes retries idempotent."""
        return self._experiment(name, "writers")

    def srm(self, name: str) -> str:
        """The hash keeping the sequential SRM p-value's running minimum, so it holds across report looks."""
        return self._experiment(name, "srm")

    def rollout(self, name: str) -> str:
        """The hash of the progressive rollout's state: where it is and when it decides next."""
        return self._experiment(name, "rollout")

    def rollout_decisions(self, name: str) -> str:
        """The list of the rollout's decisions with their inputs, newest first."""
        return self._experiment(name, "rollout-decisions")

    def rollout_lease(self, name: str) -> str:
        """The key naming the one gateway process that runs the rollout's controller, with a time to live."""
        return self._experiment(name, "rollout-lease")

    def config_channel(self) -> str:
        """The pub/sub channel that tells every replica a config changed."""
        return f"{self.prefix}config-changes"

    def __repr__(self) -> str:
        return f"Keys(prefix={self.prefix!r})"
