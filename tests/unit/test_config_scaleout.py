"""Scale-out keys: ``[[kv]] backend = "nats"``, ``stale_if_error``, node-chosen backends."""

from __future__ import annotations

import pytest

from edgerun.config import KVConfig, parse_project
from edgerun.errors import ConfigError
from edgerun.node.wiring import binding_specs

PROJECT = """name = "p"
[[kv]]
binding = "DEFAULTED"
[[kv]]
binding = "SHARED"
backend = "nats"
stale_if_error = true
[[kv]]
binding = "LOCAL"
backend = "sqlite"
"""


def test_backend_nats_and_stale_if_error_parse():
    config = parse_project(PROJECT)
    assert config.kv == (
        KVConfig("DEFAULTED", "defaulted"),
        KVConfig("SHARED", "shared", "nats", stale_if_error=True),
        KVConfig("LOCAL", "local", "sqlite"),
    )


def test_stale_if_error_must_be_a_bool():
    with pytest.raises(ConfigError, match="stale_if_error must be true or false") as info:
        parse_project('name = "p"\n[[kv]]\nbinding = "K"\nstale_if_error = "yes"\n')
    assert info.value.line == 4


def test_the_node_decides_where_unbacked_namespaces_live():
    config = parse_project(PROJECT)
    url = "nats://127.0.0.1:4222"
    on_nats = {s.name: s.options for s in binding_specs(config, nats_url=url)}
    assert on_nats["DEFAULTED"] == {"namespace": "defaulted", "backend": "nats", "url": url}
    assert on_nats["SHARED"] == {
        "namespace": "shared",
        "backend": "nats",
        "url": url,
        "stale_if_error": True,
    }
    assert on_nats["LOCAL"] == {"namespace": "local", "backend": "sqlite"}
    alone = parse_project('name = "p"\n[[kv]]\nbinding = "K"\n')
    assert binding_specs(alone)[0].options == {"namespace": "k", "backend": "sqlite"}


def test_backend_nats_needs_a_node_with_nats():
    with pytest.raises(ConfigError, match="edgerun node --nats URL"):
        binding_specs(parse_project(PROJECT))
