"""search/: the IP (vs brute force), budgets, strategies, the CLI's bad-budget lines, evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from quant.config import QuantConfig
from search.ip import BudgetError, brute_force, feasible_range, greedy, lagrangian, solve
from search.params import EvaluateParams, SearchParams
from search.context import SearchContext
from search.strategies import family, run_strategy

OPTIONS = ["uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4"]


# ------------------------------------------------------------------------------------------ IP
def _instance(rng, L, K):
    n = rng.integers(50, 400, size=L)
    bits_per = rng.integers(2, 9, size=(L, K)).astype(np.int64)
    bits = bits_per * n[:, None] + rng.integers(0, 200, size=(L, K))
    scores = rng.normal(size=(L, K)) * rng.lognormal(0, 1, size=(L, 1))
    return scores, bits, int(n.sum())


def test_ip_matches_brute_force_on_random_small_instances() -> None:
    rng = np.random.default_rng(0)
    checked = infeasible = 0
    for trial in range(40):
        L, K = int(rng.integers(2, 6)), int(rng.integers(2, 5))
        scores, bits, n = _instance(rng, L, K)
        if trial % 7 == 0:
            scores[rng.integers(L), rng.integers(K)] = np.nan  # a disallowed option
            if not np.isfinite(scores).any(axis=1).all():
                continue
        lo, hi = feasible_range(bits, n, np.isfinite(scores))
        budget = float(rng.uniform(lo, hi))
        tol = None if trial % 2 else float(rng.uniform(0.05, 0.6))
        best = brute_force(scores, bits, n, budget, tol)
        if best is None:
            with pytest.raises(BudgetError, match="widen the tolerance"):
                solve(scores, bits, n, budget, tol)
            infeasible += 1
            continue
        res = solve(scores, bits, n, budget, tol)
        assert res.optimal
        assert res.total_bits <= budget * n + 1e-6
        if tol is not None:
            assert res.total_bits >= (budget - tol) * n - 1e-6
        assert np.isfinite(scores[np.arange(L), res.choice]).all()
        # optimal within the documented integer resolution of the scaled scores
        assert res.objective >= best[0] - res.resolution - 1e-12
        assert res.objective <= best[0] + 1e-12
        checked += 1
    assert checked >= 25 and infeasible >= 1


def test_trust_region_ip_is_the_optimum_within_the_region() -> None:
    import itertools

    rng = np.random.default_rng(5)
    for trial in range(15):
        L, K = 5, 3
        s = rng.normal(size=(L, K))
        b = rng.integers(2, 9, size=(L, K))
        anchor = rng.integers(0, K, size=L)
        budget = float(b[np.arange(L), anchor].sum()) + 1.0  # the anchor fits
        for m in (0, 1, 2):
            res = solve(s, b, 1, budget, None, anchor=anchor, max_changes=m)
            assert int((res.choice != anchor).sum()) <= m
            best = max(float(s[np.arange(L), c].sum()) for c in map(np.array, itertools.product(range(K), repeat=L))
                       if (c != anchor).sum() <= m and b[np.arange(L), c].sum() <= budget)
            assert res.objective == pytest.approx(best, abs=1e-4)


def test_lagrangian_bounds_and_greedy_is_feasible() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        scores, bits, n = _instance(rng, 5, 3)
        lo, hi = feasible_range(bits, n)
        budget = float(rng.uniform(lo, hi))
        cap = math.floor(budget * n)
        best = brute_force(scores, bits, n, budget)
        ub, _ = lagrangian(scores, bits, cap)
        g = greedy(scores, bits, cap)
        assert ub >= best[0] - 1e-9
        assert g is not None and bits[np.arange(5), g].sum() <= cap
        assert scores[np.arange(5), g].sum() <= best[0] + 1e-9


def test_budget_errors_name_the_feasible_range() -> None:
    scores = np.zeros((2, 2))
    bits = np.array([[300, 400], [300, 400]])
    with pytest.raises(BudgetError, match=r"below the smallest.*3\.0000\.\.4\.0000"):
        solve(scores, bits, 200, 2.5)
    with pytest.raises(BudgetError, match=r"above the largest.*3\.0000\.\.4\.0000"):
        solve(scores, bits, 200, 4.5)
    # sizes 600, 700, 800: the window [3.6, 3.64] (720..728 bits) holds no config, ≤ 3.64 does
    with pytest.raises(BudgetError, match="widen the tolerance"):
        solve(scores, bits, 200, 3.64, 0.04)
    assert solve(scores, bits, 200, 3.64, 0.2).total_bits == 700


def test_parse_budgets() -> None:
    from search.pareto import pareto_front, parse_budgets

    assert parse_budgets("3.0:4.0:0.25") == [3.0, 3.25, 3.5, 3.75, 4.0]
    assert parse_budgets("3.25,3.5") == [3.25, 3.5]
    for bad in ("3:2:0.1", "a:4:0.5", "3:4", "3:4:0", "x"):
        with pytest.raises(BudgetError):
            parse_budgets(bad)
    assert pareto_front([(3.0, 10), (3.5, 12), (3.5, 8), (4.0, 9)]) == [0, 2]


# ---------------------------------------------------------------------------------- strategies
@pytest.fixture(scope="module")
def tiny_bank(tiny_bank_of):
    return tiny_bank_of(OPTIONS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (conftest)


def _budget_mid(bank) -> float:
    from search.ip import bits_matrix

    b, n = bits_matrix(bank, bank.layer_names, bank.options)
    lo, hi = feasible_range(b, n)
    return round(lo + 0.3 * (hi - lo), 3)


class FakeEnsemble:
    """predictor.api.Ensemble stand-in: FID = Σ layer weight × option badness, additive."""

    def __init__(self, bank):
        rng = np.random.default_rng(3)
        self.bank = bank
        self.w = {l: float(rng.lognormal()) for l in bank.layer_names}
        self.bad = {o: 4.0 ** (-int(o[3:])) * (1.3 if o.startswith("kma") else 1.0) for o in bank.options}
        self.calls = 0

    def predict(self, configs):
        return np.array([sum(self.w[l] * self.bad[c.option(l)] * 100 for l in self.bank.layer_names)
                         for c in configs])

    def sensitivity(self, reference):
        self.calls += 1
        base = self.predict([reference])[0]
        rows = []
        for l in self.bank.layer_names:
            for o in self.bank.options:
                c = QuantConfig(reference.model, {**reference.options, l: o})
                rows.append({"layer": l, "option": o, "delta_fid": self.predict([c])[0] - base,
                             "delta_fid_std": 0.0, "block": l.split(".")[0]})
        return pd.DataFrame(rows)


class FakeSelector:
    """RealScorer stand-in: 'FID' = total weight error; images from a hash of the config."""

    def __init__(self, bank):
        self.bank = bank
        self.scored = []

    def score(self, config, n, seed, **kw):
        self.scored.append(config.config_id if config else None)
        fid = 0.0 if config is None else self.bank.summarize(config).quantized_error
        return {"fid": fid, "content": 1.0, "status": "ok", "reason": "", "n_images": n, "seconds": 0.0,
                "images": np.zeros((n, 8, 8, 1), np.uint8)}

    def generate(self, config, n, seed):
        class G:
            images = np.full((n, 8, 8, 1), 0 if config is None else int(self.bank.summarize(config).quantized_error * 1e3) % 200, np.uint8)
            n_nonfinite = 0
        return G()

    def image_mse(self, config, fp_images, seed):
        return float(np.mean((self.generate(config, len(fp_images), seed).images.astype(float) - fp_images) ** 2))


def _check_budget(bank, cfg, budget, tol):
    bits = bank.summarize(cfg).avg_bits
    assert abs(bits - cfg.avg_bits) < 1e-9
    assert budget - tol - 1e-9 <= bits <= budget + 1e-9


def test_error_layerwise_mixdq_predictor_strategies(tiny_bank, tmp_path: Path) -> None:
    bank, _ = tiny_bank
    budget = _budget_mid(bank)
    sp = SearchParams(tolerance=0.05, relinearise_rounds=3, candidates_scored=2, mixdq_k=(0.8, 1.0, 1.2))
    # analysis tables as files
    rng = np.random.default_rng(0)
    pairs = [(l, o) for l in bank.layer_names for o in OPTIONS]
    pd.DataFrame({"layer": [l for l, _ in pairs], "option": [o for _, o in pairs],
                  "score": rng.uniform(size=len(pairs))}).to_parquet(tmp_path / "layerwise.parquet")
    groups = ["content" if "time_emb_proj" in l else "quality" for l, _ in pairs]
    pd.DataFrame({"layer": [l for l, _ in pairs], "option": [o for _, o in pairs], "group": groups,
                  "score": [rng.uniform(10, 40) if g == "quality" else rng.uniform(0.9, 1) for g in groups]}
                 ).to_parquet(tmp_path / "mixdq.parquet")
    ens, sel = FakeEnsemble(bank), FakeSelector(bank)
    ctx = SearchContext(bank, sp, analysis_dir=tmp_path, predictor_dir=tmp_path / "nopred",
                        ensemble_factory=lambda: ens, selector_factory=lambda: sel)
    for strategy in ("error", "layerwise", "mixdq", "predictor"):
        res = run_strategy(ctx, strategy, budget)
        _check_budget(bank, res.config, budget, sp.tolerance)
        assert set(res.config.options) == set(bank.layer_names)
    # the error strategy is the exact minimiser of total weight error: no uniform config in the
    # window beats it
    err = run_strategy(ctx, "error", budget).config
    assert bank.summarize(err).quantized_error <= min(
        bank.summarize(QuantConfig("digits", {l: o for l in bank.layer_names})).quantized_error
        for o in OPTIONS if bank.summarize(QuantConfig("digits", {l: o for l in bank.layer_names})).avg_bits <= budget)
    # predictor: re-linearised (several sensitivity calls) and the top candidates were scored
    res = run_strategy(ctx, "predictor", budget)
    assert ens.calls >= 2 and res.report["rounds"]
    assert res.report["chosen_by"].startswith("selection") or res.report["path"] == [res.config.config_id]
    # mixdq: candidates over K, picked by MSE to FP
    res = run_strategy(ctx, "mixdq", budget)
    assert res.report["candidates"] and res.report["K"] in (0.8, 1.0, 1.2)
    # picked: the candidate whose images are closest to the FP images (FakeSelector's MSE)
    cands = res.report["candidates"]
    assert len(cands) >= 2 and res.report["chosen_by"] == "lowest MSE to FP images"
    best = min(cands, key=lambda c: c["mse_to_fp"])
    assert res.config.config_id == best["config"] and res.report["K"] == best["K"]
    fp = sel.generate(None, sp.mixdq_pick_images, sp.select_seed).images
    assert best["mse_to_fp"] == sel.image_mse(res.config, fp, sp.select_seed)


def test_strategies_give_a_planted_sensitive_layer_more_bits(tiny_bank, tmp_path: Path) -> None:
    """One layer (the largest) is made far more sensitive than the others in each strategy's own
    scores; at a tight budget (most layers must take 3 bits) every strategy keeps it at 4 bits,
    and its configuration is the best of the alternatives by its own objective."""
    bank, _ = tiny_bank
    sizes = {l: bank.layers[l].n_weights for l in bank.layer_names}
    planted = max(sizes, key=sizes.get)
    b, n = bits_matrix_of(bank)
    lo, hi = feasible_range(b, n)
    budget = round(lo + 0.06 * (hi - lo), 3)  # ≈ 3.45 bits: room for one large 4-bit layer
    rng = np.random.default_rng(7)
    w = {l: 100.0 if l == planted else float(rng.uniform(1, 2)) for l in bank.layer_names}
    damage = lambda l, o: w[l] * (1.0 if o.endswith("3") else 0.3) * (1.2 if o.startswith("kma") else 1.0)  # noqa: E731
    pairs = [(l, o) for l in bank.layer_names for o in OPTIONS]
    pd.DataFrame({"layer": [l for l, _ in pairs], "option": [o for _, o in pairs],
                  "score": [damage(l, o) for l, o in pairs]}).to_parquet(tmp_path / "layerwise.parquet")
    # mixdq: SQNR (higher is better) for the quality group, SSIM for the content group
    groups = ["content" if "time_emb_proj" in l else "quality" for l, _ in pairs]
    pd.DataFrame({"layer": [l for l, _ in pairs], "option": [o for _, o in pairs], "group": groups,
                  "score": [(40.0 - 10 * damage(l, o) / w[l]) * (w[l] if l == planted else 1.0)
                            if g == "quality" else 1.0 - 0.01 * damage(l, o)
                            for (l, o), g in zip(pairs, groups)]}).to_parquet(tmp_path / "mixdq.parquet")
    ens = FakeEnsemble(bank)
    ens.w = {l: w[l] for l in bank.layer_names}
    sp = SearchParams(tolerance=0.1, relinearise_rounds=4, mixdq_k=(1.0,), cached_starts=0)
    ctx = SearchContext(bank, sp, analysis_dir=tmp_path, ensemble_factory=lambda: ens)
    total = lambda cfg: sum(damage(l, o) for l, o in cfg.options.items())  # noqa: E731
    alternatives = [run_strategy(ctx, "error", budget).config]
    alternatives += [QuantConfig("digits", {l: o for l in bank.layer_names}) for o in ("uaq3", "kmc3", "kma3")]
    for strategy in ("layerwise", "mixdq", "predictor"):
        cfg = run_strategy(ctx, strategy, budget).config
        _check_budget(bank, cfg, budget, sp.tolerance)
        assert cfg.options[planted].endswith("4"), (strategy, cfg.options[planted])
        assert sum(o.endswith("4") for o in cfg.options.values()) < len(cfg.options) / 2  # the budget binds
        if strategy == "layerwise":
            assert total(cfg) <= min(total(a) for a in alternatives) + 1e-9
        if strategy == "predictor":
            assert ens.predict([cfg])[0] <= min(ens.predict(alternatives)) + 1e-9


def bits_matrix_of(bank):
    from search.ip import bits_matrix

    return bits_matrix(bank, bank.layer_names, bank.options)


class QuadraticEnsemble(FakeEnsemble):
    """Non-additive: FID = (Σ_l w_l·badness)² / 100 — one IP on scores around one reference is
    not its optimum; trust-region re-linearisation has to walk."""

    def predict(self, configs):
        return super().predict(configs) ** 2 / 100.0


def test_predictor_trust_region_walk_only_accepts_improvements(tiny_bank) -> None:
    bank, _ = tiny_bank
    budget = _budget_mid(bank)
    ens, sel = QuadraticEnsemble(bank), FakeSelector(bank)
    sp = SearchParams(tolerance=0.1, relinearise_rounds=12, candidates_scored=3, trust_region=0.5, cached_starts=0)
    ctx = SearchContext(bank, sp, ensemble_factory=lambda: ens, selector_factory=lambda: sel)
    res = run_strategy(ctx, "predictor", budget)
    _check_budget(bank, res.config, budget, sp.tolerance)
    walk = [r for r in res.report["rounds"] if r["round"] > 0]
    accepted = [r["predicted_fid"] for r in walk if r["accepted"]]
    assert accepted == sorted(accepted, reverse=True) and len(set(accepted)) == len(accepted)
    assert all(r["max_changes"] >= 1 for r in walk)
    ks = [r["max_changes"] for r in walk]
    assert all(b <= a for a, b in zip(ks, ks[1:]))  # the region only shrinks (on rejections)
    path = res.report["path"]
    assert res.config.config_id in path and len(set(sel.scored)) <= sp.candidates_scored
    first = ens.predict([QuantConfig(bank.model, json.loads(json.dumps(res.config.options)))])[0]
    assert first <= min(c["predicted_fid"] for c in res.report["candidates"] if c["config_id"] == path[0]) + 1e-9


def test_uniform_and_random_best_use_the_cache(tiny_bank, tmp_path: Path) -> None:
    import pyarrow as pa

    from sampling.cache import CACHE_SCHEMA, write_cache
    from sampling.sampler import random_config

    bank, _ = tiny_bank
    rows = []
    for i in range(12):
        cfg = QuantConfig("digits", random_config(bank.layer_names, OPTIONS, 0, i))
        st = bank.summarize(cfg)
        rows.append({"config_id": cfg.config_id, "model": "digits", "index": i,
                     "options": json.dumps(cfg.canonical_options(), separators=(",", ":")),
                     "act_bits": None, "avg_bits": st.avg_bits, "quantized_bytes": st.quantized_bytes,
                     "quantized_error": st.quantized_error, "bops": float(st.bops), "fid": float(100 - i),
                     "content": 0.5, "n_images": 10, "image_seed": 0, "sample_seed": 0, "status": "ok",
                     "reason": "", "attempts": 1, "seconds": 1.0, "worker": "t", "code_version": "t"})
    write_cache(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), tmp_path / "cache.parquet")
    ctx = SearchContext(bank, SearchParams(), cache_path=tmp_path / "cache.parquet")
    budget = max(r["avg_bits"] for r in rows[:6]) + 1e-6
    best = run_strategy(ctx, "random-best", budget)
    inside = [r for r in rows if r["avg_bits"] <= budget]
    assert best.report["cache_fid"] == min(r["fid"] for r in inside)
    with pytest.raises(BudgetError, match="no measured random config"):
        run_strategy(ctx, "random-best", min(r["avg_bits"] for r in rows) - 1e-3)
    assert best.config.options == json.loads(min(inside, key=lambda r: r["fid"])["options"])
    uni = run_strategy(ctx, "uniform", 8.0)
    assert uni.config.avg_bits <= 8.0 and len(set(uni.config.options.values())) == 1
    # no uniform config is in the cache and there is no selector: the least total weight error
    # among those that fit (kmc4 needs 8.28 bits with its codebooks)
    stats = {o: bank.summarize(QuantConfig("digits", {l: o for l in bank.layer_names})) for o in OPTIONS}
    fits = [o for o in OPTIONS if stats[o].avg_bits <= 8.0]
    want = min(fits, key=lambda o: stats[o].quantized_error)
    assert "kmc4" not in fits and uni.report["chosen_by"] == "error" and uni.report["option"] == want
    assert uni.config.options == {l: want for l in bank.layer_names}


# ----------------------------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    from qsens.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_bad_budgets_are_one_line_with_the_range(tiny_bank, tmp_path: Path, capsys) -> None:
    bank, _ = tiny_bank
    bank_dir = tmp_path / "bank"
    if not bank_dir.exists():
        bank.save(bank_dir)
    params = tmp_path / "params.yaml"  # a params file must exist; model only (search defaults)
    params.write_text("model: digits\n")
    common = ["search", "--bank", str(bank_dir), "--strategy", "error", "--no-select",
              "--data-dir", str(tmp_path / "data"), "--params", str(params)]
    for budget, words in (("1.5", "below the smallest"), ("20", "above the largest"),
                          ("abc", "not a number"), ("nan", "finite positive")):
        code, out, err = _cli(common + ["--budget", budget], capsys)
        assert code == 2, (budget, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
        assert "feasible range" in lines[0] and ".." in lines[0]
    code, out, err = _cli(common + ["--budgets", "1:2:0.5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "feasible range" in err
    budget = _budget_mid(bank)
    code, out, err = _cli(common + ["--budget", str(budget), "--out", str(tmp_path / "c.json")], capsys)
    assert code == 0, err
    cfg = QuantConfig.load(tmp_path / "c.json")
    assert cfg.avg_bits <= budget and json.loads((tmp_path / "c.report.json").read_text())["ip_status"] == "optimal"
    code, out, err = _cli(common + ["--budgets", f"{budget}:{budget + 0.2}:0.1", "--out", str(tmp_path / "fam")], capsys)
    assert code == 0, err
    assert len(json.loads((tmp_path / "fam" / "family.json").read_text())) == 3


# ---------------------------------------------------------------------------------- evaluation
def test_evaluation_is_resumable_deterministic_and_refuses_used_seeds(tiny_bank, tiny_digits_scorer,
                                                                     tmp_path: Path) -> None:
    from core.errors import QsensError
    from search.evaluate import read_rows, run_evaluation
    from sampling.evaluator import Evaluator as RealScorer

    bank, den = tiny_bank
    real = RealScorer(den, bank, tiny_digits_scorer)
    calls: list[int] = []
    score = real.score
    real.score = lambda cfg, n, seed, **kw: (calls.append(seed), score(cfg, n, seed, **kw))[1]  # counts real scores
    sp = SearchParams(select_seed=11)
    ctx = SearchContext(bank, sp)
    ep = EvaluateParams(images=10, image_seeds=(23, 24))
    b = _budget_mid(bank)
    kw = dict(strategies=["error", "uniform"], budgets=[b + 0.3, b], ep=ep, out_dir=tmp_path / "out",
              metrics_path=tmp_path / "m" / "search.json", pareto_csv=tmp_path / "m" / "pareto.csv",
              used_seeds={"cache": [0, 1]}, input_digest=lambda s: "x")
    rows = run_evaluation(ctx, real, log=lambda m: None, **kw)
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("fp16", None), ("error", b), ("error", b + 0.3), ("uniform", b), ("uniform", b + 0.3)]  # budgets increasing
    for r in rows:
        assert {"budget", "strategy", "avg_bits", "fid", "fids", "fid_se", "content", "seconds"} <= set(r)
        assert r["status"] == "ok" and len(r["fids"]) == 2
        assert r["fid"] == pytest.approx(np.mean(r["fids"])) and r["fid_se"] == pytest.approx(
            np.std(r["fids"], ddof=1) / np.sqrt(2))
    assert (tmp_path / "out" / "pareto.png").exists() and list((tmp_path / "out" / "grids").glob("*.png"))
    assert (tmp_path / "out" / "configs" / f"error-{b:g}.json").exists()
    assert (tmp_path / "m" / "pareto.csv").read_text().startswith("strategy,budget,avg_bits,fid,fid_se")
    # each row's scores are its config's on each evaluation seed set (not the selection one)
    assert rows[0]["fids"] == pytest.approx([score(None, 10, s)["fid"] for s in (23, 24)], rel=1e-9)
    cfg = QuantConfig.load(tmp_path / "out" / "configs" / f"error-{b:g}.json")
    assert rows[1]["fids"] == pytest.approx([score(cfg, 10, s)["fid"] for s in (23, 24)], rel=1e-9)
    assert rows[1]["content"] == pytest.approx(np.mean([score(cfg, 10, s)["content"] for s in (23, 24)]))
    assert rows[1]["avg_bits"] == pytest.approx(bank.summarize(cfg).avg_bits)
    assert rows[1]["fids"][0] != pytest.approx(score(cfg, 10, 11)["fid"], rel=1e-6)
    # a re-run scores nothing again and gives the same table
    calls.clear()
    again = run_evaluation(ctx, real, log=lambda m: None, **kw)
    assert calls == [], calls
    assert [(r["fids"], r["avg_bits"]) for r in again] == [(r["fids"], r["avg_bits"]) for r in rows]
    # another FID reference (statistics) re-scores every row: nothing is reused across references
    from sampling.scoring import DigitsScorer

    other = RealScorer(den, bank, DigitsScorer(tiny_digits_scorer.classifier, tiny_digits_scorer.ref_mu + 0.5,
                                               tiny_digits_scorer.ref_sigma))
    moved = run_evaluation(ctx, other, log=lambda m: None, **{**kw, "metrics_path": tmp_path / "m" / "search.json"})
    assert all(a["fids"] != pytest.approx(b["fids"]) for a, b in zip(moved, rows))
    assert moved[0]["fids"] == pytest.approx([other.score(None, 10, s)["fid"] for s in (23, 24)], rel=1e-9)
    run_evaluation(ctx, real, log=lambda m: None, **kw)  # back to the first reference
    # a lost row is redone, deterministically
    kept = read_rows(tmp_path / "m" / "search.json")
    (tmp_path / "m" / "search.json").write_text(json.dumps(kept[:2]))
    third = run_evaluation(ctx, real, log=lambda m: None, **kw)
    assert [r["fids"] for r in third] == [r["fids"] for r in rows]
    # overlapping seeds are refused, whichever of the seed sets overlaps
    with pytest.raises(QsensError, match="overlaps"):
        run_evaluation(ctx, real, log=lambda m: None, **{**kw, "used_seeds": {"cache": [24]}})
    with pytest.raises(QsensError, match="overlaps"):
        run_evaluation(ctx, real, log=lambda m: None, **{**kw, "ep": EvaluateParams(images=10, image_seeds=(23, 11))})


def test_paired_difference_is_per_seed_against_the_best_other_strategy() -> None:
    from search.evaluate import add_paired_differences

    rows = [{"strategy": "fp16", "budget": None, "fids": [1.0, 1.1, 0.9], "fid": 1.0, "status": "ok"},
            {"strategy": "predictor", "budget": 3.5, "fids": [2.0, 2.4, 1.9], "fid": 2.1, "status": "ok"},
            {"strategy": "error", "budget": 3.5, "fids": [2.5, 2.6, 2.7], "fid": 2.6, "status": "ok"},
            {"strategy": "uniform", "budget": 3.5, "fids": [2.2, 2.9, 2.0], "fid": 2.3667, "status": "ok"},
            {"strategy": "error", "budget": 3.75, "fids": [9.0, 9.0, 9.0], "fid": 9.0, "status": "ok"},
            {"strategy": "predictor", "budget": 3.5, "act": "A8", "fids": [5, 5, 5], "fid": 5, "status": "ok"}]
    add_paired_differences(rows)
    p = rows[1]["paired"]
    d = np.array([2.0, 2.4, 1.9]) - np.array([2.2, 2.9, 2.0])  # uniform: the lowest mean of the others
    assert p["vs"] == "uniform" and p["diffs"] == pytest.approx(d.tolist())
    assert p["diff"] == pytest.approx(d.mean()) and p["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert p["z"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(3)))
    assert "paired" not in rows[5] and "paired" not in rows[2]


def test_families_solve_budgets_upwards_and_keep_a_better_incumbent(tiny_bank) -> None:
    from core.errors import QsensError
    from search.baselines import error_scores

    bank, _ = tiny_bank
    ctx = SearchContext(bank, SearchParams(tolerance=0.05))
    b = _budget_mid(bank)
    budgets = [b + 0.4, b, b + 0.2]
    fam = family(ctx, "error", budgets)
    assert [r.budget for r in fam] == budgets
    by = {r.budget: r for r in fam}
    scores = error_scores(bank)
    total = lambda c: sum(scores[(l, o)] for l, o in c.options.items())  # noqa: E731
    # the error objective never gets worse with a larger budget along the family
    assert total(by[b].config) <= total(by[b + 0.2].config) + 1e-9 <= total(by[b + 0.4].config) + 2e-9
    # an incumbent the objective rates higher than anything inside the window is kept
    best_high = run_strategy(ctx, "error", b + 0.4).config
    kept = run_strategy(ctx, "error", b + 0.45, incumbent=best_high)
    assert total(kept.config) >= total(best_high) - 1e-9
    with pytest.raises(QsensError, match="budgets must increase"):
        run_strategy(ctx, "error", b, incumbent=best_high)


def _family_for_given(tiny_prepared_data, tmp_path):
    """A uniform family written by `qsens search --budgets` on the tiny digits data (bank built)."""
    import shutil

    from qsens.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_prepared_data, data)
    base = ["--model", "digits", "--data-dir", str(data), "--quiet"]
    assert main(["bank", "build", *base]) == 0
    base += ["--threads", "1"]
    fam = data / "fam"
    assert main(["search", "--strategy", "uniform", "--budgets", "4.0", "--out", str(fam), "--no-select", *base]) == 0
    return base, fam


def test_evaluate_given_checks_every_config_it_is_handed(tiny_prepared_data, tmp_path, capsys):
    """#28 item 4: a replaced config, a config outside the family/data dirs and a family naming a
    missing cache are each refused in one line before anything is scored."""
    import shutil

    from qsens.cli import main

    base, fam = _family_for_given(tiny_prepared_data, tmp_path)
    rows = json.loads((fam / "family.json").read_text())
    cfg = Path(rows[0]["config"])
    assert rows[0]["config_sha256"]
    argv = ["evaluate", "--strategies", "uniform", "--given", f"uniform={fam}", "--budgets", "4.0",
            "--images", "4", "--metrics", str(tmp_path / "m.json"), *base]

    def one_error(*want: str) -> None:
        capsys.readouterr()
        assert main(argv) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
        assert len(err) == 1 and all(w in err[0] for w in want), err
        assert not (tmp_path / "m.json").exists()

    original = cfg.read_bytes()
    cfg.write_text(cfg.read_text() + " ")  # replaced after the search (one byte is enough)
    one_error(str(cfg), "changed since the search")
    cfg.write_bytes(original)

    outside = tmp_path / "elsewhere" / cfg.name
    outside.parent.mkdir()
    shutil.copy(cfg, outside)
    (fam / "family.json").write_text(json.dumps([{**rows[0], "config": str(outside)}]))
    one_error(str(outside), "outside the family dir")

    (fam / "family.json").write_text(json.dumps([{**rows[0], "cache": str(tmp_path / "no-such.parquet")}]))
    one_error("no-such.parquet", "does not exist")
