"""Atomic file and directory writes: a killed run never leaves a file or folder that looks complete."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import torch

from .errors import DatadistillError


def cache_root() -> Path:
    """Where caches (features, statistics, converted weights, trained models) live: ``$DATADISTILL_CACHE``."""
    return Path(os.environ.get("DATADISTILL_CACHE", Path.home() / ".cache" / "datadistill"))


def _fail(path: Path, exc: OSError) -> DatadistillError:
    return DatadistillError(f"cannot write {path}: {exc.strerror or exc}")


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(Exception):
            os.unlink(tmp)
        raise _fail(path, exc) from None


def write_json(path: str | Path, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_torch(path: str | Path, obj: object) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | Path) -> object:
    """Load our own torch artefacts with ``weights_only`` (no arbitrary pickles)."""
    return torch.load(path, map_location="cpu", weights_only=True)


CHECKPOINT_MAGIC = b"datadistill-checkpoint-v1 sha256="


def previous_checkpoint(path: Path) -> Path:
    return path.with_name(f"previous-{path.name}")


def checkpoint_lock(path: Path) -> Path:
    """The lock file of the process training towards checkpoint ``path``."""
    return path.with_name(f"{path.name}.lock")


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint, the previous copy ``save_checkpoint`` keeps and its lock file, once the trained result
    is saved (a later process finds the result and trains nothing, so the lock has nothing left to guard)."""
    for stale in (path, previous_checkpoint(path), checkpoint_lock(path)):
        stale.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, obj: object) -> None:
    """Write a checksummed checkpoint atomically, keeping the one before it as ``previous-NAME``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    if path.exists():
        try:
            os.replace(path, previous_checkpoint(path))
        except OSError as exc:
            raise _fail(path, exc) from None
    write_bytes(path, CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checkpoint(path: Path) -> object:
    """The checkpoint's content; ``ValueError`` when it is truncated, corrupt or not ours."""
    raw = path.read_bytes()
    header, sep, payload = raw.partition(b"\n")
    if not raw.startswith(CHECKPOINT_MAGIC) or not sep:
        raise ValueError("not a datadistill checkpoint")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(CHECKPOINT_MAGIC) :]:
        raise ValueError("checksum mismatch (truncated or corrupt)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> tuple[object, Path] | None:
    """The newest intact checkpoint among ``path`` and the one before it; None when neither exists.

    A corrupt or truncated newest checkpoint is reported in the log and the previous one is used.
    """
    path = Path(path)
    candidates = [p for p in (path, previous_checkpoint(path)) if p.exists()]
    problems = []
    for candidate in candidates:
        try:
            return read_checkpoint(candidate), candidate
        except (ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            problems.append(f"{candidate.name}: {exc}")
            logging.getLogger("datadistill").warning("checkpoint %s is unusable (%s)", candidate, exc)
    if candidates:
        raise DatadistillError(
            f"no intact checkpoint in {path.parent} ({'; '.join(problems)}); delete the folder to start over"
        )
    return None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    except OSError as exc:
        raise _fail(path, exc) from None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _fail(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(directory: str | Path) -> Path:
    """Create ``directory`` if needed and prove we can write there, with a clear error otherwise."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DatadistillError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None
    return directory


def check_creatable(directory: str | Path) -> None:
    """Fail as ``check_writable`` would, but create nothing: the nearest existing ancestor must be a writable
    folder (so bad input found later leaves no folder behind)."""
    directory = Path(directory).absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "Permission denied"
    if problem is not None:
        raise DatadistillError(f"output directory {directory} is not writable: {problem}")


@contextlib.contextmanager
def hold_lock(path: str | Path, what: str | Path, hint: str = "wait for it") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the life of the block.

    A second holder, in this process or another, gets a DatadistillError naming the owner (pid, host, start time,
    which the file records) and ``hint``. The lock is the kernel's (``flock``): it goes with the process, so a lock
    file left by a killed process blocks nothing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _fail(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatadistillError(f"{what} is in use by {_lock_owner(path)}; {hint}") from None
        except OSError as exc:  # a file system without locks (some network mounts): run unguarded, as before
            logging.getLogger("datadistill").warning(
                "cannot lock %s (%s); a second process would not be stopped", path, exc.strerror or exc
            )
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a process opening it)


def _lock_owner(path: Path) -> str:
    """'process 1234 (started 12:03:04)' from a held lock file, as far as it can be read."""
    try:
        owner = json.loads(path.read_text())
        started = datetime.fromisoformat(owner["started"])
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # its owner is still writing the record
    when = started.strftime("%H:%M:%S" if started.date() == datetime.now().date() else "%Y-%m-%d %H:%M:%S")
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"process {pid}{where} (started {when})"
