"""The `xpcnn` command (also `python -m xpcnn`): parses, calls the library, prints; the only
package that knows flag names, turning library errors into one line and an exit code.

parser.py: every command's flags; commands.py: what each command does; here: `main` and the one
line each library error becomes.

Exit codes: 0 success, 1 training diverged (NaN/Inf loss), 2 bad input (one line on stderr;
`--debug` shows the traceback), 130 interrupted by Ctrl-C, 143 by SIGTERM (128 + the signal).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from xpcnn.backend import BackendError
from xpcnn.checkpoint import CheckpointError
from xpcnn.cli.parser import build_parser
from xpcnn.data import DataError
from xpcnn.distributed import abort_job, launched_rank
from xpcnn.export import ExportError
from xpcnn.runs.config import ConfigError, ResumeMismatch
from xpcnn.runs.folder import RunFolderError, RunFolderNotEmpty
from xpcnn.runs.scoring import ScoringError

__all__ = ["build_parser", "main"]

BAD_INPUT = (
    BackendError, CheckpointError, ConfigError, DataError, ExportError, RunFolderError,
    ScoringError, OSError,
)  # fmt: skip


def _flag(field: str, value: Any = None) -> str:
    """A setting as the person typed it: `--weight-decay 0.1`, `--no-augment`."""
    name = "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"--no-{name[2:]}"
    return name if value is None else f"{name} {value}"


def _message(err: BaseException, command: str | None) -> str:
    """One line naming the flag or file and what was expected."""
    if isinstance(err, ResumeMismatch):
        return (f"--resume: {_flag(err.field, err.value)} differs from the run's "
                f"{err.stored} ({err.path}); resume with the run's own settings or start a "
                "new --out")  # fmt: skip
    if isinstance(err, ConfigError):
        return f"{_flag(err.field, err.value)}: {err.expected}"
    if isinstance(err, RunFolderNotEmpty):
        return (f"--out: {str(err.path)!r} already exists and is not empty; pass --resume to "
                "continue its run or --force to overwrite it")  # fmt: skip
    if isinstance(err, RunFolderError):
        return f"--out: {err}"
    if isinstance(err, CheckpointError):
        return f"{'--resume' if command == 'train' else '--checkpoint'}: {err}"
    if isinstance(err, DataError):
        return f"{'IMAGE' if command == 'predict' else '--data'}: {err}"
    if isinstance(err, ExportError):
        return f"{_flag(err.what)}: {err.expected}" if isinstance(err.what, str) else str(err)
    if isinstance(err, ScoringError):
        return f"{_flag(err.what, err.value)}: {err.expected}"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the hint names its --help
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("\nxpcnn: interrupted", file=sys.stderr)
        return 130
    except BAD_INPUT as err:
        if args.debug:
            raise
        rank = launched_rank()
        where = f"rank {rank}: " if rank else ""
        print(f"xpcnn: error: {where}{_message(err, args.command)}", file=sys.stderr, flush=True)
        abort_job(2)  # under mpiexec: the other ranks would wait for this one forever
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("xpcnn: error: out of memory: the input asks for more than this machine has "
              "(lower --batch-size or --image-size, or the XPCNN_MAX_FILE_MB, XPCNN_MAX_IMAGE_MP "
              "and XPCNN_MAX_DATA_GB budgets)", file=sys.stderr)  # fmt: skip
        return 2
