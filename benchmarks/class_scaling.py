"""The parts of the toolkit whose cost grows with the number of classes C, timed and measured at several C (default
10, 100, 1000) on synthetic features, with the growth each should show next to the measured ratio.

    python benchmarks/class_scaling.py --classes 10 100 1000 --out benchmarks/results/class_scaling.json
    python benchmarks/class_scaling.py --classes 2 3 --repeats 1 --kmeans-per-class 10 --report-resolution 16
                                                                              # smoke size, seconds

Parts (``--parts``), each on random features of dimension ``--feat-dim`` (EfficientNet-Lite0's 1280 by default):
  sfm     SFM's loss and backward without the backbone: the class means of the synthetic features (C x IPC x A rows),
          the non-target centres, the flow (C x F) and its cosine with the real flow, then backward to the features
          (``class_means``, ``non_target_centres`` of methods/sfm.py); expected linear in C
  lgm     LGM's closed-form head gradients without the backbone: a random C x F head, the gradient on a real batch
          of IPC x A x C features and on A x C x IPC synthetic ones, their cosine, backward (``head_gradient_closed_
          form`` of methods/lgm.py); the batch grows with C and so does the head: expected quadratic
  kmeans  the per-class k-means of the statistics (``FeatureBank.kmeans``, k = ``--k``) on a float16 feature cache
          of ``--kmeans-per-class`` features per class, as the statistics pass writes it; expected linear (classes
          are clustered one at a time; finding a class's rows scans every label, C x N, negligible here)
  report  ``datadistill report`` (``report_runs``) over two run directories (Random and Centroids, IPC
          ``--report-ipc``, ``--report-resolution`` px images) distilled and evaluated (linear probe, 1 epoch,
          1 view, crop 32) on random images of C classes; timed: saving each set (``SyntheticSet.save``: tensors,
          ``grid.png`` with one row per class, manifest) and the report; the report shows the first 20 classes of
          each grid, which the rows of its grid PNGs confirm; both expected linear (the report decodes the whole
          grid.png before it cuts the first rows)
Timing: sfm and lgm, the median of ``--repeats`` steps after one warm-up; kmeans and each save once; the report
once after a warm-up call. Memory: sfm and lgm, the peak of live tensor memory during one step, inputs included
(torch's ``MemTracker``, which counts every tensor allocated inside its block: exact where resident memory moves in
4 KiB pages and allocator caches); kmeans, save and report, the growth of the peak resident memory over the phase's
start (the toolkit's ``PhaseTimer``: PIL's image buffers and memory-mapped feature pages are not torch tensors).
A set's grid.png over PIL's decompression-bomb limit (2 x ``Image.MAX_IMAGE_PIXELS`` pixels) is reported: the
report cannot open it. Timings on a CPU shared with other jobs are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scale_tools import markdown_table, phase, write_out

PARTS = ("sfm", "lgm", "kmeans", "report")
GROWTH = {"sfm": "linear", "lgm": "quadratic", "kmeans": "linear", "save set": "linear", "report": "linear"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--feat-dim", type=int, default=1280, help="feature dimension F (EfficientNet-Lite0: 1280)")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--sfm-augs", type=int, default=1, help="SFM's views per step (its default)")
    p.add_argument("--lgm-augs", type=int, default=10, help="LGM's views per step (its default; 3 for ImageNet-1k)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps of sfm and lgm (median)")
    p.add_argument("--k", type=int, default=10, help="k-means clusters per class")
    p.add_argument("--kmeans-per-class", type=int, default=300, help="features per class for k-means")
    p.add_argument("--report-ipc", type=int, default=1)
    p.add_argument("--report-resolution", type=int, default=256, help="size of the report's set images")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if min(args.classes) < 2 or args.repeats < 1 or args.kmeans_per_class < args.k:
        p.error("--classes must be at least 2, --repeats at least 1 and --kmeans-per-class at least --k")
    return args


def tensor_peak_mb(run: Callable[[], None]) -> float:
    """Peak live tensor memory (MB) while ``run`` runs: torch's MemTracker counts every tensor allocated inside."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        run()
    peak = tracker.get_tracker_snapshot("peak")
    return round(sum(device["Total"] for device in peak.values()) / 2**20, 3)


def median_seconds(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 6)


# ---- sfm and lgm: the loss and its backward on features ------------------------------------------------------


def sfm_step(classes: int, args: argparse.Namespace) -> Callable[[], None]:
    """SFM's loss + backward on features (the backbone's features of the C x IPC x A views, drawn once here)."""
    import torch.nn.functional as F

    from datadistill.methods.sfm import class_means, non_target_centres

    n, dim, augs = classes * args.ipc, args.feat_dim, args.sfm_augs
    labels = torch.arange(classes).repeat_interleave(args.ipc)
    real = torch.randn(classes, dim)
    real_flow = non_target_centres(real, classes - 1) - real
    z = torch.randn(augs * n, dim, requires_grad=True)

    def step() -> None:
        z.grad = None
        centres = class_means(z.view(augs, n, -1).mean(dim=0), labels, classes)
        flow = non_target_centres(centres, classes - 1) - centres
        (1 - F.cosine_similarity(flow.flatten(), real_flow.flatten(), dim=0)).backward()

    return step


def lgm_step(classes: int, args: argparse.Namespace) -> Callable[[], None]:
    """LGM's loss + backward on features: a fresh random C x F head each step (as LGM draws one), closed-form head
    gradients on the real batch (IPC x A x C features) and on the synthetic views (A x C x IPC), drawn once here."""
    import torch.nn.functional as F

    from datadistill.methods.lgm import head_gradient_closed_form

    n, dim, augs = classes * args.ipc, args.feat_dim, args.lgm_augs
    syn_labels = torch.arange(classes).repeat_interleave(args.ipc).repeat(augs)
    real_labels = torch.randint(classes, (n * augs,))
    real = torch.randn(n * augs, dim)
    z = torch.randn(augs * n, dim, requires_grad=True)

    def step() -> None:
        z.grad = None
        weight, bias = torch.randn(classes, dim) * 0.01, torch.zeros(classes)
        with torch.no_grad():
            g_real = head_gradient_closed_form(real, real_labels, weight, bias)
        g_syn = head_gradient_closed_form(z, syn_labels, weight, bias)
        (1 - F.cosine_similarity(g_real, g_syn, dim=0)).backward()

    return step


def loss_part(name: str, classes: int, args: argparse.Namespace) -> dict:
    make = sfm_step if name == "sfm" else lgm_step
    augs = args.sfm_augs if name == "sfm" else args.lgm_augs
    step = make(classes, args)
    return {
        "seconds": median_seconds(step, args.repeats),
        "peak_mb": tensor_peak_mb(lambda: make(classes, args)()),  # set-up inside: its tensors count too
        "memory": "tensor peak (MemTracker)",
        "rows": classes * args.ipc * augs * (2 if name == "lgm" else 1),  # LGM: the real batch and the views
    }


# ---- kmeans: the statistics' per-class k-means on a feature cache -----------------------------------------------


def feature_cache(directory: Path, classes: int, per_class: int, dim: int, k: int) -> object:
    """A ``FeatureBank`` over a float16 ``features.npy`` written class by class, as the statistics pass writes it:
    each class is k Gaussian modes (so Lloyd's iterations converge as on real features)."""
    from datadistill.features.bank import FeatureBank

    directory.mkdir(parents=True)
    out = np.lib.format.open_memmap(
        directory / "features.npy", mode="w+", dtype=np.float16, shape=(classes * per_class, dim)
    )
    rng = np.random.default_rng(0)
    means = np.empty((classes, dim), dtype=np.float32)
    for c in range(classes):
        modes = rng.normal(0, 1, (k, dim))
        rows = modes[rng.integers(k, size=per_class)] + rng.normal(0, 0.5, (per_class, dim))
        out[c * per_class : (c + 1) * per_class] = rows
        means[c] = rows.mean(axis=0)
    out.flush()
    del out
    labels = torch.arange(classes).repeat_interleave(per_class)
    counts = torch.full((classes,), per_class)
    return FeatureBank(directory, labels, torch.from_numpy(means), counts, key=f"class-scaling-{classes}")


def kmeans_part(classes: int, args: argparse.Namespace, work: Path) -> dict:
    bank = feature_cache(work / f"kmeans-{classes}", classes, args.kmeans_per_class, args.feat_dim, args.k)
    found = rss_phase(lambda: bank.kmeans(args.k))
    centres, masses = found.pop("result")
    found.update(
        rows=classes * args.kmeans_per_class, centres_shape=list(centres.shape), masses_shape=list(masses.shape)
    )
    return found


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_phase(run: Callable[[], object]) -> dict:
    """``run()`` as one phase of the toolkit's ``PhaseTimer``: its seconds, the growth of the peak resident memory
    over the resident memory at its start, and its result (under "result")."""
    from datadistill.run.timing import PhaseTimer

    timer = PhaseTimer()
    before = rss_mb()
    with phase(timer, "part"):
        result = run()
    entry = timer.phases["part"]
    growth = max(0.0, round(entry["peak_rss_mb"] - before, 1))
    return {"seconds": entry["seconds"], "peak_mb": growth, "memory": "peak RSS growth", "result": result}


# ---- report: save the sets and write the comparison page ---------------------------------------------------------


def report_part(classes: int, args: argparse.Namespace, work: Path, backbone) -> list[tuple[str, dict]]:
    """Two run directories (Random, Centroids) of ``classes`` classes, distilled and evaluated; saving their sets
    again (``SyntheticSet.save``: tensors, grid.png, manifest) and ``report_runs`` over both (after one warm-up
    call), timed; the rows of the report's grids counted."""
    from PIL import Image
    from probe_memory import fake_data

    import datadistill as dd
    from datadistill.reporting.comparison import MAX_GRID_CLASSES

    data = fake_data(classes, 2, 32)
    root = work / f"report-{classes}" / "runs"
    size = dict(resolution=args.report_resolution, device="cpu")
    saves = []
    for method, options in (("random", {}), ("centroids", {"crop": 32})):
        run = root / method
        synset = dd.distill(method, data.name, args.report_ipc, run, dataset=data, model=backbone, **size, **options)
        dd.evaluate(run, "linear-probe", data=data, backbone=backbone, crop=32, epochs=1, views=1, seeds=1)
        copy = work / f"saved-{classes}-{method}"
        saves.append(rss_phase(lambda synset=synset, copy=copy: synset.save(copy)))
    out = work / f"report-{classes}" / "report"
    dd.report_runs(root, out)  # warm-up: the first report imports its plotting modules
    report = rss_phase(lambda: dd.report_runs(root, out))
    # The run's grid: a row of (resolution + 2) px per class below a 2 px margin, IPC columns likewise; the report
    # cuts it to its first rows and scales it down to 1600 px wide at most.
    cell = args.report_resolution + 2
    height, width = classes * cell + 2, args.report_ipc * cell + 2
    grid_rows = []
    for png in sorted((out / "report_files").glob("*grid*.png")):
        with Image.open(png) as im:
            grid_rows.append(round((im.height * width / im.width - 2) / cell))
    save = {
        "seconds": round(statistics.mean(s["seconds"] for s in saves), 3),
        "peak_mb": max(s["peak_mb"] for s in saves),
        "memory": saves[0]["memory"],
        "rows": classes * args.report_ipc,
        "grid_png_pixels": height * width,
        "pil_refuses_above_pixels": 2 * Image.MAX_IMAGE_PIXELS,
    }
    report.pop("result")
    report.update(rows=classes, grid_rows_shown=grid_rows, grid_rows_expected=min(classes, MAX_GRID_CLASSES))
    return [("save set", save), ("report", report)]


# ---- the table ---------------------------------------------------------------------------------------------------


def add_ratios(rows: list[dict]) -> None:
    """Each row's time and memory over the same part's row at the previous class count, beside the expected ratio."""
    previous: dict[str, dict] = {}
    for row in rows:
        before = previous.get(row["part"])
        if before is not None:
            scale = row["classes"] / before["classes"]
            row["expected_ratio"] = round(scale if GROWTH[row["part"]] == "linear" else scale**2, 2)
            row["time_ratio"] = round(row["seconds"] / before["seconds"], 2) if before["seconds"] > 0 else None
            row["memory_ratio"] = round(row["peak_mb"] / before["peak_mb"], 2) if before["peak_mb"] > 0 else None
        previous[row["part"]] = row


def table(rows: list[dict]) -> str:
    header = ["part", "C", "rows", "seconds", "peak MB", "memory measured as", "expected", "time ratio", "memory ratio"]
    lines = [
        [
            r["part"],
            r["classes"],
            r["rows"],
            r["seconds"],
            r["peak_mb"],
            r["memory"],
            f"{GROWTH[r['part']]}" + (f" (x{r['expected_ratio']:g})" if "expected_ratio" in r else ""),
            r.get("time_ratio"),
            r.get("memory_ratio"),
        ]
        for r in rows
    ]
    return markdown_table(header, lines)


def main() -> None:
    args = parse()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    rows = []
    with tempfile.TemporaryDirectory(prefix="datadistill-class-scaling-") as work:
        work = Path(work)
        os.environ["DATADISTILL_CACHE"] = str(work / "cache")
        backbone = None
        if "report" in args.parts:
            from datadistill.features.backbones import load_backbone

            backbone = load_backbone("efficientnet_lite0")
        for part in args.parts:
            for classes in sorted(args.classes):
                if part in ("sfm", "lgm"):
                    found = [(part, loss_part(part, classes, args))]
                elif part == "kmeans":
                    found = [(part, kmeans_part(classes, args, work))]
                else:
                    found = report_part(classes, args, work, backbone)
                for name, row in found:
                    rows.append({"part": name, "classes": classes, **row})
                    print(json.dumps(rows[-1]), flush=True)
    add_ratios(rows)
    markdown = table(rows)
    print(markdown)
    capped = [r for r in rows if r["part"] == "report"]
    if capped:
        ok = all(set(r["grid_rows_shown"]) == {r["grid_rows_expected"]} for r in capped)
        print(f"\nreport grids cut to min(C, 20) rows: {'yes' if ok else 'NO'}")
    for r in rows:
        if r["part"] == "save set" and r["grid_png_pixels"] > r["pil_refuses_above_pixels"]:
            print(
                f"warning: at {r['classes']} classes the set's grid.png has {r['grid_png_pixels']:,} pixels, over the "
                f"{r['pil_refuses_above_pixels']:,} PIL refuses to open (DecompressionBombError in the report)"
            )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_out(args.out, {"settings": settings, "threads": torch.get_num_threads(), "rows": rows, "markdown": markdown})


if __name__ == "__main__":
    main()
