"""The headline table README quotes, rendered from `metrics/digits/search.json` (no measurement).

    python bench/headline.py [--metrics metrics/digits/search.json] [--noise metrics/digits/noise.json]
                             [--active metrics/digits/active.json] [--out bench/results/headline.json]

Prints, per strategy and budget, mean FID ± standard error over the evaluation seed sets; for the
predictor the paired difference to the best other strategy (Δ ± SE, z); the real measurements
each strategy spent; then one verdict per claim of issue 13:
- `lowest`: the predictor has the lowest mean FID at every budget,
- `significant`: its paired difference is below zero by at least 2 standard errors at every budget,
- `monotone`: its mean FID does not rise with budget by more than one standard error,
- `fp_quality`: at the highest budget it is within one seed-noise σ (metrics/digits/noise.json) of FP.
Stores the same as JSON (bench/results/headline.json) so README's figures have a source.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import write_result  # noqa: E402  (bench/machine.py)


def _fmt(mean: float | None, se: float | None, digits: int = 2) -> str:
    if mean is None:
        return "failed"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{mean:.{digits}f}"


def headline(rows: list[dict], sigma: float | None, strategy: str = "predictor") -> dict:
    weight = [r for r in rows if not r.get("act")]
    fp = next((r for r in weight if r["strategy"] == "fp16"), None)
    budgets = sorted({r["budget"] for r in weight if r.get("budget") is not None})
    strategies = list(dict.fromkeys(r["strategy"] for r in weight if r["strategy"] != "fp16"))
    cell = {(r["strategy"], r["budget"]): r for r in weight if r["strategy"] != "fp16"}
    ours = [cell.get((strategy, b)) for b in budgets]
    verdict: dict[str, dict] = {"lowest": {}, "significant": {}, "monotone": {}, "fp_quality": {}}
    for b, r in zip(budgets, ours):
        ok = [o for (s, bb), o in cell.items() if bb == b and o.get("fid") is not None]
        best = min(ok, key=lambda o: o["fid"]) if ok else None
        verdict["lowest"][str(b)] = bool(r and best and best["strategy"] == strategy)
        p = (r or {}).get("paired") or {}
        verdict["significant"][str(b)] = bool(p.get("se") and p["diff"] + 2 * p["se"] < 0)
    for (b1, r1), (b2, r2) in zip(zip(budgets, ours), list(zip(budgets, ours))[1:]):
        if r1 and r2 and r1.get("fid") is not None and r2.get("fid") is not None:
            verdict["monotone"][f"{b1}->{b2}"] = bool(r2["fid"] <= r1["fid"] + (r2.get("fid_se") or 0.0))
    top = ours[-1] if ours else None
    if top and fp and sigma and top.get("fid") is not None:
        verdict["fp_quality"][str(budgets[-1])] = bool(top["fid"] - fp["fid"] <= sigma)
    return {"budgets": budgets, "strategies": strategies, "fp": fp, "cells": cell, "verdict": verdict,
            "sigma": sigma, "n_seeds": len((fp or {}).get("fids") or [])}


def spent(h: dict, s: str) -> dict[str, int]:
    """Real measurements behind strategy `s` over the whole family: selection scores add up over
    budgets (a family memoises its incumbent's), data (cache / analysis rows) counts once."""
    out: dict[str, int] = {}
    for b in h["budgets"]:
        for k, v in ((h["cells"].get((s, b)) or {}).get("real_scores") or {}).items():
            out[k] = out.get(k, 0) + v if k == "selection" else v
    return out


def markdown(h: dict) -> str:
    budgets, cell = h["budgets"], h["cells"]
    lines = ["| strategy | " + " | ".join(f"{b:g} bits" for b in budgets) + " | real scores spent |",
             "| --- | " + " | ".join("---" for _ in budgets) + " | --- |"]
    fp = h["fp"]
    if fp:
        lines.append(f"| FP model (16 bits) | {_fmt(fp['fid'], fp.get('fid_se'))} |" + " |" * (len(budgets) - 1) + " |")
    for s in h["strategies"]:
        cells = []
        for b in budgets:
            r = cell.get((s, b))
            if r is None:
                cells.append("—")
                continue
            text = _fmt(r.get("fid"), r.get("fid_se"))
            if r.get("fid") is not None and abs(r["avg_bits"] - b) > 0.06:
                text += f" ({r['avg_bits']:.2f} b)"
            cells.append(text)
        name = f"`{s}`" + (" (ours)" if s == "predictor" else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + (", ".join(f"{k} {v}" for k, v in spent(h, s).items() if v) or "none") + " |")
    paired = []
    for b in budgets:
        p = (cell.get(("predictor", b)) or {}).get("paired")
        paired.append("—" if not p else f"{p['diff']:+.2f} ± {p['se']:.2f} vs `{p['vs']}` (z {p['z']:.1f})"
                      if p.get("se") else f"{p['diff']:+.2f} vs `{p['vs']}`")
    lines.append("| paired Δ predictor − best other | " + " | ".join(paired) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metrics", type=Path, default=ROOT / "metrics" / "digits" / "search.json")
    ap.add_argument("--noise", type=Path, default=ROOT / "metrics" / "digits" / "noise.json")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "headline.json")
    args = ap.parse_args(argv)
    rows = json.loads(args.metrics.read_text())
    sigma = None
    if args.noise.is_file():
        sigma = json.loads(args.noise.read_text()).get("fp_fid_seed_std")
    h = headline(rows, sigma)
    print(markdown(h))
    print()
    has_ours = any(s == "predictor" for s, _ in h["cells"])
    for claim, per in h["verdict"].items():
        print(f"{claim}: " + (", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in per.items())
                              if has_ours and per else "n/a (no predictor rows)" if not has_ours else "n/a"))
    out = {"metrics": str(args.metrics), "sigma": sigma, "n_seeds": h["n_seeds"], "verdict": h["verdict"],
           "table": [{"strategy": s, "budget": b, "fid": r.get("fid"), "fid_se": r.get("fid_se"),
                      "avg_bits": r.get("avg_bits"), "paired": r.get("paired"), "real_scores": r.get("real_scores")}
                     for (s, b), r in sorted(h["cells"].items(), key=lambda kv: (kv[0][0], kv[0][1]))],
           "spent": {s: spent(h, s) for s in h["strategies"]},
           "fp": None if not h["fp"] else {"fid": h["fp"]["fid"], "fid_se": h["fp"].get("fid_se")}}
    write_result("headline", out, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
