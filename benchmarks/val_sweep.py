"""Choose settings on the validation split: distill (or reuse) one run per grid point, evaluate it, and print
VALIDATION accuracy only (test accuracy is deliberately not shown, so it cannot steer the choice).

python benchmarks/val_sweep.py --data fashion-mnist --method sfm --backbone efficientnet_lite0 --crop 64 \
    --fixed steps=300 init=centroids --grid lr=0.003,0.01,0.03 --protocol linear-probe --seeds 2
python benchmarks/val_sweep.py --data fashion-mnist --method sfm --crop 64 --fixed steps=300 lr=0.01 \
    init=centroids --protocol ci --eval-grid projector_lr=0.01,0.1,1.0
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path


def parse(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        key, _, values = item.partition("=")
        out[key] = values.split(",")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--method", default="sfm")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--fixed", nargs="*", default=[], help="method options key=value")
    p.add_argument("--grid", nargs="*", default=[], help="method options key=v1,v2,...")
    p.add_argument("--protocol", default="linear-probe")
    p.add_argument("--eval-fixed", nargs="*", default=[])
    p.add_argument("--eval-grid", nargs="*", default=[])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--runs", default="runs/sweeps")
    p.add_argument("--out", default=None, help="append the rows (JSON lines) to this file")
    args = p.parse_args()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")

    import datadistill as dd
    from datadistill.bench.plan import _typed
    from datadistill.core.options import fields_of
    from datadistill.data import load_dataset
    from datadistill.evaluate import get_protocol
    from datadistill.features.backbones import load_backbone
    from datadistill.methods import get_method

    data = load_dataset(args.data)
    model = load_backbone(args.backbone)
    method_fields = fields_of(get_method(args.method).Options)
    proto_fields = fields_of(get_protocol(args.protocol).Options)

    def typed(pairs: dict[str, list[str]], fields) -> dict[str, list]:
        return {k: [_typed(v, fields[k][1], f"{k}={v}") for v in vs] for k, vs in pairs.items()}

    fixed = {k: v[0] for k, v in typed(parse(args.fixed), method_fields).items()}
    grid = typed(parse(args.grid), method_fields)
    eval_fixed = {k: v[0] for k, v in typed(parse(args.eval_fixed), proto_fields).items()}
    eval_grid = typed(parse(args.eval_grid), proto_fields)
    crop = {"crop": args.crop} if args.crop else {}
    for point in itertools.product(*grid.values()) if grid else [()]:
        opts = {**fixed, **dict(zip(grid, point, strict=True))}
        name = "_".join(f"{k}{v}" for k, v in sorted({**opts, **crop}.items())) or "default"
        run = Path(args.runs) / args.data / f"{args.method}-{args.backbone}-ipc{args.ipc}" / name
        dd.distill(
            args.method,
            args.data,
            out=run,
            ipc=args.ipc,
            dataset=data,
            model=model,
            backbone=args.backbone,
            **crop,
            **opts,
        )
        for epoint in itertools.product(*eval_grid.values()) if eval_grid else [()]:
            eopts = {**eval_fixed, **dict(zip(eval_grid, epoint, strict=True))}
            r = dd.evaluate(
                run,
                protocol=args.protocol,
                data=data,
                backbone=model,
                seeds=args.seeds,
                first_seed=3407,  # the evaluation seeds of the committed sweeps (the library's default is now another)
                models=[model],
                **eopts,
            )
            row = {
                "data": args.data,
                "method": args.method,
                "backbone": args.backbone,
                "ipc": args.ipc,
                **crop,
                "options": opts,
                "protocol": args.protocol,
                "eval_options": eopts,
                "seeds": r.seeds,
                "val_mean": round(100 * r.val_mean, 2),
                "val_per_seed": [round(100 * a, 2) for a in r.val_acc],
            }
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
