"""Fixtures shared by every test layer; each kind lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.redis_cluster",
    "tests.fixtures.models",
    "tests.fixtures.servers",
]
