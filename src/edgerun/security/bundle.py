"""Validate and unpack an uploaded code bundle before anything of it can be served.

A bundle is a gzip-compressed tar of a project directory with its ``edgerun.toml``
at the root (``edgerun deploy`` builds one with :mod:`edgerun.control.pack`).
:func:`unpack_bundle` reads it as a stream and refuses, with a typed
:class:`BundleError` naming the offending member:

=======================================================  ======  ==========================
what                                                     status  code
=======================================================  ======  ==========================
compressed size, uncompressed size or file count over
its cap (:class:`BundleLimits`)                          413     ``bundle_too_large``
an absolute path or a ``..`` component                   400     ``bundle_unsafe_path``
a symlink or hardlink (any: in-bundle links are refused
too, so no later step ever has to resolve one)           400     ``bundle_link``
a device, fifo or other non-regular, non-directory file  400     ``bundle_special_file``
a name that is not UTF-8, has control characters or a
backslash, or is empty                                   400     ``bundle_bad_name``
the same path twice, or a file where a directory is      400     ``bundle_duplicate``
no ``edgerun.toml`` at the root                          400     ``bundle_no_config``
an ``edgerun.toml`` that fails validation (file:line),
or a ``main`` file missing from the bundle               400     ``bundle_config_invalid``
not gzip, not tar, truncated                             400     ``bundle_corrupt``
=======================================================  ======  ==========================

Everything is extracted into a fresh temporary directory next to the destination and
renamed into place only after the whole bundle passed, so a rejected bundle leaves
nothing behind. The result is content-addressed: the version id is derived from the
paths, executable bits and contents of the files (not from the tar bytes, whose
timestamps vary), so uploading the same project twice yields the same version.
Extracted files are made read-only.

Decompression is metered: the gzip stream is read through a counter that stops at the
uncompressed cap plus header overhead, so a gzip bomb (or a huge pax header) costs at
most the cap, never the machine's memory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final

from edgerun.config import CONFIG_FILENAME, ProjectConfig, load_project, parse_project
from edgerun.errors import ConfigError, RequestError

__all__ = [
    "Bundle",
    "BundleBadName",
    "BundleConfigInvalid",
    "BundleCorrupt",
    "BundleDuplicate",
    "BundleError",
    "BundleLimits",
    "BundleLink",
    "BundleNoConfig",
    "BundleSpecialFile",
    "BundleTooLarge",
    "BundleUnsafePath",
    "unpack_bundle",
    "version_id",
]

_MIB: Final = 1024 * 1024
_TAR_BLOCK: Final = 512
_COPY_CHUNK: Final = 256 * 1024


class BundleError(RequestError):
    """An uploaded bundle was refused; ``member`` names the offending tar member."""

    code = "bundle_invalid"
    status = 400

    def __init__(self, message: str, *, member: str | None = None) -> None:
        self.member = member
        super().__init__(message)


class BundleTooLarge(BundleError):
    """The bundle exceeds a size or file-count cap; the message quotes value and cap."""

    code = "bundle_too_large"
    status = 413


class BundleUnsafePath(BundleError):
    """A member path is absolute or has a ``..`` component."""

    code = "bundle_unsafe_path"


class BundleLink(BundleError):
    """A member is a symlink or hardlink (bundles carry regular files only)."""

    code = "bundle_link"


class BundleSpecialFile(BundleError):
    """A member is a device, fifo or other file that is neither regular nor a directory."""

    code = "bundle_special_file"


class BundleBadName(BundleError):
    """A member name is not UTF-8, is empty, or contains control characters or '\\'."""

    code = "bundle_bad_name"


class BundleDuplicate(BundleError):
    """A path appears twice, or a file stands where a directory is needed."""

    code = "bundle_duplicate"


class BundleNoConfig(BundleError):
    """The bundle has no ``edgerun.toml`` at its root."""

    code = "bundle_no_config"


class BundleConfigInvalid(BundleError):
    """The bundle's ``edgerun.toml`` fails validation; ``file``/``line``/``reason`` say where."""

    code = "bundle_config_invalid"

    def __init__(self, exc: ConfigError) -> None:
        self.file = exc.file
        self.line = exc.line
        self.reason = exc.reason
        super().__init__(exc.message, member=exc.file)


class BundleCorrupt(BundleError):
    """The upload is not a readable gzip-compressed tar archive."""

    code = "bundle_corrupt"


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Caps for one bundle: compressed bytes, uncompressed bytes, entries, path length."""

    max_compressed_bytes: int = 25 * _MIB
    max_uncompressed_bytes: int = 100 * _MIB
    max_files: int = 10_000
    max_path_bytes: int = 1024


@dataclass(frozen=True, slots=True)
class Bundle:
    """A validated, extracted bundle: its ``version`` id, ``path`` and parsed ``config``.

    ``created`` is False when a bundle with the same content was already there (the
    upload was a no-op). ``files`` and ``size`` count regular files and their bytes.
    """

    version: str
    path: Path
    config: ProjectConfig
    files: int
    size: int
    created: bool


def version_id(digest: str) -> str:
    """The version id for a content digest (hex): ``"v"`` + its first 12 hex digits."""
    return "v" + digest[:12]


def unpack_bundle(data: bytes, store: Path, *, limits: BundleLimits | None = None) -> Bundle:
    """Validate ``data`` (a .tar.gz) and extract it to ``store/<version>``.

    Raises a :class:`BundleError` subclass (see the module docstring) and then leaves
    nothing under ``store`` but what was there before. If ``store/<version>`` already
    exists the new copy is discarded (same content, same id). ``OSError`` from the
    filesystem itself (disk full, permissions) propagates.
    """
    limits = limits or BundleLimits()
    if len(data) > limits.max_compressed_bytes:
        raise BundleTooLarge(
            f"the bundle is {len(data)} bytes compressed; the limit is "
            f"{limits.max_compressed_bytes}"
        )
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store))
    try:
        files, size, digest = _extract(data, tmp, limits)
        _check_config(tmp)
        version = version_id(digest)
        final = store / version
        _make_read_only(tmp)
        created = True
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            created = False  # the same content was uploaded before: keep the first copy
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    return Bundle(version, final, load_project(final), files, size, created)


class _CappedReader(io.RawIOBase):
    """A readable stream that raises once more than ``cap`` bytes were read from it."""

    def __init__(self, inner: IO[bytes], cap: int, what: str) -> None:
        self._inner = inner
        self._cap = cap
        self._read = 0
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        self._read += n
        if self._read > self._cap:
            raise BundleTooLarge(f"the bundle expands past {self._cap} bytes ({self._what})")
        return int(n)


def _extract(data: bytes, root: Path, limits: BundleLimits) -> tuple[int, int, str]:
    # Headers take one or more 512-byte blocks per entry; long names use extra ones.
    header_budget = limits.max_files * 4 * _TAR_BLOCK + 64 * 1024
    cap = limits.max_uncompressed_bytes + header_budget
    gz: IO[bytes] = gzip.GzipFile(fileobj=io.BytesIO(data))  # type: ignore[assignment]
    raw = _CappedReader(gz, cap, "uncompressed size with tar headers")
    stream = io.BufferedReader(raw, buffer_size=_COPY_CHUNK)
    seen: dict[str, bool] = {}  # path -> is a directory
    files = 0
    entries = 0
    size = 0
    hashes: list[tuple[str, bool, str]] = []
    try:
        with tarfile.open(
            fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tf:
            for member in tf:
                entries += 1
                if entries > limits.max_files:
                    raise BundleTooLarge(
                        f"the bundle has more than {limits.max_files} entries "
                        f"(at {_show(member.name)})",
                        member=member.name,
                    )
                path = _check_member(member, limits)
                if path is None:
                    continue  # the root directory itself ("." or "./")
                _check_parents(path, seen, member.name)
                if path in seen:
                    raise BundleDuplicate(
                        f"member {_show(member.name)} appears more than once", member=member.name
                    )
                target = root.joinpath(*PurePosixPath(path).parts)
                if member.isdir():
                    seen[path] = True
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                seen[path] = False
                size += member.size
                if size > limits.max_uncompressed_bytes:
                    raise BundleTooLarge(
                        f"the bundle expands to more than {limits.max_uncompressed_bytes} "
                        f"bytes (at {_show(member.name)})",
                        member=member.name,
                    )
                files += 1
                source = tf.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise BundleCorrupt(f"member {_show(member.name)} has no data")
                executable = bool(member.mode & 0o111)
                hashes.append((path, executable, _write_file(source, target, member)))
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BundleCorrupt(f"the upload is not a valid .tar.gz bundle: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # gzip raises plain OSError for garbage input
            raise BundleCorrupt(f"the upload is not a valid .tar.gz bundle: {exc}") from None
        raise
    return files, size, _digest(hashes)


def _check_member(member: tarfile.TarInfo, limits: BundleLimits) -> str | None:
    """Return the member's normalised relative path, or None for the root directory."""
    name = member.name
    _check_name(name, limits)
    if member.issym() or member.islnk():
        raise BundleLink(
            f"member {_show(name)} is a {'symlink' if member.issym() else 'hardlink'} "
            f"to {_show(member.linkname)}; bundles may contain regular files and "
            "directories only",
            member=name,
        )
    if not (member.isreg() or member.isdir()):
        raise BundleSpecialFile(
            f"member {_show(name)} is a device, fifo or other special file; bundles may "
            "contain regular files and directories only",
            member=name,
        )
    if name.startswith("/"):
        raise BundleUnsafePath(f"member {_show(name)} has an absolute path", member=name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleUnsafePath(
            f"member {_show(name)} has a '..' component (paths must stay inside the bundle)",
            member=name,
        )
    return "/".join(parts) if parts else None


def _check_name(name: str, limits: BundleLimits) -> None:
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleBadName(
            f"member name {_show(name)} is not valid UTF-8", member=_show(name)
        ) from None
    if not name:
        raise BundleBadName("a member has an empty name", member=name)
    if len(encoded) > limits.max_path_bytes:
        raise BundleBadName(
            f"member name {_show(name)} is {len(encoded)} bytes; the limit is "
            f"{limits.max_path_bytes}",
            member=name,
        )
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch == "\\":
            raise BundleBadName(
                f"member name {_show(name)} contains the character {ch!r}; use plain "
                "printable names with '/' between directories",
                member=name,
            )


def _check_parents(path: str, seen: dict[str, bool], name: str) -> None:
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if seen.get(parent) is False:
            raise BundleDuplicate(
                f"member {_show(name)} is inside {parent!r}, which is a file", member=name
            )
        seen.setdefault(parent, True)


def _write_file(source: IO[bytes], target: Path, member: tarfile.TarInfo) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL and O_NOFOLLOW: never write through something that is already there.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as fh:
        while chunk := source.read(_COPY_CHUNK):
            h.update(chunk)
            fh.write(chunk)
    if member.mode & 0o111:
        os.chmod(target, 0o700)
    return h.hexdigest()


def _digest(hashes: list[tuple[str, bool, str]]) -> str:
    h = hashlib.sha256(b"edgerun-bundle-v1\n")
    for path, executable, file_hash in sorted(hashes):
        h.update(f"{path}\0{int(executable)}\0{file_hash}\n".encode())
    return h.hexdigest()


def _check_config(root: Path) -> ProjectConfig:
    file = root / CONFIG_FILENAME
    if not file.is_file():
        raise BundleNoConfig(
            f"the bundle has no {CONFIG_FILENAME} at its root; bundle the project "
            "directory itself (edgerun deploy DIR does)",
            member=CONFIG_FILENAME,
        )
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BundleConfigInvalid(
            ConfigError("the file is not valid UTF-8", file=CONFIG_FILENAME, line=1)
        ) from None
    try:
        config = parse_project(text, file=CONFIG_FILENAME, root=root)
    except ConfigError as exc:
        raise BundleConfigInvalid(exc) from None
    main = config.main_path
    if main is not None and not main.is_file():
        raise BundleConfigInvalid(
            ConfigError(
                f"main = {config.main!r} is not in the bundle", file=CONFIG_FILENAME, line=None
            )
        )
    return config


def _make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            mode = stat.S_IMODE(os.lstat(p).st_mode)
            os.chmod(p, 0o555 if mode & 0o100 else 0o444)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o555)
    os.chmod(root, 0o555)


def _remove_tree(root: Path) -> None:
    # Directories may already be read-only; make them writable again to delete.
    for dirpath, _dirnames, _filenames in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def _show(name: str) -> str:
    """A member name as a printable, bounded quote (surrogates and controls escaped)."""
    shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in shown)
    return repr(shown[:200])
