"""LGM, DM and TGDD under torchrun (2 CPU processes, gloo) share the work out and equal one process: every rank
decodes and augments only its share of LGM's real batch and views, and matches only its share of DM's and TGDD's
classes (the rows each rank processes add up to one process's), with the same draws, so the images agree."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import datadistill as dd
    from datadistill.core import dist
    from datadistill.data.augment import DSA, StandardAugment
    from datadistill.data import load_dataset
    from datadistill.methods.base import RunContext
    from datadistill.features.backbones import load_backbone

    dist.init_from_env()
    out = sys.argv[1]
    rows = {}

    def count(cls, name, key):
        original = getattr(cls, name)

        def counted(self, x, *args):
            rows[key] = rows.get(key, 0) + len(x)
            return original(self, x, *args)

        setattr(cls, name, counted)

    data, bb = load_dataset("digits"), load_backbone("efficientnet_lite0")
    experts = dict(num_experts=2, expert_epochs=3, expert_epoch_images=512, expert_batch=32, expert_lr=0.05,
                   expert_width=16)
    dd.distill("tgdd", "digits", dataset=data, steps=0, **experts)  # train the experts before counting
    count(RunContext, "real_images", "decoded")
    count(StandardAugment, "apply", "augmented")
    count(DSA, "apply", "dsa")
    runs = {
        "lgm": lambda: dd.distill("lgm", "digits", dataset=data, model=bb, crop=32, grow_every=2, lr=0.01, steps=2,
                                  augs=2),
        # one real image for two processes: the second gets none
        "lgm_one_real": lambda: dd.distill("lgm", "digits", dataset=data, model=bb, crop=32, steps=1, real_batch=1),
        "dm": lambda: dd.distill("dm", "digits", dataset=data, ipc=2, steps=3, batch_real=16, width=16),
        "dm_bn": lambda: dd.distill("dm", "digits", dataset=data, ipc=1, steps=2, batch_real=16, width=16,
                                    arch="convnet-bn"),
        "tgdd": lambda: dd.distill("tgdd", "digits", dataset=data, ipc=2, steps=3, batch_real=16, **experts),
        "tgdd_f2": lambda: dd.distill("tgdd", "digits", dataset=data, ipc=1, steps=3, batch_real=16, factor=2,
                                      init="mix", max_syn=3, lr=0.05, **experts),
    }
    result = {"world": dist.world()}
    for name, run in runs.items():
        rows.clear()
        images = run().images
        result[name] = {"images": images.flatten().tolist(), "rows": dist.all_gather_objects(dict(rows))}
    if dist.is_main():
        json.dump(result, open(f"{out}/result.json", "w"))
""")


def _run(tmp_path, name, launcher):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    # One cache for both runs: the experts trained by the first are read by the second.
    env = {**os.environ, "DATADISTILL_CACHE": str(tmp_path / "cache"), "DATADISTILL_PROGRESS": "0"}
    env.update(OMP_NUM_THREADS="1", DATADISTILL_COMPILE="0")
    done = subprocess.run([*launcher, str(script), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_lgm_dm_tgdd_share_the_work_and_match_one_process(tmp_path):
    single = _run(tmp_path, "single", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    multi = _run(tmp_path, "multi", torchrun)
    assert single["world"] == 1 and multi["world"] == 2
    diffs = {}
    for name in ("lgm", "lgm_one_real", "dm", "dm_bn", "tgdd", "tgdd_f2"):
        one, two = single[name], multi[name]
        diffs[name] = float(np.abs(np.array(one["images"]) - np.array(two["images"])).max())
        if name == "dm_bn":  # batch norm ties a class's features to the batch: every rank matches every class
            assert all(r == one["rows"][0] for r in two["rows"])
            continue
        # every row one process augments (and LGM decodes) is processed by exactly one of the two ranks
        for key, total in one["rows"][0].items():
            mine = [r.get(key, 0) for r in two["rows"]]
            assert sum(mine) == total and (min(mine) > 0 or total < 2), (name, key, mine, total)
    print(diffs)
    assert max(diffs.values()) < 1e-4, diffs


def test_a_share_of_the_classes_gets_the_draws_of_all(digits):
    import torch

    from datadistill.data.memory import in_memory
    from datadistill.methods.matching import sample_real

    split = in_memory(digits.train, 8, 10)
    g_all, g_share = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    images, labels = sample_real(split, 5, g_all)
    part, part_labels = sample_real(split, 5, g_share, range(3, 6))
    assert (
        labels.tolist() == [c for c in range(10) for _ in range(5)] and part_labels.tolist() == labels[15:30].tolist()
    )
    assert torch.equal(part, images[15:30]) and torch.equal(g_all.get_state(), g_share.get_state())
    empty, _ = sample_real(split, 5, torch.Generator(), range(0))  # a process without classes
    assert empty.shape == (0, 1, 8, 8)


def test_tgdd_stops_at_a_non_finite_class_loss(digits, monkeypatch):
    import datadistill as dd
    from datadistill.core.errors import TrainingDiverged
    from datadistill.training.experts import TrajectoryStore

    experts = dict(num_experts=1, expert_epochs=1, expert_epoch_images=256, expert_batch=32, expert_width=8)
    original, calls = TrajectoryStore.run, {"n": 0}

    def poisoned(self, params, x, features=False):
        calls["n"] += 1
        out = original(self, params, x, features)
        return out * float("nan") if calls["n"] == 7 else out  # class 3 of the first step

    monkeypatch.setattr(TrajectoryStore, "run", poisoned)
    with pytest.raises(TrainingDiverged, match="nan at step 1"):
        dd.distill("tgdd", "digits", dataset=digits, ipc=1, steps=2, batch_real=8, **experts)
    assert calls["n"] == 8  # features and logits of classes 0-3: no class after the bad one was matched
