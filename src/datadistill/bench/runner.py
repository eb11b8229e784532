"""One command compares methods: every method distilled with every distillation backbone, every synthetic set
evaluated with every protocol on every evaluation backbone (same-model and cross-model), through the same
caches. Each cell is written to ``results.json`` as soon as it is done, so a re-run skips finished cells and
finished distillations (run directories are reused).

A cell is identified by everything that changes its number: the data (name, content, validation split), the
evaluated set (method, IPC, every option, distillation backbone and crop; for neighbours the source set's
identity), the protocol with every option, the evaluation backbone, weights and crop, and the seeds. Its key is
readable with a digest of these settings at the end, and its record stores them (``settings``, and ``given``: what
the plan set). A re-run with a changed plan evaluates the cells whose settings changed and reuses the others;
records of earlier plans stay in results.json, and bench.json lists the keys of the current plan's cells, the ones
summary.md, results.csv and ``datadistill report`` show.

Layout of ``OUT``::

    bench.json                 the plan, and the keys of its cells ("cells")
    results.json               one record per cell evaluated here, this plan's or an earlier one's (with the run
                               directories it came from, the model that was evaluated, the distillation's phases:
                               seconds and peak memory, and its settings)
    results.csv                the current plan's records
    summary.md                 accuracy tables, one per IPC and distillation backbone (rows: method x protocol)
    ipcK/random-D/seedS/       Random real images, redrawn per evaluation seed
    ipcK/BACKBONE/METHOD-D/    run directories of backbone methods (neighbors:SRC -> neighbors-SRC-D)
    ipcK/METHOD-D/             run directories of methods without a backbone

where D is a digest of the run's settings (data, IPC, every option of the method), so runs of other settings never
share a directory, and a re-run of the same plan finds its runs again.

``file:PATH`` in the methods evaluates a set made elsewhere (any set ``datadistill eval`` reads by path: another
project's tensor files, a folder ``datadistill export`` wrote, a folder of PNGs) as it is: the same set for every
seed, in the table of its own IPC, under the name ``file:NAME`` (NAME: the file or folder name, with as many parent
folders as tell two such sets apart). ``file:PATH@NORM`` undoes the normalisation NORM of that file's tensors
(``--input-norm`` gives the one of every tensor file without its own). Its identity is the digest of the files it is
read from and the normalisation undone, not their path, so a changed file is evaluated again and a moved one is not.

A protocol may carry fixed options, ``NAME:KEY=VALUE[:KEY=VALUE]`` (e.g. ``linear-probe:augment=false`` next to
``linear-probe`` gives the evaluations with and without augmentation that DD-Ranking's ARS compares).
``evaluate_with`` (``--evaluate-with METHOD=P1+P2``) narrows the protocols one method's sets are judged by, so a
page comparing e.g. SFM under the linear probe and DM under the from-scratch ConvNet does not pay for the cells
nobody reads (DM's images through a backbone's CI); the other methods keep every protocol.
``datadistill report OUT`` turns the results into a page with pictures (the ``reporting`` package).
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from ..api import distill, evaluate
from ..core import dist, layout
from ..core.config import RESUME_FREE_FIELDS, DistillConfig
from ..core.errors import ConfigError
from ..core.io import check_writable, hold_lock, write_json, write_text
from ..core.options import build, fields_of, to_dict
from ..core.progress import log
from ..data import RealData, load_dataset
from ..evaluate import get_protocol
from ..evaluate.identity import data_identity, digest, eval_settings, imported_set_identity
from ..features.backbones import Backbone, load_backbone
from ..methods import get_method
from ..reporting.markdown import given_summary
from ..reporting.table import fmt_acc
from ..run.device import resolve_device
from ..synset.set import SyntheticSet
from ..synset.tensorfiles import reads_input_norm
from .plan import BenchPlan, file_source, is_file_spec, options_for, parse_settings, protocol_spec, uses_backbone


def method_labels(specs: list[str]) -> dict[str, str]:
    """How each method spec is named in results: itself, or ``file:NAME`` for ``file:PATH`` (NAME: the file or
    folder name, with as many parent folders as tell the plan's files apart; ``@NORM`` for one file given twice)."""
    paths = {spec: file_source(spec)[0].absolute() for spec in specs if is_file_spec(spec)}
    labels = {spec: spec for spec in specs}
    for spec, path in paths.items():
        others = [p for s, p in paths.items() if s != spec]
        for depth in range(1, len(path.parts) + 1):
            name = "/".join(path.parts[-depth:])
            if all(other == path or "/".join(other.parts[-depth:]) != name for other in others):
                break
        twice = path in others
        labels[spec] = f"file:{name}" + (f"@{file_source(spec)[1] or '-'}" if twice else "")
    return labels


@dataclass
class PlannedCell:
    """One cell of a plan: the set (``spec``; ``None`` for a protocol on the full real data), the protocol with the
    options the plan gives it, and the record fields that name the cell (with its full settings)."""

    key: str
    meta: dict
    protocol: str
    options: dict
    spec: str | None = None
    ipc: int | None = None
    distill_backbone: str | None = None  # the backbone the set is distilled with (the record's group may be "-")


class Bench:
    def __init__(self, plan: BenchPlan, out: str | Path):
        self.plan = plan.validate()
        self.out = check_writable(out)
        self.settings = parse_settings(plan.settings, plan.methods, plan.protocols)
        self.results: dict[str, dict] = {}  # read under the folder's lock, by ``run``
        self.models: dict[str, Backbone] = {}
        self._data: RealData | None = None
        self._identities: dict[tuple, dict] = {}
        self._sets: dict[tuple, tuple] = {}
        self._files: dict[str, SyntheticSet] = {}
        self.labels = method_labels(plan.methods)

    @property
    def data(self) -> RealData:
        if self._data is None:
            self._data = load_dataset(
                self.plan.data, self.plan.root, workers=self.plan.workers, skip_corrupt=self.plan.skip_corrupt
            )
        return self._data

    @cached_property
    def data_identity(self) -> dict:
        return data_identity(self.data)

    def model(self, name: str) -> Backbone:
        if name not in self.models:
            self.models[name] = load_backbone(name, device=resolve_device(self.plan.device))
        return self.models[name]

    @property
    def eval_backbones(self) -> list[str]:
        return self.plan.eval_backbones or self.plan.backbones

    def run(self) -> list[dict]:
        """Evaluate the cells of the plan that results.json does not hold yet; the plan's records, in plan order."""
        previous = self.out / layout.BENCH_PLAN
        if previous.exists() and json.loads(previous.read_text())["data"] != self.plan.data:
            raise ConfigError(f"{self.out} holds a benchmark of another dataset; use another --out")
        # one bench per folder: two would both evaluate the missing cells and overwrite each other's results.json
        with (
            hold_lock(self.out / layout.LOCK, self.out, "wait for it or use another --out")
            if dist.is_main()
            else (nullcontext())
        ):
            if (self.out / layout.BENCH_RESULTS).exists():
                self.results = {r["key"]: r for r in json.loads((self.out / layout.BENCH_RESULTS).read_text())}
            cells = self.cells()
            write_json(previous, {**asdict(self.plan), "cells": [c.key for c in cells]})
            for c in cells:
                if c.key not in self.results:
                    self.evaluate(c)
            current = [self.results[c.key] for c in cells]
            self.write_tables(current)
        return current

    # ---- the plan's cells and their identities ------------------------------------------------------------------

    def cells(self) -> list[PlannedCell]:
        """Every cell of the plan in run order: per IPC, distillation backbone and method its protocols on every
        evaluation backbone, then the protocols on the full real data. A cell shared by several distillation
        backbones (a set no backbone made, judged without one) appears once. A ``file:`` set has one IPC, its own."""
        cells = []
        ipc_of = {spec: self.file_set(spec).ipc for spec in self.plan.methods if is_file_spec(spec)}
        for ipc in dict.fromkeys([*self.plan.ipc, *ipc_of.values()]):
            for b_d in self.plan.backbones:
                for spec in self.plan.methods:
                    if ipc not in ([ipc_of[spec]] if spec in ipc_of else self.plan.ipc):
                        continue
                    for protocol in self.plan.protocols_for(spec):
                        name = protocol_spec(protocol)[0]
                        if not get_protocol(name).needs_synset:
                            continue
                        known = fields_of(get_protocol(name).Options)
                        # A set that no backbone made, judged without one (e.g. trained from scratch), is one cell
                        # for all distillation backbones.
                        group = b_d if uses_backbone(spec) or "distill_backbone" in known else "-"
                        for b_e in self.eval_backbones if "eval_backbone" in known else [None]:
                            cells.append(self.cell(protocol, b_e, spec, ipc, b_d, group))
        for protocol in self.plan.protocols:
            if not get_protocol(protocol_spec(protocol)[0]).needs_synset:
                cells += [self.cell(protocol, b_e) for b_e in self.eval_backbones]
        unique: dict[str, PlannedCell] = {}
        for c in cells:
            unique.setdefault(c.key, c)
        return list(unique.values())

    def cell(
        self,
        protocol: str,
        b_e: str | None,
        spec: str | None = None,
        ipc: int | None = None,
        b_d: str | None = None,
        group: str | None = None,
    ) -> PlannedCell:
        name = protocol_spec(protocol)[0]
        options = self.protocol_options(protocol, b_e, b_d)
        resolved = to_dict(build(get_protocol(name).Options, options, f"protocol '{protocol}'"))
        run = self.run_identity(spec, ipc, b_d) if spec else None
        evaluation = eval_settings(
            name, resolved, self.plan.seeds, self.plan.first_seed, self.data_identity, run["options"] if run else {}
        )
        settings = {"evaluation": evaluation}
        shown = {k: v for k, v in options.items() if k not in ("eval_backbone", "distill_backbone")}
        given = {protocol: shown}
        if spec is None:
            key = f"{protocol}@{b_e}|{digest(settings)}"
            meta = dict(ipc=None, method="full-data", distill_backbone=None, protocol=protocol, eval_backbone=b_e)
        else:
            label = self.labels[spec]
            settings["set"] = {"method": label, "group": group, "run": run}
            given = {label: self.method_options(spec, ipc, b_d, shown=True), **given}
            key = f"ipc{ipc}|{label}|{group}|{protocol}@{b_e or '-'}|{digest(settings)}"
            meta = dict(ipc=ipc, method=label, distill_backbone=group, protocol=protocol, eval_backbone=b_e)
            if is_file_spec(spec):
                meta["runs"], meta["set_source"] = [], str(file_source(spec)[0].absolute())
            else:
                meta["runs"] = [str(r.relative_to(self.out)) for r in self.run_dirs(spec, ipc, b_d)]
        meta.update(settings=settings, given=given)
        return PlannedCell(key, meta, protocol, options, spec, ipc, b_d)

    def method_options(self, spec: str, ipc: int, b_d: str, shown: bool = False) -> dict:
        """The options the plan gives method ``spec``: its settings, the distillation backbone and its crop
        (``shown``: as a record names them, without the backbone, which the record's group names)."""
        name = spec.partition(":")[0]
        if is_file_spec(spec):
            path, norm = self.file_norm(spec)
            return {"path": str(path), **({"input_norm": norm} if norm else {})}
        given = options_for(name, get_method(name).Options, self.settings)
        if uses_backbone(spec):
            if not shown:
                given["backbone"] = b_d
            if b_d in self.plan.crops:
                given.setdefault("crop", self.plan.crops[b_d])
        return given

    def protocol_options(self, protocol: str, b_e: str | None, b_d: str | None) -> dict:
        """The options the plan gives ``protocol`` (its settings and fixed options, backbones and crops)."""
        name, fixed = protocol_spec(protocol)
        cls = get_protocol(name).Options
        known = fields_of(cls)
        opts = {**options_for(name, cls, self.settings), **fixed}
        if "eval_backbone" in known and b_e:
            opts["eval_backbone"] = b_e
            if b_e in self.plan.crops:
                opts.setdefault("crop", self.plan.crops[b_e])
        if "distill_backbone" in known and b_d:
            opts.setdefault("distill_backbone", b_d)
            if b_d in self.plan.crops:
                opts.setdefault("distill_crop", self.plan.crops[b_d])
        return opts

    def run_identity(self, spec: str, ipc: int, b_d: str) -> dict:
        """What makes method ``spec``'s set: its distillation config with every option (defaults included), the
        data by content, and for neighbours the identity of the source set instead of its path. Random's seed is
        left out: its runs are one per evaluation seed."""
        key = (spec, ipc, b_d if uses_backbone(spec) else None)
        if key not in self._identities and is_file_spec(spec):
            synset = self.file_set(spec)
            meta = synset.meta
            # what evaluate() takes from a set that names its backbone (a datadistill export of a backbone method)
            options = {"backbone": meta["backbone"], "crop": meta.get("crop")} if meta.get("backbone") else {}
            self._identities[key] = {
                "method": "file",
                "set": imported_set_identity(meta),
                "options": options,
                "data": self.data_identity,
            }
        if key not in self._identities:
            name, _, source = spec.partition(":")
            options = self.method_options(spec, ipc, b_d)
            if source:
                options["source"] = digest(self.run_identity(source, ipc, b_d))
            free = RESUME_FREE_FIELDS | ({"seed"} if name == "random" else set())
            resolved = to_dict(build(get_method(name).Options, options, f"method '{name}'"))
            resolved = {k: v for k, v in resolved.items() if k not in free}
            config = DistillConfig(method=name, data=self.plan.data, ipc=ipc, options=resolved).to_dict()
            self._identities[key] = {**{k: v for k, v in config.items() if k not in free}, "data": self.data_identity}
        return self._identities[key]

    def run_dirs(self, spec: str, ipc: int, b_d: str) -> list[Path]:
        """Where method ``spec``'s run directories are (one per seed for Random): named by the method and a digest
        of the run's identity, so runs of other settings never share one."""
        identity = digest(self.run_identity(spec, ipc, b_d))
        return layout.bench_run_dirs(self.out, spec, ipc, b_d, identity, self.plan.seeds, uses_backbone(spec))

    # ---- running -------------------------------------------------------------------------------------------------

    def file_set(self, spec: str) -> SyntheticSet:
        """The set of ``file:PATH[@NORM]``, read once, with the dataset's classes."""
        if spec not in self._files:
            path, norm = self.file_norm(spec)
            self._files[spec] = SyntheticSet.load(path, classes=list(self.data.classes), input_norm=norm)
        return self._files[spec]

    def file_norm(self, spec: str) -> tuple[Path, str | None]:
        """The path of a ``file:`` spec and the normalisation to undo: its own ``@NORM``, else the plan's for tensor
        files of other projects (the sets whose values may be normalised)."""
        path, norm = file_source(spec)
        return path, norm if norm is not None else self.plan.input_norm if reads_input_norm(path) else None

    def synsets(self, spec: str, ipc: int, b_d: str) -> tuple:
        """The method's synthetic set (one per seed for Random; a ``file:`` set as it is, the same for every seed)
        and the distillation's phases (None for a file), distilled in (or reused from) its run directory; a
        neighbours' source set first."""
        if is_file_spec(spec):
            return self.file_set(spec), None
        key = (spec, ipc, b_d if uses_backbone(spec) else None)
        if key not in self._sets:
            name, _, source = spec.partition(":")
            kw = dict(dataset=self.data, ipc=ipc, device=self.plan.device, **self.method_options(spec, ipc, b_d))
            runs = self.run_dirs(spec, ipc, b_d)
            if uses_backbone(spec):
                kw["model"] = self.model(b_d)
            if source:
                self.synsets(source, ipc, b_d)
                kw["source"] = str(self.run_dirs(source, ipc, b_d)[0])
            log.info("bench: %s ipc %d %s", spec, ipc, b_d)
            if name == "random":
                sets = [distill(name, self.plan.data, out=r, **{**kw, "seed": k}) for k, r in enumerate(runs)]
            else:
                sets = distill(name, self.plan.data, out=runs[0], **kw)
            self._sets[key] = sets, self.phases(runs[0])
        return self._sets[key]

    @staticmethod
    def phases(run: Path) -> dict:
        metrics = run / layout.RUN_METRICS
        return json.loads(metrics.read_text()).get("distill", {}).get("phases", {}) if metrics.exists() else {}

    def evaluate(self, c: PlannedCell) -> None:
        synsets, phases = self.synsets(c.spec, c.ipc, c.distill_backbone) if c.spec else (None, None)
        names = dict.fromkeys(c.options[k] for k in ("eval_backbone", "distill_backbone") if c.options.get(k))
        log.info("bench: evaluating %s", c.key)
        result = evaluate(
            synsets,
            protocol=protocol_spec(c.protocol)[0],
            data=self.data,
            models=[self.model(n) for n in names],
            seeds=self.plan.seeds,
            first_seed=self.plan.first_seed,
            device=self.plan.device,
            **c.options,
        )
        record = {"key": c.key, **{k: v for k, v in c.meta.items() if k not in ("settings", "given")}}
        if phases is not None:
            record["distill_phases"] = phases
        self.results[c.key] = {
            **record,
            "evaluated_with": result.backbone,
            "mean": result.mean,
            "std": result.std,
            "val_mean": result.val_mean,
            "test_acc": result.test_acc,
            "val_acc": result.val_acc,
            "seeds": result.seeds,
            "eval_seconds": result.details.get("phases", {}).get("eval", {}).get("seconds"),
            "details": {k: v for k, v in result.details.items() if k != "phases"},
            "given": c.meta["given"],
            "settings": c.meta["settings"],
        }
        write_json(self.out / layout.BENCH_RESULTS, list(self.results.values()))

    def write_tables(self, rows: list[dict]) -> None:
        """results.csv and summary.md of the current plan's cells."""
        columns = [
            "ipc",
            "method",
            "distill_backbone",
            "protocol",
            "eval_backbone",
            "mean",
            "std",
            "val_mean",
            "test_acc",
            "eval_seconds",
            "key",
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.out / layout.BENCH_CSV, buf.getvalue())
        write_text(self.out / layout.BENCH_SUMMARY, summary_markdown(rows, self.plan))


def summary_markdown(rows: list[dict], plan: BenchPlan) -> str:
    """Per IPC and distillation backbone: rows = method x protocol, columns = evaluation backbones (test acc,
    mean ± std over seeds); the full-data rows close each table. The best synthetic-set cell per column is bold.
    The plan orders the tables (a file: set's own IPC after the plan's); seeds and settings are read from the
    records shown; sets read from files are listed with their source."""
    evals = plan.eval_backbones or plan.backbones
    full = {r["eval_backbone"]: r for r in rows if r["method"] == "full-data"}
    seeds = "/".join(str(n) for n in sorted({len(r["test_acc"]) for r in rows}))
    parts = [
        f"# Benchmark on {plan.data}",
        "",
        f"Test accuracy (%), mean ± std over {seeds} seeds; settings {given_summary(rows)}.",
        "",
    ]
    sources = {r["method"]: r["set_source"] for r in rows if r.get("set_source")}
    if sources:
        parts += ["Sets made elsewhere, evaluated as they are (the same set for every seed):", ""]
        parts += [f"- {m}: `{path}`" for m, path in sources.items()] + [""]
    labels = method_labels(plan.methods)
    ipcs = dict.fromkeys([*plan.ipc, *(r["ipc"] for r in rows if r["ipc"] is not None)])
    for ipc in ipcs:
        for b_d in plan.backbones:
            cells = {
                (r["method"], r["protocol"], r["eval_backbone"]): r
                for r in rows
                if r["ipc"] == ipc and r["distill_backbone"] in (b_d, "-")
            }
            if not cells:
                continue
            cols = sorted({c[2] for c in cells}, key=lambda b: evals.index(b) if b in evals else -1)
            best = {b: max((r["mean"] for (m, p, e), r in cells.items() if e == b), default=None) for b in cols}
            parts += [
                f"## IPC {ipc}, distilled with {b_d}",
                "",
                "| method | protocol | " + " | ".join(f"eval {b or '-'}" for b in cols) + " |",
                "|---|---|" + "---|" * len(cols),
            ]
            for m in (labels[spec] for spec in plan.methods):
                for p in plan.protocols:
                    line = [cells.get((m, p, b)) for b in cols]
                    if any(line):
                        shown = [
                            ("**" + fmt_acc(r) + "**" if r["mean"] == best[b] else fmt_acc(r)) if r else ""
                            for r, b in zip(line, cols, strict=True)
                        ]
                        parts.append(f"| {m} | {p} | " + " | ".join(shown) + " |")
            if any(b in full for b in cols):
                parts.append(
                    "| full data | "
                    + ", ".join(sorted({full[b]["protocol"] for b in cols if b in full}))
                    + " | "
                    + " | ".join(fmt_acc(full[b]) if b in full else "" for b in cols)
                    + " |"
                )
            parts.append("")
    return "\n".join(parts)


def bench(plan: BenchPlan, out: str | Path) -> list[dict]:
    """Run (or resume) a benchmark; returns its result records."""
    return Bench(plan, out).run()
