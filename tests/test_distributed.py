"""The same code under torchrun (2 CPU processes, gloo) and as one process: statistics, SFM and LGM steps, PGFM
generation (classes shared out) and the evaluation table agree; DMGD generation shares classes out too."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import datadistill as dd
    from datadistill.core import dist
    from datadistill.data import load_dataset
    from datadistill.features.backbones import load_backbone

    dist.init_from_env()
    out = sys.argv[1]
    data, bb = load_dataset("digits"), load_backbone("efficientnet_lite0")
    bank = dd.compute_stats(data, bb, crop=32)
    # A small lr: with a large one, Adam's steps on these tiny sets amplify the float differences of batching
    # (1e-6) into visible ones for some random draws, and the comparison would measure luck.
    small = dict(dataset=data, model=bb, crop=32, grow_every=2, lr=0.01, checkpoint_every=2)
    sfm = dd.distill("sfm", "digits", out=f"{out}/sfm", steps=6, augs=3, **small)
    lgm = dd.distill("lgm", "digits", steps=3, augs=2, **small)
    ev = dd.evaluate(f"{out}/sfm", seeds=3, epochs=20, views=3)
    # Generation: rank 0 trains the tiny VAE / flow / DiT into the cache alone, then classes are shared out.
    gen = dict(dataset=data, ipc=2, device="cpu", vae_steps=20)
    pgfm = dd.distill("pgfm", "digits", flow_steps=40, **gen)
    dmgd = dd.distill("dmgd", "digits", dit_train_steps=20, sampling_steps=6, window_low=2, window_high=5, **gen)
    if dist.is_main():
        losses = json.load(open(f"{out}/sfm/metrics.json"))["distill"]["losses"]
        np.save(f"{out}/features.npy", np.asarray(bank.features))
        json.dump({"means": bank.means.tolist(), "sfm_losses": losses, "sfm_images": sfm.images.flatten().tolist(),
                   "lgm_images": lgm.images.flatten().tolist(), "test_acc": ev.test_acc, "val_acc": ev.val_acc,
                   "pgfm_images": pgfm.images.flatten().tolist(), "dmgd_images": dmgd.images.flatten(1).tolist(),
                   "dmgd_labels": dmgd.labels.tolist(),
                   "world": dist.world()}, open(f"{out}/result.json", "w"))
""")


def _run(tmp_path, name, launcher):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "DATADISTILL_CACHE": str(tmp_path / f"cache-{name}"),
        "DATADISTILL_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([*launcher, str(script), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text()), np.load(out / "features.npy")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, feats_1 = _run(tmp_path, "single", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    multi, feats_2 = _run(tmp_path, "multi", torchrun)
    assert single["world"] == 1 and multi["world"] == 2
    assert np.abs(np.array(single["means"]) - np.array(multi["means"])).max() < 1e-6
    assert np.array_equal(feats_1, feats_2)
    assert np.abs(np.array(single["sfm_losses"]) - np.array(multi["sfm_losses"])).max() < 1e-4
    assert np.abs(np.array(single["sfm_images"]) - np.array(multi["sfm_images"])).max() < 1e-3
    assert np.abs(np.array(single["lgm_images"]) - np.array(multi["lgm_images"])).max() < 1e-3
    assert single["test_acc"] == multi["test_acc"] and single["val_acc"] == multi["val_acc"]
    assert np.abs(np.array(single["pgfm_images"]) - np.array(multi["pgfm_images"])).max() < 1e-4
    # DMGD's processes draw their own noise streams, so only the shape of the result is comparable: every class,
    # every slot filled (no two images alike), finite.
    dmgd = np.array(multi["dmgd_images"])
    assert multi["dmgd_labels"] == single["dmgd_labels"] and dmgd.shape == np.array(single["dmgd_images"]).shape
    distances = np.abs(dmgd[:, None] - dmgd[None]).max(axis=2) + np.eye(len(dmgd))
    assert np.isfinite(dmgd).all() and distances.min() > 1e-3
