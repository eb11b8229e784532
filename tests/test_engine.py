import pytest
import torch

from datadistill.engine import train_resumable
from datadistill.errors import TrainingDiverged
from datadistill.io import load_checkpoint


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
    from datadistill.errors import DatadistillError
    from datadistill.io import previous_checkpoint, save_checkpoint

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

    from datadistill.errors import DatadistillError
    from datadistill.io import CHECKPOINT_MAGIC

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

    from datadistill.engine import PhaseTimer, reset_peak_rss

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

    from datadistill.engine import PhaseTimer, process_peak_rss_mb, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("the resident high-water mark cannot be reset here (not Linux)")
    timer = PhaseTimer()
    with timer.phase("big"):
        block = np.ones(400 * 2**20 // 8)
        del block
    with timer.phase("small"):
        np.ones(8)
    assert process_peak_rss_mb() >= timer.phases["big"]["peak_rss_mb"] > timer.phases["small"]["peak_rss_mb"] + 300
