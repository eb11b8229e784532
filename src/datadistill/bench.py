"""One command compares methods: every method distilled with every distillation backbone, every synthetic set
evaluated with every protocol on every evaluation backbone (same-model and cross-model), through the same
caches. Each cell is written to ``results.json`` as soon as it is done, so a re-run skips finished cells and
finished distillations (run directories are reused).

Layout of ``OUT``::

    bench.json            the plan
    results.json/.csv     one record per (IPC, method, distillation backbone, protocol, evaluation backbone)
                          (with the run directories it came from, the model that was evaluated and the
                          distillation's phases: seconds and peak memory)
    summary.md            accuracy tables, one per IPC and distillation backbone (rows: method x protocol)
    ipcK/random/seedS/    Random real images, redrawn per evaluation seed
    ipcK/BACKBONE/METHOD/ run directories of backbone methods (neighbors:SRC -> neighbors-SRC)
    ipcK/METHOD/          run directories of methods without a backbone

A protocol may carry fixed options, ``NAME:KEY=VALUE[:KEY=VALUE]`` (e.g. ``linear-probe:augment=false`` next to
``linear-probe`` gives the evaluations with and without augmentation that DD-Ranking's ARS compares).
``evaluate_with`` (``--evaluate-with METHOD=P1+P2``) narrows the protocols one method's sets are judged by, so a
page comparing e.g. SFM under the linear probe and DM under the from-scratch ConvNet does not pay for the cells
nobody reads (DM's images through a backbone's CI); the other methods keep every protocol.
``datadistill report OUT`` turns the results into a page with pictures (report.py, report_html.py).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .api import distill, evaluate
from .data import RealData, load_dataset
from .engine import resolve_device
from .errors import ConfigError
from .evaluate import get_protocol
from .io import check_writable, write_json, write_text
from .methods import get_method
from .methods.base import BackboneOptions
from .models.backbones import Backbone, load_backbone
from .options import fields_of
from .progress import log
from .report import fmt_acc


@dataclass
class BenchPlan:
    data: str
    methods: list[str]  # method names; "neighbors:SRC" picks real neighbours of SRC's images
    protocols: list[str] = field(default_factory=lambda: ["linear-probe"])  # NAME or NAME:KEY=VALUE[:KEY=VALUE]
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    eval_backbones: list[str] | None = None  # default: the distillation backbones
    ipcs: list[int] = field(default_factory=lambda: [1])
    seeds: int = 3
    crops: dict[str, int] = field(default_factory=dict)  # input size per backbone
    settings: list[str] = field(default_factory=list)  # "[scope.]key=value", scope = a method or protocol
    root: str | None = None
    device: str = "auto"
    evaluate_with: dict[str, list[str]] = field(default_factory=dict)  # method spec -> its protocols (a subset)
    workers: int | None = None  # processes decoding image files (None: one per available core)
    skip_corrupt: bool = False  # leave unreadable image files out instead of stopping

    def validate(self) -> BenchPlan:
        for spec in self.methods:
            name, _, source = spec.partition(":")
            get_method(name)
            if name == "neighbors" and source not in self.methods:
                raise ConfigError(f"'{spec}' needs '{source or 'SRC'}' in --methods (neighbors:SRC)")
        for p in self.protocols:
            protocol_spec(p)
        for spec, chosen in self.evaluate_with.items():
            if spec not in self.methods:
                raise ConfigError(f"--evaluate-with {spec}=...: '{spec}' is not one of --methods")
            unknown = [p for p in chosen if p not in self.protocols]
            if unknown or not chosen:
                raise ConfigError(
                    f"--evaluate-with {spec}={'+'.join(chosen)}: each protocol must be one of "
                    f"--protocols ({', '.join(self.protocols)})"
                )
        if self.seeds < 1 or not self.ipcs or min(self.ipcs) < 1:
            raise ConfigError("--seeds and every --ipc must be at least 1")
        parse_settings(self.settings, self.methods, self.protocols)
        return self

    def protocols_for(self, spec: str) -> list[str]:
        """The protocols that judge method ``spec``'s sets, in --protocols order."""
        chosen = self.evaluate_with.get(spec)
        return [p for p in self.protocols if chosen is None or p in chosen]


def protocol_spec(spec: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE[:KEY=VALUE]`` -> (protocol name, its fixed options, typed by the protocol's options)."""
    name, *items = spec.split(":")
    known = fields_of(get_protocol(name).Options)
    fixed = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or key not in known:
            raise ConfigError(
                f"protocol '{spec}': '{item}' is not KEY=VALUE with a KEY of {name}'s options ({', '.join(known)})"
            )
        fixed[key] = _typed(raw, known[key][1], f"protocol '{spec}'")
    return name, fixed


def parse_settings(settings: list[str], methods: list[str], protocols: list[str]) -> dict[str, dict]:
    """{scope: {key: value}} with scope "" for unscoped keys; values typed by the options that declare them."""
    scopes = {m.partition(":")[0]: get_method(m.partition(":")[0]).Options for m in methods}
    for spec in protocols:
        name = spec.split(":")[0]
        scopes[name] = get_protocol(name).Options
    parsed: dict[str, dict] = {}
    for item in settings:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set expects [scope.]key=value, got '{item}'")
        scope, _, name = key.rpartition(".")
        targets = [scope] if scope else list(scopes)
        if scope and scope not in scopes:
            raise ConfigError(f"--set {item}: '{scope}' is not one of the benchmarked methods or protocols")
        kinds = [fields_of(scopes[t])[name][1] for t in targets if name in fields_of(scopes[t])]
        if not kinds:
            raise ConfigError(f"--set {item}: no benchmarked method or protocol has an option '{name}'")
        parsed.setdefault(scope, {})[name] = _typed(raw, kinds[0], f"--set {item}")
    return parsed


def _typed(raw: str, kind: type, where: str):
    if raw.lower() == "none":
        return None
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{where}: '{raw}' is not a valid {kind.__name__}") from None


def run_dirs(out: Path, spec: str, ipc: int, distill_backbone: str, seeds: int) -> list[Path]:
    """Where a bench in ``out`` keeps the run directories of method ``spec`` (one per seed for Random)."""
    name = spec.partition(":")[0]
    if name == "random":
        return [out / f"ipc{ipc}" / "random" / f"seed{k}" for k in range(seeds)]
    if issubclass(get_method(name).Options, BackboneOptions):
        return [out / f"ipc{ipc}" / distill_backbone / spec.replace(":", "-")]
    return [out / f"ipc{ipc}" / spec]


def options_for(name: str, cls: type, settings: dict[str, dict]) -> dict:
    """The settings that apply to method/protocol ``name``: unscoped ones it declares, then its scoped ones."""
    known = fields_of(cls)
    return {**{k: v for k, v in settings.get("", {}).items() if k in known}, **settings.get(name, {})}


class Bench:
    def __init__(self, plan: BenchPlan, out: str | Path):
        self.plan = plan.validate()
        self.out = check_writable(out)
        self.settings = parse_settings(plan.settings, plan.methods, plan.protocols)
        self.results: dict[str, dict] = {}
        if (self.out / "results.json").exists():
            self.results = {r["key"]: r for r in json.loads((self.out / "results.json").read_text())}
        self.models: dict[str, Backbone] = {}
        self._data: RealData | None = None

    @property
    def data(self) -> RealData:
        if self._data is None:
            self._data = load_dataset(
                self.plan.data, self.plan.root, workers=self.plan.workers, skip_corrupt=self.plan.skip_corrupt
            )
        return self._data

    def model(self, name: str) -> Backbone:
        if name not in self.models:
            self.models[name] = load_backbone(name, device=resolve_device(self.plan.device))
        return self.models[name]

    def run(self) -> list[dict]:
        previous = self.out / "bench.json"
        if previous.exists() and json.loads(previous.read_text())["data"] != self.plan.data:
            raise ConfigError(f"{self.out} holds a benchmark of another dataset; use another --out")
        write_json(previous, asdict(self.plan))
        for ipc in self.plan.ipcs:
            for b_d in self.plan.backbones:
                for spec in self.plan.methods:
                    synsets, phases = self.distill(spec, ipc, b_d)
                    for protocol in self.plan.protocols_for(spec):
                        if get_protocol(protocol_spec(protocol)[0]).needs_synset:
                            self.evaluate(spec, synsets, phases, ipc, b_d, protocol)
        for protocol in (p for p in self.plan.protocols if not get_protocol(protocol_spec(p)[0]).needs_synset):
            for b_e in self.eval_backbones:
                self.cell(
                    f"{protocol}@{b_e}",
                    dict(ipc=None, method="full-data", distill_backbone=None, protocol=protocol, eval_backbone=b_e),
                    lambda p=protocol, b=b_e: evaluate(
                        protocol=protocol_spec(p)[0], data=self.data, **self.eval_opts(p, b, None)
                    ),
                )
        self.write_tables()
        return list(self.results.values())

    @property
    def eval_backbones(self) -> list[str]:
        return self.plan.eval_backbones or self.plan.backbones

    def distill(self, spec: str, ipc: int, b_d: str):
        """The method's synthetic set (one per seed for Random), run in (or reused from) its run directory."""
        name, _, source = spec.partition(":")
        algo = get_method(name)
        opts = options_for(name, algo.Options, self.settings)
        common = {k: v for k, v in self.settings.get("", {}).items() if k in ("checkpoint_every", "device")}
        kw = dict(dataset=self.data, ipc=ipc, **common, **opts)
        runs = run_dirs(self.out, spec, ipc, b_d, self.plan.seeds)
        if name == "random":
            return [
                distill("random", self.plan.data, out=r, **{**kw, "seed": k}) for k, r in enumerate(runs)
            ], self.phases(runs[0])
        run = runs[0]
        if issubclass(algo.Options, BackboneOptions):
            kw.update(backbone=b_d, model=self.model(b_d))
            if b_d in self.plan.crops:
                kw.setdefault("crop", self.plan.crops[b_d])
            if source:
                kw["source"] = str(run_dirs(self.out, source, ipc, b_d, 1)[0])
        log.info("bench: %s ipc %d %s", spec, ipc, b_d)
        return distill(name, self.plan.data, out=run, **kw), self.phases(run)

    @staticmethod
    def phases(run: Path) -> dict:
        metrics = run / "metrics.json"
        return json.loads(metrics.read_text()).get("distill", {}).get("phases", {}) if metrics.exists() else {}

    def eval_opts(self, spec: str, b_e: str | None, b_d: str | None) -> dict:
        protocol, fixed = protocol_spec(spec)
        cls = get_protocol(protocol).Options
        known = fields_of(cls)
        opts = {**options_for(protocol, cls, self.settings), **fixed}
        if "eval_backbone" in known and b_e:
            opts["backbone"] = self.model(b_e)
            if b_e in self.plan.crops:
                opts.setdefault("crop", self.plan.crops[b_e])
        if "distill_backbone" in known and b_d:
            opts.setdefault("distill_backbone", b_d)
            opts.setdefault("models", [self.model(b_d)])
            if b_d in self.plan.crops:
                opts.setdefault("distill_crop", self.plan.crops[b_d])
        return {"seeds": self.plan.seeds, "device": self.plan.device, **opts}

    def evaluate(self, spec: str, synsets, phases: dict, ipc: int, b_d: str, protocol: str) -> None:
        name = protocol_spec(protocol)[0]
        known = fields_of(get_protocol(name).Options)
        runs = [str(r.relative_to(self.out)) for r in run_dirs(self.out, spec, ipc, b_d, self.plan.seeds)]
        # A set that no backbone made, judged without one (e.g. trained from scratch), is one cell for all groups.
        uses_backbone = issubclass(get_method(spec.partition(":")[0]).Options, BackboneOptions)
        group = b_d if uses_backbone or "distill_backbone" in known else "-"
        for b_e in self.eval_backbones if "eval_backbone" in known else [None]:
            key = f"ipc{ipc}|{spec}|{group}|{protocol}@{b_e or '-'}"
            meta = dict(
                ipc=ipc,
                method=spec,
                distill_backbone=group,
                protocol=protocol,
                eval_backbone=b_e,
                distill_phases=phases,
                runs=runs,
            )
            self.cell(
                key,
                meta,
                lambda b=b_e: evaluate(synsets, protocol=name, data=self.data, **self.eval_opts(protocol, b, b_d)),
            )

    def cell(self, key: str, meta: dict, run) -> None:
        if key in self.results:
            return
        log.info("bench: evaluating %s", key)
        result = run()
        self.results[key] = {
            "key": key,
            **meta,
            "evaluated_with": result.backbone,
            "mean": result.mean,
            "std": result.std,
            "val_mean": result.val_mean,
            "test_acc": result.test_acc,
            "val_acc": result.val_acc,
            "seeds": result.seeds,
            "eval_seconds": result.details.get("phases", {}).get("eval", {}).get("seconds"),
            "details": {k: v for k, v in result.details.items() if k != "phases"},
        }
        write_json(self.out / "results.json", list(self.results.values()))

    def write_tables(self) -> None:
        rows = list(self.results.values())
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
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.out / "results.csv", buf.getvalue())
        write_text(self.out / "summary.md", summary_markdown(rows, self.plan))


def summary_markdown(rows: list[dict], plan: BenchPlan) -> str:
    """Per IPC and distillation backbone: rows = method x protocol, columns = evaluation backbones (test acc,
    mean ± std over seeds); the full-data rows close each table. The best synthetic-set cell per column is bold."""
    evals = plan.eval_backbones or plan.backbones
    full = {r["eval_backbone"]: r for r in rows if r["method"] == "full-data"}
    parts = [
        f"# Benchmark on {plan.data}",
        "",
        f"Test accuracy (%), mean ± std over {plan.seeds} seeds; crops {plan.crops or 'backbone defaults'}; "
        f"settings {plan.settings or 'defaults'}.",
        "",
    ]
    for ipc in plan.ipcs:
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
            for m in plan.methods:
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
