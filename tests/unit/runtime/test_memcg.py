"""Per-worker memory cgroups: a fake cgroup tree for v1 and v2, and the real host.

The fake tree stands in for the kernel where it matters: ``mkdir`` fills a new cgroup
with its control files (on v2, ``memory.*`` only if the parent enabled the memory
controller for its children), ``rmdir`` refuses a cgroup with processes or children,
and enabling a controller in a non-root v2 cgroup that holds processes fails with
EBUSY ("no internal processes").
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerun.runtime.isolate import memcg
from edgerun.runtime.isolate.memcg import MemoryCgroups, WorkerCgroup

MiB = 1 << 20
PAGE = resource.getpagesize()
UNLIMITED = "9223372036854771712\n"

V1_FILES = {
    "cgroup.procs": "",
    "memory.limit_in_bytes": UNLIMITED,
    "memory.memsw.limit_in_bytes": UNLIMITED,
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.failcnt": "0\n",
    "memory.memsw.failcnt": "0\n",
    "memory.max_usage_in_bytes": "0\n",
}
V2_BASE_FILES = {"cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": ""}
V2_MEMORY_FILES = {
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
}


class FakeKernel:
    """Kernel behaviour for a fake cgroup tree under ``root`` (see the module docstring).

    ``omit`` names control files new cgroups do not get, ``fail_writes`` maps a control
    file name to the errno its writes fail with, ``deny_mkdir`` makes every mkdir fail
    with EACCES (what a non-root node gets).
    """

    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version
        self.omit: set[str] = set()
        self.fail_writes: dict[str, int] = {}
        self.deny_mkdir = False

    def files_for(self, path: Path) -> dict[str, str]:
        if self.version == 1:
            return dict(V1_FILES)
        files = dict(V2_BASE_FILES)
        parent_enabled = (path.parent / "cgroup.subtree_control").read_text().split()
        if "memory" in parent_enabled:
            files.update(V2_MEMORY_FILES)
            files["cgroup.controllers"] = "memory\n"
        return files

    def mkdir(self, path: Path) -> None:
        if self.deny_mkdir:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        os.mkdir(path)
        for name, text in self.files_for(path).items():
            if name not in self.omit:
                (path / name).write_text(text)

    def rmdir(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        procs = path / "cgroup.procs"
        if (procs.exists() and procs.read_text().split()) or any(
            p.is_dir() for p in path.iterdir()
        ):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        for p in path.iterdir():
            p.unlink()
        os.rmdir(path)

    def write(self, path: Path, value: str) -> None:
        if path.name in self.fail_writes:
            code = self.fail_writes[path.name]
            raise OSError(code, os.strerror(code), str(path))
        if path.name == "cgroup.subtree_control":
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
            is_root = path.parent == self.root
            if not is_root and (path.parent / "cgroup.procs").read_text().split():
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
            enabled = set(path.read_text().split())
            enabled.add(value.lstrip("+"))
            path.write_text(" ".join(sorted(enabled)) + "\n")
            return
        real_write(path, value)


real_write = memcg._write


def install(monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel) -> FakeKernel:
    monkeypatch.setattr(memcg, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(memcg, "_rmdir", kernel.rmdir)
    monkeypatch.setattr(memcg, "_write", kernel.write)
    return kernel


def make_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    """A cgroup v1 host: the memory hierarchy mounted at ``<root>/memory``."""
    root = tmp_path / "cgroup"
    mount = root / "memory"
    mount.mkdir(parents=True)
    for name, text in V1_FILES.items():
        (mount / name).write_text(text)
    (mount / "cgroup.procs").write_text("1\n4242\n")
    # A hybrid host also mounts an (empty) unified hierarchy; it must not confuse us.
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("")
    return install(monkeypatch, FakeKernel(root, 1))


@pytest.fixture
def v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    """A cgroup v1 host."""
    return make_v1(tmp_path, monkeypatch)


def make_v2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    own: str = "/system.slice/node.service",
    top_controllers: str = "cpu io memory pids\n",
    own_controllers: str = "memory pids\n",
    own_procs: str = "",
) -> FakeKernel:
    """A cgroup v2 host with the node in cgroup ``own``."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text(top_controllers)
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    (root / "cgroup.procs").write_text("1\n")
    own_dir = root / own.lstrip("/")
    for d in [own_dir, *own_dir.parents]:
        if d == root:
            break
        d.mkdir(parents=True, exist_ok=True)
        for name, text in V2_BASE_FILES.items():
            (d / name).write_text(text)
        (d / "cgroup.controllers").write_text(own_controllers)
        (d / "cgroup.subtree_control").write_text(own_controllers)
    if own_dir != root:
        (own_dir / "cgroup.subtree_control").write_text("")
        (own_dir / "cgroup.procs").write_text(own_procs)
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text(f"0::{own}\n")
    monkeypatch.setattr(memcg, "_PROC_SELF_CGROUP", str(proc_self))
    return install(monkeypatch, FakeKernel(root, 2))


@pytest.fixture
def v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    """A cgroup v2 host; the node's cgroup is delegated and holds no processes yet."""
    return make_v2(tmp_path, monkeypatch)


def detect(kernel: FakeKernel) -> MemoryCgroups:
    mgr = MemoryCgroups.detect(str(kernel.root))
    assert mgr is not None
    return mgr


# -- detect -------------------------------------------------------------------------


def test_detect_v1(v1: FakeKernel) -> None:
    mgr = detect(v1)
    assert mgr.version == 1
    assert mgr.path == v1.root / "memory" / f"edgerun-{os.getpid()}"
    assert mgr.path.is_dir()
    mgr.close()
    assert not mgr.path.exists()


def test_detect_v1_reuses_a_leftover_parent(v1: FakeKernel) -> None:
    v1.mkdir(v1.root / "memory" / f"edgerun-{os.getpid()}")
    mgr = detect(v1)
    assert mgr.version == 1
    mgr.close()
    assert not mgr.path.exists()


def test_detect_v2(v2: FakeKernel) -> None:
    mgr = detect(v2)
    own = v2.root / "system.slice" / "node.service"
    assert mgr.version == 2
    assert mgr.path == own / "edgerun"
    # Memory enabled for the node cgroup's children (our parent) and for the workers.
    assert "memory" in (own / "cgroup.subtree_control").read_text().split()
    assert "memory" in (mgr.path / "cgroup.subtree_control").read_text().split()
    mgr.close()
    assert not mgr.path.exists()


def test_detect_v2_node_in_root_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The root cgroup is exempt from the "no internal processes" rule.
    kernel = make_v2(tmp_path, monkeypatch, own="/")
    mgr = detect(kernel)
    assert mgr.version == 2
    assert mgr.path == kernel.root / "edgerun"


def test_detect_v2_refused_when_node_cgroup_has_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = make_v2(tmp_path, monkeypatch, own_procs=f"{os.getpid()}\n")
    with caplog.at_level(logging.DEBUG, logger="edgerun.isolate"):
        assert MemoryCgroups.detect(str(kernel.root)) is None
    assert "cannot enable the memory controller" in caplog.text
    assert not (kernel.root / "system.slice" / "node.service" / "edgerun").exists()


def test_detect_v2_memory_not_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = make_v2(tmp_path, monkeypatch, own_controllers="pids\n")
    assert MemoryCgroups.detect(str(kernel.root)) is None
    assert not (kernel.root / "system.slice" / "node.service" / "edgerun").exists()


def test_detect_v2_without_memory_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = make_v2(tmp_path, monkeypatch, top_controllers="cpu io pids\n")
    assert MemoryCgroups.detect(str(kernel.root)) is None


def test_detect_v2_without_own_cgroup_line(v2: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    proc_self = v2.root.parent / "proc-self-cgroup-v1-only"
    proc_self.write_text("4:memory:/x\n")
    monkeypatch.setattr(memcg, "_PROC_SELF_CGROUP", str(proc_self))
    assert MemoryCgroups.detect(str(v2.root)) is None


def test_detect_missing_tree(tmp_path: Path) -> None:
    assert MemoryCgroups.detect(str(tmp_path / "nowhere")) is None
    assert MemoryCgroups.detect(str(tmp_path)) is None  # exists, but no cgroups in it


def test_detect_unwritable_v1(v1: FakeKernel) -> None:
    v1.deny_mkdir = True
    assert MemoryCgroups.detect(str(v1.root)) is None


def test_detect_unwritable_v2(v2: FakeKernel) -> None:
    v2.fail_writes["cgroup.subtree_control"] = errno.EACCES
    assert MemoryCgroups.detect(str(v2.root)) is None
    v2.fail_writes.clear()
    v2.deny_mkdir = True
    assert MemoryCgroups.detect(str(v2.root)) is None


def test_detect_stray_memory_directory(tmp_path: Path) -> None:
    # A plain directory named "memory" (no cgroup filesystem): what the node made in it
    # has no control files, so it is removed again.
    (tmp_path / "memory").mkdir()
    assert MemoryCgroups.detect(str(tmp_path)) is None
    assert list((tmp_path / "memory").iterdir()) == []


def test_detect_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a non-root node meets (root ignores directory modes, so the refusal is
    # made here rather than with chmod).
    (tmp_path / "memory").mkdir()

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(memcg, "_mkdir", refuse)
    assert MemoryCgroups.detect(str(tmp_path)) is None


def test_detect_removes_what_dead_nodes_left(v1: FakeKernel) -> None:
    mount = v1.root / "memory"
    dead = 2**22 + 12345  # above any pid_max default: no such process
    stale = mount / f"edgerun-{dead}"
    v1.mkdir(stale)
    v1.mkdir(stale / "app-1")
    alive = mount / "edgerun-1"  # pid 1 is always there
    v1.mkdir(alive)
    detect(v1).close()
    assert not stale.exists()
    assert alive.exists()


def test_detect_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory").mkdir()

    def boom(path: Path) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(memcg, "_mkdir", boom)
    assert MemoryCgroups.detect(str(tmp_path)) is None


# -- limit --------------------------------------------------------------------------


def test_limit_v1(v1: FakeKernel) -> None:
    mgr = detect(v1)
    cg = mgr.limit("api", 1234, 50 * MiB)
    assert isinstance(cg, WorkerCgroup)
    assert cg.path == mgr.path / "api-1234"
    assert cg.pid == 1234
    assert (cg.path / "memory.limit_in_bytes").read_text() == str(50 * MiB)
    assert (cg.path / "memory.memsw.limit_in_bytes").read_text() == str(50 * MiB)
    assert (cg.path / "cgroup.procs").read_text() == "1234"


def test_limit_v1_without_swap_accounting(v1: FakeKernel) -> None:
    v1.omit.add("memory.memsw.limit_in_bytes")
    cg = detect(v1).limit("api", 1234, 50 * MiB)
    assert cg is not None
    assert (cg.path / "memory.limit_in_bytes").read_text() == str(50 * MiB)
    assert not (cg.path / "memory.memsw.limit_in_bytes").exists()


def test_limit_v1_swap_limit_refused_is_not_fatal(v1: FakeKernel) -> None:
    v1.fail_writes["memory.memsw.limit_in_bytes"] = errno.EINVAL
    cg = detect(v1).limit("api", 1234, 50 * MiB)
    assert cg is not None
    assert (cg.path / "cgroup.procs").read_text() == "1234"


def test_limit_v2(v2: FakeKernel) -> None:
    mgr = detect(v2)
    cg = mgr.limit("api", 1234, 50 * MiB)
    assert cg is not None
    assert cg.path == mgr.path / "api-1234"
    assert (cg.path / "memory.max").read_text() == str(50 * MiB)
    assert (cg.path / "memory.swap.max").read_text() == "0"
    assert (cg.path / "cgroup.procs").read_text() == "1234"


def test_limit_v2_without_swap(v2: FakeKernel) -> None:
    v2.omit.add("memory.swap.max")
    cg = detect(v2).limit("api", 1234, 50 * MiB)
    assert cg is not None
    assert (cg.path / "memory.max").read_text() == str(50 * MiB)
    assert not (cg.path / "memory.swap.max").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-app_1.2", "my-app_1.2"),
        ("../../etc", ".._.._etc"),
        ("a b/c\nd", "a_b_c_d"),
        ("café", "caf_"),
        ("x" * 100, "x" * 64),
        ("", "worker"),
    ],
)
def test_limit_sanitises_name(v1: FakeKernel, name: str, expected: str) -> None:
    mgr = detect(v1)
    cg = mgr.limit(name, 77, 10 * MiB)
    assert cg is not None
    assert cg.path == mgr.path / f"{expected}-77"
    assert cg.path.parent == mgr.path


def test_limit_replaces_a_stale_cgroup(v1: FakeKernel) -> None:
    mgr = detect(v1)
    v1.mkdir(mgr.path / "api-1234")
    cg = mgr.limit("api", 1234, 10 * MiB)
    assert cg is not None
    assert (cg.path / "cgroup.procs").read_text() == "1234"


@pytest.mark.parametrize("version", [1, 2])
def test_limit_failure_cleans_up_and_warns_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    version: int,
) -> None:
    make = make_v1 if version == 1 else make_v2
    kernel = make(tmp_path, monkeypatch)
    mgr = detect(kernel)
    kernel.fail_writes["cgroup.procs"] = errno.ESRCH  # the worker is already gone
    with caplog.at_level(logging.DEBUG, logger="edgerun.isolate"):
        assert mgr.limit("api", 1, 10 * MiB) is None
        assert mgr.limit("api", 2, 10 * MiB) is None
    assert not [p for p in mgr.path.iterdir() if p.is_dir()]  # both cgroups removed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "worker 1 " in warnings[0].getMessage()
    mgr.close()
    assert not mgr.path.exists()


def test_limit_failure_missing_limit_file(v2: FakeKernel) -> None:
    mgr = detect(v2)
    v2.omit.add("memory.max")
    assert mgr.limit("api", 1234, 10 * MiB) is None
    assert not (mgr.path / "api-1234").exists()


def test_limit_failure_mkdir(v1: FakeKernel) -> None:
    mgr = detect(v1)
    v1.deny_mkdir = True
    assert mgr.limit("api", 1234, 10 * MiB) is None


def test_limit_rejects_non_positive(v1: FakeKernel) -> None:
    with pytest.raises(ValueError):
        detect(v1).limit("api", 1234, 0)


def test_close_leaves_a_busy_parent(v1: FakeKernel) -> None:
    mgr = detect(v1)
    assert mgr.limit("api", 1234, 10 * MiB) is not None
    mgr.close()  # a leftover worker cgroup: no error, parent stays
    assert mgr.path.is_dir()


# -- oom_killed ---------------------------------------------------------------------


def worker(kernel: FakeKernel, limit: int = 40 * MiB) -> WorkerCgroup:
    cg = detect(kernel).limit("api", 1234, limit)
    assert cg is not None
    return cg


@pytest.mark.parametrize(("count", "killed"), [(0, False), (1, True), (3, True)])
def test_oom_killed_v1(v1: FakeKernel, count: int, killed: bool) -> None:
    cg = worker(v1)
    (cg.path / "memory.oom_control").write_text(
        f"oom_kill_disable 0\nunder_oom 0\noom_kill {count}\n"
    )
    # The oom_kill line is authoritative even when the limit was hit.
    (cg.path / "memory.failcnt").write_text("12\n")
    (cg.path / "memory.max_usage_in_bytes").write_text(f"{40 * MiB}\n")
    assert cg.oom_killed() is killed


@pytest.mark.parametrize(
    ("failcnt", "memsw_failcnt", "peak", "killed"),
    [
        (0, 0, 40 * MiB, False),  # never failed a charge
        (5, 0, 40 * MiB, True),
        (5, 0, 40 * MiB - PAGE, True),  # within a page of the limit
        (5, 0, 20 * MiB, False),  # failed, but far below the limit
        (0, 5, 40 * MiB, True),  # memory+swap limit hit first
    ],
)
def test_oom_killed_v1_old_kernel(
    v1: FakeKernel, failcnt: int, memsw_failcnt: int, peak: int, killed: bool
) -> None:
    cg = worker(v1)
    (cg.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (cg.path / "memory.failcnt").write_text(f"{failcnt}\n")
    (cg.path / "memory.memsw.failcnt").write_text(f"{memsw_failcnt}\n")
    (cg.path / "memory.max_usage_in_bytes").write_text(f"{peak}\n")
    assert cg.oom_killed() is killed


def test_oom_killed_v1_old_kernel_uses_known_limit(v1: FakeKernel) -> None:
    cg = worker(v1)
    (cg.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (cg.path / "memory.limit_in_bytes").unlink()
    (cg.path / "memory.failcnt").write_text("5\n")
    (cg.path / "memory.max_usage_in_bytes").write_text(f"{40 * MiB}\n")
    assert cg.oom_killed() is True


@pytest.mark.parametrize(("count", "killed"), [(0, False), (2, True)])
def test_oom_killed_v2(v2: FakeKernel, count: int, killed: bool) -> None:
    cg = worker(v2)
    # "oom" counts limit hits that did not necessarily kill; only oom_kill counts.
    (cg.path / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 9\noom 4\noom_kill {count}\noom_group_kill 0\n"
    )
    assert cg.oom_killed() is killed


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("content", [None, "", "garbage\n", "oom_kill x\n", "\x00\xff"])
def test_oom_killed_never_raises(tmp_path: Path, version: int, content: str | None) -> None:
    path = tmp_path / "cg"
    path.mkdir()
    name = "memory.events" if version == 2 else "memory.oom_control"
    if content is not None:
        (path / name).write_text(content, "latin-1")
    assert WorkerCgroup(path, 1, version, 40 * MiB).oom_killed() is False
    assert WorkerCgroup(tmp_path / "gone", 1, version, 40 * MiB).oom_killed() is False


# -- remove -------------------------------------------------------------------------


def test_remove(v2: FakeKernel) -> None:
    cg = worker(v2)
    (cg.path / "cgroup.procs").write_text("")  # the worker exited
    cg.remove()
    assert not cg.path.exists()
    cg.remove()  # already gone: no error


def test_remove_waits_for_processes_to_leave(v1: FakeKernel) -> None:
    cg = worker(v1)
    timer = threading.Timer(0.1, (cg.path / "cgroup.procs").write_text, [""])
    timer.start()
    try:
        cg.remove()
    finally:
        timer.join()
    assert not cg.path.exists()


def test_remove_gives_up_on_a_busy_cgroup(v1: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memcg, "_REMOVE_TIMEOUT_S", 0.1)
    cg = worker(v1)
    started = time.monotonic()
    cg.remove()  # a process is still in it: best effort, no error
    assert 0.1 <= time.monotonic() - started < 1.0
    assert cg.path.is_dir()


# -- the real host ------------------------------------------------------------------

CHILD = """
import sys
print("ready", flush=True)
mb = int(sys.stdin.readline())
data = b"x" * (mb << 20)  # every page written, so every page charged
print(len(data), flush=True)
"""


def why_no_memcg() -> str | None:
    """Why this host cannot offer per-worker memory cgroups, derived independently of
    ``memcg``; None if it should be able to."""
    base = Path("/sys/fs/cgroup")
    controllers = base / "cgroup.controllers"
    if controllers.exists():
        if "memory" not in controllers.read_text().split():
            return "cgroup v2 without the memory controller"
        own = next(
            (
                line[3:].strip()
                for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.startswith("0::")
            ),
            None,
        )
        if own is None:
            return "no cgroup v2 membership"
        own_dir = base / own.lstrip("/")
        if "memory" not in (own_dir / "cgroup.controllers").read_text().split():
            return f"memory controller not delegated to {own_dir}"
        if not os.access(own_dir, os.W_OK):
            return f"{own_dir} is not writable"
        enabled = (own_dir / "cgroup.subtree_control").read_text().split()
        # A non-root cgroup (the root has no cgroup.type) holding processes (it holds
        # this one) cannot enable controllers for children.
        if "memory" not in enabled and (own_dir / "cgroup.type").exists():
            return f"{own_dir} holds processes (no internal processes rule)"
        return None
    v1 = base / "memory"
    if not v1.is_dir():
        return "no memory controller mounted"
    if not os.access(v1, os.W_OK):
        return f"{v1} is not writable"
    return None


class RealCleanup:
    """Kills the children and removes the cgroups a real test made, even on failure."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.cgroups: list[WorkerCgroup] = []
        self.managers: list[MemoryCgroups] = []

    def spawn(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
        for cg in self.cgroups:
            cg.remove()
            if cg.path.exists():
                os.rmdir(cg.path)
        for mgr in self.managers:
            mgr.close()
            if mgr.path.exists():
                os.rmdir(mgr.path)


@pytest.fixture
def real() -> Iterator[RealCleanup]:
    cleanup = RealCleanup()
    try:
        yield cleanup
    finally:
        cleanup.close()


def real_manager(cleanup: RealCleanup) -> MemoryCgroups | None:
    """The host's memory cgroups; None (after checking that is right) on a host
    without them."""
    mgr = MemoryCgroups.detect()
    if mgr is not None:
        cleanup.managers.append(mgr)
        return mgr
    # A host may lack cgroups, but then detect() must have said so for a real reason.
    assert why_no_memcg() is not None, "the host offers memory cgroups, yet detect() found none"
    return None


def run_child(
    real: RealCleanup, mgr: MemoryCgroups, limit_mb: int, touch_mb: int
) -> tuple[int, bool]:
    proc = real.spawn()
    cg = mgr.limit("memcg-test", proc.pid, limit_mb * MiB)
    assert cg is not None
    real.cgroups.append(cg)
    assert (cg.path / "cgroup.procs").read_text().split() == [str(proc.pid)]
    assert proc.stdin is not None
    proc.stdin.write(f"{touch_mb}\n")
    proc.stdin.flush()
    returncode = proc.wait(timeout=60)
    killed = cg.oom_killed()
    started = time.monotonic()
    cg.remove()
    assert not cg.path.exists(), f"not removed after {time.monotonic() - started:.3f}s"
    return returncode, killed


def test_real_cgroup_kills_a_worker_over_its_limit(real: RealCleanup) -> None:
    mgr = real_manager(real)
    if mgr is None:
        return  # a host without memory cgroups, and detect() said so: checked above
    assert mgr.path.is_dir()
    returncode, killed = run_child(real, mgr, limit_mb=40, touch_mb=120)
    assert returncode == -signal.SIGKILL
    assert killed is True
    mgr.close()
    assert not mgr.path.exists()


def test_real_cgroup_spares_a_worker_within_its_limit(real: RealCleanup) -> None:
    mgr = real_manager(real)
    if mgr is None:
        return  # a host without memory cgroups, and detect() said so: checked above
    returncode, killed = run_child(real, mgr, limit_mb=40, touch_mb=8)
    assert returncode == 0
    assert killed is False
    mgr.close()
    assert not mgr.path.exists()
