"""Failure behaviour with real processes: NATS killed and restarted, a node killed.

Two edgerun nodes share one nats-server. While a light steady load runs (pings that
need no KV, and KV writes), the server is killed with SIGKILL and restarted on the
same port and store: the nodes reconnect by themselves, pings never fail, KV calls
during the outage answer 503 ``kv_unavailable`` at once (or a stale value where the
binding says ``stale_if_error``), and every write acknowledged before the kill is
still there afterwards. Then one node is killed with SIGKILL; the other keeps serving.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from edgerun.testing.nats import require_nats_server, restart_nats_server, start_nats_server

pytestmark = pytest.mark.integration

# One worker, so the stale-if-error cache a read fills is the one the next read sees.
STALE_KV = '[[kv]]\nbinding = "KV"\nstale_if_error = true\n[scaling]\nmax_workers = 1\n'


@dataclass
class Load:
    """Sequential pings and KV writes against one node, from a background thread."""

    url: str
    acked: dict[str, str] = field(default_factory=dict)
    ping_failures: list[str] = field(default_factory=list)
    pings: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    warmed: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            n = 0
            while not self.stop.is_set():
                ping = client.get("/ping")
                self.pings += 1
                if ping.status_code != 200:
                    self.ping_failures.append(f"{ping.status_code} {ping.text}")
                key, value = f"load-{n}", f"value-{n}"
                n += 1
                if client.put(f"/kv/{key}", content=value).status_code == 200:
                    self.acked[key] = value
                if len(self.acked) >= 5:
                    self.warmed.set()
                # Pacing keeps the load light on a small machine; nothing waits on it.
                self.stop.wait(0.01)


def wait_for_kv(client: httpx.Client, key: str, deadline_s: float = 20.0) -> httpx.Response:
    """Poll GET /kv/<key> until it answers 200 (NATS is back) or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        response = client.get(f"/kv/{key}")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response


def test_nats_killed_and_restarted_then_a_node_killed(tmp_path, edgerun_node, kv_project):
    require_nats_server()
    server = start_nats_server(tmp_path / "nats")
    try:
        plain = kv_project("plain")
        stale = kv_project("stale", STALE_KV)
        a = edgerun_node(plain, command="node", args=["--region", "a", "--nats", server.url])
        b = edgerun_node(stale, command="node", args=["--region", "b", "--nats", server.url])

        assert b.client.put("/kv/remembered", content="v1").status_code == 200
        assert b.client.get("/kv/remembered").json()["value"] == "v1"

        load = Load(a.url)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        assert load.warmed.wait(30), "the load never got a KV write acknowledged"

        server.kill()
        acked_before_kill = dict(load.acked)

        down = a.client.get("/kv/load-0")
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "kv_unavailable"
        assert a.client.get("/guarded/load-0").json() == {"value": None, "degraded": True}
        # stale_if_error: the last value this worker saw; a key it never saw is a 503.
        assert b.client.get("/kv/remembered").json()["value"] == "v1"
        assert b.client.get("/kv/never-read").status_code == 503
        assert a.client.get("/ping").status_code == 200

        server = restart_nats_server(server)
        back = wait_for_kv(a.client, "load-0")
        assert back.status_code == 200, back.text
        assert wait_for_kv(b.client, "remembered").json()["value"] == "v1"
        load.stop.set()
        thread.join(30)

        assert load.ping_failures == []
        assert load.pings > 0
        for key, value in acked_before_kill.items():
            assert a.client.get(f"/kv/{key}").json()["value"] == value, key
        # Writes acknowledged during and after the outage are there too.
        for key, value in load.acked.items():
            assert a.client.get(f"/kv/{key}").json()["value"] == value, key

        a.process.kill()
        a.process.wait()
        assert b.client.get("/ping").json() == {"pop": "b"}
        assert b.client.put("/kv/after", content="still here").status_code == 200
        assert b.client.get("/kv/after").json()["value"] == "still here"
    finally:
        server.stop()
