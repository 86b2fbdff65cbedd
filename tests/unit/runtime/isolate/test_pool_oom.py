"""A worker's death is blamed on the OOM killer only when its count moved on."""

from __future__ import annotations

from edgerun.runtime.isolate.pool import Pool, PoolSettings, cgroup_limit_bytes
from edgerun.runtime.isolate.protocol import Spec


class FakeCgroup:
    def __init__(self) -> None:
        self.kills = 0

    def oom_kills(self) -> int:
        return self.kills


def pool() -> Pool:
    spec = Spec("d", "/nonexistent", "app.py", "/tmp", {}, {}, {}, [], 50, 1000, 128, 16)
    return Pool(spec, PoolSettings(), ["true"])


def test_each_oom_kill_is_blamed_on_one_death():
    p = pool()
    cgroup = FakeCgroup()
    p.cgroup = cgroup  # type: ignore[assignment]
    assert not p.oom_struck()  # a plain crash
    cgroup.kills = 1
    assert p.oom_struck()  # the OOM killer's victim
    assert not p.oom_struck()  # the next crash is a crash again
    cgroup.kills = 3
    assert p.oom_struck()


def test_no_cgroup_no_oom():
    assert not pool().oom_struck()


def test_the_limit_covers_every_worker_with_room_for_copied_pages():
    mib = 1024 * 1024
    assert cgroup_limit_bytes(128, 1) == 160 * mib
    assert cgroup_limit_bytes(512, 4) == 4 * 640 * mib
