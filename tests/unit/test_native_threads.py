"""`abrouter serve` gives each native thread pool one thread unless the user chose a size."""

from __future__ import annotations

import os

import pytest

from router.cli import NATIVE_THREAD_VARIABLES, one_native_thread_each


def test_unset_native_thread_pools_get_one_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NATIVE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    one_native_thread_each()
    assert {name: os.environ[name] for name in NATIVE_THREAD_VARIABLES} == dict.fromkeys(NATIVE_THREAD_VARIABLES, "1")


def test_a_thread_count_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    one_native_thread_each()
    assert os.environ["OMP_NUM_THREADS"] == "4"
