"""`qsens`: the one console command. Thin: parse arguments, call the packages, print results.

Each subcommand lives in `qsens/commands/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func` (a callable taking the parsed `argparse.Namespace`, returning an exit
code or None).

The error boundary (`main`): every expected failure is one `error:` line on stderr and exit code 2
— bad arguments (argparse), `QsensError` (bad input found by the packages), and the I/O and parse
errors of the files a user points at (missing/unwritable paths, non-UTF-8 or damaged files). A
closed stdout (`qsens ... | head`) ends quietly. Anything else is a bug: one line naming it, exit
code 3, and the traceback only with QSENS_DEBUG=1.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import sys
import traceback

from core.errors import QsensError

# Order = order in `qsens --help`. A module missing here is simply not offered.
COMMAND_MODULES = ("reference", "prepare", "bank", "graph", "score", "noise", "sample", "cache",
                   "config", "predictor", "analyze", "search", "transfer", "evaluate", "generate", "export",
                   "cost")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error:` line (exit 2) instead of usage + error."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        """Print a bad-argument error as one `error:` line on stderr and exit with code 2."""
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The `qsens` argument parser with every subcommand registered."""
    parser = OneLineParser(
        prog="qsens",
        description="Learn where a diffusion denoiser is sensitive to weight quantization and "
        "emit per-layer mixed-precision configs under a bit budget.",
        epilog="Run `qsens COMMAND --help` for the options of one command. "
        "The whole pipeline: `dvc repro` (or `make repro` on a fresh machine).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"qsens.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"qsens.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


# Write failures of the machine, not of the input: named as such, with the path where known.
_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EFBIG: "the file size limit is reached"}
_STORAGE_TEXT = {"no space left on device": errno.ENOSPC, "storagefull": errno.ENOSPC, "os error 28": errno.ENOSPC,
                 "disk quota exceeded": errno.EDQUOT, "os error 122": errno.EDQUOT,
                 "read-only file system": errno.EROFS, "readonlyfilesystem": errno.EROFS, "os error 30": errno.EROFS,
                 "file too large": errno.EFBIG, "os error 27": errno.EFBIG}


def _storage_error(exc: BaseException) -> str | None:
    """A one-line message when `exc` (or what caused it) is a full disk, an exceeded quota, a
    read-only file system or a file size limit, whatever library raised it (OSError, safetensors'
    SafetensorError, torch's writer RuntimeError, Arrow's IO errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        text = str(exc).lower()
        if code not in _STORAGE_ERRNOS:
            code = next((c for t, c in _STORAGE_TEXT.items() if t in text.replace(" ", "") or t in text), None)
        if code is not None:
            where = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
            what = f"cannot write {where}" if where else "a write failed"
            return (f"{what}: {os.strerror(code)} ({errno.errorcode[code]}): {_STORAGE_ERRNOS[code]}; "
                    "free space or write to another place (--out / --data-dir)")
        exc = exc.__cause__ or exc.__context__
    return None


def _expected_error(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug."""
    if isinstance(exc, QsensError):  # already names its path (atomic writers say what is unchanged)
        return str(exc)
    storage = _storage_error(exc)
    if storage is not None:
        return storage
    if isinstance(exc, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"an input file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    if isinstance(exc, RecursionError):
        return "an input file is nested too deeply to read"
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else "a file"
        return f"{where}: {exc.strerror or exc}"
    kind = type(exc).__name__
    if kind in ("SafetensorError", "HeaderTooLarge", "ArrowInvalid", "ArrowIOError", "YAMLError",
                "ScannerError", "ParserError"):
        return f"a damaged or unreadable input file ({kind}: {str(exc).splitlines()[0][:300]})"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run `qsens` on `argv`: the error boundary (an expected error is one `error:` line on stderr,
    see the module docstring); returns the exit code.
    """
    # diffusers logs warnings on import that are about its own integrations (e.g. "Unable to import
    # `torchao` Tensor objects" with a newer torchao); keep a command's stderr to its own messages.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # torch logs a deprecation warning per Enum that torchao registers with its pytree on import
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        code = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qsens ... | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # the error boundary: see the module docstring
        message = _expected_error(exc)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return 2
        if os.environ.get("QSENS_DEBUG"):
            raise
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {os.path.basename(last.filename)}:{last.lineno}" if last else ""
        print(f"error: internal error {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
              f"{where} (a bug: please report it; QSENS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
