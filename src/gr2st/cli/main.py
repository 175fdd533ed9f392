"""Entry point of the ``gr2st`` command; each pipeline step adds its subcommands.

:func:`main` is the command line's one error boundary. Whatever happens, the user sees
one line on stderr and a meaningful exit status, never a traceback:

========================================  ===============================================
what happened                             stderr, exit status
========================================  ===============================================
usage error (unknown option, bad value)   ``error: <click's message> (see 'gr2st … --help')``, 2
gr2st's own error (bad input, options)    ``error: <message>``, 2
Ctrl-C (SIGINT) / SIGTERM                 ``interrupted; rerun the same command to resume``,
                                          130 / 143 (temporary files removed)
disk full, read-only or denied path       ``error: <path>: <reason>``, 1
out of memory                             ``error: out of memory (…)``, 1
anything else (a bug)                     ``error: unexpected <type>: <message>`` and the
                                          path of a log file with the traceback, 1
========================================  ===============================================

``gr2st --debug …`` (or ``GR2ST_DEBUG=1``) prints tracebacks instead.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import typer
from typer import main as typer_main

from gr2st.cli import benchmark, data, export, features, image, predict
from gr2st.errors import GR2STError, GR2STInterrupted

# Recent typer ships its own copy of click (``typer._click``), older typer uses click
# itself: catch the classes of the copy that parses the command line.
_click: Any = getattr(typer_main, "_click", None) or getattr(typer_main, "click")  # noqa: B009

#: What an interrupted run prints (and the exit status is 128 + the signal).
INTERRUPTED = "interrupted; rerun the same command to resume"
#: OSError numbers that describe the machine, not a bug: reported in one line.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE}
)
#: Texts of those errors, for libraries that wrap them in their own exception types.
_ENVIRONMENT_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system")

app = typer.Typer(
    name="gr2st",
    help="Predict spatial gene expression from H&E histology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from gr2st._utils.versions import version_report

        typer.echo(version_report())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Show the versions of gr2st, Python, torch (CUDA) and key libraries, and exit.",
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Print the full traceback of an error instead of one line (also GR2ST_DEBUG=1).",
    ),
) -> None:
    """Predict spatial gene expression from H&E histology."""


for _module in (data, image, features, benchmark, predict, export):
    _module.register(app)


class _OneLine(logging.Formatter):
    """``warning: message`` (the level in lower case, like ``error:``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # Python warnings (ours and numpy's) as one line, without the source line.
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was at set-up.

    A caller that swaps ``sys.stderr`` (a notebook, a test runner capturing output) and
    closes its stream later would otherwise leave gr2st's logger writing to a closed file.
    """

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_output() -> None:
    handler = _CurrentStderr()
    handler.setFormatter(_OneLine())
    logger = logging.getLogger("gr2st")
    logger.handlers = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    warnings.showwarning = _show_warning


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise GR2STInterrupted("terminated", signum=signum)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _log_dir() -> Path:
    from gr2st._utils.files import user_cache_dir

    return user_cache_dir() / "logs"


def _write_log(args: Sequence[str], err: BaseException) -> Path | None:
    """Write the traceback and versions to a log file; its path, or None if unwritable."""
    from gr2st._utils.versions import version_report

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "\n".join(
        [
            f"command: gr2st {' '.join(args)}",
            f"cwd: {os.getcwd()}",
            version_report(),
            "",
            "".join(traceback.format_exception(err)),
        ]
    )
    import tempfile

    for folder in (_log_dir(), Path(tempfile.gettempdir())):
        path = folder / f"gr2st-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return path
    return None


def _usage_line(err: Any) -> str:
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {message}{where}"


def _environment_line(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or " ".join(str(err).split())
    return f"error: {where}: {reason}" if where else f"error: {reason}"


def run(args: Sequence[str], *, debug: bool = False) -> int:
    """Run the command line ``gr2st ARGS`` and return its exit status (never raises).

    Parameters
    ----------
    args
        The arguments after ``gr2st``.
    debug
        Print tracebacks instead of one-line messages.
    """
    command = typer_main.get_command(app)
    try:
        try:
            with command.make_context("gr2st", list(args)) as ctx:
                command.invoke(ctx)
            return 0
        except typer.Exit as exit_:
            return int(exit_.exit_code)
        except _click.exceptions.NoArgsIsHelpError as err:
            err.show()
            return 0
        except _click.exceptions.ClickException as err:
            if debug:
                traceback.print_exc()
            _say(_usage_line(err))
            return int(err.exit_code)
        except typer.Abort:
            _say(INTERRUPTED)
            return 130
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, or training stopped by either
        if debug:
            traceback.print_exc()
        signum = getattr(err, "signum", None) or signal.SIGINT
        _say(INTERRUPTED)
        return 128 + int(signum)
    except GR2STError as err:
        if debug:
            traceback.print_exc()
        _say(f"error: {' '.join(str(err).split())}")
        return 2
    except MemoryError as err:
        if debug:
            traceback.print_exc()
        detail = " ".join(str(err).split())
        _say(
            f"error: out of memory ({detail or 'MemoryError'}); lower --batch-size or --size, "
            "or use fewer sections"
        )
        return 1
    except OSError as err:
        if err.errno == errno.EPIPE:  # the reader of our output went away (e.g. | head)
            return 1
        if err.errno in _ENVIRONMENT_ERRNOS and not debug:
            _say(_environment_line(err))
            return 1
        return _unexpected(args, err, debug)
    except Exception as err:
        text = " ".join(str(err).split())
        if not debug and any(m in text for m in _ENVIRONMENT_MESSAGES):
            # Libraries that wrap the OSError (safetensors, h5py) keep its text.
            _say(f"error: {text}")
            return 1
        return _unexpected(args, err, debug)


def _unexpected(args: Sequence[str], err: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(err)
        return 1
    detail = " ".join(str(err).split())[:300]
    log_file = _write_log(args, err)
    where = f"; traceback in {log_file}" if log_file else ""
    _say(
        f"error: unexpected {type(err).__name__}: {detail}{where} (a bug: please report it "
        "with that file; --debug prints the traceback here)"
    )
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI (``argv`` defaults to ``sys.argv[1:]``) and exit with its status.

    ``--debug`` may appear anywhere before ``--``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut] or os.environ.get("GR2ST_DEBUG", "") not in ("", "0")
    args = [a for a in args[:cut] if a != "--debug"] + args[cut:]
    _configure_output()
    previous = None
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        # The default would kill the process without unwinding: no temporary file
        # cleaned, no checkpoint saved.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = run(args, debug=debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)
