"""DD-Ranking scores (evaluate/ranking.py) against values computed by hand, and how records are matched."""

import math

import pytest

from datadistill.evaluate.ranking import ars, hlr, ior, lrs, normalise, score_record, score_records

E = math.e


def test_normalise_maps_minus_one_to_one_onto_zero_to_one():
    assert normalise(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert normalise(1.0) == pytest.approx(1.0)
    # (1 - 1/e) / (e - 1/e) = 1 / (e + 1)
    assert normalise(0.0) == pytest.approx(1 / (E + 1))
    assert normalise(0.0) == pytest.approx(0.268941, abs=1e-6)


def test_lrs_by_hand():
    # syn 70 %, random 50 %, full real data 90 %, syn with hard labels 65 %:
    # IOR = 0.20, HLR = 0.25, alpha = 0.5 * 0.20 - 0.5 * 0.25 = -0.025
    # LRS = (e^-0.025 - e^-1) / (e - e^-1) = (0.975310 - 0.367879) / 2.350402 = 0.258437
    assert ior(0.70, 0.50) == pytest.approx(0.20)
    assert hlr(0.90, 0.65) == pytest.approx(0.25)
    assert lrs(0.20, 0.25) == pytest.approx(0.258437, abs=1e-6)
    # w = 1: only IOR counts: (e^0.2 - e^-1) / (e - e^-1) = (1.221403 - 0.367879) / 2.350402 = 0.363139
    assert lrs(0.20, 0.25, w=1.0) == pytest.approx(0.363139, abs=1e-6)


def test_ars_by_hand():
    # with augmentation 70 vs 50, without 60 vs 30: beta = 0.5 * 0.2 + 0.5 * 0.3 = 0.25
    # ARS = (e^0.25 - e^-1) / (e - e^-1) = (1.284025 - 0.367879) / 2.350402 = 0.389782
    assert ars(0.70, 0.50, 0.60, 0.30) == pytest.approx(0.389782, abs=1e-6)
    # a set no better than random with or without augmentation scores 1 / (e + 1)
    assert ars(0.5, 0.5, 0.4, 0.4) == pytest.approx(1 / (E + 1))


def rec(
    method, protocol, accs, *, augment=True, model="efficientnet_lite0", crop=64, group="efficientnet_lite0", ipc=1
):
    key = f"{method}|{protocol}|{model}|{crop}|{group}|{ipc}"
    details = {"crop": crop} if protocol.startswith("full") else {"crop": crop, "augment": augment}
    return {
        "key": key,
        "ipc": None if method == "full-data" else ipc,
        "method": method,
        "distill_backbone": None if method == "full-data" else group,
        "protocol": protocol,
        "eval_backbone": model,
        "evaluated_with": model,
        "data": "fashion-mnist",
        "test_acc": accs,
        "mean": sum(accs) / len(accs),
        "details": details,
    }


@pytest.fixture
def records():
    return [
        rec("random", "linear-probe", [0.50, 0.52], group="-"),
        rec("random", "linear-probe:augment=false", [0.30, 0.32], augment=False, group="-"),
        rec("random", "ci", [0.60, 0.62]),
        rec("sfm", "linear-probe", [0.70, 0.72]),
        rec("sfm", "linear-probe:augment=false", [0.60, 0.66], augment=False),
        rec("sfm", "ci", [0.75, 0.79]),
        rec("full-data", "full", [0.90, 0.90]),
        # the same backbone at another crop is another model: never compared with the 64-px ones
        rec("full-data", "full", [0.10, 0.10], crop=224),
    ]


def test_scores_per_seed_and_matching(records):
    scores = score_records(records)
    assert set(scores) == {r["key"] for r in records if r["method"] != "full-data"}
    lp = scores["sfm|linear-probe|efficientnet_lite0|64|efficientnet_lite0|1"]
    # IOR per seed: 0.20, 0.20; HLR per seed: 0.20, 0.18
    assert lp.ior.mean == pytest.approx(0.20) and lp.ior.std == pytest.approx(0.0, abs=1e-12)
    assert lp.hlr.mean == pytest.approx(0.19) and lp.hlr.std == pytest.approx(0.01)
    per_seed = [normalise(0.5 * 0.20 - 0.5 * 0.20), normalise(0.5 * 0.20 - 0.5 * 0.18)]
    assert lp.lrs.mean == pytest.approx(sum(per_seed) / 2)
    # ARS per seed: 0.5 * 0.20 + 0.5 * (0.60 - 0.30) = 0.25 and 0.5 * 0.20 + 0.5 * (0.66 - 0.32) = 0.27
    assert lp.ars.mean == pytest.approx((normalise(0.25) + normalise(0.27)) / 2)
    assert not lp.missing
    # the no-augmentation row shares the ARS of its pair
    naug = scores["sfm|linear-probe:augment=false|efficientnet_lite0|64|efficientnet_lite0|1"]
    assert naug.ars.mean == pytest.approx(lp.ars.mean)
    # CI uses a teacher: IOR against Random under CI, HLR from the hard-label (linear-probe) evaluation
    ci = scores["sfm|ci|efficientnet_lite0|64|efficientnet_lite0|1"]
    assert ci.ior.mean == pytest.approx(0.16)
    assert ci.hlr.mean == pytest.approx(lp.hlr.mean)
    # Random against itself: IOR 0, HLR per seed 0.40 and 0.38
    rdm = scores["random|linear-probe|efficientnet_lite0|64|-|1"]
    assert rdm.ior.mean == 0 and rdm.lrs.mean == pytest.approx((normalise(-0.20) + normalise(-0.19)) / 2)


def test_means_when_seed_counts_differ(records):
    records[0]["test_acc"] = [0.50, 0.52, 0.54]
    s = score_record(records[3], records)
    assert s.ior.std is None and s.ior.mean == pytest.approx(0.71 - 0.52)


def test_missing_scores_say_why(records):
    no_full = [r for r in records if r["method"] != "full-data"]
    s = score_record(records[3], no_full)
    assert s.hlr is None and s.lrs is None and "full real training set" in s.missing["hlr"]
    assert "full" in s.missing["hlr"] and s.ior is not None
    no_twin = [r for r in records if "augment=false" not in r["protocol"]]
    s = score_record(records[3], no_twin)
    assert s.ars is None and "linear-probe:augment=false" in s.missing["ars"]
    no_random = [r for r in records if r["method"] != "random"]
    s = score_record(records[3], no_random)
    assert s.ior is None and "random" in s.missing["ior"].lower() and s.hlr is not None
    other_ipc = [dict(r, ipc=10) if r["method"] == "random" else r for r in records]
    assert score_record(records[3], other_ipc).ior is None
