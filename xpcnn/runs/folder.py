"""RunFolder: the life of a run folder — checked before any work, created only once the data
has loaded, locked against a second run while training, cleared with force, resumed from its
checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xpcnn.checkpoint import Checkpoint
from xpcnn.runs.record import RunRecord, load_run

CHECKPOINT, BEST = "checkpoint.npz", "best.npz"
RUN_FILES = (
    CHECKPOINT, BEST, "history.csv", "history.json", "curves.png", "samples.png", "confusion.png",
)  # fmt: skip
LOCK = ".xpcnn.lock"  # held (flock) while a run trains here; removed when it ends


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: its `path` and what was `expected`."""

    def __init__(self, path: Path, expected: str) -> None:
        self.path, self.expected = path, expected
        super().__init__(f"{str(path)!r}: {expected}")


class RunFolderNotEmpty(RunFolderError):
    """A new run asked for a folder that holds files: resume its run or overwrite it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "already exists and is not empty")


class RunFolder:
    """Use as `with RunFolder.open(path, resume=..., force=...) as folder:`.

    `resumed` is the (checkpoint, record) to continue from, or None for a new run. A new run's
    folder is made by `start()`, after the data has loaded, so bad input leaves no folder behind.
    """

    def __init__(self, path: Path, resumed: tuple[Checkpoint, RunRecord] | None) -> None:
        self.path, self.resumed = path, resumed
        self._lock: Any = None

    @classmethod
    def open(cls, path: str | os.PathLike, resume: bool = False, force: bool = False) -> RunFolder:
        path = Path(path)
        if resume and force:
            raise ValueError("resume and force exclude each other")
        if path.exists() and not path.is_dir():
            raise RunFolderError(path, "is a file, expected a folder")
        folder = cls(path, None)
        if path.is_dir():
            folder._acquire()
        try:
            if resume:
                folder.resumed = load_run(path / CHECKPOINT)
            elif not force and folder._has_files():
                raise RunFolderNotEmpty(path)
        except BaseException:
            folder.close()
            raise
        return folder

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    def start(self) -> None:
        """Make the folder of a new run, or clear an earlier run's files from it (force); in
        either case remove what killed writes left (`.checkpoint.npz.*.part`)."""
        if self.resumed is not None:
            self._remove_leftovers()
            return
        fresh = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        if fresh and self._has_files():
            raise RunFolderError(self.path, "was filled by another run while this one loaded")
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        for name in RUN_FILES:
            for leftover in self.path.glob(f".{name}.*"):
                if leftover.suffix in (".part", ".link"):
                    leftover.unlink(missing_ok=True)

    def _has_files(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    def _acquire(self) -> None:
        """Hold an exclusive lock on the folder's lock file, or fail at once if another run
        holds it. A lock file left by a killed run is taken over (its lock died with it)."""
        if self._lock is not None:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        lock_path = self.path / LOCK
        while True:
            handle = open(lock_path, "a+")  # noqa: SIM115 (held open for the run)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunFolderError(
                    self.path, f"is in use by another run (process {holder}); wait for it "
                    "to finish or choose another folder",
                ) from None  # fmt: skip
            try:
                same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder unlinked after we opened it
                break
            handle.close()
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def close(self) -> None:
        """Release the lock and remove the lock file."""
        if self._lock is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        self._lock.close()
        self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
