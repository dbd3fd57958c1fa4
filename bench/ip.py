"""How fast and how good is the search IP at SDXL size (803 layers × 6 options)?

The layer shapes are SDXL's UNet, built on the meta device from the shipped config (no
weights); stored bits per (layer, option) are the exact accounting, overhead included. Scores are
synthetic but shaped like the real ones: −(size-weighted quantization error), error ≈
4^-bits × a per-layer, per-method log-normal factor (the `error` strategy's objective).

For each budget it prints the CP-SAT time, status and objective against references solved in the
same run:
- the Lagrangian upper bound (no solution can score above it) → CP-SAT's gap to it;
- the greedy/Lagrangian heuristic (the warm start) → how much the IP gains over it;
- pywraplp + SCIP (MixDQ's solver) on the same instance → time ratio and objective agreement.

    python bench/ip.py                      # budgets 3.25 3.5 3.75, 2 s target per solve
    python bench/ip.py --budgets 3.1 3.9 --no-scip

Writes the rows, the command and the machine conditions to bench/results/ip.json.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant.accounting import layer_bits  # noqa: E402
from quant.options import DEFAULT_OPTIONS  # noqa: E402
from search.ip import greedy, lagrangian, solve  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)


def sdxl_instance(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    from denoisers.architectures import build_from_config
    from quant.layers import layer_infos

    from quant.layers import LayerInfo

    infos = []
    for i in layer_infos(build_from_config("sdxl", device="meta")):
        # As Qua2SeDiMo does: a layer fed by a U-Net skip concatenation (the first conv of each
        # up-block ResNet) is two independently quantized halves along its input channels.
        if re.fullmatch(r"up_blocks\.\d+\.resnets\.\d+\.conv1", i.name):
            c_in = i.shape[1]
            for h, c in (("a", c_in // 2), ("b", c_in - c_in // 2)):
                shape = (i.shape[0], c, *i.shape[2:])
                infos.append(LayerInfo(f"{i.name}.{h}", i.kind, shape, int(np.prod(shape)), i.c_out))
        else:
            infos.append(i)
    options = list(DEFAULT_OPTIONS)
    bits = np.array([[layer_bits(o, i) for o in options] for i in infos], dtype=np.int64)
    n = np.array([i.n_weights for i in infos], dtype=np.float64)
    rng = np.random.default_rng(seed)
    method_factor = rng.lognormal(0.0, 0.4, size=(len(infos), 3))  # uaq / kmc / kma per layer
    layer_factor = rng.lognormal(0.0, 1.0, size=(len(infos), 1))
    m_index = [("uaq", "kmc", "kma").index(o[:3]) for o in options]
    b_opt = np.array([int(o[3:]) for o in options])
    err = layer_factor * method_factor[:, m_index] * 4.0 ** (-b_opt)[None, :]
    scores = -(n[:, None] * err) / n.sum()
    return scores, bits, int(n.sum()), [i.name for i in infos]


def scip_solve(scores: np.ndarray, bits: np.ndarray, cap: int, floor_: int | None, time_limit_s: float):
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None:
        return None
    L, K = scores.shape
    x = [[solver.BoolVar(f"x{l}_{k}") for k in range(K)] for l in range(L)]
    for l in range(L):
        solver.Add(sum(x[l]) == 1)
    size = solver.Sum([int(bits[l, k]) * x[l][k] for l in range(L) for k in range(K)])
    solver.Add(size <= cap)
    if floor_ is not None:
        solver.Add(size >= floor_)
    solver.Maximize(solver.Sum([float(scores[l, k]) * x[l][k] for l in range(L) for k in range(K)]))
    solver.SetTimeLimit(int(time_limit_s * 1000))
    t0 = time.perf_counter()
    status = solver.Solve()
    seconds = time.perf_counter() - t0
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None
    choice = np.array([max(range(K), key=lambda k: x[l][k].solution_value()) for l in range(L)])
    return seconds, float(scores[np.arange(L), choice].sum()), status == pywraplp.Solver.OPTIMAL


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[3.25, 3.5, 3.75])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--target", type=float, default=2.0, help="seconds a solve must stay under")
    ap.add_argument("--no-scip", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    scores, bits, n_total, names = sdxl_instance()
    print(f"instance: SDXL UNet, {scores.shape[0]} layers × {scores.shape[1]} options, "
          f"{n_total / 1e6:.1f} M weights (built in {time.perf_counter() - t0:.1f} s)")
    lo, hi = bits.min(axis=1).sum() / n_total, bits.max(axis=1).sum() / n_total
    print(f"feasible avg bits {lo:.4f}..{hi:.4f}; tolerance window {args.tolerance}")
    worst = 0.0
    ok = True
    rows = []
    for budget in args.budgets:
        res = solve(scores, bits, n_total, budget, args.tolerance, time_limit_s=args.time_limit)
        cap = int(math.floor(budget * n_total + 1e-9))
        floor_ = int(math.ceil((budget - args.tolerance) * n_total - 1e-9))
        t1 = time.perf_counter()
        ub, _ = lagrangian(scores, bits, cap)
        g = greedy(scores, bits, cap)
        t_greedy = time.perf_counter() - t1
        g_obj = float(scores[np.arange(len(g)), g].sum())
        span = abs(ub) if ub != 0 else 1.0
        gap_ub = (ub - res.objective) / span
        worst = max(worst, res.seconds)
        ok &= res.seconds <= args.target
        print(f"\nbudget {budget}: CP-SAT {res.status} in {res.seconds:.2f} s "
              f"(target ≤ {args.target:g} s: {'ok' if res.seconds <= args.target else 'MISSED'}), "
              f"avg bits {res.avg_bits:.4f}, objective {res.objective:.6e}")
        print(f"  vs Lagrangian upper bound {ub:.6e}: gap {gap_ub * 1e6:.1f} ppm of |bound| "
              f"(integer resolution ±{res.resolution:.1e})")
        print(f"  vs greedy/Lagrangian heuristic {g_obj:.6e} ({t_greedy:.3f} s): the IP's objective "
              f"is {(1 - res.objective / g_obj) * 1e6:.1f} ppm better")
        row = {"budget": budget, "cpsat_status": res.status, "cpsat_s": res.seconds, "avg_bits": res.avg_bits,
               "objective": res.objective, "lagrangian_bound": ub, "gap_to_bound_ppm": gap_ub * 1e6,
               "resolution": res.resolution, "greedy_objective": g_obj, "greedy_s": t_greedy,
               "better_than_greedy_ppm": (1 - res.objective / g_obj) * 1e6}
        rows.append(row)
        if not args.no_scip:
            out = scip_solve(scores, bits, cap, floor_, args.time_limit * 6)
            if out is None:
                print("  pywraplp SCIP: unavailable or no solution")
            else:
                secs, obj, opt = out
                row.update(scip_s=secs, scip_optimal=opt, scip_over_cpsat=secs / res.seconds,
                           better_than_scip_ppm=(1 - res.objective / obj) * 1e6)
                print(f"  vs pywraplp SCIP ({'optimal' if opt else 'time limit'}) {secs:.2f} s: "
                      f"CP-SAT is {secs / res.seconds:.1f}× faster; CP-SAT's objective is "
                      f"{(1 - res.objective / obj) * 1e6:.1f} ppm better")
    print(f"\nworst CP-SAT time {worst:.2f} s ({'all ≤' if ok else 'NOT all ≤'} {args.target:g} s)")
    write_result("ip", {"instance": {"layers": int(scores.shape[0]), "options": int(scores.shape[1]),
                                     "weights": n_total, "feasible_avg_bits": [lo, hi]},
                        "tolerance": args.tolerance, "target_s": args.target, "worst_cpsat_s": worst,
                        "all_within_target": ok, "rows": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
