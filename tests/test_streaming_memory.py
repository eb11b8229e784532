"""The statistics pass and the probes' view pass stream: their peak memory does not grow with the dataset size or
the number of views."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent("""
    import json, sys
    import torch
    from datadistill.run.timing import peak_rss_mb, reset_peak_rss

    class TinyEncoder(torch.nn.Module):
        name, feat_dim, input_size = "tiny", 8, 16
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3)
        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))
        def identity(self):
            return {"name": "tiny-test-encoder"}

    def grew_mb(run):
        # run() and the resident memory it added at its peak: the high-water mark is reset first, so that a
        # higher peak earlier in the process (imports) cannot hide it
        if not reset_peak_rss():
            print(json.dumps({"skip": "the resident high-water mark cannot be reset here"}))
            sys.exit(0)
        before = peak_rss_mb()
        result = run()
        return peak_rss_mb() - before, result
""")

SCRIPT = PRELUDE + textwrap.dedent('''
    from datadistill.data import LabelledImages, RealData
    from datadistill.features.bank import feature_bank

    class Generated(LabelledImages):
        """Images computed from their index: the dataset itself holds nothing that grows with n."""
        def __init__(self, n):
            self.targets = torch.arange(n) % 4
        def __getitem__(self, i):
            return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), int(self.targets[i])
        def fingerprint(self):
            return f"generated-{len(self)}"

    n = int(sys.argv[1])
    split = Generated(n)
    data = RealData("generated", ["a", "b", "c", "d"], split, Generated(4), None, 16, "generated")
    encoder = TinyEncoder()
    with torch.inference_mode():
        encoder(torch.rand(100, 3, 16, 16))  # warm up
    grew, bank = grew_mb(lambda: feature_bank(data, encoder, "train", crop=16))
    print(json.dumps({"n": n, "grew_mb": grew, "features": list(bank.features.shape)}))
''')


def _run(tmp_path, source: str, arg: int, **env) -> dict:
    """Run ``source`` with ``arg`` in a fresh process; its last output line is JSON."""
    script = tmp_path / "job.py"
    script.write_text(source)
    env = {**os.environ, "DATADISTILL_PROGRESS": "0", **env}
    done = subprocess.run([sys.executable, str(script), str(arg)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def _grew(tmp_path, n):
    result = _run(tmp_path, SCRIPT, n, DATADISTILL_CACHE=str(tmp_path / f"cache{n}"))
    assert result["features"] == [n, 8]
    return result["grew_mb"]


@pytest.mark.slow
def test_statistics_pass_memory_does_not_grow_with_the_dataset(tmp_path):
    small, large = _grew(tmp_path, 2_000), _grew(tmp_path, 40_000)
    # Holding the 40k images would take ~120 MB more than 2k; the streaming pass stays within noise.
    assert large < small + 30, (small, large)


VIEWS_SCRIPT = PRELUDE + textwrap.dedent("""
    from datadistill.evaluate.linear_probe import view_features

    images = torch.rand(20, 3, 128, 128)  # 3.9 MB; repeated 100 times it would be 393 MB
    models = [(TinyEncoder(), 16)]
    out = {}
    for views in (1, int(sys.argv[1])):  # the first pass also warms up
        grew, (feats,) = grew_mb(
            lambda: view_features(models, images, views, torch.Generator().manual_seed(0), torch.device("cpu"))
        )
        out[views] = {"grew_mb": grew, "features": list(feats.shape)}
        del feats
    print(json.dumps(out))
""")


def test_probe_view_pass_memory_does_not_grow_with_the_views(tmp_path):
    result = _run(tmp_path, VIEWS_SCRIPT, 100, OMP_NUM_THREADS="1")
    one, many = result["1"], result["100"]
    assert one["features"] == [1, 20, 8] and many["features"] == [100, 20, 8]
    # The set repeated 100 times would take 393 MB; streamed, one batch of pixels (20 MB) exists at a time.
    assert many["grew_mb"] < one["grew_mb"] + 150, (one, many)
