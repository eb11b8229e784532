"""An end-to-end ImageNet-shaped run on the CPU (statistics pass, SFM, linear probe, CI), each phase timed, and an
extrapolation of the measured costs to ImageNet-1k on one and on several GPUs.

    python benchmarks/imagenet_e2e.py --classes 100 --per-class 300 --out benchmarks/results/imagenet_e2e.json
    python benchmarks/imagenet_e2e.py --classes 3 --per-class 6 --test-per-class 2 --crop 32 --steps 2 \\
        --epochs 2 --views 1 --full-epochs 1 --ceiling-images 16        # smoke size, seconds

What runs (device: CPU, every core; EfficientNet-Lite0 with its offline ImageNet weights; a cold feature cache):
  folder           ``--classes`` classes of 500x375 JPEGs (imagenet_folder.py): ``--per-class`` in train/ (the
                   toolkit holds 10 % of them out as the validation split) and ``--test-per-class`` in test/;
                   built once and reused, not timed
  load             the dataset's manifest (every file's header read once)
  decode ceiling   ``decode_resized`` of ``--ceiling-images`` train files on one process per core (data_pipeline.py)
  forward ceiling  EfficientNet-Lite0 on ``--ceiling-images`` uint8 images at the crop (data_pipeline.py)
  stats train      the statistics pass over train (``feature_bank``, loader workers decode)
  stats val+test   the same over the validation and test splits (the probes' features)
  sfm              ``datadistill distill sfm`` at IPC ``--ipc`` for ``--steps`` steps from ``--init``, crop ``--crop``
                   (s / step: the run's distill phase over its steps, initialisation included)
  probe view pass  the probes' AugBasic view pass alone, ``--view-sample`` views of every synthetic image
  full probe       the full-dataset probe (``--full-epochs``), which CI inherits its classifier from
  linear probe     ``linear-probe`` with ``--epochs`` / ``--views`` (the papers: 1000 / 100)
  ci               ``ci`` with the same epochs and views, the full-dataset probe's classifier read from the cache
Every phase records wall seconds and peak RSS (the toolkit's ``PhaseTimer``: the resident high-water mark restarted
at the phase's start; for phases that call ``distill`` / ``evaluate``, the largest of their own phases' peaks).
Accuracies are printed but mean nothing: the folder's classes differ only by a colour shift.

The extrapolation to ImageNet-1k (``--target-*``) on each of ``--gpus`` GPUs uses only the measured costs and the
assumptions it prints with its table (and writes to the JSON): the GPU's forward speed-up over this CPU
(``--gpu-forward`` images/s over the measured forward ceiling), decoding on ``--cores-per-gpu`` cores per GPU at
the measured per-core rate, SFM's step cost growing with the synthetic images per step (C x IPC x views), data-
parallel shards for the statistics pass and SFM's views, an all-reduce of SFM's gradients at ``--bus-gbps``, and
the probes' linear maps training on one CPU thread whatever the GPUs (as the toolkit trains them; the full-dataset
probe's head trains on the GPU, its rows read from the feature memory map at the rate measured here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from data_pipeline import decode_rate, forward_rate
from imagenet_folder import build_folder, cores
from scale_tools import markdown_table, phase, write_out

# Published inference throughput of tf_efficientnet_lite0 at 224 px: 8709.74 images/s on an RTX 4090, AMP, NCHW,
# batch 1024, PyTorch 2.4 / CUDA 12.4 (timm's benchmark table results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv
# in the pytorch-image-models repository). A100 / H100 cards are of the same order for this small network.
GPU_FORWARD_DEFAULT = 8709.74
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
VAL_FRACTION = 0.1  # the toolkit's default validation split, held out of train


# the measured run's settings, which --from-json takes from the earlier file
RUN_OPTIONS = ("classes", "per_class", "test_per_class", "crop", "ipc", "steps", "init", "augs", "epochs", "views")
RUN_OPTIONS += ("full_epochs", "seeds", "view_sample", "ceiling_images", "batch_size", "workers")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("the measured run")
    run.add_argument("--classes", type=int, default=100)
    run.add_argument("--per-class", type=int, default=300, help="train images per class (10 %% become validation)")
    run.add_argument("--test-per-class", type=int, default=50, help="test images per class")
    run.add_argument("--crop", type=int, default=224, help="backbone input size (the papers: 224)")
    run.add_argument("--ipc", type=int, default=1)
    run.add_argument("--steps", type=int, default=300, help="SFM steps (the papers: 5000)")
    run.add_argument("--init", default="centroids", choices=("noise", "real", "centroids"), help="SFM's start")
    run.add_argument("--augs", type=int, default=1, help="SFM's augmented views per step (A)")
    run.add_argument("--epochs", type=int, default=1000, help="linear-probe / CI epochs (the papers: 1000)")
    run.add_argument(
        "--views",
        type=int,
        default=20,
        help="AugBasic views per synthetic image for the probes (the papers: 100; the view pass is the probes' "
        "main cost on a CPU)",
    )
    run.add_argument("--full-epochs", type=int, default=100, help="epochs of the full-dataset probe (CI's classifier)")
    run.add_argument("--seeds", type=int, default=1, help="evaluation seeds")
    run.add_argument("--view-sample", type=int, default=2, help="views in the separately timed view pass")
    run.add_argument("--ceiling-images", type=int, default=500, help="train images of the decode / forward ceilings")
    run.add_argument("--batch-size", type=int, default=100, help="the statistics pass's batch size")
    run.add_argument("--workers", type=int, default=None, help="loader processes (default: one per core)")
    run.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "datadistill-imagenet-e2e")
    run.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    run.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: extrapolate again from the measurements of an earlier --out file (its run's "
        "settings are used; the extrapolation's options are this command's)",
    )
    target = p.add_argument_group("the extrapolation")
    target.add_argument("--gpus", type=int, nargs="+", default=[1, 8], help="GPU counts to extrapolate to")
    target.add_argument("--target-classes", type=int, default=1000)
    target.add_argument("--target-train", type=int, default=IMAGENET_TRAIN, help="ImageNet-1k train images")
    target.add_argument("--target-test", type=int, default=IMAGENET_VAL, help="test images (ImageNet-1k's val)")
    target.add_argument("--target-steps", type=int, default=5000, help="SFM steps (the papers' 5000)")
    target.add_argument("--target-epochs", type=int, default=1000, help="probe epochs (the papers' 1000)")
    target.add_argument("--target-views", type=int, default=100, help="probe views (the papers' 100)")
    target.add_argument("--target-full-epochs", type=int, default=100, help="full-dataset probe epochs")
    target.add_argument(
        "--gpu-forward",
        type=float,
        default=GPU_FORWARD_DEFAULT,
        help="EfficientNet-Lite0 forward images/s at the crop on one GPU (default: 8709.74, timm's published "
        "inference benchmark of tf_efficientnet_lite0 at 224 px on an RTX 4090 with AMP, batch 1024; pass your "
        "GPU's figure, e.g. gpu_scale.py's forward)",
    )
    target.add_argument(
        "--cores-per-gpu",
        type=int,
        default=12,
        help="CPU threads per GPU that decode JPEGs (default 12: 96 vCPUs for 8 GPUs, e.g. an 8 x A100 cloud box)",
    )
    target.add_argument(
        "--bus-gbps",
        type=float,
        default=100.0,
        help="all-reduce bus bandwidth between GPUs, GB/s (default 100: a conservative NVLink figure; "
        "nccl-tests' all_reduce_perf measures yours)",
    )
    args = p.parse_args()
    if min(args.classes, args.per_class, args.test_per_class, args.steps, args.epochs, args.views) < 1:
        p.error("--classes, --per-class, --test-per-class, --steps, --epochs and --views must be at least 1")
    if args.per_class < 2 or args.per_class - math.ceil(VAL_FRACTION * args.per_class) < args.ipc:
        p.error("--per-class must be at least 2 and leave --ipc train images a class after the validation split")
    return args


# ---- the measured run -----------------------------------------------------------------------------------------


def _inner_peak(entry: dict, inner: dict) -> None:
    """An outer phase around ``distill`` / ``evaluate``: their own phases restart the high-water mark, so the
    outer phase's peak is the largest of its reading and theirs."""
    peaks = [entry.get("peak_rss_mb") or 0.0] + [p.get("peak_rss_mb") or 0.0 for p in inner.values()]
    entry["peak_rss_mb"] = max(peaks)


def measure(args: argparse.Namespace, folder: Path, work: Path) -> dict:
    import datadistill as dd
    from datadistill.data import load_dataset
    from datadistill.evaluate.linear_probe import FEATURE_DTYPE, view_features
    from datadistill.features.backbones import load_backbone
    from datadistill.features.bank import feature_bank, resize_for
    from datadistill.run.timing import PhaseTimer

    timer = PhaseTimer()
    phases = timer.phases
    with phase(timer, "load") as entry:
        data = load_dataset(f"imagefolder:{folder}", workers=args.workers)
        entry["images"] = len(data.train) + len(data.val) + len(data.test)
    backbone = load_backbone("efficientnet_lite0")
    crop, resize = args.crop, resize_for(args.crop)
    with torch.inference_mode():
        backbone(torch.rand(args.batch_size, 3, crop, crop))  # warm-up, not timed

    paths = [data.train.path(i) for i in range(min(args.ceiling_images, len(data.train)))]
    for path in paths:  # into the page cache, as the pass's files are after the manifest read them
        Path(path).read_bytes()
    with phase(timer, "decode ceiling") as entry:
        entry.update(decode_rate(paths, resize, crop))
        entry["images_per_s_per_core"] = round(entry["images_per_s"] / entry["processes"], 2)
    with phase(timer, "forward ceiling") as entry:
        entry.update(forward_rate(backbone, len(paths), crop, args.batch_size))

    with phase(timer, "stats train") as entry:
        bank = feature_bank(data, backbone, "train", crop=crop, batch_size=args.batch_size, num_workers=args.workers)
        entry["images"] = len(bank.labels)
    with phase(timer, "stats val+test") as entry:
        for split in ("val", "test"):
            feature_bank(data, backbone, split, crop=crop, batch_size=args.batch_size, num_workers=args.workers)
        entry["images"] = len(data.val) + len(data.test)
    for name in ("stats train", "stats val+test"):
        phases[name]["images_per_s"] = round(phases[name]["images"] / phases[name]["seconds"], 2)

    run = work / "sfm-run"
    sfm = dict(crop=crop, steps=args.steps, init=args.init, augs=args.augs, device="cpu")
    with phase(timer, "sfm") as entry:
        synset = dd.distill("sfm", f"imagefolder:{folder}", args.ipc, run, dataset=data, model=backbone, **sfm)
        inner = json.loads((run / "metrics.json").read_text())["distill"]["phases"]
        _inner_peak(entry, inner)
        entry.update(
            steps=args.steps,
            synthetic_images_per_step=len(synset) * args.augs,
            seconds_per_step=inner["distill"]["seconds_per_step"],
            inner_phases=inner,
        )

    n_syn, sample = len(synset), min(args.view_sample, args.views)
    with phase(timer, "probe view pass") as entry:
        generator = torch.Generator().manual_seed(0)
        view_features([(backbone, crop)], synset.images, sample, generator, torch.device("cpu"), dtype=FEATURE_DTYPE)
        entry.update(views=sample, view_images=sample * n_syn)
    entry["seconds_per_view_image"] = round(entry["seconds"] / entry["view_images"], 5)

    common = dict(data=data, backbone=backbone, crop=crop, seeds=args.seeds, device="cpu")
    accuracy = {}
    evaluations = (
        ("full probe", "full", None, dict(full_epochs=args.full_epochs)),
        ("linear probe", "linear-probe", synset, dict(epochs=args.epochs, views=args.views)),
        ("ci", "ci", synset, dict(epochs=args.epochs, views=args.views, full_epochs=args.full_epochs)),
    )
    for name, protocol, evaluated, options in evaluations:
        with phase(timer, name) as entry:
            result = dd.evaluate(evaluated, protocol, **common, **options)
            _inner_peak(entry, result.details["phases"])
            entry.update(options)
            if protocol == "full":
                entry["train_images"] = len(data.train)
            else:
                entry.update(views_used=result.details["views"], synthetic_images=n_syn)
        accuracy[protocol] = {"test_mean": round(result.mean, 4), "val_mean": round(result.val_mean, 4)}
    with phase(timer, "head steps"):  # a synthetic micro-measurement for the extrapolation
        steps = head_steps(sorted({data.num_classes, args.target_classes}), backbone.feat_dim)
    return {
        "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "classes": data.num_classes,
        "feat_dim": backbone.feat_dim,
        "phases": phases,
        "head_steps": steps,
        "accuracy_meaningless": accuracy,
    }


# ---- the extrapolation ----------------------------------------------------------------------------------------


def pyramid_floats_per_image(resolution: int) -> int:
    """Parameters of one image of SFM's pyramid once every level exists (as from --init centroids or real)."""
    from datadistill.synset.params import make_param

    param = make_param(
        "pyramid", 1, resolution, torch.Generator(), init_images=torch.zeros(1, 3, resolution, resolution)
    )
    return sum(p.numel() for p in param.parameters())


def probe_steps(images: int, epochs: int, batch: int) -> int:
    """Optimizer steps of a probe: ``epochs`` passes over ``images`` in batches of min(batch, images)."""
    return epochs * math.ceil(images / min(batch, images))


def head_step_seconds(classes: int, feat_dim: int, batch: int, steps: int = 40) -> float:
    """Seconds per optimizer step of a linear head on ``classes`` classes (the toolkit's ``fit``, float16 features
    as the caches hold them), after a few warm-up steps: the part of a probe's step that grows with C."""
    import torch.nn.functional as F

    from datadistill.evaluate.training import fit, new_head

    g = torch.Generator().manual_seed(0)
    n = batch * steps
    features = torch.randn(n, feat_dim, generator=g).half()
    labels = torch.randint(classes, (n,), generator=g)
    head = new_head(feat_dim, classes, g)

    def loss(i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(features[i].float()), labels[i])

    fit([(head, 1e-3)], 4 * batch, 1, 1, batch, loss, g)  # warm-up
    start = time.perf_counter()
    fit([(head, 1e-3)], n, 1, 1, batch, loss, g)
    return (time.perf_counter() - start) / steps


def head_steps(classes: list[int], feat_dim: int) -> dict:
    """``head_step_seconds`` at each class count, for the probes' batch and the full-dataset probe's."""
    from datadistill.evaluate.golden import FullProbeOptions
    from datadistill.evaluate.linear_probe import ProbeOptions

    batches = {"probe": ProbeOptions().batch_size, "full": FullProbeOptions().full_batch}
    return {
        name: {"batch": b, "seconds": {str(c): round(head_step_seconds(c, feat_dim, b), 6) for c in classes}}
        for name, b in batches.items()
    }


def extrapolate(m: dict, args: argparse.Namespace) -> dict:
    from datadistill.features.bank import resize_for

    ph, heads, seeds = m["phases"], m["head_steps"], args.seeds
    c0, c1, ipc, augs = m["classes"], args.target_classes, args.ipc, args.augs
    fwd_cpu = ph["forward ceiling"]["images_per_s"]
    speedup = args.gpu_forward / fwd_cpu
    dec_core = ph["decode ceiling"]["images_per_s_per_core"]
    step_cpu = ph["sfm"]["seconds_per_step"]
    view_cpu = ph["probe view pass"]["seconds_per_view_image"]
    n0_syn, n1_syn = c0 * ipc, c1 * ipc
    pb, fb = heads["probe"]["batch"], heads["full"]["batch"]
    probe_head = {c: heads["probe"]["seconds"][str(c)] for c in (c0, c1)}
    full_head = {c: heads["full"]["seconds"][str(c)] for c in (c0, c1)}
    # The probes' measured seconds per evaluation seed, less their view pass: the training of the linear maps (at
    # least 0: in a tiny run the separately timed view pass can cost more than the probe's own).
    views0 = ph["linear probe"]["views_used"]
    trainings = {
        name: max(0.0, ph[name]["seconds"] / seeds - views0 * n0_syn * view_cpu) for name in ("linear probe", "ci")
    }
    probe_step = trainings["linear probe"] / probe_steps(n0_syn, args.epochs, pb)
    ci_step = trainings["ci"] / probe_steps(n0_syn, args.epochs, pb)
    full_steps0 = probe_steps(ph["full probe"]["train_images"], args.full_epochs, fb)
    full_step = ph["full probe"]["seconds"] / seeds / full_steps0
    # of which reading the batch's rows from the memory map (the step less a head step on features in memory)
    full_read = max(0.0, full_step - full_head[c0])
    train1 = round(args.target_train * (1 - VAL_FRACTION))
    pass_images = args.target_train + args.target_test
    probe_steps1 = probe_steps(n1_syn, args.target_epochs, pb)
    full_steps1 = probe_steps(train1, args.target_full_epochs, fb)
    param_bytes = n1_syn * pyramid_floats_per_image(resize_for(args.crop)) * 4
    views1 = min(args.target_views, args.target_epochs)  # a probe draws at most one view per epoch

    def per_gpu(g: int) -> dict:
        pass_rate = min(g * args.gpu_forward, g * args.cores_per_gpu * dec_core)
        allreduce = 0.0 if g == 1 else 2 * (g - 1) / g * param_bytes / (args.bus_gbps * 1e9)
        step = step_cpu * (n1_syn * augs) / (n0_syn * augs) / speedup / g + allreduce
        return {
            "stats pass": pass_images / pass_rate,
            "sfm": args.target_steps * step,
            "sfm s/step": step,
            "probe view pass": views1 * n1_syn * view_cpu / speedup,
            "linear-probe training": (probe_step + probe_head[c1] - probe_head[c0]) * probe_steps1,
            "full probe (CI's classifier)": (full_read + full_head[c1] / speedup) * full_steps1,
            "ci training": ci_step * probe_steps1,
        }

    by_gpus = {str(g): per_gpu(g) for g in args.gpus}
    formulas = {
        "stats pass": (
            f"(train + test) / min(G x gpu_forward, G x cores_per_gpu x decode_per_core) = {pass_images:,} / "
            f"min(G x {args.gpu_forward:g}, G x {args.cores_per_gpu} x {dec_core:g})"
        ),
        "sfm": f"target_steps x s/step = {args.target_steps} x s/step",
        "sfm s/step": (
            f"s/step(CPU) x (C1 IPC A)/(C0 IPC A) / speed-up / G + all-reduce = {step_cpu:g} x {c1}/{c0} / "
            f"{speedup:.1f} / G + 2(G-1)/G x {param_bytes / 1e9:.2f} GB / {args.bus_gbps:g} GB/s"
        ),
        "probe view pass": (
            f"views x C1 IPC x s/view-image(CPU) / speed-up = {views1} x {n1_syn} x {view_cpu:g} / {speedup:.1f}"
        ),
        "linear-probe training": (
            f"(s/step(CPU, C0) + head(C1) - head(C0)) x steps = ({probe_step:.3g} + {probe_head[c1]:.3g} - "
            f"{probe_head[c0]:.3g}) x {probe_steps1:,} (one CPU thread)"
        ),
        "full probe (CI's classifier)": (
            f"(row reads + head(C1) / speed-up) x epochs x ceil(train / {fb}) = ({full_step:.3g} - "
            f"{full_head[c0]:.3g} + {full_head[c1]:.3g} / {speedup:.1f}) x {full_steps1:,} (head on the GPU, rank 0)"
        ),
        "ci training": (
            f"projector s/step(CPU) x steps = {ci_step:.3g} x {probe_steps1:,} (F x F: no C; one CPU thread)"
        ),
    }
    measured = {
        "stats pass": f"{ph['stats train']['images_per_s']:g} img/s (CPU pass)",
        "sfm": f"{ph['sfm']['seconds']:g} s for {args.steps} steps",
        "sfm s/step": f"{step_cpu:g} s at C={c0}",
        "probe view pass": f"{view_cpu:g} s per view image",
        "linear-probe training": f"{probe_step:.3g} s/step at C={c0}",
        "full probe (CI's classifier)": f"{full_step:.3g} s/step at C={c0}",
        "ci training": f"{ci_step:.3g} s/step",
    }
    rows = [
        {
            "phase": name,
            "measured": measured[name],
            "formula": formulas[name],
            "seconds_by_gpus": {g: by_gpus[g][name] for g in by_gpus},
        }
        for name in formulas
    ]
    totals = {g: sum(v for k, v in by_gpus[g].items() if k != "sfm s/step") for g in by_gpus}
    assumptions = [
        f"target: {c1} classes, {args.target_train:,} train images ({VAL_FRACTION:.0%} held out as validation, so "
        f"{train1:,} train the full-dataset probe), {args.target_test:,} test images; IPC {ipc}, crop {args.crop}, "
        f"SFM {args.target_steps} steps with {augs} view(s), probes {args.target_epochs} epochs / {views1} views, "
        f"full-dataset probe {args.target_full_epochs} epochs; the probes per evaluation seed",
        f"GPU forward: {args.gpu_forward:g} images/s (--gpu-forward) over this CPU's measured {fwd_cpu:g} images/s "
        f"= speed-up {speedup:.1f} for every backbone pass (statistics, SFM's forward and backward, the probes' "
        "views); "
        + (
            "the default figure is timm's published tf_efficientnet_lite0 inference throughput at 224 px (RTX 4090, "
            "AMP, batch 1024): optimistic for the statistics pass, which runs in float32 (SFM runs under bf16 "
            "autocast on CUDA)"
            if args.gpu_forward == GPU_FORWARD_DEFAULT
            else "the figure was given"
        ),
        "SFM's step costs the backbone's forward and backward on C x IPC x A synthetic views, so it grows linearly "
        "with C; the backward costs the same multiple of the forward on a GPU as on this CPU (the same speed-up)",
        f"the statistics pass on GPUs is bound by CPU decoding: {dec_core:g} images/s per core measured here "
        f"(decode ceiling / processes) x {args.cores_per_gpu} cores per GPU (--cores-per-gpu), or by the GPU forward, "
        "whichever is lower; on CUDA the toolkit decodes an all-JPEG folder with nvJPEG on the GPU instead, which "
        "gpu_scale.py measures (this bound is the PIL path's: other formats, augmented-view passes)",
        "G GPUs under torchrun: the statistics pass takes every G-th batch on each rank; SFM shares each step's "
        "views out over the ranks and all-reduces the image gradients (2(G-1)/G x the pyramid's "
        f"{param_bytes / 1e9:.2f} GB in float32 at --bus-gbps {args.bus_gbps:g} GB/s); rendering the images and the "
        "Adam update run on every rank and are left out",
        "the probes' view pass runs on one GPU per evaluation seed (torchrun shares seeds out, not one seed's views)",
        "the probes' linear maps (probe head, CI projector) train on one CPU thread in the toolkit, so GPUs do not "
        "speed them up; their step at C1 is the measured step at C0 plus the difference of a synthetic head step at "
        f"C1 and at C0 (head(C): the toolkit's fit on random features, {m['feat_dim']}-d); CI's projector (F x F) "
        "does not grow with C",
        "the full-dataset probe trains its head on the evaluation device (rank 0), reading each batch's rows from the "
        "feature memory map on the CPU: a step costs the rows' reading as measured here (the CPU step less a head "
        "step on features in memory, the same per row whatever C) plus the head's step at C1 over the GPU speed-up",
        f"SFM's step holds the backward's activations of its C x IPC x A views: peak RSS "
        f"{ph['sfm']['peak_rss_mb']:,.0f} MB here at C = {c0}, so about x{c1 / c0:g} at the target on one device "
        "(G devices hold 1/G each); the memory of a GPU at ImageNet-1k is gpu_scale.py's to measure",
        f"the feature cache holds (train + test) x {m['feat_dim']} float16 features: "
        f"{pass_images * m['feat_dim'] * 2 / 1e9:.1f} GB on disk, memory-mapped (the pass's memory does not grow "
        "with the dataset)",
    ]
    return {"speedup": round(speedup, 2), "assumptions": assumptions, "rows": rows, "total_seconds": totals}


# ---- output ---------------------------------------------------------------------------------------------------


def measured_table(m: dict) -> str:
    rows = []
    for name, p in m["phases"].items():
        rate = p.get("images_per_s")
        per_step = p.get("seconds_per_step")
        rows.append([name, p["seconds"], p.get("peak_rss_mb"), rate, per_step])
    return markdown_table(["phase", "wall s", "peak RSS MB", "images/s", "s/step"], rows)


def extrapolation_table(x: dict, gpus: list[int]) -> str:
    header = ["phase", "measured here", "formula"] + [f"{g} GPU{'s' if g > 1 else ''} (h)" for g in gpus]
    rows = [
        [r["phase"], r["measured"], r["formula"]] + [_hours(r["seconds_by_gpus"][str(g)], r["phase"]) for g in gpus]
        for r in x["rows"]
    ]
    rows.append(
        ["total", "", "sum of the phases (not s/step)"] + [_hours(x["total_seconds"][str(g)], "") for g in gpus]
    )
    return markdown_table(header, rows)


def _hours(seconds: float, name: str) -> str:
    return f"{seconds:.3g} s" if name.endswith("s/step") else f"{seconds / 3600:.3g}"


def main() -> None:
    args = parse()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    if args.from_json is not None:
        earlier = json.loads(args.from_json.read_text())
        measured = earlier["measured"]
        for action in RUN_OPTIONS:  # the measured run's own settings
            setattr(args, action, earlier["settings"][action])
        machine = {"cores": earlier["cores"], "torch_threads": earlier["torch_threads"]}
    else:
        machine = {"cores": cores(), "torch_threads": torch.get_num_threads()}
        shape = f"{args.classes}x{args.per_class}+{args.test_per_class}"
        splits = {"train": args.classes * args.per_class, "test": args.classes * args.test_per_class}
        folder = build_folder(args.folder / shape, args.classes, splits)
        with tempfile.TemporaryDirectory(prefix="datadistill-imagenet-e2e-") as work:
            os.environ["DATADISTILL_CACHE"] = str(Path(work) / "cache")  # a cold statistics pass
            start = time.perf_counter()
            measured = measure(args, folder, Path(work))
            measured["wall_seconds"] = round(time.perf_counter() - start, 1)
    extrapolation = extrapolate(measured, args)
    tables = {"measured": measured_table(measured), "extrapolation": extrapolation_table(extrapolation, args.gpus)}
    threads = machine["torch_threads"]
    print(f"\n{args.classes} classes, {args.crop} px, {machine['cores']} cores, torch threads {threads}")
    print(tables["measured"])
    print(f"\naccuracies (meaningless on this folder): {measured['accuracy_meaningless']}")
    print(f"\nextrapolation to {args.target_classes} classes (hours unless marked s):")
    print(tables["extrapolation"])
    print("\nassumptions:\n" + "\n".join(f"- {a}" for a in extrapolation["assumptions"]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {
        "settings": settings,
        **machine,
        "measured": measured,
        "extrapolation": extrapolation,
        "markdown": tables,
    }
    write_out(args.out, results)


if __name__ == "__main__":
    main()
