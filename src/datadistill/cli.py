"""``datadistill`` command line: parses arguments, builds configs, calls the API. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import DatadistillError, user_message


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset name (see `datadistill list datasets`), "
                   "imagefolder:PATH or hf:NAME")
    p.add_argument("--root", default=None, help="dataset root folder (torchvision / ImageNet sets)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="feature extractor (see `datadistill list "
                   "backbones`)")
    p.add_argument("--weights", default=None, help="local weights file or folder for the backbone")
    p.add_argument("--crop", type=int, default=None, help="backbone input size (default: the backbone's own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds (mean ± std over them)")
    p.add_argument("--epochs", type=int, default=1000, help="probe epochs (passes over the synthetic set)")
    p.add_argument("--views", type=int, default=100, help="cached AugBasic views per synthetic image")
    p.add_argument("--base-lr", type=float, default=1e-3, help="probe lr before the batch/256 scaling")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datadistill", description="Dataset distillation toolkit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="offline end-to-end demo: SFM vs Random vs Centroids (minutes, CPU)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--data", default="mnist-5k")
    demo.add_argument("--steps", type=int, default=None, help="SFM steps (default: the demo's own)")
    demo.add_argument("--seeds", type=int, default=3)

    d = sub.add_parser("distill", help="distill a dataset into a synthetic set (resumes an interrupted run)")
    d.add_argument("method", help="sfm, random, centroids (see `datadistill list methods`)")
    _add_data_args(d)
    d.add_argument("--ipc", type=int, default=1, help="images per class")
    d.add_argument("--out", required=True, help="run directory (created; an interrupted run there resumes)")
    d.add_argument("--steps", type=int, default=5000)
    d.add_argument("--lr", type=float, default=2e-3)
    d.add_argument("--augs", type=int, default=1, help="augmented views per step (A)")
    d.add_argument("--param", default="pyramid", choices=["pyramid", "pixel"])
    d.add_argument("--init", default="noise", choices=["noise", "real", "centroids"],
                   help="start from noise (paper), random real images, or the Centroids images")
    d.add_argument("--grow-every", type=int, default=200, help="pyramid: add a level every N steps")
    d.add_argument("--no-decorrelate", dest="decorrelate", action="store_false", help="no colour decorrelation")
    d.add_argument("--resolution", type=int, default=None, help="render size (default: crop * 256/224)")
    d.add_argument("--noise-mean", type=float, default=0.0, help="augmentation noise mean (LGM code: 0 or 0.5)")
    d.add_argument("--flow-norm", default="classes", choices=["classes", "images"],
                   help="SFM non-target centre: divide by C-1 (default) or by mC-1 (official code)")
    d.add_argument("--decouple-alpha", type=float, default=None,
                   help="SFM decoupled TCDD/NCDD loss weight (1 = TCDD only, 0 = NCDD only)")
    d.add_argument("--seed", type=int, default=3407)
    d.add_argument("--checkpoint-every", type=int, default=100)
    d.add_argument("--val-fraction", type=float, default=0.1)

    e = sub.add_parser("eval", help="evaluate a run directory (or a folder of PNGs with --data)")
    e.add_argument("path", help="run directory, synset folder, or folder of PNGs")
    e.add_argument("--protocol", default="linear-probe", help="linear-probe")
    e.add_argument("--data", default=None, help="dataset (default: the run's)")
    e.add_argument("--root", default=None)
    e.add_argument("--eval-backbone", default=None, help="evaluation backbone (default: the run's)")
    e.add_argument("--weights", default=None)
    e.add_argument("--crop", type=int, default=None)
    e.add_argument("--device", default="auto")
    _probe_args(e)

    s = sub.add_parser("stats", help="run (or reuse) the cached statistics pass")
    _add_data_args(s)
    s.add_argument("--split", default="train", choices=["train", "val", "test"])
    s.add_argument("--kmeans", type=int, default=0, help="also per-class k-means with this k")

    lst = sub.add_parser("list", help="list datasets, backbones, methods or protocols")
    lst.add_argument("what", nargs="?", default="all", choices=["all", "datasets", "backbones", "methods",
                                                                 "protocols"])
    return parser


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, data=args.data, steps=args.steps, seeds=args.seeds)
    return 0


def _cmd_distill(args) -> int:
    from .api import distill

    names = ("root", "weights", "crop", "device", "steps", "lr", "augs", "param", "init", "grow_every", "decorrelate",
             "resolution", "noise_mean", "flow_norm", "decouple_alpha", "seed", "checkpoint_every", "val_fraction")
    options = {k: getattr(args, k) for k in names}
    synset = distill(args.method, args.data, args.backbone, args.ipc, out=args.out, **options)
    print(f"wrote {len(synset)} images ({synset.ipc} per class) to {args.out}/synset; report: {args.out}/report.md")
    return 0


def _cmd_eval(args) -> int:
    from .api import evaluate

    result = evaluate(args.path, protocol=args.protocol, data=args.data, backbone=args.eval_backbone,
                      root=args.root, weights=args.weights, seeds=args.seeds, epochs=args.epochs, views=args.views,
                      base_lr=args.base_lr, crop=args.crop, device=args.device)
    per_seed = ", ".join(f"{100 * a:.2f}" for a in result.test_acc)
    print(f"{result.protocol} @ {result.backbone}: test {result.summary()} % over {len(result.seeds)} seeds "
          f"({per_seed}); val {100 * result.val_mean:.2f} %")
    return 0


def _cmd_stats(args) -> int:
    from .api import compute_stats

    bank = compute_stats(args.data, args.backbone, args.split, crop=args.crop, kmeans=args.kmeans, root=args.root,
                         weights=args.weights, device=args.device)
    print(f"{len(bank.labels)} images, {len(bank.means)} classes, features {tuple(bank.features.shape)} "
          f"cached in {bank.directory}")
    return 0


def _cmd_list(args) -> int:
    from .api import PROTOCOLS
    from .data import available_datasets
    from .methods import METHODS
    from .models.backbones import available_backbones

    if args.what in ("all", "datasets"):
        print("datasets:")
        for e in available_datasets():
            print(f"  {e.name:16s} {'offline ' if e.offline else '        '}{e.description}  [get: {e.how_to_get}]")
        print("  imagefolder:PATH  a folder with train/ (and test/ or val/) holding one sub-folder per class")
        print("  hf:NAME           a Hugging Face dataset with an Image and a ClassLabel column")
    if args.what in ("all", "backbones"):
        print("backbones:")
        for b in available_backbones():
            print(f"  {b.name:20s} {'offline ' if b.offline else 'hub/path'} {b.input_size}px F={b.feat_dim:<5d} "
                  f"{b.default_weights}")
        print("  timm:ARCH            any timm model with pretrained weights (hub or --weights PATH)")
    if args.what in ("all", "methods"):
        print("methods: " + ", ".join(sorted(METHODS)))
    if args.what in ("all", "protocols"):
        print("protocols: " + ", ".join(PROTOCOLS))
    return 0


COMMANDS = {"demo": _cmd_demo, "distill": _cmd_distill, "eval": _cmd_eval, "stats": _cmd_stats, "list": _cmd_list}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        os.environ["DATADISTILL_PROGRESS"] = "0"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except DatadistillError as exc:
        print(f"datadistill: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datadistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
