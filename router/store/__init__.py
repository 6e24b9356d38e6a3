"""Everything abrouter keeps in Redis: keys, experiment configs and the embedded server.

Only modules in this package import redis; they translate its errors into `StoreUnavailable`.
"""

from __future__ import annotations

from router.store.configs import ConfigStore, StoredExperiment
from router.store.embedded import RedisServer, find_redis_executable
from router.store.keys import Keys

__all__ = ["ConfigStore", "Keys", "RedisServer", "StoredExperiment", "find_redis_executable"]
