"""A bench plan (methods, protocols, backbones, IPCs, seeds, per-method and per-protocol settings) and the
parsing of its command-line values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import EvalConfig
from ..core.errors import ConfigError, DataError
from ..core.options import fields_of
from ..evaluate import get_protocol
from ..methods import get_method
from ..methods.base import BackboneOptions
from ..synset.tensorfiles import parse_input_norm


@dataclass
class BenchPlan:
    data: str
    methods: list[str]  # method names; "neighbors:SRC" picks real neighbours of SRC's images
    protocols: list[str] = field(default_factory=lambda: ["linear-probe"])  # NAME or NAME:KEY=VALUE[:KEY=VALUE]
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    eval_backbones: list[str] | None = None  # default: the distillation backbones
    ipc: list[int] = field(default_factory=lambda: [1])  # images per class, one cell per value (--ipc)
    seeds: int = 3
    crops: dict[str, int] = field(default_factory=dict)  # input size per backbone
    settings: list[str] = field(default_factory=list)  # "[scope.]key=value", scope = a method or protocol
    root: str | None = None
    device: str = "auto"
    evaluate_with: dict[str, list[str]] = field(default_factory=dict)  # method spec -> its protocols (a subset)
    workers: int | None = None  # processes decoding image files (None: one per available core)
    skip_corrupt: bool = False  # leave unreadable image files out instead of stopping
    input_norm: str | None = None  # the normalisation of file: sets of other projects' tensors, undone on reading
    first_seed: int = EvalConfig().first_seed  # seed of the first evaluation run (run k: first_seed + k)
    recipe: dict | None = None  # the recipe file the plan was read from (path, sha256); no part of any cell's identity

    def validate(self) -> BenchPlan:
        parse_input_norm(self.input_norm)
        for spec in self.methods:
            name, _, source = spec.partition(":")
            if is_file_spec(spec):
                path, norm = file_source(spec)
                if not path.exists():
                    raise DataError(f"--methods {spec}: {path} does not exist")
                parse_input_norm(norm)
                continue
            get_method(name)
            if name == "neighbors" and source not in self.methods:
                raise ConfigError(f"'{spec}' needs '{source or 'SRC'}' in --methods (neighbors:SRC)")
            if name == "neighbors" and is_file_spec(source):
                raise ConfigError(f"'{spec}': neighbors:SRC picks neighbours of a method's set, not of a file")
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
        if self.seeds < 1 or not self.ipc or min(self.ipc) < 1:
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
    scopes = {m.partition(":")[0]: get_method(m.partition(":")[0]).Options for m in methods if not is_file_spec(m)}
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


def uses_backbone(method: str) -> bool:
    return not is_file_spec(method) and issubclass(get_method(method.partition(":")[0]).Options, BackboneOptions)


def options_for(name: str, cls: type, settings: dict[str, dict]) -> dict:
    """The settings that apply to method/protocol ``name``: unscoped ones it declares, then its scoped ones."""
    known = fields_of(cls)
    return {**{k: v for k, v in settings.get("", {}).items() if k in known}, **settings.get(name, {})}


def is_file_spec(spec: str) -> bool:
    """``file:PATH[@NORM]``: a set made elsewhere, read from PATH (NORM: its own --input-norm)."""
    return spec.startswith("file:")


def file_source(spec: str) -> tuple[Path, str | None]:
    """The path of ``file:PATH[@NORM]`` and its own input normalisation (None: the plan's)."""
    rest = spec.partition(":")[2]
    path, at, norm = rest.rpartition("@")
    return (Path(rest), None) if not at or Path(rest).exists() else (Path(path), norm)
