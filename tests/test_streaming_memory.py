"""The statistics pass streams: its peak memory does not grow with the dataset size."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, resource, sys
    import torch
    from datadistill.data import LabelledImages, RealData
    from datadistill.stats import feature_bank

    class Generated(LabelledImages):
        """Images computed from their index: the dataset itself holds nothing that grows with n."""
        def __init__(self, n):
            self.targets = torch.arange(n) % 4
        def __getitem__(self, i):
            return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), int(self.targets[i])
        def fingerprint(self):
            return f"generated-{len(self)}"

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

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    n = int(sys.argv[1])
    split = Generated(n)
    data = RealData("generated", ["a", "b", "c", "d"], split, Generated(4), None, 16, "generated")
    encoder = TinyEncoder()
    with torch.inference_mode():
        encoder(torch.rand(100, 3, 16, 16))  # warm up
    before = rss()
    bank = feature_bank(data, encoder, "train", crop=16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "grew_mb": peak - before, "features": list(bank.features.shape)}))
''')


def _grew(tmp_path, n):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "DATADISTILL_CACHE": str(tmp_path / f"cache{n}"), "DATADISTILL_PROGRESS": "0"}
    done = subprocess.run([sys.executable, str(script), str(n)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["features"] == [n, 8]
    return result["grew_mb"]


@pytest.mark.slow
def test_statistics_pass_memory_does_not_grow_with_the_dataset(tmp_path):
    small, large = _grew(tmp_path, 2_000), _grew(tmp_path, 40_000)
    # Holding the 40k images would take ~120 MB more than 2k; the streaming pass stays within noise.
    assert large < small + 30, (small, large)
