"""Atomic file and directory writes: a killed run never leaves a file or folder that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | Path) -> object:
    """Load our own torch artefacts with ``weights_only`` (no arbitrary pickles)."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DatadistillError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None
    return directory
