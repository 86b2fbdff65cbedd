"""Env, Outcome, RuntimeLimits and the in-process limit enforcer."""

from __future__ import annotations

import asyncio
import copy
import pickle

import pytest

from edgerun.clock import FakeClock
from edgerun.errors import LimitExceeded, WorkerCrashed, to_http
from edgerun.http import Secret
from edgerun.runtime import Env, InProcessLimits, Outcome, RuntimeLimits

# -- Env -------------------------------------------------------------------------------------


class FakeKV:
    def __repr__(self) -> str:
        return "FakeKV(url='redis://user:password@host')"


def make_env() -> Env:
    return Env(
        bindings={"KV": FakeKV()},
        vars={"API_VERSION": "2"},
        secrets={"JWT_SECRET": "hunter2"},
    )


def test_env_attribute_and_item_access():
    env = make_env()
    assert env.API_VERSION == "2"
    assert env["API_VERSION"] == "2"
    assert isinstance(env.KV, FakeKV)
    assert env.JWT_SECRET == "hunter2"
    assert isinstance(env.JWT_SECRET, Secret)


def test_env_behaves_like_a_read_only_mapping_of_names():
    env = make_env()
    assert list(env) == ["KV", "API_VERSION", "JWT_SECRET"]
    assert len(env) == 3
    assert "KV" in env
    assert "DB" not in env
    assert "KV" in dir(env)
    assert len(Env()) == 0


def test_unknown_name_lists_the_available_ones():
    env = make_env()
    with pytest.raises(AttributeError, match=r"'DB'.*available: KV, API_VERSION, JWT_SECRET"):
        _ = env.DB
    with pytest.raises(KeyError, match="available: KV"):
        _ = env["DB"]
    assert getattr(env, "DB", None) is None
    assert not hasattr(env, "__deepcopy_hook__")


def test_env_is_immutable():
    env = make_env()
    with pytest.raises(AttributeError, match="read-only"):
        env.API_VERSION = "3"
    with pytest.raises(AttributeError, match="read-only"):
        del env.KV
    with pytest.raises(TypeError):
        env._env_values["X"] = 1  # the values live in a read-only mapping proxy
    assert env.API_VERSION == "2"


def test_repr_never_shows_secrets_or_binding_internals():
    text = repr(make_env())
    assert "hunter2" not in text
    assert "password" not in text
    assert "API_VERSION='2'" in text
    assert "KV=<FakeKV>" in text
    assert "JWT_SECRET=Secret('**********')" in text


def test_a_name_may_be_declared_only_once():
    with pytest.raises(ValueError, match="'KV' is declared twice"):
        Env(bindings={"KV": 1}, vars={"KV": "x"})


def test_env_copies_and_pickles():
    env = make_env()
    assert copy.copy(env) is env
    assert copy.deepcopy(env) is env
    plain = Env(vars={"A": "1"}, secrets={"S": "s3cret"})
    restored = pickle.loads(pickle.dumps(plain))
    assert (restored.A, restored.S) == ("1", "s3cret")
    assert isinstance(restored.S, Secret)


# -- Outcome ---------------------------------------------------------------------------------


def test_outcome_values_are_the_stable_strings():
    assert [o.value for o in Outcome] == [
        "ok",
        "exception",
        "exceeded_cpu",
        "exceeded_wall",
        "exceeded_memory",
        "worker_crashed",
        "canceled",
    ]
    assert Outcome.OK == "ok"
    assert f"{Outcome.EXCEEDED_WALL}" == "exceeded_wall"


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, Outcome.OK),
        (ValueError(), Outcome.EXCEPTION),
        (LimitExceeded("cpu"), Outcome.EXCEEDED_CPU),
        (LimitExceeded("wall"), Outcome.EXCEEDED_WALL),
        (LimitExceeded("memory"), Outcome.EXCEEDED_MEMORY),
        (WorkerCrashed(), Outcome.WORKER_CRASHED),
        (asyncio.CancelledError(), Outcome.CANCELED),
    ],
)
def test_outcome_of_an_exception(exc, outcome):
    assert Outcome.of(exc) is outcome


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.EXCEEDED_CPU, 503),
        (Outcome.EXCEEDED_WALL, 503),
        (Outcome.EXCEEDED_MEMORY, 503),
        (Outcome.WORKER_CRASHED, 502),
    ],
)
def test_outcome_error_maps_to_http_with_its_own_code(outcome, status):
    got_status, body = to_http(outcome.error())
    assert got_status == status
    assert body["error"]["code"] == outcome.value
    assert Outcome.of(outcome.error()) is outcome


@pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.EXCEPTION, Outcome.CANCELED])
def test_outcomes_without_an_error_of_their_own(outcome):
    with pytest.raises(ValueError, match="no error of its own"):
        outcome.error()


# -- limits ----------------------------------------------------------------------------------


def test_runtime_limits_defaults_and_validation():
    assert RuntimeLimits() == RuntimeLimits(cpu_ms=50, wall_ms=30_000, memory_mb=128)
    assert RuntimeLimits(wall_ms=1500).wall_s == 1.5
    for bad in (0, -1, 1.5, True, "50"):
        with pytest.raises(ValueError, match=r"limits\.cpu_ms must be a positive integer"):
            RuntimeLimits(cpu_ms=bad)  # type: ignore[arg-type]


async def test_in_process_limits_measure_on_the_injected_clock():
    clock = FakeClock()
    enforcer = InProcessLimits(RuntimeLimits(wall_ms=1000), clock=clock)
    usage = enforcer.begin()
    clock.advance(0.25)
    assert enforcer.remaining(usage) == pytest.approx(0.75)

    async def work() -> str:
        clock.advance(0.25)
        return "done"

    assert await enforcer.run(usage, work()) == "done"
    assert usage.wall_ms == pytest.approx(500)
    assert usage.cpu_ms >= 0
    clock.advance(10)
    assert enforcer.remaining(usage) == 0.0


async def test_in_process_limits_cancel_past_the_wall_budget():
    clock = FakeClock()
    enforcer = InProcessLimits(RuntimeLimits(wall_ms=1000), clock=clock)
    usage = enforcer.begin()
    clock.advance(1)  # the whole budget is already spent
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LimitExceeded) as info:
        await enforcer.run(usage, work())
    assert info.value.code == "exceeded_wall"
    assert cancelled.is_set()


async def test_in_process_limits_inverted_twin_budget_left():
    clock = FakeClock()
    enforcer = InProcessLimits(RuntimeLimits(wall_ms=1000), clock=clock)
    usage = enforcer.begin()
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "finished"

    asyncio.get_running_loop().call_soon(gate.set)
    assert await enforcer.run(usage, work()) == "finished"
