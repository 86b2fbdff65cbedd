"""edgerun.toml keys of the isolated mode: mode, limits.max_concurrency, [scaling]."""

from __future__ import annotations

import pytest

from edgerun.config import LimitsConfig, ScalingConfig, parse_project
from edgerun.errors import ConfigError


def test_defaults_are_isolated_with_scale_to_zero():
    config = parse_project('name = "p"\n')
    assert config.mode == "isolated"
    assert config.limits.max_concurrency == 16
    assert config.scaling == ScalingConfig(4, 0, 4, 60.0, True)


def test_all_keys_parse():
    config = parse_project(
        'name = "p"\nmode = "inprocess"\n[limits]\nmax_concurrency = 8\n'
        "[scaling]\ntarget_concurrency = 2\nmin_workers = 1\nmax_workers = 3\n"
        "idle_s = 0.5\nkeep_zygote = false\n"
    )
    assert config.mode == "inprocess"
    assert config.limits == LimitsConfig(max_concurrency=8)
    assert config.scaling == ScalingConfig(2, 1, 3, 0.5, False)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('mode = "isolate"\n', 2, "did you mean 'isolated'"),
        ("mode = 1\n", 2, "mode must be one of 'isolated', 'inprocess' (got 1)"),
        ("[limits]\nmax_concurrency = 0\n", 3, "limits.max_concurrency must be a positive"),
        ("[scaling]\nmax_workers = 0\n", 3, "scaling.max_workers must be a positive integer"),
        ("[scaling]\nmin_workers = -1\n", 3, "scaling.min_workers must be a non-negative"),
        ("[scaling]\nmax_workers = 300\n", 3, "between 1 and 256 (got 300)"),
        ("[scaling]\nmin_workers = 5\nmax_workers = 2\n", 3, "must not exceed scaling.max"),
        ("[scaling]\nidle_s = 0\n", 3, "scaling.idle_s must be more than 0"),
        ('[scaling]\nidle_s = "1m"\n', 3, "scaling.idle_s must be a number of seconds"),
        ("[scaling]\nkeep_zygote = 1\n", 3, "keep_zygote must be true or false (got 1)"),
        ("[scaling]\nmax_worker = 2\n", 3, "unknown key 'max_worker' in [scaling]"),
        (
            "[limits]\nmax_concurrency = 2\n[scaling]\ntarget_concurrency = 3\n",
            5,
            "must not exceed limits.max_concurrency (2)",
        ),
    ],
)
def test_invalid_values_name_the_line_and_reason(text, line, reason):
    with pytest.raises(ConfigError) as info:
        parse_project('name = "p"\n' + text, file="edgerun.toml")
    assert info.value.line == line
    assert reason in info.value.reason
