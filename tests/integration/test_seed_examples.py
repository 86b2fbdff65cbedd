"""Seed items S1, S3, S4, S5: each example project served by a real node over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "seed"

pytestmark = pytest.mark.integration


def test_s1_first_request_misses_second_hits(edgerun_node):
    node = edgerun_node(EXAMPLES / "s1-kv-cache")
    first = node.client.get("/", params={"userId": "42"})
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert first.json() == {"id": "42", "name": "user-42", "plan": "free"}
    second = node.client.get("/", params={"userId": "42"})
    assert second.headers["x-cache"] == "HIT"
    assert second.json() == first.json()
    other = node.client.get("/", params={"userId": "7"})
    assert other.headers["x-cache"] == "MISS"


def test_s1_stores_with_300s_ttl(edgerun_node, tmp_path):
    import json
    import subprocess
    import sys
    import time

    node = edgerun_node(EXAMPLES / "s1-kv-cache")
    node.client.get("/", params={"userId": "9"})
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgerun",
            "kv",
            "list",
            "--binding",
            "KV",
            str(EXAMPLES / "s1-kv-cache"),
            "--state-dir",
            str(node.state_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    keys = json.loads(listed.stdout)["keys"]
    assert [k["name"] for k in keys] == ["user:9"]
    ttl = keys[0]["expiration"] - time.time()
    assert 290 < ttl <= 301


def test_s1_missing_user_id_is_400(edgerun_node):
    node = edgerun_node(EXAMPLES / "s1-kv-cache")
    r = node.client.get("/")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_user_id"


def test_s3_geo_from_dev_country_flag(edgerun_node):
    node = edgerun_node(EXAMPLES / "s3-geo", country="KR")
    body = node.client.get("/").json()
    assert body["country"] == "KR"
    assert body["greeting"].startswith("안녕하세요")
    assert body["currency"] == "KRW"
    assert body["ip"] == "127.0.0.1"


def test_s3_geo_headers_override_in_dev(edgerun_node):
    node = edgerun_node(EXAMPLES / "s3-geo")
    r = node.client.get("/", headers={"x-edgerun-country": "fr", "x-edgerun-city": "Paris"})
    body = r.json()
    assert body["country"] == "FR"
    assert body["city"] == "Paris"
    assert body["greeting"] == "Bonjour, visitor from Paris, FR!"
    assert body["currency"] == "EUR"


def test_s3_geo_headers_ignored_by_production_node(edgerun_node):
    # A production node trusts geo headers only from configured proxies.
    node = edgerun_node(EXAMPLES / "s3-geo", command="node")
    body = node.client.get("/", headers={"cf-ipcountry": "JP"}).json()
    assert body["country"] is None
    assert body["greeting"].startswith("Hello")


def test_s4_sticky_group_with_secure_cookie(edgerun_node):
    node = edgerun_node(EXAMPLES / "s4-ab-test")
    first = node.client.get("/")
    assert first.status_code == 200
    group = first.json()["group"]
    assert group in ("A", "B")
    assert first.json()["returning"] is False
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"ab_group={group};")
    assert "HttpOnly" in cookie and "Secure" in cookie
    assert "max-age=300" in first.headers["cache-control"]
    for _ in range(5):
        again = node.client.get("/", headers={"cookie": f"ab_group={group}"})
        assert again.json() == {"experiment": "homepage-2026", "group": group, "returning": True}
        assert "set-cookie" not in again.headers


def test_s4_new_clients_get_both_groups(edgerun_node):
    node = edgerun_node(EXAMPLES / "s4-ab-test")
    groups = {node.client.get("/").json()["group"] for _ in range(60)}
    assert groups == {"A", "B"}


def test_s4_forged_cookie_is_reassigned(edgerun_node):
    node = edgerun_node(EXAMPLES / "s4-ab-test")
    r = node.client.get("/", headers={"cookie": "ab_group=Z"})
    assert r.json()["group"] in ("A", "B")
    assert r.json()["returning"] is False


def test_s5_post_stores_event_under_tuple_key(edgerun_node):
    node = edgerun_node(EXAMPLES / "s5-analytics")
    r = node.client.post(
        "/api/analytics",
        json={"type": "click", "target": "buy"},
        headers={"user-agent": "seed-test/1.0"},
    )
    assert r.status_code == 201
    prefix, ts, uid = r.json()["stored"]
    assert prefix == "analytics" and isinstance(ts, int) and len(uid) == 36
    node.client.post("/api/analytics", json={"type": "view"})
    events = node.client.get("/api/analytics").json()["events"]
    assert [e["event"]["type"] for e in events] == ["click", "view"]
    assert events[0]["user_agent"] == "seed-test/1.0"
    assert events[0]["ip"] == "127.0.0.1"
    assert events[0]["timestamp"] == ts


def test_s5_other_paths_404_and_bad_json_400(edgerun_node):
    node = edgerun_node(EXAMPLES / "s5-analytics")
    assert node.client.post("/api/other", json={}).status_code == 404
    bad = node.client.post(
        "/api/analytics", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "malformed_json"
