"""Read results for a report: bench directories (``results.json``) and run directories (``metrics.json``), as
one list of uniform records.

A record has the fields of a bench record (``bench/runner.py``): ``key, ipc, method, distill_backbone, protocol,
eval_backbone, evaluated_with, mean, std, val_mean, test_acc, val_acc, seeds, eval_seconds, details,
distill_phases`` plus ``data`` (the dataset), ``source`` (the directory it came from) and ``runs`` (absolute run
directories of the evaluated set; several for Random in a bench, one per seed; none for a set made elsewhere, whose
``set_source`` is the file or folder it was read from), and where it was recorded
``settings`` (``{"evaluation": ...}``, and ``"set"`` for a bench cell) and ``given`` (a bench cell's options as
the plan set them). Records written before results carried their settings are read as they are. Run directories
are also read for their pictures and curves: ``synset/grid.png``, the loss curve and the phases of
``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core import layout
from ..core.errors import ConfigError, DataError
from ..evaluate import PROTOCOLS
from ..methods import METHODS
from ..methods.base import BackboneOptions


@dataclass
class RunInfo:
    """What a report shows of one run directory."""

    path: Path
    config: dict
    metrics: dict

    @property
    def distill(self) -> dict:
        return self.metrics.get("distill", {})

    @property
    def losses(self) -> list[float]:
        return [float(x) for x in self.distill.get("losses") or [] if x is not None]

    @property
    def phases(self) -> dict:
        return self.distill.get("phases", {})

    @property
    def grid(self) -> Path | None:
        path = self.path / layout.SYNSET / layout.SYNSET_GRID
        return path if path.exists() else None

    @property
    def manifest(self) -> dict:
        path = self.path / layout.SYNSET / layout.SYNSET_MANIFEST
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def classes(self) -> list[str]:
        return self.manifest.get("classes", [])

    @property
    def grid_classes(self) -> int:
        """Class rows in grid.png (a preview of at most the first 100 classes; every class in older sets)."""
        return self.manifest.get("grid", {}).get("classes", len(self.classes))


@dataclass
class Collection:
    records: list[dict] = field(default_factory=list)
    runs: dict[Path, RunInfo] = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)  # one per input: path, kind, data, plan

    def run(self, record: dict) -> RunInfo | None:
        """The first run directory of a record that exists (Random: the first seed's set)."""
        for path in record.get("runs") or []:
            info = self.runs.get(Path(path)) or load_run(Path(path))
            if info is not None:
                self.runs[Path(path)] = info
                return info
        return None


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_run(path: Path) -> RunInfo | None:
    if not layout.is_run_dir(path):
        return None
    metrics = _json(path / layout.RUN_METRICS) if (path / layout.RUN_METRICS).exists() else {}
    return RunInfo(path, _json(path / layout.RUN_CONFIG), metrics)


def _bench_records(path: Path) -> tuple[list[dict], dict, int]:
    """The records of the bench's current plan (the cells bench.json lists; every record of a bench written before
    bench.json listed them), the plan, and how many records of earlier plans results.json keeps besides."""
    plan = _json(path / layout.BENCH_PLAN)
    results = _json(path / layout.BENCH_RESULTS) if (path / layout.BENCH_RESULTS).exists() else []
    if "cells" in plan:
        by_key = {r["key"]: r for r in results}
        earlier = len(set(by_key) - set(plan["cells"]))
        results = [by_key[k] for k in plan["cells"] if k in by_key]
    else:
        earlier = 0
    records = []
    for r in results:
        r = {
            **r,
            "key": f"{path}|{r['key']}",
            "data": plan.get("data"),
            "source": str(path),
            "protocol": _protocol_label(r["protocol"], r.get("details") or {}),
        }
        if r.get("method") != "full-data":
            rel = r.get("runs")
            if rel is None:  # (a set made elsewhere, with a set_source, has none: [])
                rel = layout.early_bench_run_dirs(
                    r["method"], r["ipc"], r["distill_backbone"], plan["seeds"], _uses_backbone(r["method"])
                )
            r["runs"] = [str(path / p) for p in rel]
        records.append(r)
    return records, plan, earlier


def _uses_backbone(method: str) -> bool:
    name = method.partition(":")[0]
    return name in METHODS and issubclass(METHODS.get(name).Options, BackboneOptions)


def run_records(info: RunInfo) -> list[dict]:
    """One record per evaluation stored in a run directory's metrics.json (each with its settings, where the
    evaluation recorded them; keys ``protocol@backbone`` of earlier versions hold none)."""
    d = info.config.get("distill", {})
    options = d.get("options", {})
    records = []
    for key, e in (info.metrics.get("eval") or {}).items():
        proto = PROTOCOLS.get(e["protocol"]) if e.get("protocol") in PROTOCOLS else None
        has_eval_backbone = proto is not None and "eval_backbone" in proto.Options.__dataclass_fields__
        details = e.get("details", {})
        protocol = _protocol_label(e.get("protocol", key.split("@")[0]), details)
        record = {
            "key": f"{info.path}|{key}",
            "ipc": d.get("ipc"),
            "method": d.get("method", "?"),
            "distill_backbone": options.get("backbone") or details.get("distill_backbone") or "-",
            "protocol": protocol,
            "eval_backbone": e.get("backbone") if has_eval_backbone else None,
            "evaluated_with": e.get("backbone"),
            "data": d.get("data"),
            "source": str(info.path),
            "runs": [str(info.path)],
            "distill_phases": info.phases,
            "eval_seconds": (details.get("phases") or {}).get("eval", {}).get("seconds"),
            **{k: e.get(k) for k in ("mean", "std", "val_mean", "test_acc", "val_acc", "seeds")},
            "details": {k: v for k, v in details.items() if k != "phases"},
        }
        if e.get("settings"):
            record["settings"] = {"evaluation": e["settings"]}
        records.append(record)
    return records


def _protocol_label(protocol: str, details: dict) -> str:
    """The protocol as shown; an evaluation without augmentation says so even when set by ``--set augment=false``
    or recorded under the plain protocol name, so it never shares a column with the augmented one."""
    if details.get("augment") is False and "augment=false" not in protocol:
        return protocol + ":augment=false"
    return protocol


def collect(paths: list[str | Path]) -> Collection:
    """Records from bench directories, run directories, or folders holding either (searched two levels deep)."""
    out = Collection()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise DataError(f"{path} is not a directory (expected a bench directory or a run directory)")
        found = _find(path)
        if not found:
            raise DataError(f"{path} holds no bench (bench.json) and no run directory (config.json)")
        for kind, p in found:
            if kind == "bench":
                records, plan, earlier = _bench_records(p)
                out.records += records
                out.sources.append(
                    {
                        "path": str(p),
                        "kind": "bench",
                        "data": plan.get("data"),
                        "plan": plan,
                        "records": records,
                        "earlier": earlier,
                    }
                )
            else:
                info = load_run(p)
                out.runs[p] = info
                out.records += run_records(info)
                out.sources.append({"path": str(p), "kind": "run", "data": info.config.get("distill", {}).get("data")})
    if not out.records:
        raise DataError(
            "no evaluation results found in "
            + ", ".join(map(str, paths))
            + " (run `datadistill bench`, or `datadistill eval RUN` on the run directories)"
        )
    keys = [r["key"] for r in out.records]
    if len(set(keys)) != len(keys):
        raise ConfigError(
            "the same results were given twice: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1}))
        )
    return out


def _find(path: Path, depth: int = 2) -> list[tuple[str, Path]]:
    if layout.is_bench_dir(path):
        return [("bench", path)]
    if layout.is_run_dir(path):
        return [("run", path)]
    if depth == 0:
        return []
    return [f for child in sorted(p for p in path.iterdir() if p.is_dir()) for f in _find(child, depth - 1)]
