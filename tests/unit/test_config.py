"""edgerun.toml parsing (edgerun.config): every error names the file, the line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.config import (
    CacheConfig,
    KVConfig,
    LimitsConfig,
    ProjectConfig,
    _Locator,
    load_project,
    parse_project,
)
from edgerun.edge.routes import RoutePattern
from edgerun.errors import ConfigError

FULL = """\
# A project using every section this version supports.
name = "user-api"
main = "pkg.app:application"
routes = [
  "api.example.com/users/*",   # the API
  "*.example.com/static/*",
]

[limits]
cpu_ms = 100
wall_ms = 10000
memory_mb = 256

[vars]
API_VERSION = "2"
DEBUG = false
RATIO = 0.25
RETRIES = 3
TAGS = ["a", "b"]
FEATURES = { beta = true, nested = { depth = 2 } }

[[kv]]
binding = "USERS"
namespace = "users-v2"

[[kv]]
binding = "SESSIONS"
backend = "memory"

[[cache]]
binding = "PAGES"
max_bytes = 1048576
"""


def error_of(text: str, file: str = "edgerun.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_project(text, file=file)
    return info.value


def assert_error(text: str, line: int, *needles: str) -> ConfigError:
    err = error_of(text, file="proj/edgerun.toml")
    assert err.file == "proj/edgerun.toml"
    assert err.line == line, str(err)
    assert str(err).startswith(f"proj/edgerun.toml:{line}: "), str(err)
    for needle in needles:
        assert needle in err.reason, err.reason
    return err


# --- valid files --------------------------------------------------------------------------


def test_full_file_parses(tmp_path):
    config = parse_project(FULL, root=tmp_path)
    assert config.name == "user-api"
    assert config.main == "pkg.app:application"
    assert config.main_path is None
    assert config.routes == ("api.example.com/users/*", "*.example.com/static/*")
    assert config.route_patterns() == tuple(RoutePattern.parse(r) for r in config.routes)
    assert config.limits == LimitsConfig(cpu_ms=100, wall_ms=10_000, memory_mb=256)
    assert dict(config.vars) == {
        "API_VERSION": "2",
        "DEBUG": False,
        "RATIO": 0.25,
        "RETRIES": 3,
        "TAGS": ["a", "b"],
        "FEATURES": {"beta": True, "nested": {"depth": 2}},
    }
    assert config.kv == (
        KVConfig(binding="USERS", namespace="users-v2"),
        KVConfig(binding="SESSIONS", namespace="sessions", backend="memory"),
    )
    assert config.cache == (CacheConfig(binding="PAGES", max_bytes=1_048_576),)
    assert config.root == tmp_path
    assert config.file == tmp_path / "edgerun.toml"
    assert config.binding_names() == (
        "API_VERSION", "DEBUG", "RATIO", "RETRIES", "TAGS", "FEATURES", "USERS", "SESSIONS", "PAGES"
    )  # fmt: skip


def test_defaults():
    config = parse_project('name = "p"\n')
    assert config == ProjectConfig(name="p", root=config.root, file=config.file)
    assert config.main == "app.py"
    assert config.main_path == config.root / "app.py"
    assert config.routes == ("*/*",)
    assert config.limits == LimitsConfig(cpu_ms=50, wall_ms=30_000, memory_mb=128)
    assert dict(config.vars) == {}
    assert config.kv == ()
    assert config.cache == ()
    assert CacheConfig("C").max_bytes == 64 * 1024 * 1024


def test_config_is_frozen():
    config = parse_project('name = "p"\n[vars]\nA = 1\n')
    with pytest.raises(AttributeError):
        config.name = "q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.vars["A"] = 2  # type: ignore[index]
    assert hash(config) == hash(parse_project('name = "p"\n[vars]\nA = 1\n'))


@pytest.mark.parametrize(
    "main", ["app.py", "src/worker.py", "app", "pkg.module", "pkg.module:app", "m:obj.attr"]
)
def test_valid_main_forms(main):
    assert parse_project(f'name = "p"\nmain = "{main}"\n').main == main


def test_dotted_keys_and_inline_tables_are_understood():
    config = parse_project('name = "p"\nlimits.cpu_ms = 70\nkv = [{ binding = "K" }]\n')
    assert config.limits.cpu_ms == 70
    assert config.kv == (KVConfig("K", "k"),)


def test_a_bom_is_accepted():
    assert parse_project('\ufeffname = "p"\n').name == "p"


# --- errors: one per class, each with file, line and reason -------------------------------


def test_toml_syntax_error():
    assert_error('name = "p"\n\nmain = app.py\n', 3, "invalid TOML", "column 8", "quotes")


def test_toml_unterminated_string_points_at_the_last_line():
    assert_error('name = "p"\nmain = """app.py\n\n\n', 2, "unterminated string")


def test_toml_duplicate_table():
    assert_error('name = "p"\n[limits]\n[limits]\n', 3, "cannot declare [limits] twice")


def test_unknown_top_level_key():
    assert_error(
        'name = "p"\n\nkvs = 1\n',
        3,
        "unknown top-level key 'kvs'",
        "allowed:",
        "did you mean 'kv'?",
    )


def test_unknown_key_in_table_with_did_you_mean():
    err = assert_error(
        'name = "p"\n\n[limits]\ncpu_ms = 10\ncpu_msec = 5\n',
        5,
        "unknown key 'cpu_msec' in [limits]",
        "allowed: cpu_ms, wall_ms, memory_mb",
        "did you mean 'cpu_ms'?",
    )
    assert str(err).startswith("proj/edgerun.toml:5: unknown key")


def test_unknown_key_far_from_any_allowed_gets_no_suggestion():
    err = assert_error('name = "p"\n[limits]\nzzz = 1\n', 3, "unknown key 'zzz'")
    assert "did you mean" not in err.reason


def test_unknown_key_in_array_of_tables():
    assert_error(
        'name = "p"\n[[kv]]\nbinding = "A"\n[[kv]]\nbindings = "B"\n',
        5,
        "unknown key 'bindings' in [[kv]] #2",
        "did you mean 'binding'?",
    )


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ('[limits]\ncpu_ms = "50ms"\n', 3, "limits.cpu_ms must be a positive integer (got '50ms')"),
        ("[limits]\nwall_ms = 0\n", 3, "limits.wall_ms must be a positive integer (got 0)"),
        ("[limits]\ncpu_ms = 1.5\n", 3, "must be a positive integer (got 1.5)"),
        ("[limits]\ncpu_ms = true\n", 3, "must be a positive integer (got true)"),
        ("[limits]\nmemory_mb = 8\n", 3, "limits.memory_mb must be between 16 and 65536 (got 8)"),
        ("[limits]\ncpu_ms = 600001\n", 3, "between 1 and 600000"),
        ("limits = 5\n", 2, "limits must be a table"),
        ("main = 5\n", 2, "main must be a .py file"),
        ('routes = "a.com/*"\n', 2, "routes must be an array: routes = ['a.com/*']"),
        ("routes = []\n", 2, "routes is empty"),
        ("routes = [1]\n", 2, "routes[0] must be a string"),
        ("[vars]\nWHEN = 1979-05-27\n", 3, "vars.WHEN must be a string, number"),
        ("[vars]\nX = { a = [1, nan] }\n", 3, "vars.X.a[1] must be a finite number"),
        ("[[cache]]\nbinding = 'C'\nmax_bytes = -1\n", 4, "cache.max_bytes must be a positive"),
        ('[[kv]]\nbinding = "K"\nnamespace = "no spaces"\n', 4, "kv namespace must be"),
        ('[[kv]]\nbinding = "K"\nbackend = "sqllite"\n', 4, "did you mean 'sqlite'?"),
        ('[[kv]]\nbinding = "K"\nbackend = 3\n', 4, "kv backend must be one of"),
        ("kv = 1\n", 2, "kv must be an array of tables"),
        ('[kv]\nbinding = "K"\n', 2, "write [[kv]] (two brackets)"),
        ("[[kv]]\nnamespace = 'x'\n", 2, "[[kv]] #1 needs a binding name"),
        ("[[cache]]\n", 2, "[[cache]] #1 needs a binding name"),
    ],
)
def test_wrong_types_and_values(body, line, reason):
    assert_error('name = "p"\n' + body, line, reason)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("My_API", "e.g. 'my-api'"), ("-x", "e.g. 'x'"), ("a" * 64, "1 to 63"), ("", "1 to 63")],
)
def test_bad_project_name(name, hint):
    assert_error(f'\nname = "{name}"\n', 2, f"name {name!r} is invalid", hint)


def test_missing_name():
    assert_error('main = "app.py"\n', 1, "missing required key 'name'")


def test_name_of_wrong_type():
    assert_error("name = 1\n", 1, "name must be a string")


@pytest.mark.parametrize(
    ("main", "reason"),
    [
        ("app.py:app", "write 'app:app'"),
        ("src/app:app", "write 'src.app:app'"),
        ("../app.py", "inside the project directory"),
        ("/srv/app.py", "relative to the project directory"),
        ("src\\\\app.py", "must use '/'"),
        ("1app", "is not valid"),
        ("app:", "is not valid"),
    ],
)
def test_bad_main(main, reason):
    assert_error(f'name = "p"\nmain = "{main}"\n', 2, reason)


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ("my-kv", "must be a valid Python identifier"),
        ("1KV", "must be a valid Python identifier"),
        ("class", "must be a valid Python identifier"),
        ("ÄKV", "must be a valid Python identifier"),
        ("_KV", "must not start with '_'"),
    ],
)
def test_bad_binding_identifier(binding, reason):
    assert_error(
        f'name = "p"\n[[kv]]\nbinding = "{binding}"\n', 3, f"kv binding {binding!r}", reason
    )


def test_bad_binding_type_and_bad_var_name():
    assert_error('name = "p"\n[[cache]]\nbinding = 5\n', 3, "cache binding must be a string")
    assert_error('name = "p"\n[vars]\n"a-b" = 1\n', 3, "var name 'a-b'")


def test_duplicate_binding_names_name_both_lines():
    text = 'name = "p"\n[[kv]]\nbinding = "DATA"\n\n[[cache]]\nbinding = "DATA"\n'
    assert_error(
        text,
        6,
        "'DATA' is used twice",
        "[[kv]] #1 at line 3",
        "[[cache]] #1 at line 6",
        "rename one",
    )


def test_a_var_clashing_with_a_binding_is_reported_at_the_later_line():
    text = 'name = "p"\n[[kv]]\nbinding = "KV"\n[vars]\nOTHER = 1\nKV = "x"\n'
    assert_error(text, 6, "'KV' is used twice", "[[kv]] #1 at line 3", "[vars] at line 6")


def test_same_namespace_under_two_bindings_is_allowed():
    entry = '[[kv]]\nbinding = "{}"\nnamespace = "n"\n'
    text = 'name = "p"\n' + entry.format("A") + entry.format("B")
    assert [kv.namespace for kv in parse_project(text).kv] == ["n", "n"]


def test_bad_route_points_at_its_own_line():
    text = 'name = "p"\nroutes = [\n  "a.example.com/*",\n  "example.com",\n]\n'
    assert_error(text, 4, "route 'example.com' has no path", "write 'example.com/*'")


def test_duplicate_route():
    text = 'name = "p"\nroutes = [\n  "a.com/*",\n  "A.com/*",\n  "a.com/*",\n]\n'
    assert_error(text, 5, "route 'a.com/*' is listed twice (also at line 3)")


@pytest.mark.parametrize(
    ("section", "shown"),
    [
        ('[[db]]\nbinding = "DB"\nurl = "sqlite:///x.db"\n', "[[db]]"),
        ('[[stream]]\nbinding = "EVENTS"\n', "[[stream]]"),
        ('[[ratelimit]]\nbinding = "L"\n', "[[ratelimit]]"),
        ('[auth.jwt]\nalgorithms = ["HS256"]\n', "[auth]"),
        ('[triggers]\ncrons = ["* * * * *"]\n', "[triggers]"),
    ],
)
def test_unsupported_sections(section, shown):
    assert_error(
        'name = "p"\n\n' + section, 3, f"{shown} is not supported by this version", "remove"
    )


def test_errors_are_config_errors_with_stable_code():
    err = error_of("name = 1\n")
    assert err.code == "config_invalid"
    assert err.status == 500


# --- load_project -------------------------------------------------------------------------


def test_load_project_from_a_directory_and_from_the_file(tmp_path):
    (tmp_path / "edgerun.toml").write_text(FULL, encoding="utf-8")
    by_dir = load_project(tmp_path)
    by_file = load_project(str(tmp_path / "edgerun.toml"))
    assert by_dir == by_file
    assert by_dir.root == tmp_path
    assert by_dir.file == tmp_path / "edgerun.toml"


def test_load_project_relative_path_gives_absolute_root(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "edgerun.toml").write_text('name = "p"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_project("proj")
    assert config.root.is_absolute()
    assert config.root == tmp_path / "proj"


def test_load_project_missing_file_suggests_init(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert "edgerun.toml" in str(info.value)
    assert "edgerun init" in info.value.reason
    assert info.value.file == str(tmp_path / "edgerun.toml")
    with pytest.raises(ConfigError, match=r"does not exist.*edgerun init"):
        load_project(tmp_path / "nowhere" / "edgerun.toml")


def test_load_project_errors_name_the_path_as_given(tmp_path, monkeypatch):
    (tmp_path / "edgerun.toml").write_text('name = "p"\n[limits]\ncpu = 1\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_project(".")
    assert str(info.value).startswith("edgerun.toml:3: unknown key 'cpu'")


def test_load_project_rejects_non_utf8_with_the_line(tmp_path):
    (tmp_path / "edgerun.toml").write_bytes(b'name = "p"\n[vars]\nA = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert info.value.line == 3
    assert "not valid UTF-8" in info.value.reason


def test_load_project_unreadable_file(tmp_path):
    # A directory where the file should be: reading fails with an OSError.
    (tmp_path / "edgerun.toml").mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_project(tmp_path)
    assert info.value.file == str(tmp_path / "edgerun.toml")


def test_load_project_accepts_a_bom(tmp_path):
    (tmp_path / "edgerun.toml").write_bytes(b'\xef\xbb\xbfname = "p"\n')
    assert load_project(tmp_path).name == "p"


def test_parse_project_root_and_file_paths(tmp_path):
    config = parse_project('name = "p"\n', file="conf/edgerun.toml", root=tmp_path)
    assert config.root == tmp_path
    assert config.file == tmp_path / "conf" / "edgerun.toml"
    config = parse_project('name = "p"\n', file=str(tmp_path / "x.toml"))
    assert config.root == tmp_path
    assert config.file == Path(tmp_path / "x.toml")


# --- the locator --------------------------------------------------------------------------


def test_locator_maps_every_kind_of_key():
    text = (
        "a = 1\n"  # 1
        "b.c = 'x'  # comment with = and [brackets]\n"  # 2
        '"quoted.key" = """\n'  # 3
        "[not = a table]\n"  # 4 (inside a multi-line string)
        '"""\n'  # 5
        "arr = [\n"  # 6
        "  1,\n"  # 7
        "  { k = 'v' },  # trailing\n"  # 8
        "]\n"  # 9
        "[t]\n"  # 10
        "x = 1\n"  # 11
        "[[aot]]\n"  # 12
        "y = 1\n"  # 13
        "[aot.sub]\n"  # 14
        "z = 1\n"  # 15
        "[[aot]]\n"  # 16
        "y = '''two'''''\n"  # 17
        "[ 't' . 'deep' ]\n"  # 18
        'w = "esc\\" = still string"\n'  # 19
    )
    loc = _Locator(text)
    assert loc.line(("a",)) == 1
    assert loc.line(("b", "c")) == 2
    assert loc.line(("quoted.key",)) == 3
    assert loc.line(("not",)) == 1  # never recorded: falls back to line 1
    assert loc.line(("arr",)) == 6
    assert loc.line(("arr", 0)) == 7
    assert loc.line(("arr", 1)) == 8
    assert loc.line(("arr", 1, "k")) == 8
    assert loc.line(("t",)) == 10
    assert loc.line(("t", "x")) == 11
    assert loc.line(("aot", 0)) == 12
    assert loc.line(("aot", 0, "y")) == 13
    assert loc.line(("aot", 0, "sub")) == 14
    assert loc.line(("aot", 0, "sub", "z")) == 15
    assert loc.line(("aot", 1)) == 16
    assert loc.line(("aot", 1, "y")) == 17
    assert loc.line(("aot", 1, "missing")) == 16
    assert loc.line(("t", "deep")) == 18
    assert loc.line(("t", "deep", "w")) == 19


def test_locator_handles_crlf_and_never_raises_on_odd_input():
    assert _Locator("a = 1\r\n[t]\r\nb = 2\r\n").line(("t", "b")) == 3
    for text in ["[", "a = [1,", 'a = "', "= = =", "[[a]", "a = {b = ", "a.", "'", '"""']:
        assert _Locator(text).line(("a",)) >= 1


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_parse_project_only_ever_raises_config_error(text):
    try:
        config = parse_project(text)
    except ConfigError as err:
        assert err.line is None or err.line >= 1
        assert err.reason
    else:
        assert config.name


_FRAGMENTS = [
    'name = "p"\n', "name = 1\n", "[limits]\n", "cpu_ms = 5\n", "cpu_ms = 0\n", "wall = 1\n",
    "[vars]\n", "A = 1\n", "B = [1, {c = 2}]\n", "[[kv]]\n", 'binding = "A"\n', "binding = 1\n",
    'backend = "memory"\n', "[[cache]]\n", 'routes = ["*/*"]\n', 'routes = ["x"]\n',
    'main = "a:b"\n', "[[db]]\n", "kv = []\n", "x.y = 1\n", "'q' = 2\n", '"""\n', "[\n",
    "# c\n", "\n", "nested = [[1], [2]]\n", "t = {a.b = 1}\n",
]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12))
def test_parse_project_on_config_shaped_text(parts):
    text = "".join(parts)
    try:
        parse_project(text)
    except ConfigError as err:
        assert err.line is not None
        assert 1 <= err.line <= text.count("\n") + 1
        assert str(err).startswith(f"edgerun.toml:{err.line}: ")


_PADDING = st.lists(
    st.sampled_from(["\n", "# [[kv]] binding = 'X'\n", "   \n", "\t# x = 1\n"]), max_size=3
)


@given(
    pads=st.lists(_PADDING, min_size=11, max_size=11),
    kv_count=st.integers(1, 4),
    bad=st.integers(0, 3),
)
def test_error_lines_are_exact_in_padded_files(pads, kv_count, bad):
    bad %= kv_count
    lines: list[str] = []
    expected = 0

    def emit(line: str, pad: list[str]) -> int:
        lines.extend("".join(pad).splitlines())
        lines.append(line)
        return len(lines)

    emit('name = "p"', pads[0])
    emit("[vars]", pads[1])
    emit('DOC = """', pads[2])
    lines.extend(["[[kv]]", 'bindng = "fake"', '"""'])  # inside a string: not a table
    emit("[limits]", pads[3])
    emit("cpu_ms = 10", pads[4])
    for i in range(kv_count):
        emit("[[kv]]", pads[5 + i])
        emit(f'binding = "KV{i}"', pads[9])
        if i == bad:
            expected = emit('bindng = "typo"', pads[10])
    err = error_of("\n".join(lines) + "\n")
    assert err.line == expected
    assert f"[[kv]] #{bad + 1}" in err.reason
