"""Budget lists (`3.0:4.0:0.25`), Pareto families and the Pareto front of measured points."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from search.ip import BudgetError, parse_budget


def parse_budgets(text: str) -> list[float]:
    """`A:B:STEP` (inclusive of B within STEP/1000) or a comma list `3.25,3.5` → budgets."""
    text = str(text).strip()
    if ":" not in text:
        return [parse_budget(t) for t in text.split(",") if t.strip()] or _bad(text)
    parts = text.split(":")
    if len(parts) != 3:
        _bad(text)
    a, b, step = (parse_budget(x) if i < 2 else _step(x, text) for i, x in enumerate(parts))
    if b < a:
        raise BudgetError(f"budget range {text!r}: the end {b:g} is below the start {a:g}")
    count = int(math.floor((b - a) / step + 1e-6)) + 1
    if count > 1000:
        raise BudgetError(f"budget range {text!r} gives {count} budgets (at most 1000)")
    return [round(a + i * step, 10) for i in range(count)]


def _step(x: str, text: str) -> float:
    try:
        step = float(x)
    except ValueError:
        _bad(text)
    if not math.isfinite(step) or step <= 0:
        raise BudgetError(f"budget range {text!r}: STEP must be a positive number")
    return step


def _bad(text: str):
    raise BudgetError(f"budgets {text!r}: expected A:B:STEP (e.g. 3.0:4.0:0.25) or a comma list (3.25,3.5)")


def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower bits and lower FID are better), by bits."""
    pts = list(points)
    order = sorted(range(len(pts)), key=lambda i: (pts[i][0], pts[i][1]))
    front, best = [], math.inf
    for i in order:
        if pts[i][1] < best:
            front.append(i)
            best = pts[i][1]
    return front


def budget_tag(budget: float) -> str:
    """File-name form of a budget: 3.5 → "3.5", 3.25 → "3.25"."""
    return f"{budget:g}"


def family(ctx, strategy: str, budgets: Sequence[float]):
    """One search result per budget (a Pareto family of configs)."""
    from search.strategies import run_strategy

    return [run_strategy(ctx, strategy, b) for b in budgets]
