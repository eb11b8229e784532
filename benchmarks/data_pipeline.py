"""The statistics pass over an ImageNet-shaped folder of JPEGs against its two ceilings: decoding alone and the
backbone forward alone, each on all cores. If decoding and the forward share the cores perfectly, the pass can run
at most at 1 / (1/decode + 1/forward) images/s; the ratio of the pass to that bound is the pipeline's efficiency.

    python benchmarks/data_pipeline.py --classes 100 --images 30000 --crops 32 224 --out data_pipeline.json
    python benchmarks/data_pipeline.py --classes 100 --images 10000 30000 --crops 32 --repeats 3   # RSS at two sizes

The folder (``--folder``, default in the temp directory) is generated once per size and reused: N classes of
500x375 JPEGs cut from scikit-image's sample photos (imagenet_folder.py), with ``train/`` holding the images
measured and ``val/`` one image per class. It is never committed.

Measured per size and crop, over the same N train images, from the OS page cache (every file is read once before):
  decode   ``decode_resized`` (the pass's own decoding: reduced-scale JPEG decode, 8-bit resize, crop) on a pool of
           one process per core; the full decode without the reduced scale is given for reference
  forward  EfficientNet-Lite0 on uint8 batches converted to float as the pass converts them, torch using every core
  pass     ``feature_bank`` with an empty feature cache (the manifest is built before and timed apart), with
           ``--workers`` loader processes (default: one per core); peak RSS is the main process's (VmHWM)
Warm-up: the model runs one batch at the crop before anything is timed; each measurement then includes its own
start-up (the process pool, the loader workers) and all N images, so the three are timed alike. With ``--repeats R``
the three run in R interleaved rounds and each is reported at its best: on a shared or virtual machine a single
measurement of the forward varied by up to 30 % between runs minutes apart, and taking each at its least disturbed
favours none of them; the ratio of each round's pass to its own round's bound is given too, with their median.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from imagenet_folder import build_folder, cores

# ---- the measurements ----------------------------------------------------------------------------------------


def _one_thread() -> None:
    """Pool processes forked after the model ran must not use OpenMP threads (libgomp does not survive fork);
    one thread each is also how loader workers run."""
    torch.set_num_threads(1)


def _decode_chunk(job: tuple[list[str], int, int, bool]) -> int:
    from PIL import Image

    from datadistill.data.decode import decode_resized, resize_center_crop

    paths, resize, crop, reduced = job
    for path in paths:
        if reduced:
            decode_resized(path, resize, crop)
        else:  # no reduced-scale decode: the whole image, then the same resize in float
            with Image.open(path) as im:
                full = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None].float()
            resize_center_crop(full, resize, crop)
    return len(paths)


def decode_rate(paths: list[str], resize: int, crop: int, reduced: bool = True) -> dict:
    chunks = [(paths[i : i + 64], resize, crop, reduced) for i in range(0, len(paths), 64)]
    start = time.perf_counter()
    with ProcessPoolExecutor(cores(), initializer=_one_thread) as pool:
        done = sum(pool.map(_decode_chunk, chunks))
    seconds = time.perf_counter() - start
    return {"images_per_s": round(done / seconds, 1), "seconds": round(seconds, 2), "processes": cores()}


def forward_rate(model, n: int, crop: int, batch_size: int) -> dict:
    from datadistill.data import as_float
    from datadistill.run.timing import peak_rss_mb, reset_peak_rss

    batch = torch.randint(
        0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    reset_peak_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, n, batch_size):
            model(as_float(batch[: min(batch_size, n - first)]))
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 2),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def pass_rate(data, model, crop: int, batch_size: int, workers: int | None) -> dict:
    from datadistill.features.bank import feature_bank
    from datadistill.run.timing import peak_rss_mb, reset_peak_rss

    reset_peak_rss()
    start = time.perf_counter()
    bank = feature_bank(data, model, "train", crop=crop, batch_size=batch_size, num_workers=workers)
    seconds = time.perf_counter() - start
    n = len(bank.labels)
    return {"images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb()}


def _rate(measured: dict) -> float:
    return measured["images_per_s"]


def _over_bound(round_: dict) -> float:
    """The pass over the bound of the decode and forward measured in the same round."""
    return _rate(round_["pass"]) * (1 / _rate(round_["decode"]) + 1 / _rate(round_["forward"]))


def measure(folder: Path, crops: list[int], batch_size: int, workers: int | None, cache: Path, repeats: int) -> dict:
    from datadistill.data import load_dataset
    from datadistill.features.backbones import load_backbone
    from datadistill.features.bank import resize_for

    os.environ["DATADISTILL_CACHE"] = str(cache / "manifest")
    start = time.perf_counter()
    data = load_dataset(f"imagefolder:{folder}", val_fraction=0, workers=workers)
    manifest_s = time.perf_counter() - start
    n = len(data.train)
    paths = [data.train.path(i) for i in range(n)]
    for path in paths:  # into the page cache: every measurement reads warm files
        Path(path).read_bytes()
    model = load_backbone("efficientnet_lite0")
    out = {"images": n, "classes": data.num_classes, "manifest_build_s": round(manifest_s, 2), "crops": {}}
    for crop in crops:
        resize = resize_for(crop)
        with torch.inference_mode():
            model(torch.rand(batch_size, 3, crop, crop))  # warm-up, not timed
        full_decode = decode_rate(paths, resize, crop, reduced=False)
        rounds = []
        for r in range(repeats):  # rounds interleave the three, so a slow spell of the machine hits all alike
            os.environ["DATADISTILL_CACHE"] = str(cache / f"features-{crop}-{r}")  # an empty feature cache
            rounds.append(
                {
                    "decode": decode_rate(paths, resize, crop),
                    "forward": forward_rate(model, n, crop, batch_size),
                    "pass": pass_rate(data, model, crop, batch_size, workers),
                }
            )
        decode, forward, passed = (max((r[k] for r in rounds), key=_rate) for k in ("decode", "forward", "pass"))
        bound = 1 / (1 / decode["images_per_s"] + 1 / forward["images_per_s"])
        out["crops"][crop] = {
            "decode": decode,
            "decode_full_size_reference": full_decode,
            "forward": forward,
            "pass": passed,
            "bound_images_per_s": round(bound, 1),
            "pass_over_bound": round(passed["images_per_s"] / bound, 3),
            "rounds": [{k: v["images_per_s"] for k, v in r.items()} for r in rounds],
            "round_pass_over_bound": [round(_over_bound(r), 3) for r in rounds],
            "median_round_pass_over_bound": round(float(np.median([_over_bound(r) for r in rounds])), 3),
        }
        print(json.dumps({"images": n, "crop": crop, **out["crops"][crop]}), file=sys.stderr)
    return out


def markdown(results: dict) -> str:
    columns = ["images", "crop", "decode img/s", "forward img/s", "bound img/s", "pass img/s", "pass / bound"]
    columns += ["median per round", "pass s", "pass peak RSS MB"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in results["runs"]:
        for crop, r in run["crops"].items():
            lines.append(
                f"| {run['images']} | {crop} | {r['decode']['images_per_s']} | {r['forward']['images_per_s']} | "
                f"{r['bound_images_per_s']} | {r['pass']['images_per_s']} | {r['pass_over_bound']:.2f} | "
                f"{r['median_round_pass_over_bound']:.2f} | "
                f"{r['pass']['seconds']} | {r['pass']['peak_rss_mb']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, nargs="+", default=[30000], help="train images (several: one run each)")
    parser.add_argument("--crops", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch-size", type=int, default=100, help="the statistics pass's batch size")
    parser.add_argument("--workers", type=int, default=None, help="loader processes of the pass (default: cores)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of decode, forward and pass; each is reported at its best"
    )
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "datadistill-data-pipeline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    results = {
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "timing": "page cache warm; model warmed up once per crop; each figure includes its own start-up; "
        "each figure the best of --repeats interleaved rounds",
        "repeats": args.repeats,
        "runs": [],
    }
    for images in args.images:
        splits = {"train": images, "val": args.classes}  # val: one image per class (not measured)
        folder = build_folder(args.folder / f"{args.classes}x{images}", args.classes, splits)
        with tempfile.TemporaryDirectory(prefix="datadistill-pipeline-cache-") as cache:
            results["runs"].append(
                measure(folder, args.crops, args.batch_size, args.workers, Path(cache), args.repeats)
            )
    if len(results["runs"]) > 1:
        first, last = results["runs"][0], results["runs"][-1]
        results["peak_rss_growth"] = {
            crop: round(last["crops"][crop]["pass"]["peak_rss_mb"] / first["crops"][crop]["pass"]["peak_rss_mb"] - 1, 3)
            for crop in first["crops"]
        }
    table = markdown(results)
    print(table)
    if "peak_rss_growth" in results:
        print(
            f"\npeak RSS growth of the pass, {args.images[0]} -> {args.images[-1]} images: {results['peak_rss_growth']}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({**results, "markdown": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
