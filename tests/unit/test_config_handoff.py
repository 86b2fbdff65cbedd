"""edgerun.toml ``[scaling] handoff``: whether workers may serve client connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.config import load_project, parse_project
from edgerun.errors import ConfigError
from edgerun.node.wiring import pool_settings


def test_handoff_is_on_by_default():
    assert parse_project('name = "p"\n').scaling.handoff is True
    # Also when [scaling] is there without the key.
    assert parse_project('name = "p"\n[scaling]\nmax_workers = 2\n').scaling.handoff is True


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True)])
def test_handoff_parses_a_boolean(value, expected):
    config = parse_project(f'name = "p"\n[scaling]\nhandoff = {value}\n')
    assert config.scaling.handoff is expected


def test_handoff_false_leaves_the_other_scaling_keys_alone():
    config = parse_project(
        'name = "p"\n[scaling]\nmax_workers = 3\nhandoff = false\nidle_s = 2\nkeep_zygote = false\n'
    )
    scaling = config.scaling
    assert scaling.handoff is False
    assert (scaling.max_workers, scaling.idle_s, scaling.keep_zygote) == (3, 2.0, False)


@pytest.mark.parametrize(
    ("text", "line", "shown"),
    [
        ('[scaling]\nhandoff = "no"\n', 3, "'no'"),
        ("[scaling]\nhandoff = 0\n", 3, "0"),
        ("[scaling]\nmax_workers = 2\n\nhandoff = 1\n", 5, "1"),
    ],
)
def test_a_non_boolean_handoff_names_the_file_line_and_key(text, line, shown):
    with pytest.raises(ConfigError) as info:
        parse_project('name = "p"\n' + text, file="edgerun.toml")
    error = info.value
    assert error.file == "edgerun.toml"
    assert error.line == line
    assert "scaling.handoff" in error.reason
    assert "true or false" in error.reason
    assert f"(got {shown})" in error.reason
    assert str(error).startswith(f"edgerun.toml:{line}: ")


def test_a_non_boolean_handoff_in_a_project_file_names_that_file(tmp_path: Path):
    toml = tmp_path / "edgerun.toml"
    toml.write_text('name = "p"\nmain = "app.py"\n[scaling]\nhandoff = "no"\n')
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    message = str(info.value)
    assert str(toml) in message
    assert f"{toml}:4:" in message
    assert "scaling.handoff" in message


@pytest.mark.parametrize(("text", "expected"), [("", True), ("handoff = false\n", False)])
def test_handoff_reaches_the_pool_settings(text, expected):
    """The key is not only parsed: the isolated pool is built with it."""
    config = parse_project(f'name = "p"\n[scaling]\n{text}')
    assert pool_settings(config).handoff is expected
