"""The local secrets store: 0600 file, atomic writes, names never values."""

from __future__ import annotations

import os
import stat

import pytest

from edgerun.control.secrets import MAX_SECRET_BYTES, SecretStore
from edgerun.errors import EdgerunError


def test_put_load_delete(tmp_path):
    store = SecretStore(tmp_path / "state")
    store.put("API_KEY", "abc")
    store.put("OTHER", "x")
    assert store.names() == ["API_KEY", "OTHER"]
    loaded = store.load()
    assert loaded["API_KEY"] == "abc"
    assert "abc" not in repr(loaded)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.delete("API_KEY") is True
    assert store.delete("API_KEY") is False
    assert store.names() == ["OTHER"]


@pytest.mark.parametrize("name", ["", "1abc", "has-dash", "a b", "x" * 129])
def test_bad_names_are_rejected(tmp_path, name):
    with pytest.raises(EdgerunError, match="invalid secret name"):
        SecretStore(tmp_path).put(name, "v")


def test_value_size_limit_with_inverted_twin(tmp_path):
    store = SecretStore(tmp_path)
    store.put("OK", "v" * MAX_SECRET_BYTES)
    with pytest.raises(EdgerunError, match=f"the limit is {MAX_SECRET_BYTES}"):
        store.put("BIG", "v" * (MAX_SECRET_BYTES + 1))
    assert store.names() == ["OK"]


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "secrets.json").write_text("[1, 2")
    with pytest.raises(EdgerunError, match="cannot read the secrets file"):
        SecretStore(tmp_path).names()
