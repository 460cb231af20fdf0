"""The run directory's file discipline: one writer, atomic files, OS faults as one-line errors.

* :class:`RunLock` -- an OS file lock (``fcntl.flock``) on ``<run_dir>/.lock``, which also holds
  the writer's pid. The kernel drops the lock when its holder exits, however it exits (crash,
  ``kill -9``), so a lock file left by a dead process is free: it is taken over, with a message
  naming the dead pid. A directory whose lock is held refuses a second writer, naming the holder.
* :func:`atomic_write` -- bytes or text to ``<dir>/.<name>.tmp-<pid>``, flushed, ``fsync``-ed and
  ``os.replace``-d over the target: a reader sees the old file or the new one, never a partial
  one, and a failure (disk full) removes the temporary and leaves the old file as it was.
* :func:`clean_stale_temporaries` -- removes such temporaries left by a killed writer (called by
  the one process that holds the lock, so none of them can be in use).
* :func:`os_errors` -- turns an ``OSError`` met while touching a path into :class:`RunDirError`,
  whose message is one line naming the path and the cause (``No space left on device``).

Nothing here changes process-wide state; importing the module opens no file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["RunDirError", "RunDirBusy", "RunLock", "atomic_write", "clean_stale_temporaries",
           "describe_os_error", "os_errors", "write_files_atomically", "LOCK_NAME", "temporary_name", "inspect_run_dir",
           "remove_run_outputs", "RUN_OUTPUTS"]

log = logging.getLogger("shrinkssm")

LOCK_NAME = ".lock"
RUN_OUTPUTS = ("checkpoints/last.pt", "checkpoints/best.pt", "config.yaml", "metrics.jsonl",
               "reductions.json", "hsv_track.jsonl", "summary.json", "train.log",
               "plots/curves.png", "plots/state_dims.png", "plots/hsv_spectra.png",
               "plots/hsv_tracks.png", "plots/hsv_stability.png")
"""The files a run writes (relative to its directory), which ``--force`` removes."""
_TMP = re.compile(r"^\..+\.tmp-\d+$")


class RunDirError(RuntimeError):
    """An OS-level failure on a file of a run (disk full, permission denied, not a directory).

    ``path`` is the file or directory concerned, ``errno`` the OS error number (or None).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 errno_: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.errno = errno_


class RunDirBusy(RunDirError):
    """Another live process holds the run directory's lock; ``pid`` is its process id."""

    def __init__(self, message: str, path: str | os.PathLike, pid: int | None) -> None:
        super().__init__(message, path)
        self.pid = pid


def describe_os_error(exc: OSError) -> str:
    """``"No space left on device"``: the OS's words for an error, without the errno prefix."""
    return exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else str(exc)) \
        or type(exc).__name__


@contextlib.contextmanager
def os_errors(path: str | os.PathLike, action: str = "write") -> Iterator[None]:
    """Re-raise an ``OSError`` inside the block as :class:`RunDirError` naming ``path``.

    The message reads ``cannot <action> <path>: <cause>``; the path is the one the OS named if it
    named one (e.g. a parent that is not a directory), else ``path``.
    """
    try:
        yield
    except RunDirError:
        raise
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else Path(path)
        raise RunDirError(f"cannot {action} {where}: {describe_os_error(exc)}", where,
                          exc.errno) from None


def temporary_name(path: Path) -> Path:
    """``<dir>/.<name>.tmp-<pid>``: where :func:`atomic_write` stages ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` atomically; returns ``path``.

    Raises :class:`RunDirError` naming ``path`` on any OS error, after removing the temporary;
    the previous content of ``path`` is then untouched.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temporary_name(path)
    with os_errors(path):
        try:
            with open(tmp, "wb") as handle:
                view = memoryview(payload)
                while view:                       # a short write (signal, quota) is not an error
                    written = handle.write(view)
                    view = view[written:]
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    _sync_directory(path.parent)
    return path


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after ``os.replace`` could otherwise
    bring the old name back); best effort: not every file system can sync a directory."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_files_atomically(out_dir: str | os.PathLike,
                           produce: Callable[[Path], list[Path]]) -> list[Path]:
    """Let ``produce(staging_dir)`` write files into a hidden staging directory, then move each
    into ``out_dir`` with ``os.replace`` (same file system: atomic per file).

    Used for plots: a failure half-way (disk full inside the PNG encoder) leaves no partial or
    0-byte file in ``out_dir``, only the previous versions. Returns the final paths.
    """
    out_dir = Path(out_dir)
    staging = out_dir / f".staging.tmp-{os.getpid()}"
    with os_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            written = produce(staging)
            final = []
            for path in written:
                target = out_dir / Path(path).name
                os.replace(path, target)
                final.append(target)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def clean_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files and staging directories in the run directory and its
    ``checkpoints/`` and ``plots/`` folders; returns what was removed. Call only while holding
    the run's :class:`RunLock` (then no other writer can be using them)."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "plots"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not _TMP.match(entry.name) and entry.name != "reductions.json.tmp":
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def inspect_run_dir(path: str | os.PathLike) -> tuple[str, list[str]]:
    """What a would-be run directory holds: ``(kind, names)`` with ``kind`` one of ``"missing"``,
    ``"file"`` (not a directory), ``"empty"`` (nothing but a lock and temporaries), ``"run"`` (a
    checkpoint), ``"run-without-checkpoint"`` (metrics.jsonl, no checkpoint; a config.yaml alone
    may be a user's own file) or
    ``"other"``; ``names`` are its entries (lock and temporaries left out), sorted."""
    path = Path(path)
    if not path.exists():
        return "missing", []
    if not path.is_dir():
        return "file", []
    with os_errors(path, "read"):
        names = sorted(e.name for e in path.iterdir()
                       if e.name != LOCK_NAME and not _TMP.match(e.name))
    if (path / "checkpoints" / "last.pt").exists():
        return "run", names
    if (path / "metrics.jsonl").is_file():     # written at a run's start, with config.yaml
        return "run-without-checkpoint", names
    return ("other" if names else "empty"), names


def remove_run_outputs(path: str | os.PathLike) -> list[Path]:
    """Delete the files of a previous run (:data:`RUN_OUTPUTS`, and ``tensorboard/``) so that a
    new run started in ``path`` mixes with nothing old; other files are left alone."""
    path = Path(path)
    removed = []
    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_file():
            with os_errors(target, "remove"):
                target.unlink()
            removed.append(target)
    if (path / "tensorboard").is_dir():
        with os_errors(path / "tensorboard", "remove"):
            shutil.rmtree(path / "tensorboard")
        removed.append(path / "tensorboard")
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive, advisory lock of one run directory for one writing process.

    ``acquire()`` creates the directory if needed, takes ``flock(LOCK_EX | LOCK_NB)`` on
    ``<run_dir>/.lock`` and writes the pid into it; ``release()`` (also on ``with`` exit) empties
    the file and drops the lock. The kernel releases the lock of a process that dies, so only a
    live process can block a new writer; a pid left in the file by a dead one is reported and
    taken over (``previous_pid``). Raises :class:`RunDirBusy` (naming the holder's pid) or
    :class:`RunDirError` (the directory cannot be created or written).

    Held locks are per process and per open file: acquiring the same directory twice in one
    process through two ``RunLock`` objects fails like a second process would.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.previous_pid: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"cannot use {self.run_dir} as a run directory: it is a file",
                              self.run_dir, errno.ENOTDIR)
        with os_errors(self.run_dir, "create the run directory"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        with os_errors(self.path, "create the lock file"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = _read_pid(fd)
                    who = f"process {pid}" if pid is not None else "another process"
                    raise RunDirBusy(f"{self.run_dir} is in use: {who} is writing to it (lock "
                                     f"{self.path}); wait for it to end or choose another "
                                     "directory", self.run_dir, pid) from None
            old = _read_pid(fd)
            if old is not None and old != os.getpid():
                self.previous_pid = old
                state = "no longer running" if not _pid_alive(old) else "no longer holding it"
                log.warning("took over the lock of %s left by process %d (%s)", self.run_dir,
                            old, state)
            with os_errors(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and drop the lock (idempotent; never raises)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            os.close(fd)                         # closing the descriptor drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:                   # a forgotten lock must not outlive its object
        try:
            self.release()
        except Exception:                        # interpreter shutdown: os may be gone already
            pass


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
