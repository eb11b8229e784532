"""The file manifest of one ImageFolder split: each image's path (relative to the split folder), size in bytes,
modification time, width and height read from its header, label, and the result of the corruption check; the
class names; the modification times of the folders it listed; and a digest of all that (the split's identity).

Built once per split folder (class list) and kept in the cache (``$DATADISTILL_CACHE/manifests/``), written
atomically. It stays valid while the split folder and every folder below it keep the modification times it
recorded: adding, removing or renaming a file changes its folder's time. Timestamps have a coarse granularity, so
a manifest built less than ``SETTLE_SECONDS`` after a folder changed is listed again at its next use. A rebuild
checks only files that are new or have a new size or modification time. Not noticed: a file rewritten in place
(same name, no folder change) in a folder that had settled; it is decoded at use as always, and if unreadable it
fails there with the same one-line error.

The corruption check (``inspect_image``) reads headers, not pixels. It catches files that cannot be opened, empty
files, files PIL does not recognise as an image (random bytes, text named ``.png``), PNGs with a damaged or missing
chunk (``verify`` reads every chunk and its checksum), JPEGs cut short (no end-of-image marker at the end and a
1/8-scale decode fails), header errors of the other formats and decompression bombs. It does not catch damaged
compressed data that keeps its structure (a PNG whose zlib stream is broken under valid checksums, a JPEG whose
coded data is damaged but still ends with the marker) nor anything past the header of BMP, GIF, WebP or TIFF.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import dist
from ..core.errors import DataError
from ..core.io import cache_root, write_bytes
from ..core.progress import log, progress_bar
from .decode import decode_errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
MANIFEST_VERSION = 1
SETTLE_SECONDS = 2.0
PARALLEL_MIN_FILES = 512  # fewer files to check than this: checked in the calling process
CHUNK = 256  # files per task of the process pool


@dataclass
class Manifest:
    folder: Path
    classes: list[str]
    relpaths: list[str]  # "class/file.jpg", per class in path order
    labels: np.ndarray  # int64
    sizes: np.ndarray  # int64, bytes
    mtimes: np.ndarray  # int64, ns
    widths: np.ndarray  # int32, 0 for an unreadable file
    heights: np.ndarray  # int32
    formats: np.ndarray  # uint8 index into format_names
    format_names: list[str]
    errors: dict[int, str]  # file index -> why it is unreadable
    dirs: dict[str, int]  # folder relative to the split folder ("" itself) -> mtime in ns when listed
    built_at: float  # time.time() before listing
    digest: str = ""

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def is_jpeg(self) -> np.ndarray:
        codes = [i for i, name in enumerate(self.format_names) if name in ("JPEG", "MPO")]
        return np.isin(self.formats, codes)

    def current(self) -> bool:
        """The recorded folders are unchanged and had settled when the manifest was built."""
        settled_before = int((self.built_at - SETTLE_SECONDS) * 1e9)
        for rel, mtime in self.dirs.items():
            try:
                if os.stat(self.folder / rel).st_mtime_ns != mtime or mtime >= settled_before:
                    return False
            except OSError:
                return False
        return True

    def compute_digest(self) -> str:
        h = hashlib.sha1(f"manifest v{MANIFEST_VERSION}".encode())
        h.update(json.dumps(self.classes).encode())
        h.update("\0".join(self.relpaths).encode("utf-8", "surrogateescape"))
        for arr in (self.labels, self.sizes, self.mtimes, self.widths, self.heights):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(sorted(self.errors.items())).encode())
        return h.hexdigest()


def manifest_file(folder: Path, classes: list[str] | None) -> Path:
    key = json.dumps([str(folder.resolve()), classes, MANIFEST_VERSION])
    return cache_root() / "manifests" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"


def image_manifest(folder: str | Path, classes: list[str] | None = None, workers: int = 0) -> Manifest:
    """The manifest of the ImageFolder split ``folder`` (one sub-folder per class; ``classes`` fixes which and
    their order, default: every sub-folder, sorted), from the cache when still current, else (re)built with
    ``workers`` processes checking the files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    path = manifest_file(folder, classes)
    with dist.main_first():  # rank 0 builds and saves; the other ranks find it current
        previous = _read(path, folder)
        if previous is not None and previous.current():
            return previous
        manifest = _build(folder, classes, workers, previous)
        if dist.is_main():
            _write(path, manifest)
    return manifest


def inspect_image(path: str) -> tuple[int, int, str, str | None]:
    """(width, height, format, None) for a readable image, (0, 0, format or "", why) for a file that is not."""
    from PIL import Image

    fmt = ""
    try:
        if os.path.getsize(path) == 0:
            return 0, 0, "", "empty file (0 bytes)"
        with Image.open(path) as im:
            fmt = im.format or ""
            width, height = im.size
            im.verify()
        if fmt in ("JPEG", "MPO") and not _ends_with_eoi(path):
            # No end-of-image marker last: data after the image (fine) or a file cut short (fails to decode).
            with Image.open(path) as im:
                im.draft(None, (max(1, width // 8), max(1, height // 8)))
                im.load()
    except decode_errors() as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return 0, 0, fmt, reason.replace(f" '{path}'", "").replace(path, "").strip() or type(exc).__name__
    return width, height, fmt, None


def _ends_with_eoi(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def _inspect_chunk(paths: list[str]) -> list[tuple[int, int, str, str | None]]:
    return [inspect_image(p) for p in paths]


def _part_key(rel: str) -> list[str]:
    return rel.split("/")  # the order of pathlib's sorted(): by path components


def _list_class(folder: Path, name: str) -> tuple[list[str], list[int], list[int], dict[str, int]]:
    """Image files below ``folder/name`` (recursively; symlinked folders are not followed): relative paths, sizes,
    mtimes, and the folders visited with their mtimes (read before listing, so a change during it is seen later)."""
    rels, sizes, mtimes, dirs = [], [], [], {}
    pending = [name]
    while pending:
        rel_dir = pending.pop()
        where = folder / rel_dir
        try:
            dirs[rel_dir] = os.stat(where).st_mtime_ns
            entries = list(os.scandir(where))
        except OSError as exc:
            raise DataError(f"cannot list {where}: {exc.strerror or exc}") from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                try:
                    st = entry.stat()
                except OSError as exc:
                    raise DataError(f"cannot read {where / entry.name}: {exc.strerror or exc}") from None
                rels.append(rel)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
    order = sorted(range(len(rels)), key=lambda i: _part_key(rels[i]))
    return [rels[i] for i in order], [sizes[i] for i in order], [mtimes[i] for i in order], dirs


def _build(folder: Path, classes: list[str] | None, workers: int, previous: Manifest | None) -> Manifest:
    built_at = time.time()
    dirs = {"": os.stat(folder).st_mtime_ns}
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    classes = found if classes is None else list(classes)
    if not classes:
        raise DataError(f"image folder {folder} has no class sub-folders")
    present = set(found)
    for name in classes:
        if name not in present:
            raise DataError(f"class '{name}' has no images in {folder / name}")
    with ThreadPoolExecutor(max(1, min(workers, 16))) as pool:  # listing waits on the file system, not the GIL
        listed = list(pool.map(lambda name: _list_class(folder, name), classes))
    relpaths, labels, sizes, mtimes = [], [], [], []
    for label, (name, (rels, size, mtime, seen)) in enumerate(zip(classes, listed, strict=True)):
        if not rels:
            raise DataError(f"class '{name}' has no images in {folder / name}")
        relpaths += rels
        labels += [label] * len(rels)
        sizes += size
        mtimes += mtime
        dirs.update(seen)
    n = len(relpaths)
    results: list[tuple[int, int, str, str | None] | None] = [None] * n
    if previous is not None:  # files with the same name, size and mtime keep their check
        known = {rel: i for i, rel in enumerate(previous.relpaths)}
        for i, rel in enumerate(relpaths):
            j = known.get(rel)
            if j is not None and previous.sizes[j] == sizes[i] and previous.mtimes[j] == mtimes[i]:
                results[i] = (
                    int(previous.widths[j]),
                    int(previous.heights[j]),
                    previous.format_names[previous.formats[j]],
                    previous.errors.get(j),
                )
    todo = [i for i in range(n) if results[i] is None]
    for i, result in zip(todo, _inspect([str(folder / relpaths[i]) for i in todo], workers, folder), strict=True):
        results[i] = result
    format_names = sorted({r[2] for r in results})
    code = {name: k for k, name in enumerate(format_names)}
    manifest = Manifest(
        folder=folder,
        classes=classes,
        relpaths=relpaths,
        labels=np.array(labels, dtype=np.int64),
        sizes=np.array(sizes, dtype=np.int64),
        mtimes=np.array(mtimes, dtype=np.int64),
        widths=np.array([r[0] for r in results], dtype=np.int32),
        heights=np.array([r[1] for r in results], dtype=np.int32),
        formats=np.array([code[r[2]] for r in results], dtype=np.uint8),
        format_names=format_names,
        errors={i: r[3] for i, r in enumerate(results) if r[3] is not None},
        dirs=dirs,
        built_at=built_at,
    )
    manifest.digest = manifest.compute_digest()
    log.info("image folder %s: %d files listed, %d checked, %d unreadable", folder, n, len(todo), len(manifest.errors))
    return manifest


def _inspect(paths: list[str], workers: int, folder: Path) -> list[tuple[int, int, str, str | None]]:
    """Check ``paths``: in this process when few, else in a pool of ``workers`` processes, with a progress bar."""
    if not paths:
        return []
    bar = progress_bar(f"checking images in {folder}", total=len(paths))
    out: list[tuple[int, int, str, str | None]] = []
    if workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
        for path in paths:
            out.append(inspect_image(path))
            bar.update(1)
    else:
        chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
        with ProcessPoolExecutor(workers) as pool:
            for chunk, results in zip(chunks, pool.map(_inspect_chunk, chunks), strict=True):
                out += results
                bar.update(len(chunk))
    bar.close()
    return out


def _write(path: Path, m: Manifest) -> None:
    meta = {
        "version": MANIFEST_VERSION,
        "classes": m.classes,
        "format_names": m.format_names,
        "errors": {str(i): why for i, why in m.errors.items()},
        "dirs": m.dirs,
        "built_at": m.built_at,
        "digest": m.digest,
    }
    names = "\0".join(m.relpaths).encode("utf-8", "surrogateescape")
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        names=np.frombuffer(names, dtype=np.uint8),
        labels=m.labels,
        sizes=m.sizes,
        mtimes=m.mtimes,
        widths=m.widths,
        heights=m.heights,
        formats=m.formats,
    )
    write_bytes(path, buf.getvalue())


def _read(path: Path, folder: Path) -> Manifest | None:
    """The cached manifest, or None when absent, damaged or of another version (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != MANIFEST_VERSION:
                return None
            names = z["names"].tobytes().decode("utf-8", "surrogateescape")
            m = Manifest(
                folder=folder,
                classes=meta["classes"],
                relpaths=names.split("\0") if names else [],
                labels=z["labels"],
                sizes=z["sizes"],
                mtimes=z["mtimes"],
                widths=z["widths"],
                heights=z["heights"],
                formats=z["formats"],
                format_names=meta["format_names"],
                errors={int(i): why for i, why in meta["errors"].items()},
                dirs=meta["dirs"],
                built_at=meta["built_at"],
                digest=meta["digest"],
            )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        log.info("manifest %s is unusable (%s); rebuilding it", path, exc)
        return None
    return m if len(m.relpaths) == len(m.labels) else None
