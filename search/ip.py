"""The integer program: one option per layer, a size-weighted bit budget, maximise summed scores.

    maximise   Σ_l Σ_k s[l,k]·x[l,k]
    subject to Σ_k x[l,k] = 1                                   (one option per layer)
               Σ_l Σ_k bits[l,k]·x[l,k] ≤ budget·N               (N = Σ n_weights)
               Σ_l Σ_k bits[l,k]·x[l,k] ≥ (budget − tolerance)·N (optional window)
               x binary

`bits[l,k]` are the stored bits of layer l at option k, overhead included (quant.accounting), so
the budget is on `avg_bits` exactly as every report states it. Solved with OR-Tools CP-SAT.

Integer scores (CP-SAT needs them): each layer's scores are shifted so its best option scores 0
(this changes no solution: exactly one option per layer is taken) and then multiplied by one
global factor `S = resolution / max |shifted score|` (default 10^6 integer steps) and rounded.
Every rounded coefficient is within 0.5/S of the exact one, and CP-SAT stops when its proven gap
is ≤ 1 integer unit, so the solution is optimal for the exact scores within
`(L/2 + 1) / S` (L = layers), reported as `IPResult.resolution` (≈ 6e-7 of the largest per-layer
score range on SDXL's 803 layers). NaN scores mark options that are not allowed for that layer.

Speed (bench/ip.py): phase 1 solves without the window's lower bound and drops dominated options
(when its optimum lies in the window it is optimal for the window too — the usual case); the
Lagrangian (= LP) bound is added as a valid constraint on the objective, which is what lets CP-SAT
close the gap in well under a second at SDXL size. The bound is evaluated in exact integer
arithmetic (`lagrangian_bound`), and an "infeasible" status is re-checked without it.

Budgets are exact too: the size limits are the integer totals whose reported avg bits
(`total / N` in floats, as every report computes them) lie in [budget − tolerance, budget]
(`cap_bits`, `floor_bits`), so a budget copied from any config's avg_bits admits that config at
any magnitude; `format_range` prints the feasible range rounded inward, so both ends are accepted.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from core.errors import QsensError

DEFAULT_RESOLUTION = 1_000_000  # integer steps spanning the largest per-layer score range
GAP_UNITS = 1.0  # CP-SAT stops when its proven gap is at most this many integer units
# time_limit_s is a deterministic-time budget (see _cp_sat); the wall clock is only a safety net
WALL_FACTOR, WALL_SLACK_S = 20.0, 60.0


class BudgetError(QsensError):
    """A budget no config can meet (the message names the feasible range)."""


@dataclass
class IPResult:
    """The IP's solution: the chosen option per layer `(L,)`, objective, bits, status, solve seconds."""

    choice: np.ndarray  # (L,) index of the chosen option per layer
    objective: float  # Σ exact scores of the chosen options
    total_bits: int
    avg_bits: float
    status: str  # "optimal" | "feasible" (time limit hit before the proof)
    seconds: float
    bound: float  # the solver's upper bound on the objective (exact-score units, ±resolution)
    resolution: float  # the objective is optimal within this (exact-score units)
    extra: dict = field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        """True when the solver proved optimality (not stopped by the time limit)."""
        return self.status == "optimal"


def feasible_range(bits: np.ndarray, n_total: int, allowed: np.ndarray | None = None) -> tuple[float, float]:
    """(smallest, largest) achievable avg bits: every layer at its smallest / largest option."""
    b = np.asarray(bits, dtype=np.float64)
    if allowed is not None:
        lo = np.where(allowed, b, np.inf).min(axis=1).sum()
        hi = np.where(allowed, b, -np.inf).max(axis=1).sum()
    else:
        lo, hi = b.min(axis=1).sum(), b.max(axis=1).sum()
    return float(lo / n_total), float(hi / n_total)


def parse_budget(text: object) -> float:
    """A budget from user input: a finite positive number, or a BudgetError saying what it got."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BudgetError(f"budget {text!r} is not a number (give average bits per weight, e.g. 3.5)") from None
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget {text!r} must be a finite positive number of average bits, e.g. 3.5")
    return value


def check_budget(budget: float, bits: np.ndarray, n_total: int, allowed: np.ndarray | None = None,
                 what: str = "") -> None:
    """BudgetError (one line, naming the range as `format_range` prints it) unless some config's
    avg bits, computed as every report computes it (`total / n_total` in floats), are ≤ `budget`
    and the budget is not above the largest config. Every bound `format_range` prints passes."""
    lo, hi = feasible_range(bits, n_total, allowed)
    where = f" for {what}" if what else ""
    rng = f"feasible range{where}: {format_range(lo, hi)} avg bits (overhead included)"
    if budget < lo:
        raise BudgetError(f"budget {budget!r} is below the smallest config (every layer at its smallest "
                          f"option); {rng}")
    if budget > hi:
        raise BudgetError(f"budget {budget!r} is above the largest config (every layer at its largest "
                          f"option); {rng}")


def format_range(lo: float, hi: float, decimals: int = 4) -> str:
    """`lo..hi` rounded inward (lo up, hi down) so that both printed numbers are accepted as
    budgets; when rounding would cross (lo, hi closer than 10^-decimals), the exact shortest reprs."""
    a, b = _round_dir(lo, decimals, up=True), _round_dir(hi, decimals, up=False)
    if float(a) > float(b):
        return f"{lo!r}..{hi!r}"
    return f"{a}..{b}"


def _round_dir(x: float, decimals: int, up: bool) -> str:
    # Decimal(x) is x exactly; rounding it outward-safe then parsing back cannot cross x, because
    # float parsing is monotone and x itself is a float.
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    q = Decimal(1).scaleb(-decimals)
    return str(Decimal(x).quantize(q, rounding=ROUND_CEILING if up else ROUND_FLOOR))


def cap_bits(budget: float, n_total: int) -> int:
    """The largest total T whose reported avg bits `T / n_total` (float division, as every report
    computes it) are ≤ `budget`: a budget copied from any config's avg_bits admits that config.
    Exact (rational arithmetic), whatever the magnitude of `budget · n_total`."""
    t = math.floor(Fraction(budget) * n_total)
    while (t + 1) / n_total <= budget:
        t += 1
    while t / n_total > budget:  # cannot happen (t/N ≤ budget exactly); kept as a guard
        t -= 1
    return t


def floor_bits(lower: float, n_total: int) -> int:
    """The smallest total T whose reported avg bits `T / n_total` are ≥ `lower` (see `cap_bits`)."""
    t = math.ceil(Fraction(lower) * n_total)
    while (t - 1) / n_total >= lower:
        t -= 1
    while t / n_total < lower:
        t += 1
    return t


def solve(scores: np.ndarray, bits: np.ndarray, n_total: int, budget: float,
          tolerance: float | None = None, *, time_limit_s: float = 10.0, workers: int = 1,
          resolution: int = DEFAULT_RESOLUTION, hint: Sequence[int] | None = None,
          what: str = "", anchor: Sequence[int] | None = None, max_changes: int | None = None) -> IPResult:
    """Solve the IP for `scores` / `bits` of shape (L, K). See the module doc.

    Trust region: with `anchor` (L,) option indices and `max_changes`, at most that many layers
    may take another option than the anchor's (Σ_l (1 − x[l, anchor_l]) ≤ max_changes), so a
    linearisation around the anchor is only trusted near it.

    Raises BudgetError (one line, naming the feasible range) for a budget no config meets, and
    when the window [budget − tolerance, budget] is empty although ≤ budget is feasible.
    Deterministic for a fixed `workers` count (CP-SAT with one worker, or interleaved search):
    `time_limit_s` is CP-SAT's deterministic time, so machine load changes no result.
    """
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(bits, dtype=np.int64)
    if s.shape != b.shape or s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores {s.shape} and bits {b.shape} must both be (layers, options)")
    allowed = np.isfinite(s)
    dead = np.flatnonzero(~allowed.any(axis=1))
    if len(dead):
        raise QsensError(f"layer #{dead[0]} has no option with a finite score{f' ({what})' if what else ''}")
    check_budget(budget, b, n_total, allowed, what)
    L, K = s.shape
    cap = cap_bits(budget, n_total)
    floor_ = None if tolerance is None else floor_bits(budget - tolerance, n_total)

    shifted = np.where(allowed, s - np.where(allowed, s, -np.inf).max(axis=1, keepdims=True), 0.0)
    span = float(np.abs(shifted).max())
    scale = resolution / span if span > 0 else 1.0
    coef = np.rint(shifted * scale).astype(np.int64)

    trust = None
    if anchor is not None and max_changes is not None:
        trust = (np.asarray(anchor, dtype=np.int64), int(max_changes))
        if hint is None:
            hint = trust[0]
    start = greedy(s, b, cap) if hint is None else np.asarray(hint)
    # Phase 1 without the window's lower bound: a relaxation, so when its optimum already lies in
    # the window it is optimal for the windowed problem too (the usual case: scores improve with
    # bits, so the budget binds). Only otherwise solve again with the window (phase 2); CP-SAT
    # proves that harder variant far more slowly.
    # Phase 1 also drops dominated options (another option of the layer is no larger and scores
    # no lower): some optimum of the ≤-only problem never uses them.
    keep = allowed & ~dominated(s, b, allowed)
    if trust is not None:  # a dominated anchor option can still be the best choice within the region
        keep[np.arange(L), trust[0]] |= allowed[np.arange(L), trust[0]]
    if start is not None:
        start = np.array([k if keep[l, k] else _best_kept(l, k, s, b, keep) for l, k in enumerate(start)])
    solver, x, status = _cp_sat(keep, b, coef, cap, None, start, time_limit_s, workers, trust=trust)
    used = solver.response_proto.deterministic_time  # deterministic seconds: later phases get what is left of it
    phases = 1
    if floor_ is not None and status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        total = sum(int(b[l, k]) for l in range(L) for k in range(K) if solver.BooleanValue(x[l][k]))
        if total < floor_ or status != cp_model.OPTIMAL:
            left = max(0.1, time_limit_s - used)
            solver, x, status = _cp_sat(allowed, b, coef, cap, floor_, start, left, workers, trust=trust)
            used += solver.response_proto.deterministic_time
            phases = 2
    if status == cp_model.INFEASIBLE:
        # The objective cut is valid by construction, but an "infeasible" that rests on it would be
        # a wrong refusal: confirm it on the model without the cut (and without dropped options).
        left = max(1.0, time_limit_s - used)
        solver, x, status = _cp_sat(allowed, b, coef, cap, floor_, None, left, workers, trust=trust,
                                    cut=False)
        phases += 1
    seconds = time.perf_counter() - t0
    if status == cp_model.INFEASIBLE:
        lo, hi = feasible_range(b, n_total, allowed)
        raise BudgetError(
            f"no config has avg bits in [{budget - (tolerance or 0):g}, {budget:g}]"
            f"{f' for {what}' if what else ''}: the options' discrete sizes leave a gap there, although "
            f"configs ≤ {budget:g} exist (feasible range {format_range(lo, hi)}); widen the tolerance")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise QsensError(f"the IP solver found no solution within its limit of {time_limit_s:g} deterministic s "
                         f"(status {solver.StatusName(status)}); raise search.time_limit_s")
    choice = np.array([next(k for k in range(K) if solver.BooleanValue(x[l][k])) for l in range(L)])
    total = int(b[np.arange(L), choice].sum())
    objective = float(s[np.arange(L), choice].sum())
    base = float(np.where(allowed, s, -np.inf).max(axis=1).sum())
    return IPResult(choice=choice, objective=objective, total_bits=total, avg_bits=total / n_total,
                    status="optimal" if status == cp_model.OPTIMAL else "feasible", seconds=seconds,
                    bound=base + solver.BestObjectiveBound() / scale,
                    resolution=(L * 0.5 + GAP_UNITS) / scale,
                    extra={"cap_bits": cap, "floor_bits": floor_, "scale": scale, "phases": phases,
                           "wall_solver_s": solver.WallTime(), "deterministic_s": solver.response_proto.deterministic_time})


def dominated(s: np.ndarray, b: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(L, K) mask of options some other allowed option of the same layer dominates (fewer or
    equal bits and a higher or equal score, strictly better in one, ties broken by index)."""
    L, K = s.shape
    out = np.zeros((L, K), dtype=bool)
    ss = np.where(allowed, s, -np.inf)
    for k in range(K):
        for j in range(K):
            if j == k:
                continue
            le = allowed[:, j] & (b[:, j] <= b[:, k]) & (ss[:, j] >= ss[:, k])
            strict = (b[:, j] < b[:, k]) | (ss[:, j] > ss[:, k]) | (j < k)
            out[:, k] |= le & strict
    return out & allowed


def _best_kept(l: int, k: int, s: np.ndarray, b: np.ndarray, keep: np.ndarray) -> int:
    """A kept option of layer l no larger than option k with at least its score (the dominator)."""
    cands = [j for j in range(s.shape[1]) if keep[l, j] and b[l, j] <= b[l, k] and s[l, j] >= s[l, k]]
    return cands[0] if cands else int(np.flatnonzero(keep[l])[0])


def _cp_sat(allowed, b, coef, cap, floor_, start, time_limit_s, workers, linearization=None, trust=None,
            cut: bool = True):
    from ortools.sat.python import cp_model

    L, K = allowed.shape
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x{l}_{k}") for k in range(K)] for l in range(L)]
    flat, flat_bits, flat_coef = [], [], []
    for l in range(L):
        for k in range(K):
            if allowed[l, k]:
                flat.append(x[l][k])
                flat_bits.append(int(b[l, k]))
                flat_coef.append(int(coef[l, k]))
            else:
                model.Add(x[l][k] == 0)
        model.AddExactlyOne([x[l][k] for k in range(K) if allowed[l, k]])
    size = cp_model.LinearExpr.WeightedSum(flat, flat_bits)
    model.Add(size <= cap)
    if floor_ is not None:
        model.Add(size >= floor_)
    if trust is not None:
        anchor, max_changes = trust
        model.Add(sum(x[l][int(anchor[l])] for l in range(L)) >= L - max_changes)
    objective = cp_model.LinearExpr.WeightedSum(flat, flat_coef)
    # The Lagrangian (= LP) bound of the ≤-only problem is valid for both phases; stating it as a
    # constraint saves CP-SAT most of the work of finding it. Evaluated in exact integer
    # arithmetic (`lagrangian_bound`), so it cuts no feasible solution at any magnitude.
    if cut:
        _, _, lam = lagrangian(np.where(allowed, coef, np.nan).astype(np.float64), b, cap, with_lambda=True)
        model.Add(objective <= lagrangian_bound(coef, b, cap, lam, allowed))
    model.Maximize(objective)
    if start is not None:
        for l in range(L):
            for k in range(K):
                model.AddHint(x[l][k], int(start[l] == k))
    solver = cp_model.CpSolver()
    # The limit is CP-SAT's deterministic time (work units, about a second each on an unloaded
    # core), not the wall clock: the same inputs stop at the same point, so give the same
    # solution, however loaded the machine is. Wall time only stops a runaway (WALL_FACTOR ×).
    solver.parameters.max_deterministic_time = float(time_limit_s)
    solver.parameters.max_time_in_seconds = float(time_limit_s) * WALL_FACTOR + WALL_SLACK_S
    solver.parameters.num_workers = max(1, int(workers))
    solver.parameters.random_seed = 0
    # stop once the proven gap is below the rounding already accepted (L/2 integer units)
    solver.parameters.absolute_gap_limit = GAP_UNITS
    if linearization is not None:
        solver.parameters.linearization_level = linearization
    if workers > 1:
        solver.parameters.interleave_search = True  # deterministic with several workers
    return solver, x, solver.Solve(model)


# ------------------------------------------------------------------------------------------------
# references: a greedy/Lagrangian heuristic (warm start, bench) and exhaustive search (tests)
# ------------------------------------------------------------------------------------------------
def lagrangian_bound(coef: np.ndarray, bits: np.ndarray, cap: int, lam: float,
                     allowed: np.ndarray | None = None) -> int:
    """⌊UB(λ)⌋ with UB(λ) = Σ_l max_k (coef[l,k] − λ·bits[l,k]) + λ·cap, in exact rational
    arithmetic (λ as the exact value of its float). Weak duality: for every λ ≥ 0 and every
    assignment with Σ bits ≤ cap, Σ coef ≤ UB(λ); with integer `coef` the objective is an integer,
    so ⌊UB(λ)⌋ is a valid cut too. Exactness matters: on SDXL-sized instances λ·cap is ~10^9 and
    a float evaluation can land below the integer optimum and cut off the only feasible config."""
    frac = Fraction(max(float(lam), 0.0))
    p, q = frac.numerator, frac.denominator
    total = p * int(cap)
    c = np.asarray(coef, dtype=np.int64)
    b = np.asarray(bits, dtype=np.int64)
    ok = np.ones(c.shape, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    for l in range(c.shape[0]):
        total += max(q * int(c[l, k]) - p * int(b[l, k]) for k in range(c.shape[1]) if ok[l, k])
    return total // q  # floor division of Python ints: exact ⌊total / q⌋


def lagrangian(scores: np.ndarray, bits: np.ndarray, cap: int, iters: int = 60, with_lambda: bool = False):
    """Lagrangian relaxation of the ≤ constraint: (upper bound on the optimum, best feasible
    primal found on the way or None[, the best multiplier λ]). Bisection on λ ≥ 0.

    The bound is evaluated in floats (a heuristic's yardstick); for a cut that must never remove a
    feasible solution use `lagrangian_bound` with the returned λ."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    b = np.asarray(bits, dtype=np.float64)
    L = s.shape[0]

    def inner(lam: float):
        v = s - lam * b
        k = v.argmax(axis=1)
        return float(v[np.arange(L), k].sum() + lam * cap), k

    best_primal, best_val = None, -math.inf
    best_ub, k0 = inner(0.0)
    best_lam = 0.0

    def done(primal):
        return (best_ub, primal, best_lam) if with_lambda else (best_ub, primal)

    if b[np.arange(L), k0].sum() <= cap:
        return done(k0)
    lo, hi = 0.0, 1.0
    finite = s[np.isfinite(s)]
    span = float(finite.max() - finite.min()) if finite.size else 1.0
    hi = max(span / max(float(np.diff(np.sort(b, axis=1), axis=1).max(initial=1.0)), 1.0), 1e-12) * 4
    while b[np.arange(L), inner(hi)[1]].sum() > cap and hi < 1e30:
        hi *= 4
    for _ in range(iters):
        lam = 0.5 * (lo + hi)
        ub, k = inner(lam)
        if ub < best_ub:
            best_ub, best_lam = ub, lam
        if b[np.arange(L), k].sum() <= cap:
            hi = lam
            val = float(s[np.arange(L), k].sum())
            if val > best_val:
                best_val, best_primal = val, k
        else:
            lo = lam
    ub, k = inner(hi)
    if ub < best_ub:
        best_ub, best_lam = ub, hi
    if b[np.arange(L), k].sum() <= cap and float(s[np.arange(L), k].sum()) > best_val:
        best_primal = k
    return done(best_primal)


def greedy(scores: np.ndarray, bits: np.ndarray, cap: int) -> np.ndarray | None:
    """A feasible (≤ cap) assignment: the Lagrangian primal, then greedily upgraded with the
    leftover bits (best score gain per extra bit first). None when even that fails."""
    _, k = lagrangian(scores, bits, cap)
    if k is None:
        return None
    s = np.where(np.isfinite(scores), scores, -np.inf)
    b = np.asarray(bits, dtype=np.int64)
    k = k.copy()
    L = len(k)
    left = cap - int(b[np.arange(L), k].sum())
    while True:
        gain = s - s[np.arange(L), k][:, None]
        extra = b - b[np.arange(L), k][:, None]
        ok = (gain > 0) & (extra <= left)
        if not ok.any():
            return k
        ratio = np.where(ok, gain / np.maximum(extra, 1), -np.inf)
        l, j = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        left -= int(extra[l, j])
        k[l] = j


def brute_force(scores: np.ndarray, bits: np.ndarray, n_total: int, budget: float,
                tolerance: float | None = None) -> tuple[float, np.ndarray] | None:
    """Exhaustive optimum (tiny instances only): (objective, choice) or None if infeasible."""
    import itertools

    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(bits, dtype=np.int64)
    cap = cap_bits(budget, n_total)
    floor_ = None if tolerance is None else floor_bits(budget - tolerance, n_total)
    best: tuple[float, np.ndarray] | None = None
    L, K = s.shape
    for combo in itertools.product(range(K), repeat=L):
        c = np.array(combo)
        vals = s[np.arange(L), c]
        if not np.isfinite(vals).all():
            continue
        total = int(b[np.arange(L), c].sum())
        if total > cap or (floor_ is not None and total < floor_):
            continue
        v = float(vals.sum())
        if best is None or v > best[0]:
            best = (v, c)
    return best


# ------------------------------------------------------------------------------------------------
# named-layer front end
# ------------------------------------------------------------------------------------------------
def _followers(bank, layers: Sequence[str]) -> dict[str, str]:
    """{layer: the first layer of its tied group} for listed layers that only alias another listed
    layer's weight (quant.bank.Bank.tied; banks without ties have none)."""
    listed = set(layers)
    out = {}
    for group in getattr(bank, "tied", None) or []:
        inside = [l for l in group if l in listed]
        for l in inside[1:]:
            out[l] = inside[0]
    return out


def bits_matrix(bank, layers: Sequence[str], options: Sequence[str]) -> tuple[np.ndarray, int]:
    """(L, K) stored bits of every (layer, option) from a Bank, and N = Σ n_weights.

    A tied group's shared tensor counts once: its later layers get 0 bits and no weights here."""
    follow = _followers(bank, layers)
    b = np.array([[0 if l in follow else bank.quantized_bits(l, o) for o in options] for l in layers],
                 dtype=np.int64)
    return b, int(sum(bank.layers[l].n_weights for l in layers if l not in follow))


def solve_named(scores: Mapping[tuple[str, str], float], bank, budget: float,
                tolerance: float | None = None, *, layers: Sequence[str] | None = None,
                options: Sequence[str] | None = None, time_limit_s: float = 10.0, workers: int = 1,
                resolution: int = DEFAULT_RESOLUTION, what: str = "", anchor: Mapping[str, str] | None = None,
                max_changes: int | None = None) -> tuple[dict[str, str], IPResult]:
    """The IP over named layers/options; a (layer, option) pair missing from `scores` is not
    allowed. `anchor` ({layer: option}) and `max_changes`: the trust region of `solve`.
    Layers sharing one weight tensor (the bank's tied groups) are one IP variable: their scores
    add up, the shared tensor's bits count once, and every layer of the group gets its option
    (`result.choice` indexes the groups' first layers, in `layers` order).
    Returns ({layer: option}, result)."""
    layers = list(layers if layers is not None else bank.layer_names)
    options = list(options if options is not None else bank.options)
    s = np.array([[scores.get((l, o), np.nan) for o in options] for l in layers], dtype=np.float64)
    missing = [l for l, row in zip(layers, s) if not np.isfinite(row).any()]
    if missing:
        raise QsensError(f"{len(missing)} layer(s) have no score for any option{f' ({what})' if what else ''} "
                         f"(first: {missing[0]}): the score table does not match the bank")
    b, n = bits_matrix(bank, layers, options)
    follow = _followers(bank, layers)
    if follow:
        index = {l: i for i, l in enumerate(layers)}
        for l, lead in follow.items():
            s[index[lead]] += s[index[l]]  # NaN (not allowed) for either layer → not allowed for both
        keep = [i for i, l in enumerate(layers) if l not in follow]
        units, s, b = [layers[i] for i in keep], s[keep], b[keep]
        if not np.isfinite(s).any(axis=1).all():
            raise QsensError(f"tied layers have no option scored for all of them{f' ({what})' if what else ''}")
    else:
        units = layers
    anchor_idx = None if anchor is None else [options.index(anchor[l]) for l in units]
    res = solve(s, b, n, budget, tolerance, time_limit_s=time_limit_s, workers=workers,
                resolution=resolution, what=what, anchor=anchor_idx, max_changes=max_changes)
    chosen = {l: options[k] for l, k in zip(units, res.choice)}
    return {l: chosen[follow.get(l, l)] for l in layers}, res
