"""DMGD on Fashion-MNIST with the offline models (tiny VAE + tiny DiT): validation-split selection of the
guidance scales, then the acceptance table (DMGD, semantic matching alone, OT matching alone, MGD3, plain
sampling, random reals) evaluated with the from-scratch ConvNet protocol, mean ± std over training seeds.

    python benchmarks/dmgd_fashion.py tune  --ipc 10 --epochs 300 --out benchmarks/results/dmgd_tune.json
    python benchmarks/dmgd_fashion.py table --ipc 10 50 --seeds 3 --epochs 300 \
        --settings benchmarks/results/dmgd_tune.json --out benchmarks/results/dmgd_fashion.json

``tune`` ranks settings by the protocol's VALIDATION accuracy only (one generated set, one training seed); the
test split is never looked at for a choice. ``table`` generates each diffusion set once per generation seed
(``--gen-seeds``; set k is trained with seed 3407 + k, cycling over the generated sets) and redraws the random
reals per training seed. Results are appended as they finish, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datadistill.api import distill, evaluate
from datadistill.data import load_dataset

BASE = {"device": "cpu"}
DMGD_GRID = [0.05, 0.5, 2.0]  # OT guidance scale g (paper range 0.05-0.5, plus a stronger one)
MGD3_GRID = [0.05, 0.1, 0.3]  # mode guidance lambda (paper default 0.1)
VARIANTS = {  # name -> (method, options); the guidance scales come from the tuning
    "DMGD": ("dmgd", {}),
    "semantic matching only": ("dmgd", {"ot": False}),
    "OT matching only": ("dmgd", {"semantic": "off"}),
    "MGD3": ("mgd3", {}),
    "plain sampling": ("dmgd", {"semantic": "off", "ot": False}),
    "random reals": ("random", {}),
}


def _eval(synsets, data, args) -> dict:
    result = evaluate(synsets, protocol="convnet", data=data, seeds=len(synsets), device="cpu", epochs=args.epochs)
    return {"test": result.test_acc, "val": result.val_acc, "test_mean": result.mean, "test_std": result.std,
            "val_mean": result.val_mean, "selected_epoch": result.details.get("selected_epoch")}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def tune(args) -> None:
    data = load_dataset("fashion-mnist")
    out = Path(args.out)
    log = _load(out) or {"runs": [], "ipc": args.ipc[0], "epochs": args.epochs}

    def run(method: str, settings: dict) -> float:
        key = json.dumps({"method": method, **settings}, sort_keys=True)
        for r in log["runs"]:
            if r["key"] == key:
                return r["val"]
        start = time.perf_counter()
        synset = distill(method, "fashion-mnist", ipc=args.ipc[0], dataset=data, **BASE, **settings)
        seconds = time.perf_counter() - start
        res = _eval([synset], data, args)
        log["runs"].append({"key": key, "method": method, "settings": settings, "val": res["val_mean"],
                            "generation_s": round(seconds, 1)})
        out.write_text(json.dumps(log, indent=1) + "\n")
        print(f"{method} {settings}: val {100 * res['val_mean']:.2f}", flush=True)
        return res["val_mean"]

    g = max(DMGD_GRID, key=lambda s: run("dmgd", {"guidance_scale": s}))
    lam = max(MGD3_GRID, key=lambda s: run("mgd3", {"mode_guidance_scale": s}))
    log["chosen"] = {"dmgd": {"guidance_scale": g}, "mgd3": {"mode_guidance_scale": lam}}
    out.write_text(json.dumps(log, indent=1) + "\n")
    print("chosen on validation:", log["chosen"])


def table(args) -> None:
    data = load_dataset("fashion-mnist")
    chosen = _load(Path(args.settings)).get("chosen", {}) if args.settings else {}
    out = Path(args.out)
    results = _load(out) or {"epochs": args.epochs, "seeds": args.seeds, "gen_seeds": args.gen_seeds,
                             "chosen": chosen, "rows": {}}
    for ipc in args.ipc:
        for name, (method, extra) in VARIANTS.items():
            key = f"{name} @ IPC {ipc}"
            if key in results["rows"]:
                continue
            settings = {**chosen.get(method, {}), **extra} if method != "random" else {}
            start = time.perf_counter()
            if method == "random":
                synsets = [distill("random", "fashion-mnist", ipc=ipc, dataset=data, seed=k, **BASE)
                           for k in range(args.seeds)]
            else:
                made = [distill(method, "fashion-mnist", ipc=ipc, dataset=data, seed=3407 + k, **BASE, **settings)
                        for k in range(args.gen_seeds)]
                synsets = [made[k % len(made)] for k in range(args.seeds)]
            generation = time.perf_counter() - start
            res = _eval(synsets, data, args)
            results["rows"][key] = {"method": method, "ipc": ipc, "settings": settings, **res,
                                    "generation_s": round(generation, 1),
                                    "seconds_per_image": round(generation / (len(synsets[0]) * (
                                        args.seeds if method == "random" else args.gen_seeds)), 4)}
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{key}: test {100 * res['test_mean']:.2f} ± {100 * res['test_std']:.2f} "
                  f"(val {100 * res['val_mean']:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["tune", "table"])
    p.add_argument("--ipc", type=int, nargs="+", default=[10])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--gen-seeds", type=int, default=1, help="generated sets per diffusion method (table)")
    p.add_argument("--settings", default=None, help="the tune stage's JSON (its 'chosen' settings)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tune(args) if args.stage == "tune" else table(args)


if __name__ == "__main__":
    main()
