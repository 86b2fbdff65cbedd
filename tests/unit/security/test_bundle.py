"""Bundle validation: every rejection, its inverted twin, and no escape from the store."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun.control.pack import pack_project
from edgerun.security.bundle import (
    BundleBadName,
    BundleConfigInvalid,
    BundleCorrupt,
    BundleDuplicate,
    BundleError,
    BundleLimits,
    BundleLink,
    BundleNoConfig,
    BundleSpecialFile,
    BundleTooLarge,
    BundleUnsafePath,
    unpack_bundle,
)

TOML = b'name = "demo"\nmain = "app.py"\n'
APP = b"from edgerun import Response\nasync def fetch(request):\n    return Response('hi')\n"


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    return info, data


def make_tar(*members, base: bool = True, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tf:
        if base:
            tf.addfile(*_fileobj(member("edgerun.toml", TOML)))
            tf.addfile(*_fileobj(member("app.py", APP)))
        for info, data in members:
            tf.addfile(*_fileobj((info, data)))
    return gzip.compress(raw.getvalue())


def _fileobj(pair):
    info, data = pair
    return (info, io.BytesIO(data) if info.isreg() else None)


def test_a_valid_bundle_unpacks_read_only_and_content_addressed(tmp_path):
    store = tmp_path / "store"
    data = make_tar(member("lib/util.py", b"X = 1\n"))
    bundle = unpack_bundle(data, store)
    assert bundle.version.startswith("v") and len(bundle.version) == 13
    assert bundle.config.name == "demo"
    assert bundle.path == store / bundle.version
    assert (bundle.path / "lib" / "util.py").read_bytes() == b"X = 1\n"
    assert not os.stat(bundle.path / "app.py").st_mode & 0o222
    assert bundle.files == 3 and bundle.created
    # Same content (different tar bytes: other format) -> same version, not re-created.
    again = unpack_bundle(
        make_tar(member("lib/util.py", b"X = 1\n"), fmt=tarfile.GNU_FORMAT), store
    )
    assert again.version == bundle.version and not again.created
    other = unpack_bundle(make_tar(member("lib/util.py", b"X = 2\n")), store)
    assert other.version != bundle.version
    assert sorted(p.name for p in store.iterdir()) == sorted([bundle.version, other.version])


def test_leading_dot_slash_names_are_normalised(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in (("./edgerun.toml", TOML), ("./app.py", APP)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert unpack_bundle(gzip.compress(raw.getvalue()), tmp_path).config.name == "demo"


REJECTIONS = [
    (BundleUnsafePath, [member("/etc/evil", b"x")], "/etc/evil"),
    (BundleUnsafePath, [member("../evil.py", b"x")], "../evil.py"),
    (BundleUnsafePath, [member("lib/../../evil.py", b"x")], "lib/../../evil.py"),
    (BundleLink, [member("link", kind=tarfile.SYMTYPE, link="/etc/passwd")], "link"),
    (BundleLink, [member("inside", kind=tarfile.SYMTYPE, link="app.py")], "inside"),
    (BundleLink, [member("hard", kind=tarfile.LNKTYPE, link="app.py")], "hard"),
    (BundleSpecialFile, [member("dev", kind=tarfile.CHRTYPE)], "dev"),
    (BundleSpecialFile, [member("blk", kind=tarfile.BLKTYPE)], "blk"),
    (BundleSpecialFile, [member("pipe", kind=tarfile.FIFOTYPE)], "pipe"),
    (BundleBadName, [member("bad\x1bname.py", b"x")], "bad"),
    (BundleBadName, [member("back\\slash.py", b"x")], "back"),
    (BundleDuplicate, [member("app.py", b"again")], "app.py"),
    (BundleDuplicate, [member("app.py/inner.py", b"x")], "app.py/inner.py"),
]


@pytest.mark.parametrize(("error", "members", "named"), REJECTIONS)
def test_each_unsafe_member_is_rejected_by_name_and_nothing_is_left(
    tmp_path, error, members, named
):
    store = tmp_path / "store"
    with pytest.raises(error) as info:
        unpack_bundle(make_tar(*members), store)
    assert named in info.value.message
    assert info.value.status == 400
    assert list(store.iterdir()) == []
    assert not (tmp_path / "evil.py").exists()


def test_non_utf8_names_are_rejected(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in (("edgerun.toml", TOML), ("app.py", APP), ("caf\xe9.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(BundleBadName, match="UTF-8"):
        unpack_bundle(gzip.compress(raw.getvalue()), tmp_path / "s")


def test_missing_config_is_rejected(tmp_path):
    with pytest.raises(BundleNoConfig, match=r"edgerun\.toml"):
        unpack_bundle(make_tar(member("app.py", APP), base=False), tmp_path / "s")
    # Twin: a config one directory down is not at the root either.
    nested = make_tar(member("proj/edgerun.toml", TOML), member("proj/app.py", APP), base=False)
    with pytest.raises(BundleNoConfig):
        unpack_bundle(nested, tmp_path / "s")


def test_invalid_config_reports_file_line_and_reason(tmp_path):
    bad = b'name = "demo"\nmain = "app.py"\nroutez = ["*/*"]\n'
    data = make_tar(member("edgerun.toml", bad), member("app.py", APP), base=False)
    with pytest.raises(BundleConfigInvalid) as info:
        unpack_bundle(data, tmp_path / "s")
    assert info.value.file == "edgerun.toml" and info.value.line == 3
    assert info.value.message.startswith("edgerun.toml:3:")
    assert list((tmp_path / "s").iterdir()) == []


def test_a_main_file_missing_from_the_bundle_is_rejected(tmp_path):
    data = make_tar(member("edgerun.toml", TOML), base=False)
    with pytest.raises(BundleConfigInvalid, match=r"app\.py"):
        unpack_bundle(data, tmp_path / "s")


def test_garbage_is_corrupt(tmp_path):
    for data in (b"not gzip at all", gzip.compress(b"not a tar" * 100), make_tar()[:-40]):
        with pytest.raises(BundleCorrupt):
            unpack_bundle(data, tmp_path / "s")


@pytest.mark.parametrize(
    ("field", "tight", "loose"),
    [
        ("max_compressed_bytes", 100, 10_000_000),
        ("max_uncompressed_bytes", 1000, 10_000_000),
        ("max_files", 3, 10),
        ("max_path_bytes", 10, 100),
    ],
)
def test_size_caps_and_their_inverted_twins(tmp_path, field, tight, loose):
    data = make_tar(member("lib/payload_name.py", b"#" * 5000), member("lib/b.py", b""))
    with pytest.raises((BundleTooLarge, BundleBadName)) as info:
        unpack_bundle(data, tmp_path / "tight", limits=BundleLimits(**{field: tight}))
    assert str(tight) in info.value.message
    # The inverted twin: the same bundle passes once the cap is raised.
    assert unpack_bundle(data, tmp_path / "loose", limits=BundleLimits(**{field: loose}))


def test_a_gzip_bomb_stops_at_the_cap(tmp_path):
    # 50 MB of zeros inside one member compresses to ~50 KB.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in (("edgerun.toml", TOML), ("app.py", APP)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("zeros.bin")
        info.size = 50_000_000
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    data = gzip.compress(raw.getvalue())
    assert len(data) < 1_000_000
    with pytest.raises(BundleTooLarge):
        unpack_bundle(data, tmp_path / "s", limits=BundleLimits(max_uncompressed_bytes=1_000_000))


def test_errors_are_4xx_with_codes():
    for cls in (BundleUnsafePath, BundleLink, BundleSpecialFile, BundleBadName, BundleNoConfig):
        assert 400 <= cls("m").status < 500 and cls("m").code.startswith("bundle_")
    assert BundleTooLarge("m").status == 413


def test_pack_project_round_trips_and_is_reproducible(tmp_path):
    project = tmp_path / "p"
    (project / "__pycache__").mkdir(parents=True)
    (project / "edgerun.toml").write_bytes(TOML)
    (project / "app.py").write_bytes(APP)
    (project / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    first, second = pack_project(project), pack_project(project)
    assert first.data == second.data and first.files == 2
    bundle = unpack_bundle(first.data, tmp_path / "store")
    assert not (bundle.path / "__pycache__").exists()


NAMES = st.lists(
    st.sampled_from(["..", ".", "", "a", "b", "/", "etc", "..a", "\x00", "c:"]), max_size=6
).map("/".join)
KINDS = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)
LINKS = st.sampled_from(["", "/", "..", "../..", "/etc/passwd", "a", "a/../.."])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=st.lists(st.tuples(NAMES, KINDS, LINKS, st.binary(max_size=8)), max_size=6))
def test_arbitrary_members_never_escape_the_store(tmp_path_factory, members):
    base = tmp_path_factory.mktemp("escape")
    store = base / "store"
    outside_before = sorted(p.name for p in base.iterdir())
    try:
        data = make_tar(*(member(n, d, kind=k, link=link) for n, k, link, d in members))
    except (ValueError, tarfile.TarError):
        return  # tarfile itself refuses to write some names (NUL)
    try:
        bundle = unpack_bundle(data, store)
    except BundleError:
        assert list(store.iterdir()) == []
    else:
        for path in bundle.path.rglob("*"):
            assert not path.is_symlink()
            assert path.resolve().is_relative_to(bundle.path.resolve())
    assert sorted(p.name for p in base.iterdir()) == sorted({*outside_before, "store"})
    assert not Path("/etc/evil").exists()
