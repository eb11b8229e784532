"""Smoke tests of the scale benchmarks (benchmarks/imagenet_e2e.py, class_scaling.py, gpu_scale.py): each runs end
to end at its smallest size in a subprocess, as a user runs it, and writes JSON with the expected keys, positive
measurements, and the figures its formulas give from its own measured inputs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "out.json"
    env = {**os.environ, "DATADISTILL_PROGRESS": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    command = [sys.executable, str(ROOT / "benchmarks" / name), *args, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "|---|" in done.stdout  # the markdown table
    return json.loads(out.read_text())


def test_gpu_scale_tiny_on_cpu(tmp_path):
    r = run_script("gpu_scale.py", ["--device", "cpu", "--tiny", "--folder", str(tmp_path / "folder")], tmp_path)
    assert r["backbone"]["weights"].startswith("random init")
    for name in ("float32", "bf16 autocast"):
        assert r["forward"][name]["images_per_s"] > 0
    assert [c["classes"] for c in r["by_classes"]] == [3, 5]
    for c in r["by_classes"]:
        # 4 JPEGs a class: the toolkit holds one out for test and one for validation, two train
        assert c["train_images"] == c["stats"]["images"] == 2 * c["classes"]
        assert c["stats"]["images_per_s"] > 0
        for name, views in (("sfm", 1), ("lgm", 2)):
            m = c[name]
            assert "error" not in m
            assert m["seconds_per_step"] > 0 and m["peak_rss_mb"] > 0
            assert m["views_per_step"] == views * c["classes"]
        assert c["lgm"]["real_images_per_step"] == 2 * c["classes"]  # IPC x A x C, all the train split here


def test_imagenet_e2e_smallest(tmp_path):
    args = ["--classes", "3", "--per-class", "6", "--test-per-class", "2", "--crop", "32", "--steps", "2"]
    args += ["--epochs", "2", "--views", "1", "--full-epochs", "1", "--ceiling-images", "16"]
    r = run_script("imagenet_e2e.py", [*args, "--folder", str(tmp_path / "folder")], tmp_path)
    built = tmp_path / "folder" / "3x6+2"
    for c in range(3):  # no held-out image repeats a train image of its class
        train = {hashlib.sha1(f.read_bytes()).hexdigest() for f in (built / "train" / f"c{c:04d}").glob("*.jpg")}
        test = [hashlib.sha1(f.read_bytes()).hexdigest() for f in (built / "test" / f"c{c:04d}").glob("*.jpg")]
        assert len(train) == 6 and len(test) == 2 and not train & set(test)
    m = r["measured"]
    assert m["classes"] == 3
    # 6 train JPEGs a class, one held out as validation; 2 test JPEGs a class
    assert m["images"] == {"train": 15, "val": 3, "test": 6}
    phases = m["phases"]
    expected = ["load", "decode ceiling", "forward ceiling", "stats train", "stats val+test", "sfm", "probe view pass"]
    expected += ["full probe", "linear probe", "ci", "head steps"]
    assert list(phases) == expected
    for p in phases.values():
        assert p["seconds"] > 0 and p["peak_rss_mb"] > 0
    assert phases["stats train"]["images"] == 15 and phases["stats val+test"]["images"] == 9
    assert phases["sfm"]["seconds_per_step"] > 0 and phases["sfm"]["steps"] == 2

    x = r["extrapolation"]
    rows = {row["phase"]: row["seconds_by_gpus"] for row in x["rows"]}
    assert set(rows) == {
        "stats pass",
        "sfm",
        "sfm s/step",
        "probe view pass",
        "linear-probe training",
        "full probe (CI's classifier)",
        "ci training",
    }
    assert all(v >= 0 for by in rows.values() for v in by.values())  # a probe's training net of its views: >= 0
    for name in ("stats pass", "sfm", "probe view pass", "full probe (CI's classifier)"):
        assert rows[name]["1"] > 0 and rows[name]["8"] > 0
    s = r["settings"]
    decode_per_core = phases["decode ceiling"]["images_per_s"] / phases["decode ceiling"]["processes"]
    speedup = s["gpu_forward"] / phases["forward ceiling"]["images_per_s"]
    for g in (1, 8):
        rate = min(g * s["gpu_forward"], g * s["cores_per_gpu"] * decode_per_core)
        assert rows["stats pass"][str(g)] == pytest.approx((1_281_167 + 50_000) / rate, rel=0.01)
        assert rows["sfm"][str(g)] == pytest.approx(5000 * rows["sfm s/step"][str(g)])
    # one GPU: the CPU step x 1000 / 3 classes, over the forward speed-up (no all-reduce)
    assert rows["sfm s/step"]["1"] == pytest.approx(phases["sfm"]["seconds_per_step"] * 1000 / 3 / speedup, rel=1e-3)
    assert rows["sfm s/step"]["8"] < rows["sfm s/step"]["1"] / 7  # an eighth, plus a little all-reduce
    total = sum(v["1"] for name, v in rows.items() if name != "sfm s/step")
    assert x["total_seconds"]["1"] == pytest.approx(total)
    assert math.isclose(x["speedup"], speedup, rel_tol=0.01)
    # the full-dataset probe: its head on the GPU, its rows read at the CPU run's rate (its step less a head step)
    heads = m["head_steps"]["full"]
    full_step = phases["full probe"]["seconds"] / math.ceil(15 / heads["batch"])  # 1 epoch, 1 seed
    reads = max(0.0, full_step - heads["seconds"]["3"])
    steps = 100 * math.ceil(round(1_281_167 * 0.9) / heads["batch"])
    expected_full = (reads + heads["seconds"]["1000"] / speedup) * steps
    assert rows["full probe (CI's classifier)"]["1"] == pytest.approx(expected_full, rel=1e-3)
    # extrapolating again from the saved measurements gives the same table, and takes other targets
    again = run_script("imagenet_e2e.py", ["--from-json", str(tmp_path / "out.json"), "--gpus", "1", "2"], tmp_path)
    assert again["measured"] == m and again["settings"]["steps"] == 2
    again_rows = {row["phase"]: row["seconds_by_gpus"] for row in again["extrapolation"]["rows"]}
    assert again_rows["sfm"]["1"] == pytest.approx(rows["sfm"]["1"]) and "2" in again_rows["sfm"]


def test_class_scaling_smallest(tmp_path):
    args = ["--classes", "3", "21", "--repeats", "1", "--kmeans-per-class", "10", "--report-resolution", "16"]
    r = run_script("class_scaling.py", args, tmp_path)
    rows = {(row["part"], row["classes"]): row for row in r["rows"]}
    parts = ["sfm", "lgm", "kmeans", "save set", "report"]
    assert set(rows) == {(p, c) for p in parts for c in (3, 21)}
    dim = 1280
    for c in (3, 21):
        for part in parts:
            assert rows[(part, c)]["seconds"] > 0
        # live tensors of a step hold at least its features and their gradient (float32): SFM's C views, LGM's
        # 10 x C views and its 10 x C real features
        assert rows[("sfm", c)]["peak_mb"] * 2**20 >= 2 * c * dim * 4
        assert rows[("lgm", c)]["peak_mb"] * 2**20 >= 3 * 10 * c * dim * 4
        assert rows[("kmeans", c)]["centres_shape"] == [c, 10, dim]
        assert rows[("save set", c)]["grid_png_pixels"] == (c * 18 + 2) * 20
    # the report shows every class of 3, the first 20 of 21 (both runs' grids)
    assert rows[("report", 3)]["grid_rows_shown"] == [3, 3]
    assert rows[("report", 21)]["grid_rows_shown"] == [20, 20]
    assert rows[("sfm", 21)]["expected_ratio"] == 7 and rows[("lgm", 21)]["expected_ratio"] == 49


def test_data_pipeline_smallest_reports_each_figure_at_its_best_round(tmp_path):
    args = ["--classes", "3", "--images", "12", "--crops", "32", "--repeats", "2", "--batch-size", "4"]
    r = run_script("data_pipeline.py", [*args, "--folder", str(tmp_path / "folder")], tmp_path)
    (run,) = r["runs"]
    assert (run["images"], run["classes"]) == (12, 3)
    crop = run["crops"]["32"]
    assert len(crop["rounds"]) == 2
    for part in ("decode", "forward", "pass"):
        assert crop[part]["images_per_s"] == max(round_[part] for round_ in crop["rounds"]) > 0
    bound = 1 / (1 / crop["decode"]["images_per_s"] + 1 / crop["forward"]["images_per_s"])
    assert crop["bound_images_per_s"] == pytest.approx(bound, abs=0.1)
    assert crop["pass_over_bound"] == pytest.approx(crop["pass"]["images_per_s"] / bound, abs=1e-3)
    per_round = [x["pass"] * (1 / x["decode"] + 1 / x["forward"]) for x in crop["rounds"]]
    assert crop["round_pass_over_bound"] == pytest.approx(per_round, abs=1e-3)
