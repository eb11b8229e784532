"""`datadistill report`: a tiny bench on digits (Random and SFM, linear probe with and without augmentation, the
full-data probe) turned into the HTML page and markdown summary, checked as data, as files and in a real
headless browser (Debian chromium; the browser test skips without it, except where DATADISTILL_REQUIRE_BROWSER
is set, as in CI)."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from datadistill.bench import runner as bench_module
from datadistill.bench.plan import BenchPlan, protocol_spec
from datadistill.bench.runner import bench
from datadistill.cli import main
from datadistill.core.errors import ConfigError
from datadistill.reporting.collect import collect
from datadistill.reporting.comparison import add_figures, build_sections

PLAN = dict(
    data="digits",
    methods=["random", "sfm"],
    protocols=["linear-probe", "linear-probe:augment=false", "full"],
    seeds=2,
    crops={"efficientnet_lite0": 16},
    settings=["steps=4", "epochs=20", "views=2", "full_epochs=2", "grow_every=1"],
)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    records = bench(BenchPlan(**PLAN), out)
    assert main(["-q", "report", str(out)]) == 0
    return out, records


def test_protocol_specs_are_typed_and_checked():
    assert protocol_spec("linear-probe") == ("linear-probe", {})
    assert protocol_spec("linear-probe:augment=false:epochs=7") == ("linear-probe", {"augment": False, "epochs": 7})
    for bad in ("linear-probe:nope=1", "linear-probe:augment", "linear-probe:augment=maybe", "magic:x=1"):
        with pytest.raises(ConfigError):
            protocol_spec(bad)


def test_bench_records_name_runs_model_and_augmentation(tiny_bench):
    out, records = tiny_bench
    assert len(records) == 2 * 2 + 1
    for r in records:
        assert r["evaluated_with"] == "efficientnet_lite0"
        if r["method"] != "full-data":
            assert all((out / p / "config.json").exists() for p in r["runs"])
            assert r["details"]["augment"] is (not r["protocol"].endswith("augment=false"))
    no_aug = next(r for r in records if r["method"] == "sfm" and r["protocol"] == "linear-probe:augment=false")
    assert no_aug["details"]["views"] == 1
    assert [len(r["runs"]) for r in records if r["protocol"] == "linear-probe"] == [2, 1]  # Random: one per seed


def test_rerun_skips_finished_cells(tiny_bench, monkeypatch):
    out, records = tiny_bench

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was evaluated again")

    monkeypatch.setattr(bench_module, "evaluate", fail)
    again = bench(BenchPlan(**PLAN), out)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in records]


def test_sections_hold_accuracy_scores_and_cost(tiny_bench):
    out, records = tiny_bench
    (section,) = build_sections(collect([out]))
    assert section.methods == ["random", "sfm"] and section.ipc == 1 and section.group == "efficientnet_lite0"
    header = section.overview.header
    for row in section.overview.rows:  # every method: accuracy, score relative to random, seconds, peak memory
        values = dict(zip(header, (c.text for c in row), strict=True))
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", values["test acc (%)"])
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", values["LRS (%)"])
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", values["ARS (%)"])
        assert float(values["distill time (s)"]) >= 0 and float(values["peak RSS (MB)"]) > 0
    assert "peak CUDA (MB)" not in header  # CPU runs record none
    # best per column is marked, once per column
    acc = section.accuracy
    for j in range(1, len(acc.header)):
        assert sum(row[j].best for row in acc.rows) == 1
    assert acc.rows[-1][0].text == "full data (full)"
    sfm = next(r for r in records if r["method"] == "sfm" and r["protocol"] == "linear-probe")
    full = next(r for r in records if r["method"] == "full-data")
    hlr = np.mean(np.subtract(full["test_acc"], sfm["test_acc"]))
    row = next(row for row in section.scores.rows if row[0].text == "sfm" and row[1].text.startswith("linear-probe @"))
    assert row[4].text.startswith(f"{100 * hlr:.2f}")
    assert not section.notes  # every score could be computed
    add_figures(section)
    assert [g.caption for g in section.grids][1] == "sfm" and section.grids[0].labels[:2] == ["0", "1"]
    assert {f.name.rsplit("-", 1)[-1] for f in section.figures} == {"accuracy.png", "losses.png", "cost.png"}


def test_report_files(tiny_bench):
    out, _ = tiny_bench
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "## digits, IPC 1, distilled with efficientnet_lite0" in md and "### Scores relative to random" in md
    for name in re.findall(r"\]\(report_files/([^)]+)\)", md):
        with Image.open(out / "report_files" / name) as img:
            assert img.width > 0
    # self-contained: every image is embedded, nothing points to the network
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 + 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page and "@import" not in page
    assert "LRS" in page and "ARS" in page and "★" in page


def test_report_of_run_directories_and_errors(tiny_bench, tmp_path, capsys):
    out, records = tiny_bench
    run = out / next(r for r in records if r["method"] == "sfm")["runs"][0]
    with pytest.raises(Exception, match="no evaluation results"):
        collect([run])  # the bench evaluated its sets in memory, not through the run directory
    assert main(["-q", "eval", str(run), "--seeds", "2", "--epochs", "5", "--views", "2"]) == 0
    assert main(["-q", "report", str(run)]) == 2  # a run directory needs --out
    assert "--out" in capsys.readouterr().err
    assert main(["-q", "report", str(run), "--out", str(run)]) == 2
    assert main(["-q", "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert main(["-q", "report", str(run), "--out", str(tmp_path / "r")]) == 0
    (section,) = build_sections(collect([run]))
    assert section.methods == ["sfm"] and "Random" in " ".join(section.notes)  # IOR needs Random: said so
    assert (tmp_path / "r" / "report.html").exists()


def test_page_in_headless_chromium(tiny_bench, tmp_path):
    from headless import find_chromium, open_page

    exe = find_chromium()
    if exe is None:
        if os.environ.get("DATADISTILL_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (DATADISTILL_REQUIRE_BROWSER) but was not found")
        pytest.skip("chromium not installed (apt-get install chromium)")
    out, _ = tiny_bench
    page = open_page(exe, (out / "report.html").resolve().as_uri())
    state = page["state"]
    assert page["errors"] == []
    assert state["images"] == 5 and state["broken"] == []
    assert state["tables"] == 4 + 2 and state["title"] == "datadistill report: digits" and state["text"] > 1000
    assert all(u.startswith(("file:", "data:")) for u in page["requests"])
    shot = tmp_path / "report.png"
    shot.write_bytes(page["screenshot"])
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    assert pixels.shape[1] == 1280 and pixels.shape[0] >= 900
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank
    json.dumps(state)  # what the browser reported is plain data


def test_no_augmentation_gets_its_own_column_however_it_was_set():
    from datadistill.reporting.collect import _protocol_label

    assert _protocol_label("linear-probe", {"augment": False}) == "linear-probe:augment=false"  # --set augment=false
    assert _protocol_label("linear-probe:augment=false", {"augment": False}) == "linear-probe:augment=false"
    assert _protocol_label("linear-probe", {"augment": True}) == "linear-probe"
    assert _protocol_label("convnet", {"dsa": None}) == "convnet"


def test_overview_shows_each_method_by_its_own_first_evaluation(tiny_bench, tmp_path):
    """Methods evaluated with different protocols (a probe for one, only another protocol for the other) both get
    their accuracy in the overview, each naming the evaluation it comes from."""
    import shutil

    out, records = tiny_bench
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    kept = [r for r in records if not (r["method"] == "sfm" and r["protocol"] == "linear-probe")]
    (mixed / "results.json").write_text(json.dumps(kept))
    (section,) = build_sections(collect([mixed]))
    rows = {row[0].text: [c.text for c in row] for row in section.overview.rows}
    header = section.overview.header
    evaluation, acc = header.index("evaluation"), header.index("test acc (%)")
    assert rows["random"][evaluation].startswith("linear-probe") and "augment" not in rows["random"][evaluation]
    assert rows["sfm"][evaluation].startswith("linear-probe:augment=false")
    sfm = next(r for r in kept if r["method"] == "sfm" and r["protocol"] == "linear-probe:augment=false")
    assert rows["sfm"][acc] == f"{100 * sfm['mean']:.2f} ± {100 * sfm['std']:.2f}"
