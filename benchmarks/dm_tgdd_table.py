"""The DM / TGDD table: Random real, DM and TGDD at IPC 1, 10 and 50, each trained from scratch with the
``convnet`` protocol over 3 seeds, plus the full-data ConvNet (``convnet-full``), on one dataset.

CPU-sized defaults (every one is a flag; the papers' protocol is in the README / BENCHMARKS.md): 3 experts x
``--expert-epochs`` epochs of ``--expert-epoch-images`` images; DM / TGDD iterations per IPC; evaluation epochs
per IPC; periodic validation on a class-balanced subset. Stages are cached (run directories, a JSON of
finished evaluations), so the script resumes where it was stopped. Jobs run in ``--workers`` processes with
``--threads`` torch threads each (one thread per process is much faster on a shared, oversubscribed CPU).

    python benchmarks/dm_tgdd_table.py --data fashion-mnist --stage all
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--stage", default="all", choices=["experts", "distill", "eval", "full", "table", "all"])
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--methods", default="random,dm,tgdd")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default=os.environ.get("DD_RUNS", "/tmp/dd-dm-tgdd-runs"))
    p.add_argument("--tag", default="", help="suffix of the results file (variants)")
    p.add_argument(
        "--sets-tag",
        default=None,
        help="suffix of the distilled sets to use (default: --tag); another evaluation of the same sets",
    )
    # experts (TGDD trajectories and the full-data ConvNet)
    p.add_argument("--num-experts", type=int, default=3)
    p.add_argument("--expert-epochs", type=int, default=8)
    p.add_argument("--expert-epoch-images", type=int, default=4000, help="0: the whole train split per epoch")
    p.add_argument("--expert-val-every", type=int, default=2)
    # distillation
    p.add_argument("--dm-steps", default="200,200,100", help="DM iterations per IPC")
    p.add_argument("--dm-batch-real", type=int, default=32)
    p.add_argument(
        "--dm-clamp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DM keeps its pixels in [0, 1], as in the tables' DM rows (default here); --no-dm-clamp is "
        "the DM code and the library's default",
    )
    p.add_argument(
        "--digit-flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep flip in DM's and the evaluation's DSA on digit datasets, as the committed MNIST rows did "
        "(default here); --no-digit-flip is the DSA / DM authors' strategy and the library's default",
    )
    p.add_argument("--tgdd-steps", default="200,150,60", help="TGDD iterations per IPC")
    p.add_argument("--tgdd-batch-real", type=int, default=32)
    p.add_argument("--tgdd-factor", default="1,1,1", help="TGDD multi-formation factor per IPC")
    p.add_argument("--tgdd-extra", default="", help="extra TGDD options as JSON")
    p.add_argument("--dm-extra", default="", help="extra DM options as JSON")
    # evaluation
    p.add_argument("--recipe", default="idc")
    p.add_argument("--eval-epochs", default="300,160,48", help="evaluation epochs per IPC")
    p.add_argument("--val-points", type=int, default=4, help="validation checks per evaluation run")
    p.add_argument("--val-images", type=int, default=2000, help="0: the whole validation split")
    p.add_argument("--dsa-strategy", default=None, help="evaluation DSA strategy (default: the recipe's)")
    p.add_argument(
        "--pool-tags",
        default="",
        help="comma list of result tags, one per distilled set of one setting (e.g. distillation seeds "
        "via --dm-extra '{\"seed\": 1}'): the printed table pools their evaluations",
    )
    return p.parse_args()


def per_ipc(text: str, ipcs: list[int], cast=int) -> dict[int, object]:
    values = [cast(v) for v in text.split(",")]
    return dict(zip(ipcs, values if len(values) == len(ipcs) else values[:1] * len(ipcs), strict=True))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["DATADISTILL_PROGRESS"] = "0"


def _expert(job):
    from datadistill.data import load_dataset
    from datadistill.run.device import resolve_device
    from datadistill.training.experts import ExpertOptions, train_expert

    data_name, opts, k = job
    start = time.perf_counter()
    folder = train_expert(load_dataset(data_name), ExpertOptions(**opts), k, resolve_device("auto"))
    return {"expert": k, "folder": str(folder), "seconds": round(time.perf_counter() - start, 1)}


def _distill(job):
    import datadistill as dd

    method, data_name, ipc, out, options = job
    start = time.perf_counter()
    dd.distill(method, data_name, ipc=ipc, out=out, **options)
    metrics = json.loads((Path(out) / "metrics.json").read_text())["distill"]
    return {
        "method": method,
        "ipc": ipc,
        "out": out,
        "seconds": round(time.perf_counter() - start, 1),
        "seconds_per_step": metrics["phases"]["distill"].get("seconds_per_step"),
        "loss_first": metrics.get("loss_first"),
        "loss_last": metrics.get("loss_last"),
    }


def _evaluate(job):
    import datadistill as dd
    from datadistill.synset.set import SyntheticSet

    key, method, data_name, ipc, seed, source, options = job
    start = time.perf_counter()
    if method == "random":
        synset = dd.distill("random", data_name, ipc=ipc, seed=seed - 3407)  # redrawn per seed (0, 1, 2)
    else:
        synset = SyntheticSet.load(source)  # a multi-formation set names its factor in its metadata
    r = dd.evaluate(synset, protocol="convnet", data=data_name, seeds=1, first_seed=seed, **options)
    d = r.details
    return {
        "key": key,
        "method": method,
        "ipc": ipc,
        "seed": seed,
        "test": r.test_acc[0],
        "val": r.val_acc[0],
        "test_last": d["test_last"][0],
        "epoch": d["selected_epoch"][0],
        "val_curve": d["val_curves"][0],
        "train_images": d["train_images"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def flip_strategy(recipe: str | None = None) -> str:
    """DM's DSA strategy (``recipe`` None) or an evaluation recipe's, with flip: the library's on mirror-safe data."""
    from datadistill.data.augment import DSA_CODE_STRATEGY
    from datadistill.evaluate.from_scratch import RECIPES

    return DSA_CODE_STRATEGY if recipe is None else RECIPES[recipe]["dsa_strategy"]


def run_pool(fn, jobs, args):
    if not jobs:
        return []
    if args.workers <= 1:
        _init_worker(args.threads)
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(args.workers, _init_worker, (args.threads,)) as pool:
        return list(pool.imap_unordered(fn, jobs))


def main() -> None:
    args = parse()
    ipcs = [int(v) for v in args.ipcs.split(",")]
    methods = args.methods.split(",")
    runs = Path(args.runs) / args.data
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / f"dm_tgdd_{args.data}{args.tag}.json"
    state = json.loads(out_path.read_text()) if out_path.exists() else {}
    # One entry per IPC list and stage, so a later invocation (another IPC) keeps the settings of the earlier rows.
    state.setdefault("settings", {})[f"ipcs={args.ipcs} stage={args.stage}"] = vars(args)

    def save():
        out_path.write_text(json.dumps(state, indent=1))

    expert_opts = {
        "num_experts": args.num_experts,
        "expert_epochs": args.expert_epochs,
        "expert_epoch_images": args.expert_epoch_images or None,
        "expert_val_every": args.expert_val_every,
    }
    if args.stage in ("experts", "all"):
        done = run_pool(_expert, [(args.data, expert_opts, k) for k in range(args.num_experts)], args)
        state.setdefault("experts", {}).update({str(r["expert"]): r for r in done})
        save()

    from datadistill.data.catalog import is_mirror_safe

    # The library leaves flip out on digit datasets; the committed MNIST rows kept it (see --digit-flip).
    keep_flip = args.digit_flip and not is_mirror_safe(args.data)
    distill_jobs = []
    dm_steps, tgdd_steps = per_ipc(args.dm_steps, ipcs), per_ipc(args.tgdd_steps, ipcs)
    factors = per_ipc(args.tgdd_factor, ipcs)
    for ipc in ipcs:
        if "dm" in methods:
            opts = {
                "steps": dm_steps[ipc],
                "batch_real": args.dm_batch_real,
                "clamp": args.dm_clamp,
                "checkpoint_every": 10,
                **({"dsa_strategy": flip_strategy()} if keep_flip else {}),
                **json.loads(args.dm_extra or "{}"),
            }
            distill_jobs.append(("dm", args.data, ipc, str(runs / f"dm-ipc{ipc}{args.tag}"), opts))
        if "tgdd" in methods:
            f = factors[ipc]
            opts = {
                "steps": tgdd_steps[ipc],
                "batch_real": args.tgdd_batch_real,
                "checkpoint_every": 10,
                "factor": f,
                "init": "mix" if f > 1 else "real",
                **expert_opts,
                **json.loads(args.tgdd_extra or "{}"),
            }
            distill_jobs.append(("tgdd", args.data, ipc, str(runs / f"tgdd-ipc{ipc}{args.tag}"), opts))
    if args.stage in ("distill", "all"):
        done = run_pool(_distill, distill_jobs, args)
        state.setdefault("distill", {}).update({f"{r['method']}-ipc{r['ipc']}": r for r in done})
        save()

    epochs = per_ipc(args.eval_epochs, ipcs)
    if args.stage in ("eval", "all"):
        finished = state.setdefault("eval", {})
        sets_tag = args.tag if args.sets_tag is None else args.sets_tag
        jobs = []
        for ipc in ipcs:
            options = {
                "recipe": args.recipe,
                "epochs": epochs[ipc],
                "val_images": args.val_images or None,
                "val_every": max(1, epochs[ipc] // args.val_points),
            }
            if args.dsa_strategy:
                options["dsa_strategy"] = args.dsa_strategy
            elif keep_flip:
                options["dsa_strategy"] = flip_strategy(args.recipe)
            for method in methods:
                source = str(runs / f"{method}-ipc{ipc}{sets_tag}")
                for k in range(args.seeds):
                    key = f"{method}-ipc{ipc}-seed{k}"
                    if key not in finished:
                        jobs.append((key, method, args.data, ipc, 3407 + k, source, options))
        with mp.get_context("spawn").Pool(max(1, args.workers), _init_worker, (args.threads,)) as pool:
            for r in pool.imap_unordered(_evaluate, jobs):
                finished[r["key"]] = r
                save()
                print(
                    f"{r['key']}: test {100 * r['test']:.2f} (epoch {r['epoch']}, last {100 * r['test_last']:.2f}) "
                    f"in {r['seconds']} s",
                    flush=True,
                )

    if args.stage in ("full", "all"):
        import datadistill as dd

        _init_worker(max(args.threads, 1))
        start = time.perf_counter()
        # first_seed 3407: the experts' own seeds, so the full-data rows reuse TGDD's cached experts, as committed
        r = dd.evaluate(
            None, protocol="convnet-full", data=args.data, seeds=args.num_experts, first_seed=3407, **expert_opts
        )
        state["full"] = {
            "test": r.test_acc,
            "val": r.val_acc,
            "test_last": r.details["test_last"],
            "epoch": r.details["selected_epoch"],
            "seconds": round(time.perf_counter() - start, 1),
            "train_images": r.details["train_images"],
        }
        save()
    if args.pool_tags:
        state = pooled(args.data, args.pool_tags.split(","), ipcs, methods)
    print(table(state, ipcs, methods))


def pooled(data: str, tags: list[str], ipcs: list[int], methods: list[str]) -> dict:
    """The evaluations of several result files as one state (keys prefixed by their tag); prints each set's mean,
    so the spread between distilled sets can be told from the spread between training seeds."""
    rows = {}
    for tag in tags:
        finished = json.loads((RESULTS / f"dm_tgdd_{data}{tag}.json").read_text()).get("eval", {})
        for key, row in finished.items():
            rows[f"{tag}:{key}"] = row
        for m in methods:
            for ipc in ipcs:
                if cell := summary(finished, m, ipc):
                    print(f"set {tag or '(default)'} {m} IPC {ipc}: {cell}")
    return {"eval": rows}


def summary(finished: dict, method: str, ipc: int) -> str:
    """Mean ± std of the selected-epoch and last-epoch test accuracy of one method and IPC ('' if none ran)."""
    import numpy as np

    rows = [v for v in finished.values() if v["method"] == method and v["ipc"] == ipc]
    if not rows:
        return ""
    t = 100 * np.array([r["test"] for r in rows])
    last = 100 * np.array([r["test_last"] for r in rows])
    return f"{t.mean():.2f} ± {t.std():.2f} (last {last.mean():.2f} ± {last.std():.2f}, n={len(rows)})"


def table(state: dict, ipcs: list[int], methods: list[str]) -> str:
    import numpy as np

    names = {"random": "Random real", "dm": "DM (ours)", "tgdd": "TGDD (ours)"}
    lines = ["| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---" * (len(ipcs) + 1) + "|"]
    for m in methods:
        cells = [summary(state.get("eval", {}), m, ipc) or "-" for ipc in ipcs]
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cells) + " |")
    if "full" in state:
        t = 100 * np.array(state["full"]["test"])
        lines.append(f"| Full dataset (ConvNet, ours) | {t.mean():.2f} ± {t.std():.2f} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
