"""open_all / close_all: all-or-nothing opening, best-effort closing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgerun.bindings.base import Binding, close_all, open_all


class Fake:
    def __init__(self, name: str, log: list[str], *, fail_close: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_close = fail_close
        self.closed = False

    async def close(self) -> None:
        self.log.append(f"close {self.name}")
        self.closed = True
        if self.fail_close:
            raise RuntimeError(f"{self.name} would not close")


def opener(name: str, log: list[str], **kwargs: bool):  # type: ignore[no-untyped-def]
    async def open_() -> Fake:
        log.append(f"open {name}")
        return Fake(name, log, **kwargs)

    return open_


def test_fake_is_a_binding() -> None:
    assert isinstance(Fake("x", []), Binding)


async def test_open_all_opens_in_order_and_keeps_names() -> None:
    log: list[str] = []
    opened = await open_all({"KV": opener("kv", log), "DB": opener("db", log)})
    assert list(opened) == ["KV", "DB"]
    assert opened["DB"].name == "db"
    assert log == ["open kv", "open db"]


async def test_open_all_closes_what_it_opened_when_one_fails() -> None:
    log: list[str] = []

    async def broken() -> Fake:
        raise ConnectionError("db down")

    with pytest.raises(ConnectionError, match="db down"):
        await open_all({"A": opener("a", log), "B": opener("b", log), "C": broken})
    assert log == ["open a", "open b", "close b", "close a"]


async def test_open_all_cleans_up_on_cancellation() -> None:
    log: list[str] = []

    async def cancelled() -> Fake:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await open_all({"A": opener("a", log), "B": cancelled})
    assert log == ["open a", "close a"]


async def test_close_all_closes_everything_despite_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    bindings = {
        "A": Fake("a", log),
        "B": Fake("b", log, fail_close=True),
        "C": Fake("c", log),
    }
    with caplog.at_level(logging.ERROR, logger="edgerun.bindings"):
        await close_all(bindings)
    assert log == ["close c", "close b", "close a"]
    assert all(b.closed for b in bindings.values())
    assert "'B'" in caplog.text
    assert "b would not close" in caplog.text


async def test_close_all_of_nothing() -> None:
    await close_all({})
