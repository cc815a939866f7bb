"""Files as resnetx writes them: atomically, and named by their content hash."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["TMP_PREFIX", "atomic_writer", "atomic_write", "atomic_write_text", "atomic_dir", "copy_checked",
           "file_sha256", "sha256_bytes", "content_key"]

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(dst: Path) -> Iterator[BinaryIO]:
    """A file to write `dst` through: a temporary name beside it, fsynced and renamed when the block ends, removed
    if it raises. `dst` is old or new, never half; nothing is held in memory on the way."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dst.name}.", dir=dst.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(dst: Path, data: bytes) -> None:
    """Write to a temporary name beside `dst`, fsync, rename: `dst` is old or new, never half."""
    with atomic_writer(dst) as f:
        f.write(data)


def atomic_write_text(dst: Path, text: str) -> None:
    atomic_write(dst, text.encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(**parts: Any) -> str:
    """A short hash of everything that shapes an artifact's bytes: equal keys, equal artifacts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """A folder to fill in place of `out`: a temporary folder beside it, moved into place when the block ends (the old
    one replaced only with `force`), removed if it raises: `out` is old or new, never half."""
    import shutil

    from resnetx.errors import BadInput

    out = Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out} exists; give --force to replace it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; the result is a folder like any other
        yield tmp
        if out.exists():
            old = out.with_name(f"{TMP_PREFIX}{out.name}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_checked(src: Path, dst: Path, sha256: str) -> None:
    """Copy `src` to `dst` and check the copy has the sha256 recorded for it (a file that changed meanwhile fails)."""
    import shutil

    from resnetx.errors import BadInput

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if file_sha256(dst) != sha256:
        raise BadInput(f"{src} changed while it was copied (sha256 differs from the manifest); run the command again")
