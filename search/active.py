"""Active learning for the sensitivity predictor: search with it, measure what it picked, retrain.

The predictor is trained on random configs, but the search asks it about the corner of config
space it believes best, where it has seen few configs and errs most. Each round measures the
configs the search lands on and feeds them back:

    round k = 0 .. R                                      (R = ActiveParams.rounds)
      P_k   ensemble trained on the random rows + the active rows of rounds < k
            (k = 0: random rows only, from scratch with `train:`; k > 0: warm start from
            P_{k-1}'s members for `epochs` epochs, or from scratch when warm_start is off)
      search, per budget in increasing order: the `predictor` strategy with P_k, no real
            selection, the previous budget's pick as incumbent -> its candidates
      pick  the `per_budget` best-predicted candidates not yet in the cache, then the
            `disagreement` ones of largest member spread (std over the ensemble) among the rest;
            the search's own choice is always measured (ties broken by config id)
      score each for real on the cache's seed set; rows `provenance = active-r{k}` are appended
            to the union cache (failures too, as status failed)
      row k of the learning curve: P_k's pick per budget (predicted vs measured FID), P_k's test
            Spearman, rows trained on, seconds

So R rounds retrain R times and row k always describes P_k (row 0: before any active row).
Active rows enter every fold's train part and never the test split or a val part
(`predictor.dataset.split_with_provenance`): the test split is that of round 0, random
configs only, and test Spearman compares like with like across rounds.

Layout of `out_dir` (e.g. data/active/digits):

    quant_cache.parquet   the union: the random cache's rows unchanged + the active rows
    predictor/            the latest ensemble (checkpoint + sensitivity tables)
    rounds/r{k}/          P_k, the cache snapshot it was trained on (cache.parquet) and round.json
    rounds.json           {digest, inputs, rounds: [learning-curve rows]}
    learning_curve.png    measured FID of the pick per budget and test Spearman, vs round
    stale/<digest>/       an earlier run's files, moved (never deleted) when the inputs changed

Resume: the run is keyed by a digest of the random cache, bank.json, graph, probe and the
parameters that shape the rounds (`active:` but `rounds`, `train:`, the `search:` fields the
predictor search reads, budgets, image seed and count); with the same digest a re-run skips the finished rounds (raising
`rounds` continues), reuses a trained round predictor, and never scores a config twice (an
interrupted round finds its rows in the union cache). Another digest moves the old files to
stale/ and starts over.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.params import defaults_from
from quant.config import QuantConfig
from core.errors import QsensError
from core.provenance import content_digest

FORMAT = "qsens-active"
WORKER = "active"
# The SearchParams fields the predictor search reads without real selection (search.trust_region;
# relinearise_rounds comes from ActiveParams): only these key the rounds, so that changing another
# strategy's knob does not send finished rounds to stale/.
SEARCH_FIELDS_USED = ("tolerance", "time_limit_s", "trust_region", "cached_starts")


@dataclass(frozen=True)
@defaults_from("active")
class ActiveParams:
    """The `active:` section of params.yaml."""

    rounds: int  # retrain rounds; rows 0..rounds of the learning curve
    per_budget: int  # best-predicted unmeasured candidates scored per budget and round
    disagreement: int  # + candidates with the largest ensemble std among the rest
    relinearise_rounds: int  # the predictor search's trust-region rounds while learning
    warm_start: bool  # round k > 0 starts from round k-1's members
    epochs: int  # training epochs of a warm-started round
    seed: int  # reserved for randomised picks; part of the digest
    fid_images: int | None  # multi-fidelity: the picks' FID at this many images (the expensive
    # label, where the predictor is unsure and near the budgets); null = score.images like the cache

    def __post_init__(self) -> None:
        for name in ("rounds", "per_budget", "disagreement", "relinearise_rounds"):
            if getattr(self, name) < 0:
                raise QsensError(f"active.{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs < 1:
            raise QsensError(f"active.epochs must be >= 1, got {self.epochs}")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "ActiveParams":
        """The `active:` section of a params file (QsensError when malformed)."""
        from search.params import read_section

        return read_section(ActiveParams, path, "active")


# -------------------------------------------------------------------------------------------------
# provenance and digests


def provenance_of(round_: int) -> str:
    """The provenance tag of configs picked in active-learning round `round_`: `active-rK`."""
    return f"active-r{round_}"


def round_of(provenance: str | None) -> int | None:
    """"active-r3" -> 3; "random" / None / anything else -> None."""
    if isinstance(provenance, str) and provenance.startswith("active-r") and provenance[8:].isdigit():
        return int(provenance[8:])
    return None


def run_inputs(ctx: Any, budgets: Sequence[float], ap: ActiveParams, *, random_cache: Path, graph: Path,
               bank_dir: Path, probe: Path | None, train_params: Any, image_seed: int, images: int
               ) -> dict[str, Any]:
    """What the rounds depend on (the digest's input): files by content, parameters by value.
    `rounds` is left out so that raising it continues a finished run."""
    search = {k: getattr(ctx.params, k) for k in SEARCH_FIELDS_USED}
    return {
        "model": ctx.model,
        "random_cache": content_digest([Path(random_cache)]),
        "bank": content_digest([Path(bank_dir) / "bank.json"]),
        "graph": content_digest([Path(graph)]),
        "probe": content_digest([None if probe is None else Path(probe)]),
        "active": {k: v for k, v in asdict(ap).items() if k != "rounds"},
        "train": asdict(train_params),
        "search": search,
        "budgets": [float(b) for b in budgets],
        "image_seed": int(image_seed), "images": int(images),
    }


def current_run(out_dir: Path, random_cache: Path, bank_dir: Path) -> dict | None:
    """`out_dir/rounds.json` when that active-learning run was made from this random cache and
    bank (by content) and its predictor is there; else None (absent, or made from other inputs)."""
    path = Path(out_dir) / "rounds.json"
    if not path.is_file() or not (Path(out_dir) / "predictor" / "ensemble.json").is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # gone, or damaged content: not this run
        return None  # any other OS error (EIO, EACCES...) is the machine's: it propagates, named
    inputs = state.get("inputs") or {} if isinstance(state, dict) else {}
    if inputs.get("random_cache") != content_digest([Path(random_cache)]) \
            or inputs.get("bank") != content_digest([Path(bank_dir) / "bank.json"]):
        return None
    return state


def _digest(inputs: dict[str, Any]) -> str:
    from core.provenance import job_key

    return job_key(**inputs)


# -------------------------------------------------------------------------------------------------
# picking the configs to measure


@dataclass
class Pick:
    """One config picked in an active round, why (chosen | predicted | disagreement), and its
    predicted FID mean and member std.
    """

    config: QuantConfig
    why: str  # chosen (the search's result) | predicted (best predicted) | disagreement (largest std)
    predicted_fid: float
    predicted_std: float


def pick_candidates(candidates: Sequence[QuantConfig], member_preds: np.ndarray, measured: set[str],
                    per_budget: int, disagreement: int, chosen: QuantConfig | None = None) -> list[Pick]:
    """Which candidates to score for real.

    `member_preds` (M, B): each ensemble member's predicted FID of `candidates` (B configs).
    Duplicates (by config id) count once; ids in `measured` are never picked. Returns, in order:
    `chosen` if unmeasured (why "chosen"), then the `per_budget` unmeasured candidates of lowest
    mean predicted FID ("predicted"; `chosen` counts among them), then the `disagreement` ones of
    largest member std among the remaining unmeasured ("disagreement"). Ties: config id."""
    member_preds = np.asarray(member_preds, dtype=np.float64).reshape(-1, len(candidates))
    mean, std = member_preds.mean(0), member_preds.std(0)
    stats: dict[str, tuple[QuantConfig, float, float]] = {}
    for c, m, s in zip(candidates, mean, std):
        stats.setdefault(c.config_id, (c, float(m), float(s)))
    open_ids = [i for i in stats if i not in measured]
    by_pred = sorted(open_ids, key=lambda i: (stats[i][1], i))
    picks: list[Pick] = []
    taken: set[str] = set()
    if chosen is not None and chosen.config_id not in measured:
        c, m, s = stats.get(chosen.config_id, (chosen, math.nan, math.nan))
        picks.append(Pick(c, "chosen", m, s))
        taken.add(chosen.config_id)
    for i in by_pred:
        if sum(p.why in ("chosen", "predicted") for p in picks) >= per_budget:
            break
        if i not in taken:
            picks.append(Pick(stats[i][0], "predicted", stats[i][1], stats[i][2]))
            taken.add(i)
    rest = sorted((i for i in open_ids if i not in taken), key=lambda i: (-stats[i][2], i))
    for i in rest[:disagreement]:
        picks.append(Pick(stats[i][0], "disagreement", stats[i][1], stats[i][2]))
    return picks


# -------------------------------------------------------------------------------------------------
# cache rows


def cache_row(config: QuantConfig, bank: Any, score: dict[str, Any], image_seed: int, round_: int) -> dict:
    """One quant_cache row (sampling.cache.CACHE_SCHEMA) for an active-learning measurement, laid
    out as `sampling.worker.score_record` lays out a sampler's: accounting from `bank.summarize`,
    index -1 and sample_seed null (not from the random stream), job_key null, worker "active".
    `score` is `Evaluator.score`'s dict; status other than ok keeps fid/content null."""
    from sampling.cache import normalise_record
    from sampling.paired import PAIRED_METRICS
    from sampling.worker import code_version

    stats = bank.summarize(config)
    ok = score.get("status") == "ok" and score.get("fid") is not None and math.isfinite(float(score["fid"]))
    record = {
        "config_id": config.config_id, "model": config.model, "index": -1,
        "options": config.canonical_options(), "act_bits": config.act_bits,
        "avg_bits": float(stats.avg_bits), "quantized_bytes": float(stats.quantized_bytes),
        "quantized_error": float(stats.quantized_error), "bops": float(stats.bops),
        "fid": float(score["fid"]) if ok else None,
        "content": float(score["content"]) if ok and score.get("content") is not None else None,
        "n_images": int(score.get("n_images") or 0), "image_seed": int(image_seed), "sample_seed": None,
        "status": "ok" if ok else "failed",
        "reason": "" if ok else (score.get("reason") or "non-finite fid"),
        "attempts": 1, "seconds": round(float(score.get("seconds") or 0.0), 4), "worker": WORKER,
        "code_version": code_version(), "job_key": None, "provenance": provenance_of(round_),
        **({k: score.get(k) for k in PAIRED_METRICS + ("psnr",)} if ok else {}),
        "images_generated": score.get("images_generated"),
    }
    return normalise_record(record)


def _score(real: Any, config: QuantConfig, images: int, image_seed: int,
           fid_images: int | None = None) -> dict[str, Any]:
    """Evaluator.score, with an exception turned into a failed score (recorded, never dropped)."""
    t0 = time.perf_counter()
    try:
        # paired too: the predictor's label (train.label) may be a paired score
        return real.score(config, images, image_seed, paired=True, fid_images=fid_images)
    except Exception as exc:  # noqa: BLE001 -- any failure of one config is a failed row
        return {"fid": None, "content": None, "status": "failed", "n_images": images,
                "reason": f"{type(exc).__name__}: {exc}"[:500], "seconds": time.perf_counter() - t0}


class UnionCache:
    """The union quant_cache in memory (pyarrow) and on disk; every append rewrites it atomically."""

    def __init__(self, path: Path, table: Any):
        self.path, self.table = Path(path), table

    @staticmethod
    def create(random_cache: Path, path: Path) -> "UnionCache":
        """The random cache's rows, unchanged, with provenance "random" where it is null."""
        from sampling.cache import read_cache, read_cache_table, write_cache

        read_cache(random_cache)  # validates (CacheError names what is wrong)
        table = read_cache_table(random_cache)  # CACHE_SCHEMA exactly, provenance filled
        write_cache(table, path)
        return UnionCache(path, table)

    @staticmethod
    def open(path: Path) -> "UnionCache":
        """Open the union cache at `path` (validated by `read_cache`: QsensError when malformed)."""
        from sampling.cache import read_cache, read_cache_table

        read_cache(path)
        return UnionCache(path, read_cache_table(path))

    def provenance(self) -> list[str]:
        """Every row's provenance (`random`, `active-rK`, ...), in row order."""
        return self.table.column("provenance").to_pylist()

    def ids(self) -> list[str]:
        """Every row's config id, in row order."""
        return self.table.column("config_id").to_pylist()

    def row(self, config_id: str) -> dict | None:
        """The row of `config_id` as a dict, None when it is not in the cache."""
        ids = self.ids()
        if config_id not in ids:
            return None
        return self.table.slice(ids.index(config_id), 1).to_pylist()[0]

    def before_round(self, k: int) -> Any:
        """The rows P_k learns from: every non-active row and the active rows of rounds < k."""
        import pyarrow as pa

        keep = [(r := round_of(p)) is None or r < k for p in self.provenance()]
        return self.table.filter(pa.array(keep, pa.bool_()))

    def append(self, row: dict) -> None:
        """Append one row and rewrite the cache atomically; QsensError when its config id is already
        there."""
        import pyarrow as pa

        from sampling.cache import CACHE_SCHEMA, write_cache

        if row["config_id"] in set(self.ids()):
            raise QsensError(f"{self.path}: config {row['config_id']} is already in the union cache")
        self.table = pa.concat_tables([self.table, pa.Table.from_pylist([row], schema=CACHE_SCHEMA)])
        write_cache(self.table, self.path)


# -------------------------------------------------------------------------------------------------
# one round's predictor


def _round_dir(out_dir: Path, k: int) -> Path:
    return out_dir / "rounds" / f"r{k}"


def _build_template(graph: Path, bank_dir: Path, probe: Path | None, train_params: Any) -> Any:
    """As `qsens predictor train` builds it: the probe only when the train params need it."""
    from graphs.io import read_graph
    from predictor.dataset import GraphTemplate
    from predictor.probe import Probe
    from quant.bank import Bank

    bank = Bank.load(bank_dir)
    use_probe = probe is not None and train_params.needs_probe
    if train_params.needs_probe and probe is None:
        raise QsensError("train.probe / the probe baselines need a probe file: pass probe=... "
                         "(run `qsens predictor probe`)")
    return GraphTemplate.build(read_graph(graph), bank, model=bank.model,
                               probe=Probe.load(probe) if use_probe else None)


def reusable_initial(initial: Path | None, train_params: Any, config_ids: set[str]) -> dict | None:
    """The train stage's predictor as P_0, when it was trained with exactly `train_params` on
    exactly the configs `config_ids` (its predictions.parquet lists every config it split);
    training is deterministic, so retraining would give the same members. Its ensemble.json as a
    dict, else None."""
    import pandas as pd

    from core.jsonio import read_json

    if initial is None or not (Path(initial) / "ensemble.json").is_file() \
            or not (Path(initial) / "predictions.parquet").is_file():
        return None
    meta = read_json(Path(initial) / "ensemble.json", "a qsens predictor checkpoint")
    same = json.loads(json.dumps(asdict(train_params), default=list)) == json.loads(json.dumps(meta.get("params"), default=list))
    seen = set(pd.read_parquet(Path(initial) / "predictions.parquet", columns=["config_id"])["config_id"])
    return meta if same and seen == set(config_ids) else None


def train_round(k: int, union: UnionCache, template: Any, train_params: Any, ap: ActiveParams,
                out_dir: Path, log: Callable[[str], None], initial: Path | None = None,
                warm_from: Path | None = None) -> dict[str, Any]:
    """P_k into rounds/r{k}/ (reused when already there) -> its round.json dict.

    Trains on `union.before_round(k)` (written as rounds/r{k}/cache.parquet); k > 0 with
    warm_start: members start from rounds/r{k-1}/ and train `ap.epochs` epochs. k = 0 copies
    `initial` (the train stage's predictor) instead when `reusable_initial` accepts it.
    warm_from: another model's predictor dir (`qsens transfer`): round 0 starts its members from
    that ensemble's (same architecture and layers) and trains `ap.epochs` epochs."""
    from predictor.api import Ensemble
    from predictor.dataset import configs_from_cache
    from predictor.sensitivity import write_tables
    from predictor.train import MemberInit, save_result, train_ensemble
    from core.jsonio import read_json, write_json
    from sampling.cache import read_cache, write_cache

    final = _round_dir(out_dir, k)
    if (final / "round.json").is_file():
        return read_json(final / "round.json", "an active round record")
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():  # our own half-written round from an interrupted run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    snapshot = union.before_round(k)
    if k == 0 and warm_from is None:
        ids = set(configs_from_cache(read_cache_table(snapshot), template, label=train_params.label,
                                 label_hifi=train_params.label_hifi, hifi_min_images=train_params.hifi_min_images).config_ids) if template is not None else None
        meta = reusable_initial(initial, train_params, ids) if ids is not None else None
        if meta is not None:
            shutil.rmtree(tmp)
            shutil.copytree(initial, tmp)
            write_cache(snapshot, tmp / "cache.parquet")
            ens_metrics = meta["metrics"]["ensemble"]
            record = {"round": 0, "n_configs": len(ids), "n_active": 0,
                      "n_test": ((meta["metrics"].get("info") or {}).get("n_test")),
                      "test_spearman": _clean(ens_metrics.get("spearman")), "warm_start": False,
                      "epochs": train_params.epochs, "seconds": round(time.perf_counter() - t0, 2),
                      "reused": str(initial)}
            write_json(tmp / "round.json", record)
            tmp.replace(final)
            log(f"active round 0: the train stage's predictor ({initial}) is P_0 (same params and rows)")
            return record
    write_cache(snapshot, tmp / "cache.parquet")
    data = configs_from_cache(read_cache(tmp / "cache.parquet", ok_only=True), template, label=train_params.label,
                                 label_hifi=train_params.label_hifi, hifi_min_images=train_params.hifi_min_images)
    params, init = train_params, None
    if (k > 0 and ap.warm_start) or (k == 0 and warm_from is not None):
        prev = Ensemble.load(_round_dir(out_dir, k - 1) if k > 0 else Path(warm_from))
        if len(prev.members) != train_params.folds:
            raise QsensError(f"{warm_from}: {len(prev.members)} members, train.folds is {train_params.folds}")
        init = [MemberInit({n: t.clone() for n, t in m.state_dict().items()}, sc)
                for m, sc in zip(prev.members, prev.scalers)]
        params = replace(train_params, epochs=ap.epochs)
    log(f"active round {k}: training on {len(data)} configs ({int((~data.is_random()).sum())} active)"
        + (f", warm start, {params.epochs} epochs" if init is not None else ""))
    result = train_ensemble(template, data, params, progress=False, init=init)
    save_result(result, tmp)
    write_tables(Ensemble.load(tmp), tmp)
    record = {"round": k, "n_configs": len(data), "n_active": result.metrics["info"]["n_active"],
              "n_test": result.metrics["info"]["n_test"],
              "test_spearman": _clean(result.metrics["ensemble"]["spearman"]),
              "warm_start": init is not None, "epochs": params.epochs,
              "seconds": round(time.perf_counter() - t0, 2)}
    write_json(tmp / "round.json", record)
    tmp.replace(final)
    return record


def read_cache_table(table: Any) -> Any:
    """A pyarrow cache table as read_cache's DataFrame of ok rows."""
    from sampling.cache import fill_provenance

    df = fill_provenance(table).to_pandas()
    return df[df["status"] == "ok"].reset_index(drop=True)


def _fmt3(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _publish_predictor(src: Path, out_dir: Path) -> None:
    """Copy a round's checkpoint (not its cache snapshot) to out_dir/predictor/."""
    dst = out_dir / "predictor"
    tmp = out_dir / ".predictor.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("cache.parquet", "round.json"))
    if dst.exists():
        shutil.rmtree(dst)  # a copy of an earlier round's rounds/r{k}/, which stays
    tmp.replace(dst)


# -------------------------------------------------------------------------------------------------
# the run


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _search_context(ctx: Any, predictor_dir: Path, cache_path: Path, ap: ActiveParams) -> Any:
    """A copy of `ctx` that searches with the round's predictor and cache, without real selection."""
    names = {f.name for f in fields(ctx)}
    # a fresh memo: the original context's (and an earlier round's) memoised results are not this round's
    change = {"selector_factory": None, "_selector": None, "_ensemble": None, "ensemble_factory": None,
              "_memo": {},
              "predictor_dir": Path(predictor_dir), "cache_path": Path(cache_path),
              "params": replace(ctx.params, relinearise_rounds=ap.relinearise_rounds)}
    return replace(ctx, **{k: v for k, v in change.items() if k in names})


def _search(sub: Any, budget: float, incumbent: QuantConfig | None) -> Any:
    from search.strategies import run_strategy

    return run_strategy(sub, "predictor", budget, incumbent)


def _candidates(result: Any) -> list[QuantConfig]:
    """Every config the predictor search evaluated (`SearchResult.candidates`), its result included."""
    cands = list(result.candidates or [])
    if all(c.config_id != result.config.config_id for c in cands):
        cands.insert(0, result.config)
    return cands


def _prepare_out_dir(out_dir: Path, digest: str, log: Callable[[str], None]) -> list[dict]:
    """The finished rows of a run with this digest; any other run's files go to stale/<digest>/."""
    from core.jsonio import read_json

    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / "rounds.json"
    if state.is_file():
        try:
            old = read_json(state, "an active-learning record")
        except QsensError as exc:
            print(f"warning: {exc}; its rounds are redone", file=sys.stderr)
            old = {}
        if (old.get("format") == FORMAT and old.get("digest") == digest
                and (out_dir / "quant_cache.parquet").is_file()):
            rows = old.get("rounds") if isinstance(old.get("rounds"), list) else []
            # rounds build on each other: the first damaged one and every later one are redone
            for i, r in enumerate(rows):
                why = _round_problem(r, i)
                if why is not None:
                    print(f"warning: {state}: round {i} {why}; rounds {i}..{len(rows) - 1} are redone",
                          file=sys.stderr)
                    return rows[:i]
            return list(rows)
    present = [p for p in out_dir.iterdir() if p.name != "stale"]
    if present:
        old_digest = "unknown"
        if state.is_file():
            try:
                record = json.loads(state.read_text())
                old_digest = str(record.get("digest") or "unknown") if isinstance(record, dict) else "unknown"
            except (OSError, ValueError):
                pass
        dest = out_dir / "stale" / old_digest
        n = 1
        while dest.exists():
            n += 1
            dest = out_dir / "stale" / f"{old_digest}-{n}"
        dest.mkdir(parents=True)
        for p in present:
            shutil.move(str(p), str(dest / p.name))
        log(f"active: inputs changed; the previous run's files moved to {dest}")
    return []


def _round_problem(row: Any, i: int) -> str | None:
    """Why learning-curve row `i` read back from rounds.json cannot be reused, or None: its round
    number, and per budget a finite budget, FIDs that are null or finite >= 0 (`row_problem`)."""
    from core.jsonio import row_problem

    why = row_problem(row, required=("round", "budgets"), nonneg=("n_active", "n_configs", "scored", "failed"),
                      finite=("test_spearman",))
    if why is not None:
        return why
    if row["round"] != i:
        return f"is numbered {row['round']!r}"
    if not isinstance(row["budgets"], list):
        return "budgets is not a list"
    for e in row["budgets"]:
        why = row_problem(e, required=("budget", "config_id"), nonneg=("measured_fid", "predicted_std", "avg_bits"),
                          finite=("budget", "predicted_fid"), text=("config_id",))
        if why is None and e["budget"] is None:
            why = "no budget"
        for pick in (e.get("picks") or []) if why is None and isinstance(e.get("picks"), list) else []:
            why = why or row_problem(pick, nonneg=("fid", "predicted_std"), finite=("predicted_fid",))
        if why is not None:
            return f"budget entry: {why}"
    return None


def run_active(ctx: Any, real: Any, budgets: Sequence[float], ap: ActiveParams, *, random_cache: Path,
               graph: Path, bank_dir: Path, probe: Path | None, train_params: Any, image_seed: int,
               images: int, out_dir: Path, log: Callable[[str], None] = print,
               initial: Path | None = None, warm_from: Path | None = None, template: Any = None) -> list[dict]:
    """Run (or resume) the active-learning rounds (module docstring) -> the learning-curve rows.
    initial: the train stage's predictor dir, reused as P_0 when trained with the same params.

    ctx: a search SearchContext (bank, search params); real: a sampling.evaluator.Evaluator;
    budgets: avg bits (overhead included), searched in increasing order; random_cache: the random
    quant_cache; graph / bank_dir / probe: what `qsens predictor train` reads; train_params:
    predictor.train.TrainParams; image_seed / images: the seed set and image count of the
    random cache's scores (`score.seed`, `score.images`), so active rows compare with random
    ones. Row k: {round, n_active, n_configs, budgets: [{budget, config_id, avg_bits,
    predicted_fid, predicted_std, measured_fid, measured_status, measured_before, picks: [...]}],
    test_spearman, scored, failed, seconds: {train, search, score}}.
    warm_from / template: `search.transfer` (round 0 warm-started from another model's predictor;
    the template built by the caller, e.g. with that predictor's probe rows).
    Raises QsensError for unusable inputs (missing files, a budget outside the bank's range...)."""
    from core.jsonio import write_json

    out_dir, random_cache = Path(out_dir), Path(random_cache)
    for path, what in ((random_cache, "random quant_cache"), (Path(graph), "graph"),
                       (Path(bank_dir) / "bank.json", "bank")):
        if not path.exists():
            raise QsensError(f"{path}: no {what} (active learning starts from the trained pipeline's inputs)")
    if probe is not None and not Path(probe).exists():
        raise QsensError(f"{probe}: no probe file")
    budgets = sorted({float(b) for b in budgets})
    if not budgets:
        raise QsensError("active learning needs at least one budget")
    inputs = run_inputs(ctx, budgets, ap, random_cache=random_cache, graph=graph, bank_dir=bank_dir,
                        probe=probe, train_params=train_params, image_seed=image_seed, images=images)
    if warm_from is not None:
        inputs["warm_from"] = content_digest([Path(warm_from) / "ensemble.json"])
    digest = _digest(inputs)
    rows = _prepare_out_dir(out_dir, digest, log)
    union_path = out_dir / "quant_cache.parquet"
    union = UnionCache.open(union_path) if union_path.is_file() else UnionCache.create(random_cache, union_path)

    def save_state() -> None:
        write_json(out_dir / "rounds.json", _clean({"format": FORMAT, "digest": digest, "inputs": inputs,
                                                    "rounds": rows}))
        plot_learning_curve(rows, out_dir / "learning_curve.png")

    if len(rows) > ap.rounds:
        log(f"active: rounds 0..{len(rows) - 1} already finished in {out_dir}")
    for k in range(len(rows), ap.rounds + 1):
        if template is None and not (_round_dir(out_dir, k) / "round.json").is_file():
            template = _build_template(Path(graph), Path(bank_dir), probe, train_params)
        rec = train_round(k, union, template, train_params, ap, out_dir, log, initial=initial,
                          warm_from=warm_from)
        rdir = _round_dir(out_dir, k)
        _publish_predictor(rdir, out_dir)
        # search: every budget before any scoring, on the snapshot P_k was trained on, so that an
        # interrupted round searches exactly as the first attempt did
        t0 = time.perf_counter()
        sub = _search_context(ctx, rdir, rdir / "cache.parquet", ap)
        ens = sub.ensemble()
        if ens is None:
            raise QsensError(f"{rdir}: the round's predictor did not load")
        measured = set(union.before_round(k).column("config_id").to_pylist())
        plans, incumbent = [], None
        for b in budgets:
            result = _search(sub, b, incumbent)
            cands = _candidates(result)
            picks = pick_candidates(cands, ens.predict_members(cands), measured, ap.per_budget,
                                    ap.disagreement, chosen=result.config)
            measured |= {p.config.config_id for p in picks}  # a later budget does not pick it again
            chosen_pred = ens.predict_members([result.config])[:, 0]
            plans.append((b, result.config, float(chosen_pred.mean()), float(chosen_pred.std()), len(cands), picks))
            incumbent = result.config
        t_search = time.perf_counter() - t0
        # score (rows of an interrupted attempt at this round are reused, never scored again)
        t0 = time.perf_counter()
        scored = 0
        for b, _, _, _, _, picks in plans:
            for p in picks:
                if union.row(p.config.config_id) is not None:
                    continue
                row = cache_row(p.config, ctx.bank, _score(real, p.config, images, image_seed, ap.fid_images),
                               image_seed, k)
                union.append(row)
                scored += 1
                why = {"chosen": "the search's pick", "predicted": "best predicted",
                       "disagreement": "members disagree"}.get(p.why, p.why)
                log(f"active round {k}, budget {b:g}: {p.config.config_id} ({why}) predicted "
                    f"{p.predicted_fid:.3f} ± {p.predicted_std:.3f}, measured "
                    + (f"{row['fid']:.3f}" if row["status"] == "ok" else f"failed ({row['reason']})"))
        t_score = time.perf_counter() - t0
        failed = sum((union.row(p.config.config_id) or {}).get("status") != "ok" for pl in plans for p in pl[5])
        per_budget = []
        for b, cfg, pred, std, n_cands, picks in plans:
            got = union.row(cfg.config_id)
            per_budget.append({
                "budget": b, "config_id": cfg.config_id, "avg_bits": cfg.avg_bits,
                "predicted_fid": pred, "predicted_std": std,
                "measured_fid": None if got is None else got["fid"],
                "measured_status": None if got is None else got["status"],
                "measured_before": got is not None and (round_of(got["provenance"]) is None
                                                        or round_of(got["provenance"]) < k),
                "candidates": n_cands,
                "picks": [{"config_id": p.config.config_id, "why": p.why, "predicted_fid": p.predicted_fid,
                           "predicted_std": p.predicted_std, "fid": (union.row(p.config.config_id) or {}).get("fid")}
                          for p in picks]})
        rows.append(_clean({"round": k, "n_active": rec["n_active"], "n_configs": rec["n_configs"],
                            "budgets": per_budget, "test_spearman": rec["test_spearman"],
                            "scored": sum(len(pl[5]) for pl in plans), "failed": failed,
                            "seconds": {"train": rec["seconds"], "search": round(t_search, 2),
                                        "score": round(t_score, 2)}}))
        save_state()
        log(f"active round {k}: test Spearman {_fmt3(rec['test_spearman'])}; the search's pick per budget "
            + ", ".join(f"{e['budget']:g}: {e['config_id']} measured {_fmt3(e['measured_fid'])}"
                        + (" (before)" if e["measured_before"] else "") for e in per_budget)
            + f"; {scored} scored now, {failed} of the round's picks failed")
    if not (out_dir / "learning_curve.png").is_file() or not (out_dir / "rounds.json").is_file():
        save_state()
    # fewer rounds asked than an earlier run finished: predictor/ is P_rounds, the rows stop there
    # (rounds.json keeps them all; the union cache keeps the later rounds' rows)
    last = _round_dir(out_dir, ap.rounds)
    pub = out_dir / "predictor" / "ensemble.json"
    if not pub.is_file() or pub.read_bytes() != (last / "ensemble.json").read_bytes():
        _publish_predictor(last, out_dir)
    return rows[:ap.rounds + 1]


def plot_learning_curve(rows: list[dict], path: Path) -> Path:
    """Measured FID of the pick per budget vs round (left), test Spearman vs round (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    budgets = sorted({e["budget"] for r in rows for e in r["budgets"]})
    for b in budgets:
        pts = [(r["round"], e["measured_fid"], e["predicted_fid"]) for r in rows for e in r["budgets"]
               if e["budget"] == b]
        meas = [(x, y) for x, y, _ in pts if y is not None]
        line = ax.plot(*zip(*meas), marker="o", label=f"{b:g} bits measured")[0] if meas else None
        pred = [(x, p) for x, _, p in pts if p is not None]
        if pred:
            ax.plot(*zip(*pred), ls=":", marker=".", color=None if line is None else line.get_color(),
                    label=f"{b:g} bits predicted")
    ax.set_xlabel("round (0: before any active row)")
    ax.set_ylabel("FID of the search's pick")
    ax.set_title("pick per budget")
    ax.grid(alpha=0.3)
    if budgets:
        ax.legend(fontsize=7)
    sp = [(r["round"], r["test_spearman"]) for r in rows if r.get("test_spearman") is not None]
    if sp:
        ax2.plot(*zip(*sp), marker="s", color="k")
    ax2.set_xlabel("round")
    ax2.set_ylabel("Spearman (held-out random configs)")
    ax2.set_title("predictor test Spearman")
    ax2.grid(alpha=0.3)
    for a in (ax, ax2):
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
