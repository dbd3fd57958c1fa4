"""Replace a whole directory so that a crash at any point leaves the old or the new one.

`write_dir(out, fill)`: `fill(tmp)` writes the new contents into `.{name}.tmp-{pid}` beside `out`;
then the two are swapped:

1. Linux: one `renameat2(RENAME_EXCHANGE)` — atomic: `out` is the old directory, then the new one,
   never absent. The old one (now at the temporary name) is removed afterwards.
2. Elsewhere, or on a file system without it (EINVAL/ENOSYS/EOPNOTSUPP): `out` → `.{name}.old-{pid}`,
   then the new one → `out`. A kill between the two leaves no `out` but a complete old copy;
   `recover(out)` (called by every `write_dir` and by the readers that use it) renames it back.

Leftovers of killed runs (`.{name}.tmp-*`, `.{name}.old-*` whose process is gone) are removed by the
next `write_dir` (and an old copy is restored by `recover` first when `out` is missing).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_exchange_unsupported = False


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where that is not available."""
    global _exchange_unsupported
    if _exchange_unsupported or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        _exchange_unsupported = True
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this file system (or kernel) cannot exchange: the two-rename fallback
    raise OSError(err, os.strerror(err), str(b))


def _leftovers(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.{kind}-*")) if out.parent.is_dir() else []


def _pid_alive(path: Path) -> bool:
    try:
        pid = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: str | Path) -> bool:
    """When `out` is missing but a complete old copy of it was left by a killed swap, put it back.
    Returns True when something was restored."""
    out = Path(out)
    if out.exists():
        return False
    olds = [p for p in _leftovers(out, "old") if p.is_dir() and not _pid_alive(p)]
    if not olds:
        return False
    os.rename(olds[-1], out)
    return True


def clean(out: str | Path) -> None:
    """Remove the temporary and old copies killed runs left beside `out` (not those of live runs)."""
    out = Path(out)
    for kind in ("tmp", "old"):
        for p in _leftovers(out, kind):
            if not _pid_alive(p):
                shutil.rmtree(p, ignore_errors=True)


def write_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Write a new `out` through `fill(tmp_dir)` and swap it in (module doc). On any error the
    temporary copy is removed and `out` is the old directory (or absent if there was none)."""
    out = Path(out)
    if out.is_symlink():  # replace what the link points at, not the link
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    clean(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        try:
            fill(tmp)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(out)
            raise
        except Exception as exc:  # e.g. safetensors' SafetensorError: no path in it
            text = str(exc)
            for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
                if os.strerror(code).lower() in text.lower() or f"os error {code})" in text:
                    raise OSError(code, os.strerror(code), str(out)) from exc
            raise
        _fsync_dir(tmp)
        if not out.exists():
            os.rename(tmp, out)
        elif _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rename(old, out)  # put the old one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
