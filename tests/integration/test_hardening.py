"""What tenant code can reach on a node run as root, probed from handler code.

Each test starts a real node and asks a handler to try something an attacker with one
deployment would: read the node's environment or command line, fork without bound,
fill the disk, serve its own socket, reach the network when it has none. Every limit
has its twin (limit raised -> the same workload passes).
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SENTINEL = "edgerun-node-secret-7f3a9c"

PROBE = r"""
import errno, os, socket
from edgerun import Response

def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None

async def fetch(request, env, ctx):
    path = request.path
    if path == "/proc":
        needle = request.query["needle"].encode()
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        leaks = []
        for pid in pids + ["self"]:
            for name in ("environ", "cmdline"):
                data = _read(f"/proc/{pid}/{name}")
                if data is not None and needle in data:
                    leaks.append(f"{pid}/{name}")
        status = _read("/proc/self/status").decode()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        return Response.json({
            "leaks": leaks,
            "pids": len(pids),
            "no_new_privs": fields["NoNewPrivs"].strip(),
            "seccomp": fields["Seccomp"].strip(),
            "environ": sorted(os.environ),
        })
    if path == "/forkbomb":
        r, w = os.pipe()
        children = []
        error = None
        for _ in range(int(request.query["n"])):
            try:
                pid = os.fork()
            except OSError as exc:
                error = errno.errorcode[exc.errno]
                break
            if pid == 0:
                os.close(w)
                os.read(r, 1)
                os._exit(0)
            children.append(pid)
        os.close(w)
        os.close(r)
        for pid in children:
            os.waitpid(pid, 0)
        return Response.json({"forked": len(children), "error": error})
    if path == "/write":
        target = request.query["dir"] + "/blob"
        try:
            with open(target, "wb") as fh:
                for _ in range(int(request.query["mb"])):
                    fh.write(b"x" * (1024 * 1024))
            return Response.json({"wrote": os.path.getsize(target)})
        except OSError as exc:
            return Response.json({"error": errno.errorcode[exc.errno]})
        finally:
            if os.path.exists(target):
                os.unlink(target)
    if path == "/tmpfile":
        with open("/tmp/left-by-tenant", "w") as fh:
            fh.write("x")
        return Response.json({"tmp": sorted(os.listdir("/tmp"))})
    if path == "/listen":
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            s.listen()
            return Response.json({"listening": s.getsockname()[1]})
        except OSError as exc:
            return Response.json({"error": errno.errorcode[exc.errno]})
        finally:
            s.close()
    if path == "/connect":
        try:
            socket.create_connection(("127.0.0.1", int(request.query["port"])), timeout=5).close()
            return Response.json({"connected": True})
        except OSError as exc:
            return Response.json({"error": errno.errorcode.get(exc.errno, str(exc))})
    if path == "/kvfill":
        stored = 0
        try:
            for i in range(int(request.query["n"])):
                await env.KV.put(f"k{i}", "x" * 65536)
                stored += 1
        except Exception as exc:
            first = await env.KV.get("k0")
            return Response.json({"stored": stored, "error": str(exc), "first": len(first or "")})
        return Response.json({"stored": stored, "error": None})
    return Response("ok")
"""


def _project(root: Path, name: str, toml: str = "") -> Path:
    p = root / name
    p.mkdir(parents=True)
    (p / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\n{textwrap.dedent(toml)}')
    (p / "app.py").write_text(PROBE)
    return p


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run the suite as root to test tenant confinement")
        pytest.skip("confinement needs a node run as root")


def test_no_node_variable_or_command_line_is_visible_from_handler_code(tmp_path, edgerun_node):
    # The sentinel is in the node's environment and, through the project directory's
    # name, in its command line.
    project = _project(tmp_path, f"p-{SENTINEL}")
    node = edgerun_node(
        project, command="node", env={"EDGERUN_TOKEN": SENTINEL, "AWS_SECRET_ACCESS_KEY": SENTINEL}
    )
    info = node.client.get("/proc", params={"needle": SENTINEL}).json()
    assert info["leaks"] == []
    # hidepid: the handler sees its own deployment's processes only (zygote, worker).
    assert 1 <= info["pids"] <= 8
    assert info["no_new_privs"] == "1" and info["seccomp"] == "2"
    assert "EDGERUN_TOKEN" not in info["environ"]
    assert set(info["environ"]) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH"}
    # The twin: the same probe does find a needle that is really there (its own path).
    mine = node.client.get("/proc", params={"needle": "PATH="}).json()
    assert "self/environ" in mine["leaks"]


def test_a_fork_bomb_stops_at_max_processes(tmp_path, edgerun_node):
    node = edgerun_node(_project(tmp_path, "bomb", "[limits]\ncpu_ms = 5000\n"), command="node")
    r = node.client.get("/forkbomb", params={"n": "500"}).json()
    assert r["error"] == "EAGAIN"
    # 32 for the code, plus room for the zygote and up to 4 workers.
    assert 1 <= r["forked"] <= 32 + 4 + 1
    assert node.client.get("/").text == "ok"


def test_a_raised_max_processes_lets_the_same_forks_through(tmp_path, edgerun_node):
    node = edgerun_node(
        _project(tmp_path, "bomb-twin", "[limits]\nmax_processes = 200\ncpu_ms = 5000\n"),
        command="node",
    )
    r = node.client.get("/forkbomb", params={"n": "100"}).json()
    assert r == {"forked": 100, "error": None}


@pytest.mark.parametrize("where", ["state", "tmp"])
def test_max_disk_mb_bounds_a_file_in_the_state_dir_and_the_private_tmp(
    tmp_path, edgerun_node, where
):
    node = edgerun_node(
        _project(tmp_path, f"disk-{where}", "[limits]\nmax_disk_mb = 4\n"), command="node"
    )
    target = "." if where == "state" else "/tmp"  # a worker's cwd is its state dir
    r = node.client.get("/write", params={"dir": target, "mb": "6"}).json()
    # A file past RLIMIT_FSIZE is EFBIG; the tmpfs fills up first with ENOSPC.
    assert r["error"] in {"EFBIG", "ENOSPC"}
    assert node.client.get("/write", params={"dir": target, "mb": "2"}).json() == {
        "wrote": 2 * 1024 * 1024
    }


def test_a_raised_max_disk_mb_lets_the_same_file_through(tmp_path, edgerun_node):
    node = edgerun_node(
        _project(tmp_path, "disk-twin", "[limits]\nmax_disk_mb = 16\n"), command="node"
    )
    for target in (".", "/tmp"):
        r = node.client.get("/write", params={"dir": target, "mb": "6"}).json()
        assert r == {"wrote": 6 * 1024 * 1024}, target


def test_tmp_is_private_to_the_deployment(tmp_path, edgerun_node):
    a = _project(tmp_path, "tmp-a", 'routes = ["a.test/*"]\n')
    b = _project(tmp_path, "tmp-b", 'routes = ["b.test/*"]\n')
    node = edgerun_node([a, b], command="node")
    assert "left-by-tenant" in node.client.get("/tmpfile", headers={"host": "a.test"}).json()["tmp"]
    assert not Path("/tmp/left-by-tenant").exists()
    b_tmp = node.client.get("/listen", headers={"host": "b.test"})  # B is up
    assert b_tmp.status_code == 200
    r = node.client.get("/write", params={"dir": "/tmp", "mb": "1"}, headers={"host": "b.test"})
    assert r.json() == {"wrote": 1024 * 1024}


def test_handler_code_cannot_serve_a_socket(tmp_path, edgerun_node):
    node = edgerun_node(_project(tmp_path, "listener"), command="node")
    assert node.client.get("/listen").json() == {"error": "EPERM"}


@pytest.mark.parametrize(
    ("name", "toml", "expected"),
    [
        ("net-default", "", {"error": "EHOSTUNREACH"}),  # the default: public only
        ("net-public", '[network]\noutbound = "public"\n', {"error": "EHOSTUNREACH"}),
        ("net-none", '[network]\noutbound = "none"\n', {"error": "ENETUNREACH"}),
        ("net-all", '[network]\noutbound = "all"\n', {"connected": True}),  # the twin
    ],
)
def test_outbound_rules_from_handler_code(tmp_path, edgerun_node, name, toml, expected):
    # Loopback stands for the node's own ports and every private range: a connect
    # to it is refused before any packet leaves (nothing here sends off the machine).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        node = edgerun_node(_project(tmp_path, name, toml), command="node")
        r = node.client.get("/connect", params={"port": str(port)}).json()
        assert r == expected
        # The node itself still serves the same loopback connection it always did.
        assert node.client.get("/").text == "ok"


KV = '[[kv]]\nbinding = "KV"\n'


def test_a_full_kv_file_fails_the_write_clearly_and_keeps_what_it_had(tmp_path, edgerun_node):
    toml = f"{KV}[limits]\nmax_disk_mb = 1\ncpu_ms = 5000\n"
    node = edgerun_node(_project(tmp_path, "kvfull", toml), command="node")
    r = node.client.get("/kvfill", params={"n": "64"}).json()  # 4 MiB into a 1 MiB bound
    assert 1 <= r["stored"] < 64
    assert "max_disk_mb" in r["error"] and "full" in r["error"]
    assert r["first"] == 65536


def test_a_raised_max_disk_mb_stores_the_same_values(tmp_path, edgerun_node):
    toml = f"{KV}[limits]\nmax_disk_mb = 64\ncpu_ms = 5000\n"
    node = edgerun_node(_project(tmp_path, "kvroom", toml), command="node")
    assert node.client.get("/kvfill", params={"n": "64"}).json() == {"stored": 64, "error": None}
