"""edgerun.toml keys that confine a deployment: [limits] max_processes / max_disk_mb, [network]."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.config import LimitsConfig, NetworkConfig, parse_project
from edgerun.errors import ConfigError


def test_defaults_bound_processes_and_disk_and_allow_public_addresses():
    config = parse_project('name = "p"\n')
    assert (config.limits.max_processes, config.limits.max_disk_mb) == (32, 1024)
    assert config.network == NetworkConfig("public")


def test_all_keys_parse():
    config = parse_project(
        'name = "p"\n[limits]\nmax_processes = 4\nmax_disk_mb = 10\n[network]\noutbound = "none"\n'
    )
    assert config.limits == LimitsConfig(max_processes=4, max_disk_mb=10)
    assert config.network.outbound == "none"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("[limits]\nmax_processes = 0\n", 3, "limits.max_processes must be a positive integer"),
        ("[limits]\nmax_processes = 5000\n", 3, "between 1 and 4096 (got 5000)"),
        ("[limits]\nmax_disk_mb = true\n", 3, "limits.max_disk_mb must be a positive integer"),
        (
            '[network]\noutbound = "nope"\n',
            3,
            "network.outbound must be one of 'public', 'all', 'none'",
        ),
        ('[network]\noutbound = "non"\n', 3, "did you mean 'none'"),
        ("[network]\noutbound = 1\n", 3, "(got 1)"),
        ('[network]\ninbound = "all"\n', 3, "unknown key 'inbound' in [network]"),
        ("network = 1\n", 2, "[network]"),
    ],
)
def test_invalid_values_name_the_line_and_reason(text, line, reason):
    with pytest.raises(ConfigError) as info:
        parse_project('name = "p"\n' + text, file="edgerun.toml")
    assert info.value.line == line
    assert reason in info.value.reason


@given(st.text(max_size=12))
def test_outbound_accepts_exactly_the_documented_values(value):
    text = f'name = "p"\n[network]\noutbound = "{value.encode("unicode_escape").decode()}"\n'
    try:
        config = parse_project(text)
    except ConfigError as exc:
        assert value not in ("public", "all", "none")
        assert "network.outbound" in exc.reason or exc.line is not None
    else:
        assert config.network.outbound == value and value in ("public", "all", "none")
