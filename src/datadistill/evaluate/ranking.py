"""Scores relative to random selection, after DD-Ranking (Li et al. 2025, arXiv 2505.13300; docs/ranking.md).

Accuracies are fractions. With Acc measured by the same evaluation (protocol, model, seeds):

- HLR (hard-label recovery) = Acc(full real data, hard labels) - Acc(distilled set, hard labels); lower is better.
- IOR (improvement over random) = Acc(distilled set) - Acc(random real subset of the same size), both under the
  evaluation at hand (hard labels, or the method's own: CI / KD / JT / ST use a teacher).
- LRS (label-robust score) = N(w IOR - (1 - w) HLR), w = 0.5.
- ARS (augmentation-robust score) = N(g (Acc syn-aug - Acc rdm-aug) + (1 - g)(Acc syn-naug - Acc rdm-naug)),
  g = 0.5: the improvement over random with and without augmentation at evaluation time.
- N(x) = (e^x - e^-1) / (e - e^-1) maps [-1, 1] onto [0, 1].

``score_records`` finds, for every result record of a synthetic set, the other records these need, computes the
scores per seed when all inputs have the same number of seeds (mean ± std over seeds, as DD-Ranking averages over
its evaluation runs), from the means otherwise, and says why a score cannot be computed.

How records are matched (nothing depends on a method's name except the Random baseline itself):
- random: the ``random`` records with the same IPC, the same protocol (with its fixed options), the same model and,
  where the records carry their settings, the same evaluation settings (every option, the seeds);
- hard labels: a protocol is a hard-label one unless its options name a distillation backbone (the teacher of
  CI / KD / JT / ST); the full-data record is a protocol that trains on real data only (``needs_synset`` False)
  evaluated on the same model (``evaluated_with``) at the same input size;
- augmentation: ``details["augment"]`` (the probes' ``augment`` option), else ``details["dsa"]`` / ``cutmix``
  (from-scratch training); the twin is the same protocol on the same model with the opposite flag (and, where the
  records carry their settings, otherwise the same evaluation settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.options import fields_of
from .identity import evaluation_of
from .protocols import PROTOCOLS, Protocol

W_LRS = 0.5
GAMMA_ARS = 0.5


def normalise(x):
    """DD-Ranking's map of a score in [-1, 1] to [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (np.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(real_hard, syn_hard):
    """Hard-label recovery: how much accuracy the distilled set loses against all the real data (hard labels)."""
    return np.subtract(real_hard, syn_hard)


def ior(syn, rdm):
    """Improvement over a random real subset of the same size under the same evaluation."""
    return np.subtract(syn, rdm)


def lrs(ior_value, hlr_value, w: float = W_LRS):
    """Label-robust score N(w IOR - (1 - w) HLR)."""
    return normalise(w * np.asarray(ior_value) - (1 - w) * np.asarray(hlr_value))


def ars(syn_aug, rdm_aug, syn_naug, rdm_naug, gamma: float = GAMMA_ARS):
    """Augmentation-robust score N(g IOR with augmentation + (1 - g) IOR without)."""
    return normalise(gamma * ior(syn_aug, rdm_aug) + (1 - gamma) * ior(syn_naug, rdm_naug))


@dataclass
class Stat:
    mean: float
    std: float | None  # None when computed from means (inputs with different numbers of seeds)


@dataclass
class Scores:
    ior: Stat | None = None
    hlr: Stat | None = None
    lrs: Stat | None = None
    ars: Stat | None = None
    missing: dict[str, str] = field(default_factory=dict)  # score -> why it cannot be computed

    def to_dict(self) -> dict:
        out = {
            k: (None if v is None else {"mean": v.mean, "std": v.std})
            for k, v in (("ior", self.ior), ("hlr", self.hlr), ("lrs", self.lrs), ("ars", self.ars))
        }
        return {**out, "missing": dict(self.missing)}


def _stat(fn, *records: dict) -> Stat:
    """fn over per-seed accuracies when every record has as many seeds, else over their means."""
    accs = [np.asarray(r["test_acc"], dtype=float) for r in records]
    if len({len(a) for a in accs}) == 1 and len(accs[0]) > 0:
        values = np.asarray(fn(*accs), dtype=float)
        return Stat(float(values.mean()), float(values.std()))
    return Stat(float(fn(*[float(a.mean()) for a in accs])), None)


# ---- what a record is -------------------------------------------------------------------------------------------


def protocol_name(record: dict) -> str:
    return str(record["protocol"]).split(":")[0]


def _protocol(record: dict) -> Protocol | None:
    name = protocol_name(record)
    return PROTOCOLS.get(name) if name in PROTOCOLS else None


def uses_teacher(record: dict) -> bool | None:
    """True when the protocol learns from a teacher (its options name a distillation backbone); None if unknown."""
    proto = _protocol(record)
    return None if proto is None else "distill_backbone" in fields_of(proto.Options)


def trains_on_real(record: dict) -> bool:
    proto = _protocol(record)
    return record.get("method") == "full-data" or (proto is not None and not proto.needs_synset)


def augmented(record: dict) -> bool | None:
    """Whether the evaluation augmented the training images; None when the record does not say."""
    details = record.get("details") or {}
    if "augment" in details:
        return bool(details["augment"])
    if "dsa" in details:
        return bool(details["dsa"]) or bool(details.get("cutmix"))
    return None


def model_of(record: dict) -> tuple:
    """The evaluated model and its input size: what must match between compared records."""
    details = record.get("details") or {}
    return (
        record.get("data"),
        record.get("evaluated_with") or record.get("eval_backbone"),
        details.get("crop") or details.get("resolution"),
    )


def _same_group(a: dict, b: dict) -> bool:
    return a.get("distill_backbone") == b.get("distill_backbone") or "-" in (
        a.get("distill_backbone"),
        b.get("distill_backbone"),
    )


# ---- matching ---------------------------------------------------------------------------------------------------


def _random_for(r: dict, records: list[dict], protocol: str | None = None) -> dict | None:
    protocol = protocol or r["protocol"]
    return next(
        (
            x
            for x in records
            if x.get("method") == "random"
            and x.get("ipc") == r.get("ipc")
            and x["protocol"] == protocol
            and model_of(x) == model_of(r)
            and _same_group(x, r)
            and evaluation_of(x) == evaluation_of(r)
        ),
        None,
    )


def _hard_for(r: dict, records: list[dict]) -> dict | None:
    """The same set evaluated with hard labels on the same model (``r`` itself when it is a hard-label one)."""
    if uses_teacher(r) is False:
        return r
    candidates = [
        x
        for x in records
        if x.get("method") == r.get("method")
        and x.get("ipc") == r.get("ipc")
        and not trains_on_real(x)
        and uses_teacher(x) is False
        and model_of(x) == model_of(r)
        and _same_group(x, r)
    ]
    candidates.sort(key=lambda x: augmented(x) is not augmented(r))  # prefer the same augmentation setting
    return candidates[0] if candidates else None


def _full_for(r: dict, records: list[dict]) -> dict | None:
    return next((x for x in records if trains_on_real(x) and model_of(x) == model_of(r)), None)


def _twin(r: dict, records: list[dict]) -> dict | None:
    """The same evaluation with the opposite augmentation setting."""
    flag = augmented(r)
    return next(
        (
            x
            for x in records
            if x is not r
            and x.get("method") == r.get("method")
            and x.get("ipc") == r.get("ipc")
            and protocol_name(x) == protocol_name(r)
            and model_of(x) == model_of(r)
            and _same_group(x, r)
            and augmented(x) is (not flag)
            and evaluation_of(x, ("augment",)) == evaluation_of(r, ("augment",))
        ),
        None,
    )


def full_data_hint() -> str:
    names = [n for n, p in PROTOCOLS.items() if not p.needs_synset]
    return ", ".join(names) or "a full-data protocol"


def score_record(r: dict, records: list[dict]) -> Scores:
    """DD-Ranking scores of one synthetic-set record against the other records of the same report."""
    s = Scores()
    rdm = _random_for(r, records)
    if rdm is not None:
        s.ior = _stat(ior, r, rdm)
    else:
        s.missing["ior"] = f"needs Random evaluated with {r['protocol']} on the same model (add random to --methods)"
    hard, full = _hard_for(r, records), _full_for(r, records)
    if hard is not None and full is not None:
        s.hlr = _stat(hlr, full, hard)
    elif full is None:
        s.missing["hlr"] = (
            f"needs the full real training set evaluated on the same model (add one of "
            f"{full_data_hint()} to --protocols)"
        )
    else:
        s.missing["hlr"] = "needs the same set evaluated with hard labels on the same model (e.g. linear-probe)"
    if rdm is not None and hard is not None and full is not None:
        s.lrs = _stat(lambda a, b, c, d: lrs(ior(a, b), hlr(c, d)), r, rdm, full, hard)
    else:
        s.missing["lrs"] = "needs IOR and HLR"
    s.ars, why = _ars(r, records)
    if why:
        s.missing["ars"] = why
    return s


def _ars(r: dict, records: list[dict]) -> tuple[Stat | None, str | None]:
    flag = augmented(r)
    if flag is None:
        return None, f"{protocol_name(r)} does not record whether it augments"
    twin = _twin(r, records)
    if twin is None:
        off = (
            f"{protocol_name(r)}:augment=false"
            if "augment" in (r.get("details") or {})
            else f"{protocol_name(r)} with augmentation off"
        )
        on = protocol_name(r)
        return None, (
            f"needs the same evaluation {'without' if flag else 'with'} augmentation (add "
            f"{off if flag else on} to --protocols)"
        )
    aug, naug = (r, twin) if flag else (twin, r)
    rdm_aug, rdm_naug = _random_for(aug, records), _random_for(naug, records)
    if rdm_aug is None or rdm_naug is None:
        return None, "needs Random evaluated with and without augmentation (add random to --methods)"
    return _stat(lambda a, b, c, d: ars(a, b, c, d), aug, rdm_aug, naug, rdm_naug), None


def score_records(records: list[dict]) -> dict[str, Scores]:
    """Scores for every synthetic-set record (keyed by ``record["key"]``); full-data records get none."""
    return {r["key"]: score_record(r, records) for r in records if not trains_on_real(r)}
