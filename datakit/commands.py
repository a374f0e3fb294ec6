"""How every ``datakit`` and ``evals`` command ends: one place turns whatever went wrong into
one line on stderr and an exit status, so no user ever reads a traceback.

- a DatakitError (bad input, settings, recipe, model): its message, exit status 1; a flag
  that cannot be parsed at all (``--k abc``): one line, exit status 2, as for any command;
- an OSError (disk full, read-only file system, a directory where a file should be, no
  permission): the file and the reason in words, exit status 1;
- Ctrl-C or SIGTERM: "interrupted", exit status 130 or 143. Both arrive as KeyboardInterrupt,
  so the ``finally`` blocks that drop temporary files and stop worker processes run for both;
- anything else is a bug in datakit: one line that says so, and the traceback goes to a log
  file whose path the line gives, to attach to a bug report; exit status 70.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import click

from datakit.errors import DatakitError, OptionError
from datakit.options import flag_name

EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 1, 2, 70  # 2: a flag that cannot be parsed; 70: EX_SOFTWARE
OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EFBIG: "the file is larger than this system allows",
    errno.ENAMETOOLONG: "the file name is too long",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that cleanup runs as it does for Ctrl-C."""


class _Interruptions:
    """The SIGINT and SIGTERM handler while a command runs.

    One Ctrl-C can arrive twice: polars raises its own KeyboardInterrupt, then Python's handler
    fires again, which would cut short the ``finally`` blocks that remove temporary files. So a
    signal within a second of the first is ignored; a later one (a user who insists) stops anyway.
    """

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.first is not None and now - self.first < 1.0:
            return
        self.first = now
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _ignore(signum: int, frame: Any) -> None:
    """The handler once a command has been interrupted: it is ending anyway."""


def _forget_interrupt_in_exec() -> None:
    """Undo CPython's note of a KeyboardInterrupt that left code run by ``exec`` of a string.

    CPython 3.10 to 3.13 note such an interrupt even when it is caught (dataclasses and namedtuple
    build their methods with ``exec``, so a Ctrl-C during a lazy import of torch lands there), and
    under ``python -m`` then end the process with SIGINT (status -2) after the cleanup, in place
    of our exit status. There every ``exec`` of a string clears that note before it runs, so an
    empty one forgets it. Where a newer CPython notes only an uncaught interrupt, it does nothing.
    """
    exec("")  # a constant empty string, run only for the side effect above


def describe_os_error(exc: OSError) -> str:
    """``FILE: reason`` for a file-system error, with the second file of a rename when it matters."""
    reason = OS_REASONS.get(exc.errno) or exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    if exc.errno == errno.EISDIR and len(names) == 2:
        names = names[1:]  # a rename onto a directory: the target is what the user named
    written = " (nothing was written)" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return f"{names[0]}: {reason}{written}" if names else f"{reason}{written}"


def log_bug(exc: BaseException) -> Path:
    """Write the traceback of an internal error to a log file; return its path."""
    folder = Path(os.environ.get("DATAKIT_LOG_DIR") or Path(tempfile.gettempdir()) / "datakit-logs")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    path.write_text(f"datakit {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
    return path


def message_for(exc: BaseException) -> tuple[str, int]:
    """(the line to print, the exit status) for an exception that ended a command."""
    if isinstance(exc, OptionError):
        return f"{flag_name(exc.key)}: {exc.problem}", EXIT_ERROR
    if isinstance(exc, DatakitError):
        return str(exc), EXIT_ERROR
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc), EXIT_ERROR
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller batch or input)", EXIT_ERROR
    log = log_bug(exc)
    what = " ".join(str(exc).split())[:200]  # (the whole message is in the log)
    return f"internal error, a bug in datakit ({type(exc).__name__}: {what}); the traceback is in {log}", EXIT_BUG


class Commands(click.Group):
    """A click group whose commands end as the module docstring says."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = {}
        if threading.current_thread() is threading.main_thread():  # (only it may set handlers)
            handler = _Interruptions()
            previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a flag click could not parse: one line, not a usage screen
            command = f"{ctx.command_path} {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else ctx.command_path
            click.echo(f"Error: {exc.format_message()} ({command} --help lists the options)", err=True)
            ctx.exit(EXIT_USAGE)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            status = 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
            # The command is over: further signals are ignored rather than handed back to Python's
            # default. A Ctrl-C that polars or torch already turned into this exception can still
            # be pending in the interpreter, and the default handler would then end the process
            # with a bare SIGINT (status -2) after the cleanup had finished. (A Python function,
            # not SIG_IGN: a pending signal meeting SIG_IGN prints a warning.)
            previous = {number: _ignore for number in previous}
            for number in previous:
                signal.signal(number, _ignore)
            _forget_interrupt_in_exec()
            click.echo("interrupted: unfinished outputs and temporary files were removed "
                       "(checkpoints and caches stay, for a rerun to resume)", err=True)  # fmt: skip
            ctx.exit(status)
        except Exception as exc:  # noqa: BLE001 - the one place every error ends
            line, status = message_for(exc)
            click.echo(f"Error: {line}", err=True)
            ctx.exit(status)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
