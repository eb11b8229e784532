"""``datadistill`` command line: parses arguments, builds configs, calls the API. No logic of its own.

Options of methods and protocols are not written here: each ``distill METHOD`` and ``eval --protocol P``
gets the fields of the method's / protocol's options dataclass as flags (see ``core/options.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .core import layout
from .core.errors import ConfigError, DatadistillError, user_message
from .core.recipe import Recipe, apply_recipe, defer_defaults, ints, words

if TYPE_CHECKING:
    from .bench.plan import BenchPlan


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="dataset name (see `datadistill list datasets`), imagefolder:PATH or hf:NAME"
    )
    p.add_argument("--root", default=None, help="dataset root folder (torchvision / ImageNet sets)")
    p.add_argument(
        "--backbone", default="efficientnet_lite0", help="feature extractor (see `datadistill list backbones`)"
    )
    p.add_argument("--weights", default=None, help="local weights file or folder for the backbone")
    p.add_argument("--crop", type=int, default=None, help="backbone input size (default: the backbone's own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    _add_loading_args(p)


def _add_loading_args(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--skip-corrupt`` for the commands that take no config dataclass (stats, bench, pretrain)."""
    from .core.config import SKIP_CORRUPT_HELP, WORKERS_HELP

    p.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    p.add_argument("--skip-corrupt", action="store_true", help=SKIP_CORRUPT_HELP)


def say(text: str) -> None:
    """Print once (rank 0) when running under torchrun."""
    from .core import dist

    if dist.is_main():
        print(text)


def _protocol_in(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--protocol" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--protocol="):
            return arg.split("=", 1)[1]
    return "linear-probe"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from .core.config import FIRST_SEED_HELP, DistillConfig, EvalConfig
    from .core.options import add_arguments
    from .evaluate import PROTOCOLS
    from .methods import METHODS
    from .synset.export import FORMATS as EXPORT_FORMATS
    from .synset.tensorfiles import NORM_HELP
    from .training import PRETRAINERS

    parser = argparse.ArgumentParser(prog="datadistill", description="Dataset distillation toolkit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo_config_help = "the demo's recipe (default: the one shipped with the toolkit); its keys are the shipped one's"
    demo = sub.add_parser("demo", help="offline end-to-end demo: SFM vs Random vs Centroids (minutes, CPU)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--config", default=None, metavar="FILE.toml", help=demo_config_help)
    demo.add_argument("--data", default=None, help="dataset (default: the recipe's, mnist-5k)")
    demo.add_argument("--steps", type=int, default=None, help="SFM steps (default: the recipe's, 300)")
    demo.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default: the recipe's, 3)")

    d = sub.add_parser("distill", help="distill a dataset into a synthetic set (resumes an interrupted run)")
    methods = d.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, algo in sorted(METHODS.items()):
        m = methods.add_parser(name, help=algo.summary, description=algo.summary)
        m.add_argument(
            "--data", required=True, help="dataset name (see `datadistill list datasets`), imagefolder:PATH or hf:NAME"
        )
        m.add_argument("--out", required=True, help="run directory (created; an interrupted run there resumes)")
        add_arguments(m.add_argument_group("run options"), DistillConfig, skip={"method", "data", "options"})
        add_arguments(m.add_argument_group(f"{name} options"), algo.Options)
        defer_defaults(m)

    asked = _protocol_in(argv or [])
    protocol = PROTOCOLS.get(asked if asked in PROTOCOLS else "linear-probe")
    e = sub.add_parser(
        "eval",
        help="evaluate a run directory, a saved set or a folder of PNGs",
        description="Evaluate with --protocol (one of: " + ", ".join(PROTOCOLS) + "). "
        "`datadistill eval --protocol P --help` lists P's options.",
    )
    e.add_argument(
        "path",
        nargs="?",
        default=None,
        help="run directory, synset folder, folder written by `datadistill export`, tensor files of another project "
        "(images_best.pt + labels_best.pt, or a .pt/.pth file of images and labels), or folder of PNGs "
        "(not needed for --protocol full)",
    )
    e.add_argument("--protocol", default="linear-probe", choices=PROTOCOLS.names())
    e.add_argument("--data", default=None, help="dataset (default: the run's)")
    e.add_argument("--root", default=None, help="dataset root folder (default: the run's)")
    e.add_argument("--input-norm", default=None, metavar="NORM", help=NORM_HELP)
    add_arguments(e.add_argument_group("evaluation options"), EvalConfig)
    add_arguments(e.add_argument_group(f"{protocol.name} options"), protocol.Options)

    b = sub.add_parser(
        "bench",
        help="distill with several methods and backbones, evaluate every set with every "
        "protocol and backbone; resumable (finished cells, and cells whose settings did not change, are skipped)",
    )
    b.add_argument(
        "--data", required=True, help="dataset name (see `datadistill list datasets`), imagefolder:PATH or hf:NAME"
    )
    b.add_argument(
        "--methods",
        required=True,
        type=words,
        help="e.g. random,centroids,lgm,sfm,neighbors:sfm; file:PATH evaluates a set made elsewhere (any set "
        "`datadistill eval` reads by path) as it is under every protocol, file:PATH@NORM undoing the normalisation "
        "NORM of its tensors (a preset or MEAN:STD without commas, which separate the methods; per-channel "
        "statistics through --input-norm)",
    )
    b.add_argument("--protocols", default=["linear-probe"], type=words, help="e.g. linear-probe,ci,full")
    b.add_argument("--backbones", default=["efficientnet_lite0"], type=words, help="distillation backbones")
    b.add_argument("--eval-backbones", default=None, type=words, help="evaluation backbones (default: --backbones)")
    b.add_argument("--ipc", default=[1], type=ints, help="images per class, e.g. 1,10,50")
    b.add_argument("--seeds", type=int, default=3, help="evaluation seeds")
    b.add_argument("--first-seed", type=int, default=EvalConfig().first_seed, help=FIRST_SEED_HELP)
    b.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="BACKBONE=PX",
        help="input size per backbone (default: each backbone's own)",
    )
    b.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[SCOPE.]KEY=VALUE",
        dest="settings",
        help="an option for every method/protocol that has it, or for one (scope = its name)",
    )
    b.add_argument(
        "--evaluate-with",
        action="append",
        default=[],
        metavar="METHOD=P1+P2",
        help="judge METHOD's sets by these of --protocols only (default: all of them)",
    )
    b.add_argument(
        "--input-norm", default=None, metavar="NORM", help=f"for file: tensor sets without their own @NORM, {NORM_HELP}"
    )
    b.add_argument("--out", required=True, help="bench directory (a re-run there resumes)")
    b.add_argument("--root", default=None, help="dataset root folder (torchvision / ImageNet sets)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    _add_loading_args(b)
    defer_defaults(b)

    x = sub.add_parser(
        "export",
        help="write a synthetic set for other tools: plain tensors (pt), PNGs per class (imagefolder) or the "
        "tensors the ddranking package evaluates (ddranking)",
        description="Write a run's synthetic set (or a saved set) in a format other tools read; meta.json in the "
        "folder says the dataset, classes, value range, the normalisation to evaluate with, the method and the "
        "digest of the run's config. `datadistill eval DIR` reads every format back.",
    )
    x.add_argument("path", metavar="RUN", help="run directory or saved set (any set `datadistill eval` reads)")
    x.add_argument("--format", required=True, choices=list(EXPORT_FORMATS))
    x.add_argument("--out", required=True, help="folder to write (must be missing or empty unless --force)")
    x.add_argument("--force", action="store_true", help="replace a non-empty --out")
    x.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write multi-formation sets (TGDD --factor > 1) as the images they decode into (default: yes for "
        "imagefolder and ddranking; pt keeps the stored tiles)",
    )
    x.add_argument("--data", default=None, help="dataset of the set (default: the run's, or the one the set names)")
    x.add_argument("--root", default=None)

    r = sub.add_parser(
        "report",
        help="a self-contained HTML page and a markdown summary comparing the results of "
        "benches and run directories (tables, scores relative to random, images, curves, cost)",
    )
    r.add_argument("runs", nargs="+", metavar="RUN", help="bench directories, run directories, or folders of them")
    r.add_argument(
        "--out",
        default=None,
        help="folder for report.html, report.md and report_files/ (default: the bench directory when one is given)",
    )

    pre = sub.add_parser("pretrain", help="train (or reuse) a model the toolkit needs offline (cached, resumable)")
    kinds = pre.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, trainer in sorted(PRETRAINERS.items()):
        k = kinds.add_parser(name, help=trainer.summary, description=trainer.summary)
        k.add_argument("--data", required=True, help="dataset to train on (its train split)")
        k.add_argument("--root", default=None)
        k.add_argument("--val-fraction", type=float, default=0.1)
        k.add_argument("--split-seed", type=int, default=0)
        k.add_argument("--device", default="auto")
        _add_loading_args(k)
        add_arguments(k.add_argument_group(f"{name} options"), trainer.Options)

    s = sub.add_parser("stats", help="run (or reuse) the cached statistics pass")
    _add_data_args(s)
    s.add_argument("--split", default="train", choices=["train", "val", "test"])
    s.add_argument("--kmeans", type=int, default=0, help="also per-class k-means with this k")

    lst = sub.add_parser("list", help="list datasets, backbones, methods or protocols")
    lst.add_argument("what", nargs="?", default="all", choices=["all", "datasets", "backbones", "methods", "protocols"])
    return parser


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, data=args.data, steps=args.steps, seeds=args.seeds, config=args.config)
    return 0


def _options(args, skip: set[str]) -> dict:
    return {k: v for k, v in vars(args).items() if k not in skip}


def _cmd_distill(args, recipe: Recipe | None) -> int:
    from .api import distill

    options = _options(args, {"command", "quiet", "method", "data", "out"})
    synset = distill(args.method, args.data, out=args.out, recipe=recipe and recipe.identity(), **options)
    say(f"wrote {len(synset)} images ({synset.ipc} per class) to {args.out}/synset; report: {args.out}/report.md")
    return 0


def _cmd_eval(args) -> int:
    from .api import evaluate

    options = _options(args, {"command", "quiet", "path", "protocol", "data", "root", "input_norm"})
    result = evaluate(
        args.path, protocol=args.protocol, data=args.data, root=args.root, input_norm=args.input_norm, **options
    )
    per_seed = ", ".join(f"{100 * a:.2f}" for a in result.test_acc)
    say(
        f"{result.protocol} @ {result.backbone}: test {result.summary()} % over {len(result.seeds)} seeds "
        f"({per_seed}); val {100 * result.val_mean:.2f} %"
    )
    return 0


def bench_plan(args: argparse.Namespace, recipe: Recipe | None = None) -> BenchPlan:
    """The validated plan of ``datadistill bench``'s parsed (and recipe-merged) arguments."""
    from .bench.plan import BenchPlan

    crops = {}
    for item in args.crop:
        name, eq, px = item.partition("=")
        if not eq or not px.isdigit():
            raise ConfigError(f"--crop expects BACKBONE=PX, got '{item}'")
        crops[name] = int(px)
    evaluate_with = {}
    for item in args.evaluate_with:
        method, eq, protocols = item.partition("=")
        if not eq:
            raise ConfigError(f"--evaluate-with expects METHOD=P1+P2, got '{item}'")
        evaluate_with[method] = protocols.split("+")
    plan = BenchPlan(
        args.data,
        args.methods,
        args.protocols,
        args.backbones,
        args.eval_backbones,
        args.ipc,
        args.seeds,
        crops,
        args.settings,
        args.root,
        args.device,
        evaluate_with,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        input_norm=args.input_norm,
        first_seed=args.first_seed,
        recipe=recipe and recipe.identity(),
    )
    return plan.validate()


def _cmd_bench(args, recipe: Recipe | None) -> int:
    from .bench.runner import bench

    records = bench(bench_plan(args, recipe), args.out)
    say((Path(args.out) / layout.BENCH_SUMMARY).read_text())
    say(f"{len(records)} results of this plan in {args.out}/results.json (and results.csv)")
    return 0


def _cmd_export(args) -> int:
    from .api import export

    out = export(args.path, args.format, args.out, data=args.data, root=args.root, force=args.force, decode=args.decode)
    meta = json.loads((out / "meta.json").read_text())
    say(f"wrote {meta['num_images']} images of {meta['dataset']} ({args.format}) to {out}; see {out}/meta.json")
    return 0


def _cmd_report(args) -> int:
    from .api import report_runs

    paths = report_runs(args.runs, out=args.out)
    say(f"report: {paths['html']} (self-contained page), {paths['markdown']} (+ {paths['files']}/)")
    return 0


def _cmd_pretrain(args) -> int:
    from .api import pretrain

    loading = {"workers", "skip_corrupt"}
    options = _options(
        args, {"command", "quiet", "kind", "data", "root", "val_fraction", "split_seed", "device", *loading}
    )
    folder = pretrain(
        args.kind,
        args.data,
        root=args.root,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        device=args.device,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        **options,
    )
    say(f"{args.kind} model ready in {folder}")
    return 0


def _cmd_stats(args) -> int:
    from .api import compute_stats

    bank = compute_stats(
        args.data,
        args.backbone,
        args.split,
        crop=args.crop,
        kmeans=args.kmeans,
        root=args.root,
        weights=args.weights,
        device=args.device,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
    )
    say(
        f"{len(bank.labels)} images, {len(bank.means)} classes, features {tuple(bank.features.shape)} "
        f"cached in {bank.directory}"
    )
    return 0


def columns(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns two spaces apart (the last column as it is), each line indented by two."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  " + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _cmd_list(args) -> int:
    from .data import available_datasets
    from .evaluate import PROTOCOLS
    from .features.backbones import available_backbones
    from .methods import METHODS

    sections = {
        "datasets": [
            *(
                [e.name, "offline" if e.offline else "", f"{e.description}  [get: {e.how_to_get}]"]
                for e in available_datasets()
            ),
            ["imagefolder:PATH", "", "a folder with train/ (and test/ or val/) holding one sub-folder per class"],
            ["hf:NAME", "", "a Hugging Face dataset with an Image and a ClassLabel column"],
        ],
        "backbones": [
            *(
                [
                    b.name,
                    "offline" if b.offline else "hub/path",
                    f"{b.input_size}px",
                    f"F={b.feat_dim}",
                    b.default_weights,
                ]
                for b in available_backbones()
            ),
            ["timm:ARCH", "hub/path", "", "", "any timm model with pretrained weights (hub or --weights PATH)"],
        ],
        "methods": [[name, algo.summary] for name, algo in sorted(METHODS.items())],
        "protocols": [[name, p.summary] for name, p in PROTOCOLS.items()],
    }
    for what, rows in sections.items():
        if args.what in ("all", what):
            print(f"{what}:")
            print(columns(rows))
    return 0


COMMANDS = {
    "demo": _cmd_demo,
    "distill": _cmd_distill,
    "eval": _cmd_eval,
    "bench": _cmd_bench,
    "export": _cmd_export,
    "report": _cmd_report,
    "pretrain": _cmd_pretrain,
    "stats": _cmd_stats,
    "list": _cmd_list,
}


def main(argv: list[str] | None = None) -> int:
    from .core import dist

    argv = sys.argv[1:] if argv is None else argv
    dist.init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on CUDA)
    args = build_parser(argv).parse_args(argv)
    if args.quiet:
        os.environ["DATADISTILL_PROGRESS"] = "0"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        recipe = apply_recipe(args)
        command = COMMANDS[args.command]
        return command(args, recipe) if args.command in ("distill", "bench") else command(args)
    except DatadistillError as exc:
        print(f"datadistill: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datadistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
