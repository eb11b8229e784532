"""DMGD on Fashion-MNIST with the offline models (tiny VAE + tiny DiT): validation-split selection of the
guidance scales, then the acceptance table (DMGD, semantic matching alone, OT matching alone, MGD3, plain
sampling, random reals) evaluated with the from-scratch ConvNet protocol, mean ± std over training seeds.

    python benchmarks/dmgd_fashion.py tune  --ipc 10 --epochs 200 --width 64 --out benchmarks/results/dmgd_tune.json
    python benchmarks/dmgd_fashion.py table --ipc 10 50 --seeds 3 --epochs 200 60 --width 64 \
        --settings benchmarks/results/dmgd_tune.json --out benchmarks/results/dmgd_fashion.json

``tune`` ranks settings by the protocol's VALIDATION accuracy only (one generated set, one training seed): first
the sampler's CFG scale on plain sampling, then DMGD's OT guidance scale and MGD3's mode guidance scale at that
CFG; the test split is never looked at for a choice. ``table`` generates each diffusion set once per generation seed
(``--gen-seeds``; set k is trained with seed 3407 + k, cycling over the generated sets) and redraws the random
reals per training seed. Results are appended as they finish, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datadistill.api import distill, evaluate
from datadistill.core.options import fields_of
from datadistill.data import load_dataset
from datadistill.methods import get_method

BASE = {"device": "cpu"}
EXTRA: dict = {}  # --set key=value: options for every generated set (smoke tests: fewer steps)
CFG_GRID = [2.0, 4.0]  # classifier-free guidance of the sampler (DiT/DMGD: 4.0)
# OT guidance scale g: the paper's range 0.05-0.5 and far beyond it, because with the offline tiny DiT
# validation peaks at g = 50 (BENCHMARKS.md): --dmgd-grid
DMGD_GRID = [0.05, 0.5, 2.0, 10.0, 20.0, 50.0, 100.0, 200.0]
MGD3_GRID = [0.05, 0.1, 0.3]  # mode guidance lambda (paper default 0.1): --mgd3-grid
VARIANTS = {  # name -> (method, options); the guidance scales come from the tuning
    "DMGD": ("dmgd", {}),
    "semantic matching only": ("dmgd", {"ot": False}),
    "OT matching only": ("dmgd", {"semantic": "off"}),
    "MGD3": ("mgd3", {}),
    "plain sampling": ("dmgd", {"semantic": "off", "ot": False}),
    "random reals": ("random", {}),
}


def _extra(method: str) -> dict:
    fields = fields_of(get_method(method).Options)
    return {k: v for k, v in EXTRA.items() if k in fields}


def _epochs(args, ipc: int) -> int:
    return args.epochs[args.ipc.index(ipc)] if len(args.epochs) > 1 else args.epochs[0]


def _eval(synsets, data, args, ipc: int) -> dict:
    epochs = _epochs(args, ipc)
    extra = {"width": args.width} if args.width else {}
    if args.val_images:
        extra["val_images"] = args.val_images
    result = evaluate(
        synsets,
        protocol="convnet",
        data=data,
        seeds=len(synsets),
        first_seed=3407,  # the committed table's training seeds (the library's default is now another)
        device="cpu",
        epochs=epochs,
        val_every=max(1, epochs // args.val_passes),
        **extra,
    )
    return {
        "test": result.test_acc,
        "val": result.val_acc,
        "test_mean": result.mean,
        "test_std": result.std,
        "val_mean": result.val_mean,
        "selected_epoch": result.details.get("selected_epoch"),
    }


def _protocol(args) -> dict:
    return {
        "name": "convnet",
        "recipe": "idc",
        "epochs": dict(zip(args.ipc, args.epochs, strict=False)) if len(args.epochs) > 1 else args.epochs[0],
        "width": args.width or 128,
        "val_passes": args.val_passes,
        "val_images": args.val_images or "all",
    }


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def tune(args) -> None:
    data = load_dataset(args.data)
    out = Path(args.out)
    log = _load(out) or {"runs": [], "ipc": args.ipc[0], "protocol": _protocol(args)}

    def run(method: str, settings: dict) -> float:
        key = json.dumps({"method": method, **settings}, sort_keys=True)
        for r in log["runs"]:
            if r["key"] == key:
                return r["val"]
        start = time.perf_counter()
        synset = distill(method, args.data, ipc=args.ipc[0], dataset=data, **BASE, **_extra(method), **settings)
        seconds = time.perf_counter() - start
        res = _eval([synset], data, args, args.ipc[0])
        log["runs"].append(
            {
                "key": key,
                "method": method,
                "settings": settings,
                "val": res["val_mean"],
                "generation_s": round(seconds, 1),
            }
        )
        out.write_text(json.dumps(log, indent=1) + "\n")
        print(f"{method} {settings}: val {100 * res['val_mean']:.2f}", flush=True)
        return res["val_mean"]

    # CFG of the shared sampler first, on plain sampling; then each method's guidance scale at that CFG.
    cfg = max(CFG_GRID, key=lambda w: run("dmgd", {"semantic": "off", "ot": False, "cfg_scale": w}))
    g = max(args.dmgd_grid, key=lambda s: run("dmgd", {"cfg_scale": cfg, "guidance_scale": s}))
    lam = max(args.mgd3_grid, key=lambda s: run("mgd3", {"cfg_scale": cfg, "mode_guidance_scale": s}))
    log["chosen"] = {
        "dmgd": {"cfg_scale": cfg, "guidance_scale": g},
        "mgd3": {"cfg_scale": cfg, "mode_guidance_scale": lam},
    }
    out.write_text(json.dumps(log, indent=1) + "\n")
    print("chosen on validation:", log["chosen"])


def table(args) -> None:
    data = load_dataset(args.data)
    chosen = _load(Path(args.settings)).get("chosen", {}) if args.settings else {}
    out = Path(args.out)
    results = _load(out) or {
        "protocol": _protocol(args),
        "seeds": args.seeds,
        "gen_seeds": args.gen_seeds,
        "chosen": chosen,
        "rows": {},
    }
    for ipc in args.ipc:
        for name, (method, extra) in VARIANTS.items():
            key = f"{name} @ IPC {ipc}"
            if key in results["rows"]:
                continue
            settings = {**chosen.get(method, {}), **extra} if method != "random" else {}
            start = time.perf_counter()
            if method == "random":
                synsets = [
                    distill("random", args.data, ipc=ipc, dataset=data, seed=k, **BASE) for k in range(args.seeds)
                ]
            else:
                made = [
                    distill(
                        method, args.data, ipc=ipc, dataset=data, seed=3407 + k, **BASE, **_extra(method), **settings
                    )
                    for k in range(args.gen_seeds)
                ]
                synsets = [made[k % len(made)] for k in range(args.seeds)]
            generation = time.perf_counter() - start
            if args.grids:
                from PIL import Image

                Path(args.grids).mkdir(parents=True, exist_ok=True)
                slug = key.replace(" @ ", "-ipc").replace(" ", "-").lower()
                Image.fromarray(synsets[0].grid()).save(Path(args.grids) / f"{slug}.png")
            res = _eval(synsets, data, args, ipc)
            results["rows"][key] = {
                "method": method,
                "ipc": ipc,
                "settings": settings,
                **res,
                "generation_s": round(generation, 1),
                "seconds_per_image": round(
                    generation / (len(synsets[0]) * (args.seeds if method == "random" else args.gen_seeds)), 4
                ),
            }
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(
                f"{key}: test {100 * res['test_mean']:.2f} ± {100 * res['test_std']:.2f} "
                f"(val {100 * res['val_mean']:.2f})",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["tune", "table"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE option for every generated set")
    p.add_argument("--ipc", type=int, nargs="+", default=[10])
    p.add_argument("--epochs", type=int, nargs="+", default=[200], help="ConvNet epochs (one per --ipc, or one)")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default: the protocol's 128)")
    p.add_argument("--val-passes", type=int, default=4, help="validation passes for epoch selection")
    p.add_argument(
        "--val-images",
        type=int,
        default=2000,
        help="class-balanced validation subset for the periodic selection passes (0: the whole split)",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--gen-seeds", type=int, default=1, help="generated sets per diffusion method (table)")
    p.add_argument("--settings", default=None, help="the tune stage's JSON (its 'chosen' settings)")
    p.add_argument("--grids", default=None, help="folder for a PNG grid of each set (table)")
    p.add_argument("--dmgd-grid", type=float, nargs="+", default=DMGD_GRID, help="OT guidance scales to tune")
    p.add_argument("--mgd3-grid", type=float, nargs="+", default=MGD3_GRID, help="mode guidance scales to tune")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            EXTRA[key] = json.loads(value)
        except json.JSONDecodeError:
            EXTRA[key] = value
    tune(args) if args.stage == "tune" else table(args)


if __name__ == "__main__":
    main()
