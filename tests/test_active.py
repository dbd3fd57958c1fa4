"""search/active.py: active learning rounds, cache provenance, honest splits, resume.

A tiny untrained digits UNet gives a real bank and DAG; its random configs are scored for real
(10 images, the tiny digits scorer) into a random quant_cache written WITHOUT the provenance
column, as every cache before it was. The rounds then score with the same RealScorer.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from quant.config import QuantConfig

OPTIONS = ["uaq3", "uaq4", "kma4"]
TINY = dict(conv="gatv2", layers=2, hidden=16, heads=2, folds=2, epochs=2, patience=2, batch_size=16,
            baselines=["ridge"], threads=1, test_fraction=0.25, probe=False)
IMAGES, IMAGE_SEED = 10, 0


class CountingScorer:
    """A real `sampling.evaluator.Evaluator`, counting its `score` calls."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def score(self, config, n, seed, **kw):
        self.calls.append(None if config is None else config.config_id)
        return self.real.score(config, n, seed, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_digits_scorer):
    from denoisers.digits import tiny_digits_denoiser
    from graphs.dag import build_dag
    from graphs.io import write_graph
    from quant.bank import build_bank
    from sampling.cache import CACHE_SCHEMA, normalise_record
    from sampling.sampler import random_configs
    from search.ip import bits_matrix, feasible_range
    from sampling.evaluator import Evaluator as RealScorer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("active")
    den = tiny_digits_denoiser("unet", seed=0)
    bank = build_bank(den.model, OPTIONS, model_name="digits", progress=False)
    bank.save(root / "bank")
    write_graph(build_dag(den.model, name="digits").graph, root / "graph.json")
    real = RealScorer(den, bank, tiny_digits_scorer)
    rows = []
    for index, cfg in random_configs("digits", bank.layer_names, OPTIONS, 0, 24):
        st, sc = bank.summarize(cfg), real.score(cfg, IMAGES, IMAGE_SEED)
        rows.append(normalise_record({
            "config_id": cfg.config_id, "model": "digits", "index": index, "options": cfg.canonical_options(),
            "act_bits": None, "avg_bits": st.avg_bits, "quantized_bytes": st.quantized_bytes,
            "quantized_error": st.quantized_error, "bops": float(st.bops), "fid": sc["fid"],
            "content": sc["content"], "n_images": IMAGES, "image_seed": IMAGE_SEED, "sample_seed": 0,
            "status": sc["status"], "reason": sc["reason"], "attempts": 1, "seconds": 0.1, "worker": "w0",
            "code_version": "test", "job_key": "job"}))
    rows.sort(key=lambda r: r["config_id"])
    old_schema = pa.schema([f for f in CACHE_SCHEMA if f.name != "provenance"])
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "provenance"} for r in rows],
                                        schema=old_schema), root / "random.parquet")
    b, n = bits_matrix(bank, bank.layer_names, bank.options)
    lo, hi = feasible_range(b, n)
    budgets = [round(lo + 0.55 * (hi - lo), 3), round(lo + 0.3 * (hi - lo), 3)]  # unsorted on purpose
    return {"root": root, "bank": bank, "den": den, "real": real, "budgets": budgets}


def _ctx(world):
    from search.params import SearchParams
    from search.strategies import SearchContext

    return SearchContext(world["bank"], SearchParams(tolerance=0.1, time_limit_s=5.0, cached_starts=3,
                                                     trust_region=0.25))


def _run(world, out: Path, real, ap=None, **kw):
    from predictor.train import TrainParams
    from search.active import ActiveParams, run_active

    root = world["root"]
    ap = ap or ActiveParams(rounds=1, per_budget=2, disagreement=1, relinearise_rounds=2, epochs=2)
    args = dict(random_cache=root / "random.parquet", graph=root / "graph.json", bank_dir=root / "bank",
                probe=None, train_params=TrainParams(**TINY), image_seed=IMAGE_SEED, images=IMAGES,
                out_dir=out, log=lambda m: None)
    return run_active(_ctx(world), real, world["budgets"], ap, **{**args, **kw})


# ---------------------------------------------------------------------------------- cache provenance
def test_old_caches_read_and_merge_as_random(world, tmp_path) -> None:
    from sampling.cache import CACHE_SCHEMA, merge_shards, read_cache, write_cache
    from sampling.shards import ShardWriter, shard_path

    old = world["root"] / "random.parquet"
    assert "provenance" not in pq.read_schema(old).names
    df = read_cache(old)
    assert (df["provenance"] == "random").all() and len(df) == 24
    # a table without the column still writes; nulls read as "random", set values stay
    t = pq.read_table(old)
    write_cache(t, tmp_path / "w.parquet")
    assert pq.read_schema(tmp_path / "w.parquet").names == [f.name for f in CACHE_SCHEMA]
    assert (read_cache(tmp_path / "w.parquet")["provenance"] == "random").all()
    mixed = read_cache(old).assign(provenance=["active-r0"] + [None] * 23)
    write_cache(pa.Table.from_pandas(mixed, preserve_index=False).cast(CACHE_SCHEMA), tmp_path / "m.parquet")
    assert read_cache(tmp_path / "m.parquet")["provenance"].tolist() == ["active-r0"] + ["random"] * 23
    # shards never carry it: the merged cache says "random"
    rec = json.loads(read_cache(old).iloc[[0]].to_json(orient="records"))[0]
    rec.pop("provenance")
    with ShardWriter(shard_path(tmp_path / "s", 0)) as w:
        w.append(rec)
    merge_shards(tmp_path / "s", tmp_path / "merged.parquet")
    assert read_cache(tmp_path / "merged.parquet")["provenance"].tolist() == ["random"]


# ---------------------------------------------------------------------------------- training
def test_random_only_training_is_unchanged_and_active_rows_stay_in_train(world) -> None:
    from graphs.io import read_graph
    from predictor.dataset import ConfigSet, GraphTemplate, configs_from_cache, split_ids, split_with_provenance
    from predictor.train import TrainParams, train_ensemble
    from sampling.cache import read_cache

    root = world["root"]
    template = GraphTemplate.build(read_graph(root / "graph.json"), world["bank"])
    data = configs_from_cache(read_cache(root / "random.parquet", ok_only=True), template)
    assert list(data.provenance) == ["random"] * len(data)
    legacy = ConfigSet(data.config_ids, data.opt_idx, data.fid, data.avg_bits)  # as before: no provenance
    p = TrainParams(**TINY)
    a = train_ensemble(template, legacy, p, progress=False)
    b = train_ensemble(template, data, p, progress=False)
    pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
    for ma, mb in zip(a.members, b.members):
        sa, sb = ma.model.state_dict(), mb.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.metrics["ensemble"] == b.metrics["ensemble"] and b.metrics["info"]["n_active"] == 0
    # the split of all-random data is split_ids' own
    t1, f1 = split_ids(data.config_ids, 0.25, 2, 0)
    t2, f2 = split_with_provenance(data, 0.25, 2, 0)
    assert np.array_equal(t1, t2) and all(np.array_equal(x, y) for u, v in zip(f1, f2) for x, y in zip(u, v))
    # mark 5 rows active: they land in every train part, never in test or val; the random rows'
    # split is the one computed without them
    prov = np.array(["random"] * len(data), dtype=object)
    active = [3, 7, 11, 15, 19]
    prov[active] = "active-r0"
    mixed = replace(data, provenance=prov)
    test, folds = split_with_provenance(mixed, 0.25, 2, 0)
    rnd = [i for i in range(len(data)) if i not in active]
    rt, rf = split_ids([data.config_ids[i] for i in rnd], 0.25, 2, 0)
    assert sorted(data.config_ids[i] for i in test) == sorted(data.config_ids[rnd[i]] for i in rt)
    for (tr, va), (rtr, rva) in zip(folds, rf):
        assert set(active) <= set(tr.tolist()) and not set(active) & set(va.tolist())
        assert sorted(va.tolist()) == sorted(rnd[i] for i in rva)
    assert not set(active) & set(test.tolist())
    res = train_ensemble(template, mixed, p, progress=False)
    assert res.metrics["info"]["n_active"] == 5
    active_ids = {data.config_ids[i] for i in active}
    assert not active_ids & set(res.predictions.config_id)  # never predicted as test/val
    assert set(res.predictions[res.predictions.split == "test"].config_id) == {data.config_ids[rnd[i]] for i in rt}


# ---------------------------------------------------------------------------------- picking
def test_pick_candidates_order_ties_and_measured() -> None:
    from search.active import pick_candidates

    cfgs = [QuantConfig("m", {"a": o, "b": p}) for o in ("uaq3", "uaq4") for p in ("uaq3", "uaq4", "kma4")]
    ids = [c.config_id for c in cfgs]
    # members (M=2): mean = [5, 1, 3, 3, 4, 2], std = [0, 0, 2, 1, 2, 0.5]
    m0 = np.array([5, 1, 1, 2, 2, 1.5])
    m1 = np.array([5, 1, 5, 4, 6, 2.5])
    picks = pick_candidates(cfgs + [cfgs[1]], np.concatenate([np.stack([m0, m1]), [[1], [1]]], 1),
                            measured={ids[1]}, per_budget=2, disagreement=2)
    # unmeasured by mean: 5 (2.0), then 2 and 3 (3.0, tie -> lower id first), 4 (4.0), 0 (5.0)
    first_tie = min(ids[2], ids[3])
    other_tie = max(ids[2], ids[3])
    assert [(p.config.config_id, p.why) for p in picks[:2]] == [(ids[5], "predicted"), (first_tie, "predicted")]
    # the rest {other_tie, 4, 0} by largest std: 4 has std 2; other_tie has 2 (id 2) or 1 (id 3)
    rest = sorted([(-{ids[2]: 2.0, ids[3]: 1.0}[other_tie], other_tie), (-2.0, ids[4]), (0.0, ids[0])])
    assert [(p.config.config_id, p.why) for p in picks[2:]] == [(i, "disagreement") for _, i in rest[:2]]
    assert picks[0].predicted_fid == pytest.approx(2.0) and picks[0].predicted_std == pytest.approx(0.5)
    # the search's choice is measured first even when it is not the best predicted; it counts
    # towards per_budget; a measured one is never picked
    picks = pick_candidates(cfgs, np.stack([m0, m1]), set(), 2, 0, chosen=cfgs[0])
    assert [(p.config.config_id, p.why) for p in picks] == [(ids[0], "chosen"), (ids[1], "predicted")]
    assert pick_candidates(cfgs, np.stack([m0, m1]), set(ids), 2, 2, chosen=cfgs[0]) == []


def test_failed_scores_are_rows(world) -> None:
    from search.active import _score, cache_row

    bank = world["bank"]
    cfg = QuantConfig("digits", {bank.layer_names[0]: "uaq3"})

    class Boom:
        def score(self, config, n, seed, **kw):
            raise FloatingPointError("NaN images")

    row = cache_row(cfg, bank, _score(Boom(), cfg, 10, 5), 5, 2)
    st = bank.summarize(cfg)
    assert row["status"] == "failed" and row["fid"] is None and "NaN images" in row["reason"]
    assert row["provenance"] == "active-r2" and row["index"] == -1 and row["sample_seed"] is None
    assert row["worker"] == "active" and row["job_key"] is None and row["image_seed"] == 5
    assert (row["quantized_bytes"], row["quantized_error"], row["bops"]) == (
        float(st.quantized_bytes), float(st.quantized_error), float(st.bops))
    assert json.loads(row["options"]) == {bank.layer_names[0]: "uaq3"}
    nan = {"fid": math.nan, "content": math.nan, "status": "failed", "reason": "non-finite", "n_images": 10,
           "seconds": 0.1}
    assert cache_row(cfg, bank, nan, 5, 0)["status"] == "failed"


# ---------------------------------------------------------------------------------- the rounds
def test_rounds_append_provenance_measure_the_pick_and_resume(world, tmp_path) -> None:
    from sampling.cache import read_cache

    out = tmp_path / "active"
    real = CountingScorer(world["real"])
    rows = _run(world, out, real)
    assert [r["round"] for r in rows] == [0, 1]
    union = read_cache(out / "quant_cache.parquet")
    rand = read_cache(world["root"] / "random.parquet")
    # the random rows, unchanged and first; the active rows after them, with provenance
    ut = pq.read_table(out / "quant_cache.parquet")
    assert ut.slice(0, len(rand)).drop(["provenance"]).equals(pq.read_table(world["root"] / "random.parquet"))
    assert set(union.provenance[:len(rand)]) == {"random"}
    act = union.iloc[len(rand):]
    assert set(act["provenance"]) == {"active-r0", "active-r1"} and len(act) == len(real.calls)
    assert sorted(act["config_id"]) == sorted(real.calls) and not set(act["config_id"]) & set(rand["config_id"])
    assert (act["index"] == -1).all() and act["sample_seed"].isna().all() and act["job_key"].isna().all()
    assert (act["worker"] == "active").all() and (act["image_seed"] == IMAGE_SEED).all()
    bank = world["bank"]
    for _, r in act.iterrows():
        st = bank.summarize(QuantConfig("digits", json.loads(r["options"])))
        assert r["quantized_error"] == pytest.approx(st.quantized_error) and r["avg_bits"] == pytest.approx(st.avg_bits)
    # each round picked per budget ≤ per_budget + disagreement configs, none measured before
    per_round = act.groupby("provenance").size().to_dict()
    assert all(n <= 2 * (2 + 1) for n in per_round.values())
    assert rows[0]["n_active"] == 0 and rows[1]["n_active"] == int((act.provenance == "active-r0").sum())
    # the pick's measured FID is the union cache's, which is a real score on the cache seed set
    by_id = union.set_index("config_id")
    for r in rows:
        assert [e["budget"] for e in r["budgets"]] == sorted(world["budgets"])
        for e in r["budgets"]:
            assert e["measured_fid"] == by_id.loc[e["config_id"], "fid"]
            assert e["avg_bits"] <= e["budget"] + 1e-9 and math.isfinite(e["predicted_fid"])
    e = rows[1]["budgets"][0]
    cfg = QuantConfig("digits", json.loads(by_id.loc[e["config_id"], "options"]))
    assert e["measured_fid"] == pytest.approx(world["real"].score(cfg, IMAGES, IMAGE_SEED)["fid"], rel=1e-12)
    # no active row in round 1's test split or val parts; the test split is round 0's
    p0 = pd.read_parquet(out / "rounds" / "r0" / "predictions.parquet")
    p1 = pd.read_parquet(out / "rounds" / "r1" / "predictions.parquet")
    assert not set(p1.config_id) & set(act.config_id)
    assert set(p1[p1.split == "test"].config_id) == set(p0[p0.split == "test"].config_id)
    assert set(p1[p1.split == "val"].config_id) == set(p0[p0.split == "val"].config_id)
    r1 = json.loads((out / "rounds" / "r1" / "round.json").read_text())
    assert r1["warm_start"] and r1["n_active"] == rows[1]["n_active"]
    assert r1["test_spearman"] == rows[1]["test_spearman"]
    for f in ("rounds.json", "learning_curve.png", "predictor/ensemble.json", "predictor/sensitivity.parquet"):
        assert (out / f).is_file(), f
    assert json.loads((out / "predictor" / "ensemble.json").read_text()) == \
        json.loads((out / "rounds" / "r1" / "ensemble.json").read_text())
    # resume: nothing scored again, the same rows
    before = (out / "quant_cache.parquet").read_bytes()
    again = CountingScorer(world["real"])
    assert _run(world, out, again) == rows and again.calls == []
    assert (out / "quant_cache.parquet").read_bytes() == before
    # an interrupted round 1 (rows.json lost its last row, the union kept round 1's rows): redone
    # without scoring, to the same row
    state = json.loads((out / "rounds.json").read_text())
    (out / "rounds.json").write_text(json.dumps({**state, "rounds": state["rounds"][:1]}))
    third = CountingScorer(world["real"])
    redone = _run(world, out, third)
    assert third.calls == [] and redone[0] == rows[0]
    assert {**redone[1], "seconds": None} == {**rows[1], "seconds": None}  # only the timings differ


def test_more_rounds_continue_fewer_stop_and_changed_inputs_go_to_stale(world, tmp_path) -> None:
    from sampling.cache import read_cache
    from search.active import ActiveParams

    out = tmp_path / "active"
    ap = ActiveParams(rounds=0, per_budget=1, disagreement=0, relinearise_rounds=1, epochs=2)
    real = CountingScorer(world["real"])
    rows = _run(world, out, real, ap=ap)
    assert len(rows) == 1 and 1 <= len(real.calls) <= 2
    # raising `rounds` continues: round 0 untouched, only round 1's picks scored
    more = CountingScorer(world["real"])
    rows1 = _run(world, out, more, ap=replace(ap, rounds=1))
    assert rows1[0] == rows[0] and len(rows1) == 2 and not (out / "stale").exists()
    prov = read_cache(out / "quant_cache.parquet").set_index("config_id")["provenance"]
    assert more.calls and all(prov[c] == "active-r1" for c in more.calls)
    # fewer rounds than finished: the rows stop there and predictor/ is that round's
    fewer = CountingScorer(world["real"])
    assert _run(world, out, fewer, ap=ap) == rows and fewer.calls == []
    assert (out / "predictor" / "ensemble.json").read_bytes() == (out / "rounds" / "r0" / "ensemble.json").read_bytes()
    # another input (here per_budget): the old run moves to stale/<digest>/, nothing deleted
    digest = json.loads((out / "rounds.json").read_text())["digest"]
    again = CountingScorer(world["real"])
    rows2 = _run(world, out, again, ap=replace(ap, per_budget=2))
    stale = out / "stale" / digest
    assert (stale / "rounds.json").is_file() and (stale / "quant_cache.parquet").is_file()
    assert (stale / "rounds" / "r1" / "ensemble.json").is_file()
    assert json.loads((stale / "rounds.json").read_text())["rounds"] == rows1
    # started over: round 0's predictor is the same, its picks a superset of the first run's
    assert rows2[0]["test_spearman"] == rows[0]["test_spearman"] and len(rows2) == 1
    assert set(real.calls) <= set(again.calls)


def test_the_train_stage_predictor_is_round_0_only_when_it_matches(world, tmp_path) -> None:
    """Round 0 reuses the train stage's predictor (same params, same configs) instead of training
    it again; another params set or other configs train from scratch."""
    from predictor.train import TrainParams, load_training_data, save_result, train_ensemble
    from search.active import ActiveParams

    root = world["root"]
    template, data = load_training_data(root / "random.parquet", root / "graph.json", root / "bank")
    stage = save_result(train_ensemble(template, data, TrainParams(**TINY), progress=False), tmp_path / "stage")
    ap = ActiveParams(rounds=0, per_budget=1, disagreement=0, relinearise_rounds=1, epochs=1)
    rows = _run(world, tmp_path / "a", world["real"], ap=ap, initial=stage)
    fresh = _run(world, tmp_path / "b", world["real"], ap=ap)
    r0 = json.loads((tmp_path / "a" / "rounds" / "r0" / "round.json").read_text())
    assert r0.get("reused") == str(stage)
    assert "reused" not in json.loads((tmp_path / "b" / "rounds" / "r0" / "round.json").read_text())
    # deterministic training: the reused predictor is the one round 0 would have trained
    assert (tmp_path / "a" / "predictor" / "member-0.safetensors").read_bytes() == \
        (tmp_path / "b" / "predictor" / "member-0.safetensors").read_bytes()
    assert rows[0]["test_spearman"] == fresh[0]["test_spearman"]
    other = save_result(train_ensemble(template, data, TrainParams(**{**TINY, "seed": 1}), progress=False),
                        tmp_path / "other")
    _run(world, tmp_path / "c", world["real"], ap=ap, initial=other)
    assert "reused" not in json.loads((tmp_path / "c" / "rounds" / "r0" / "round.json").read_text())


def test_current_run_is_found_only_for_the_cache_and_bank_it_was_made_from(world, tmp_path) -> None:
    """`qsens search` without active rounds uses the pipeline's active predictor only when that
    run was made from the current random cache and bank."""
    import shutil

    from search.active import ActiveParams, current_run

    root = world["root"]
    out = tmp_path / "active"
    _run(world, out, world["real"], ap=ActiveParams(rounds=0, per_budget=1, disagreement=0,
                                                     relinearise_rounds=1, epochs=1))
    state = current_run(out, root / "random.parquet", root / "bank")
    assert state is not None and [r["round"] for r in state["rounds"]] == [0]
    other = tmp_path / "other.parquet"
    shutil.copy(root / "random.parquet", other)
    with open(other, "ab") as fh:
        fh.write(b"\0")  # another cache file (by content)
    assert current_run(out, other, root / "bank") is None
    assert current_run(tmp_path / "nowhere", root / "random.parquet", root / "bank") is None
