"""What makes a number: the settings that identify an evaluation (data and its split, protocol and its options,
evaluation model, weights and crop, seeds), a distillation run or a set read from files (by content), as plain JSON
with a short digest. Bench cells, bench run directories and the evaluations a run keeps in its metrics.json are
keyed by them, so results of different settings never replace, or pass for, one another."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .protocols import with_run_defaults

if TYPE_CHECKING:
    from ..data import RealData

DIGEST_CHARS = 10

# (backbone, weights, crop) option triples of the protocols: filled from the evaluated run where not given.
BACKBONE_OPTIONS = (("eval_backbone", "weights", "crop"), ("distill_backbone", "distill_weights", "distill_crop"))


def digest(settings: object) -> str:
    """A short, stable digest of JSON-able settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def data_identity(data: RealData) -> dict:
    """The dataset by name and content (not by where it lies: the root folder is left out) and its split."""
    return {
        "name": data.name,
        "fingerprint": data.fingerprint(),
        "val_fraction": data.extras.get("val_fraction"),
        "split_seed": data.extras.get("split_seed"),
    }


def eval_settings(
    protocol: str, options: dict, seeds: int, first_seed: int, data: dict, run_options: dict | None = None
) -> dict:
    """An evaluation's identity: the data, the protocol with all its options, the run's backbone, weights and crop
    filled in where the options leave them to the run (as the protocol fills them), and the seeds."""
    opts = dict(options)
    for names in BACKBONE_OPTIONS:
        if names[0] in opts:
            opts.update(zip(names, with_run_defaults(run_options or {}, *(opts.get(n) for n in names)), strict=True))
    return {"data": data, "protocol": protocol, "options": opts, "seeds": seeds, "first_seed": first_seed}


def eval_key(protocol: str, model: str | None, settings: dict) -> str:
    """Where an evaluation is kept in a run's metrics.json: readable, and unique to its settings."""
    return f"{protocol}@{model or '-'}|{digest(settings)}"


def evaluation_of(record: dict, ignore: tuple[str, ...] = ()) -> str | None:
    """The digest of the evaluation a result record comes from, less the options named in ``ignore``; ``None``
    for records written before results carried their settings."""
    settings = (record.get("settings") or {}).get("evaluation")
    if settings is None:
        return None
    options = {k: v for k, v in settings.get("options", {}).items() if k not in ignore}
    return digest({**settings, "options": options})


def differences(settings: list[dict | None]) -> list[str]:
    """For each of several settings, the values by which it differs from the others (``key=value``, nested keys
    by their last name), for labels that must tell them apart; ``None`` (settings not recorded) says so."""
    flat = [_flatten(s) if s is not None else None for s in settings]
    known = [f for f in flat if f is not None]
    keys = [k for k in dict.fromkeys(k for f in known for k in f) if len({json.dumps(f.get(k)) for f in known}) > 1]
    return [
        "settings not recorded" if f is None else ", ".join(f"{k.rsplit('.', 1)[-1]}={f.get(k)}" for k in keys)
        for f in flat
    ]


def _flatten(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def content_digest(files: list[str | Path], base: str | Path) -> str:
    """SHA-256 of files' names (relative to ``base``) and bytes, in the order given: what a set read from files is,
    wherever it lies."""
    h = hashlib.sha256()
    for f in map(Path, files):
        name = os.path.relpath(f, base) if Path(base).is_dir() else f.name
        h.update(name.encode() + b"\0")
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def imported_set_identity(meta: dict) -> dict:
    """A set read from files (a ``SyntheticSet.load`` of a path that is not a run): the digest of the files it was
    read from and the normalisation undone on reading them; not where they lie, so a moved copy is the same set and
    a changed file is another."""
    source = Path(meta["source"])
    return {
        "content_sha256": content_digest(meta["source_files"], source if source.is_dir() else source.parent),
        "input_norm": meta.get("input_norm"),
    }
