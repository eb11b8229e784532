"""SIGKILL a distillation at several random points, run the same command again each time: the final synthetic set
equals the uninterrupted run's, and each restart repeats at most one checkpoint interval of work."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from safetensors.torch import load_file

from datadistill.core.io import load_checkpoint

STEPS, EVERY = 60, 5


def _cmd(out):
    return [
        sys.executable,
        "-m",
        "datadistill",
        "distill",
        "sfm",
        "--data",
        "digits",
        "--crop",
        "32",
        "--steps",
        str(STEPS),
        "--grow-every",
        "7",
        "--augs",
        "2",
        "--lr",
        "0.05",
        "--checkpoint-every",
        str(EVERY),
        "--out",
        str(out),
    ]


def _seconds_per_step(log_text: str) -> float:
    """Loop speed on this machine, from the timestamps of the run log's first and last step lines."""
    stamps = [
        (datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f"), int(s))
        for t, s in re.findall(rf"^(\S+ \S+) INFO step (\d+)/{STEPS}", log_text, flags=re.M)
    ]
    (t0, s0), (t1, s1) = stamps[0], stamps[-1]
    return (t1 - t0).total_seconds() / (s1 - s0)


@pytest.mark.slow
def test_killed_three_times_equals_uninterrupted(tmp_path):
    env = {**os.environ, "DATADISTILL_PROGRESS": "1"}
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(reference), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    # The kill lands a random time into the interval after `target`; scaling that time to this machine's speed and
    # leaving two more intervals after the latest target keeps a fast machine from finishing the run first.
    interval_s = EVERY * _seconds_per_step((reference / "log.txt").read_text())
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt"
    rng = random.Random(0)
    targets = sorted(rng.sample(range(EVERY, STEPS - 3 * EVERY), 3))
    for target in targets:
        log = tmp_path / f"stderr-{target}.txt"
        with open(log, "w") as err:
            # Wait for a checkpoint this process wrote: killing it before it resumes would test nothing.
            start = load_checkpoint(ckpt)[0]["step"] if ckpt.exists() else 0
            proc = subprocess.Popen(_cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                found = load_checkpoint(ckpt) if ckpt.exists() else None
                if found is not None and found[0]["step"] >= max(target, start + 1):
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0, interval_s))  # somewhere inside the next interval
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (exit {proc.returncode}) before the kill"
        assert not (out / "synset").exists(), "a killed run left a synthetic set behind"
        saved = load_checkpoint(ckpt)[0]
        assert saved["step"] % EVERY == 0 and len(saved["losses"]) == saved["step"]
        seen = [int(s) for s in re.findall(rf"(\d+)/{STEPS}", log.read_text())]
        # The progress bar lags the loop, so `seen` is a lower bound on the step the kill interrupted.
        assert saved["step"] >= max(seen, default=0) - EVERY
    done = subprocess.run(_cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "log.txt").read_text().count("resumed from") == len(targets)
    final, ref = (
        load_file(str(out / "synset" / "synset.safetensors")),
        load_file(str(reference / "synset" / "synset.safetensors")),
    )
    assert (final["images"] - ref["images"]).abs().max() < 1e-6
    losses = json.loads((out / "metrics.json").read_text())["distill"]["losses"]
    assert losses == json.loads((reference / "metrics.json").read_text())["distill"]["losses"]
