import json

import pytest
import torch

from datadistill.core.errors import TrainingDiverged
from datadistill.core.io import load_checkpoint
from datadistill.training.loop import train_resumable


def _training(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def step(i: int, die_at: int | None = None) -> float:
        if i == die_at:
            raise KeyboardInterrupt
        idx = torch.randint(64, (8,), generator=g)
        noise = torch.randn(8, 1) * 0.01  # global RNG: must be restored on resume too
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx] + noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    return model, opt, g, step


def test_train_resumable_resume_equals_uninterrupted(tmp_path):
    model, opt, g, step = _training()
    ref = train_resumable("ref", 30, step, {"model": model, "opt": opt}, tmp_path / "ref.pt", every=5, generator=g)
    model2, opt2, g2, step2 = _training()
    with pytest.raises(KeyboardInterrupt):
        train_resumable(
            "run",
            30,
            lambda i: step2(i, die_at=13),
            {"model": model2, "opt": opt2},
            tmp_path / "r.pt",
            every=5,
            generator=g2,
        )
    assert load_checkpoint(tmp_path / "r.pt")[0]["step"] == 10
    model3, opt3, g3, step3 = _training(seed=99)  # a fresh process: other init, restored from the checkpoint
    losses = train_resumable("run", 30, step3, {"model": model3, "opt": opt3}, tmp_path / "r.pt", every=5, generator=g3)
    assert losses == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(model3.weight, model.weight, atol=1e-6)


def test_train_resumable_stops_on_nan(tmp_path):
    with pytest.raises(TrainingDiverged, match="step 3"):
        train_resumable("nan", 5, lambda i: float("nan") if i == 3 else 1.0, {}, None)


def test_checkpoint_checksum_and_fallback_to_the_previous_one(tmp_path):
    from datadistill.core.errors import DatadistillError
    from datadistill.core.io import previous_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)[0] == {"step": 2} and previous_checkpoint(path).exists()
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])  # truncated
    assert load_checkpoint(path) == ({"step": 1}, previous_checkpoint(path))
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one flipped bit
    assert load_checkpoint(path)[0] == {"step": 1}
    previous_checkpoint(path).write_bytes(b"garbage")
    with pytest.raises(DatadistillError, match="no intact checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(tmp_path / "absent.pt") is None


def test_checkpoint_with_a_valid_checksum_still_refuses_pickled_code(tmp_path, monkeypatch):
    import hashlib
    import os
    import pickle

    from datadistill.core.errors import DatadistillError
    from datadistill.core.io import CHECKPOINT_MAGIC

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    payload = pickle.dumps({"step": Evil()})
    digest = hashlib.sha256(payload).hexdigest().encode()
    (tmp_path / "last.pt").write_bytes(CHECKPOINT_MAGIC + digest + b"\n" + payload)
    with pytest.raises(DatadistillError):
        load_checkpoint(tmp_path / "last.pt")
    assert not (tmp_path / "pwned").exists()


def test_phase_peak_rss_is_per_phase():
    import numpy as np

    from datadistill.run.timing import PhaseTimer, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("the resident high-water mark cannot be reset here (not Linux)")
    timer = PhaseTimer()
    with timer.phase("big"):
        block = np.ones(400 * 2**20 // 8)  # 400 MB, touched
        del block
    with timer.phase("small"):
        np.ones(8)
    big, small = timer.phases["big"]["peak_rss_mb"], timer.phases["small"]["peak_rss_mb"]
    assert big - small > 300, (big, small)


def test_process_peak_survives_the_per_phase_resets():
    import numpy as np

    from datadistill.run.timing import PhaseTimer, process_peak_rss_mb, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("the resident high-water mark cannot be reset here (not Linux)")
    timer = PhaseTimer()
    with timer.phase("big"):
        block = np.ones(400 * 2**20 // 8)
        del block
    with timer.phase("small"):
        np.ones(8)
    assert process_peak_rss_mb() >= timer.phases["big"]["peak_rss_mb"] > timer.phases["small"]["peak_rss_mb"] + 300


def _config(**options):
    from datadistill.api import make_config

    return make_config("sfm", "digits", crop=32, steps=4, **options)


def test_claim_replaces_the_config_of_a_run_that_never_wrote_a_checkpoint(tmp_path, caplog):
    from datadistill.run.directory import RunDir

    run = RunDir(tmp_path / "run")
    assert run.claim(_config(lr=1e6), {}) is False  # a run that diverged at once: config, no checkpoint
    with caplog.at_level("WARNING", logger="datadistill"):
        assert run.claim(_config(lr=0.01), {}) is False
    assert run.read_config()["distill"]["options"]["lr"] == 0.01
    assert "stopped before its first checkpoint" in caplog.text and "(lr)" in caplog.text


def test_claim_keeps_the_config_of_a_run_with_a_checkpoint(tmp_path):
    from datadistill.core.errors import ConfigError
    from datadistill.core.io import save_checkpoint
    from datadistill.run.directory import RunDir

    run = RunDir(tmp_path / "run")
    run.claim(_config(lr=0.01), {})
    save_checkpoint(run.checkpoints / "last.pt", {"step": 2})
    assert run.claim(_config(lr=0.01, checkpoint_every=7), {}) is True  # resumes: checkpoint_every may change
    with pytest.raises(ConfigError, match=r"different config \(lr\); use another --out, or delete it"):
        run.claim(_config(lr=0.02), {})


def test_divergence_after_a_checkpoint_keeps_it_and_the_config(tmp_path, monkeypatch, digits, lite0):
    """A loss that turns NaN at step 3 of 4 (checkpoint every 2): the checkpoint of step 2 stays and binds the config;
    the same config resumes from it, another is refused with what to do."""
    from datadistill.api import distill
    from datadistill.core.errors import ConfigError
    from datadistill.methods.lgm import LGM

    real_loss, calls = LGM.loss, []

    def diverging(self, ctx, images):
        calls.append(1)
        loss = real_loss(self, ctx, images)
        return loss * float("nan") if len(calls) == 3 else loss

    out = tmp_path / "run"
    kw = dict(dataset=digits, model=lite0, crop=32, steps=4, augs=1, init="real", checkpoint_every=2)
    monkeypatch.setattr(LGM, "loss", diverging)
    with pytest.raises(TrainingDiverged, match="step 3; the last checkpoint is at step 2"):
        distill("lgm", "digits", out=out, **kw)
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")[0]["step"] == 2
    with pytest.raises(ConfigError, match="delete it to start over"):
        distill("lgm", "digits", out=out, lr=0.001, **kw)
    synset = distill("lgm", "digits", out=out, **kw)
    assert len(synset) == 10 and "resumed from" in (out / "log.txt").read_text()


def test_hold_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    import os

    from datadistill.core.errors import DatadistillError
    from datadistill.core.io import hold_lock

    lock = tmp_path / "run" / ".lock"
    hint = "wait for it or use another --out"
    with hold_lock(lock, "runs/x", hint), pytest.raises(DatadistillError) as caught, hold_lock(lock, "runs/x", hint):
        pass
    message = str(caught.value)
    assert message.startswith(f"runs/x is in use by process {os.getpid()} (started ")
    assert message.endswith("); wait for it or use another --out")
    with hold_lock(lock, "runs/x"):  # released at the end of the block; the file stays
        pass


def test_a_lock_file_left_by_a_killed_process_blocks_nothing(tmp_path):
    """A real second process holds the lock until it is killed (SIGKILL: no clean-up of its own)."""
    import signal
    import subprocess
    import sys

    from datadistill.core.errors import DatadistillError
    from datadistill.core.io import hold_lock

    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom datadistill.core.io import hold_lock\n"
            f"with hold_lock({str(lock)!r}, 'x'):\n    print('held', flush=True)\n    time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatadistillError, match=f"x is in use by process {holder.pid} "), hold_lock(lock, "x"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(holder.pid) in lock.read_text()  # the stale record is still there ...
    with hold_lock(lock, "x"):  # ... and blocks nothing
        assert str(holder.pid) not in lock.read_text()


def test_train_resumable_holds_its_checkpoint_lock(tmp_path):
    from datadistill.core.errors import DatadistillError
    from datadistill.core.io import hold_lock

    ckpt = tmp_path / "model.pt"

    def step(i: int) -> float:
        with pytest.raises(DatadistillError, match="in use by process"), hold_lock(tmp_path / "model.pt.lock", "x"):
            pass
        return 1.0

    assert train_resumable("m", 2, step, {}, ckpt) == [1.0, 1.0]
    with hold_lock(tmp_path / "model.pt.lock", "x"), pytest.raises(DatadistillError, match="wait for it to finish"):
        train_resumable("m", 2, step, {}, ckpt)


def test_eval_and_bench_take_their_folders_lock(tmp_path, digits, capsys):
    """eval rewrites a run's metrics.json and bench its results.json: a second writer is refused, naming the first."""
    from datadistill.cli import main
    from datadistill.core.io import hold_lock

    run = tmp_path / "run"
    assert main(["-q", "distill", "random", "--data", "digits", "--out", str(run)]) == 0
    capsys.readouterr()
    fast = ["--crop", "32", "--epochs", "2", "--views", "1", "--seeds", "1", "--eval-backbone", "efficientnet_lite0"]
    with hold_lock(run / ".lock", "someone"):
        assert main(["-q", "eval", str(run), *fast]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error:") and "in use by process" in err and "Traceback" not in err
    assert "eval" not in json.loads((run / "metrics.json").read_text())
    bench = tmp_path / "bench"
    bench.mkdir()
    argv = ["-q", "bench", "--data", "digits", "--methods", "random", "--seeds", "1", "--out", str(bench)]
    with hold_lock(bench / ".lock", "someone"):
        assert main([*argv, "--set", "epochs=2", "--set", "views=1", "--crop", "efficientnet_lite0=32"]) == 2
    assert "in use by process" in capsys.readouterr().err and not (bench / "results.json").exists()
