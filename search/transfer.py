"""Sensitivity that carries over: configs for a fine-tuned checkpoint at a tenth of the labels.

A predictor trained on the base model's cache knows which layers matter; a fine-tune, a merged
LoRA or a few-step variant keeps the graph (node identities survive) and mostly the sensitivity.
`run_transfer` reuses it:

    check     the new checkpoint's graph and bank have exactly the base predictor's layers,
              options and layer sizes (a missing, added or reshaped layer is one error naming it)
    template  the new bank's per-layer errors; the base predictor's probe rows where it had them
              (the probe costs layers × options generations: re-measuring it is the spend we avoid)
    random    `random_configs` configs of the sampler's stream, scored on the new checkpoint: the
              rows the fine-tuned members are validated and tested on
    rounds    `search.active.run_active` with round 0 warm-started from the base members (every
              fold starts from the base fold's weights and target scaler) and `rounds` rounds of
              active learning: the predicted-best and most-disputed configs near each budget
              are scored on the new checkpoint and the members fine-tuned on them
    search    the final predictor's config per budget (the predictor strategy, no extra scoring)

`scratch=True` runs the same campaign without the base predictor (members trained from scratch on
the same rows, no probe readout): what the same spend buys without reuse.

Spend is counted by `sampling.evaluator.METER` (images generated, denoiser forward passes) and
written to `DIR/transfer.json` with the rows' label images.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from core.params import defaults_from
from core.errors import QsensError

FORMAT = "qsens-transfer"


@dataclass(frozen=True)
@defaults_from("transfer")
class TransferParams:
    """The `transfer:` section of params.yaml."""

    derived: tuple[str, ...]  # the DVC stage's derived checkpoints (transfer@KIND): finetune | lora | fewstep
    base: str  # the DVC stage's base model: a name under params `models:` (a digits model)
    random_configs: int  # random configs scored on the new checkpoint (val/test rows)
    sample_seed: int  # their random stream (the sampler's `random_config` seed)
    rounds: int  # active rounds after the warm start
    per_budget: int
    disagreement: int
    epochs: int  # fine-tuning epochs per round (round 0 included)
    relinearise_rounds: int

    def __post_init__(self) -> None:
        from denoisers.derived import KINDS

        bad = [k for k in self.derived if k not in KINDS]
        if bad or len(set(self.derived)) != len(self.derived):
            raise QsensError(f"transfer.derived = {list(self.derived)}: each of {', '.join(KINDS)} at most once")
        if self.random_configs < 4:
            raise QsensError(f"transfer.random_configs must be >= 4, got {self.random_configs}")
        for name in ("rounds", "per_budget", "disagreement", "relinearise_rounds"):
            if getattr(self, name) < 0:
                raise QsensError(f"transfer.{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs < 1:
            raise QsensError(f"transfer.epochs must be >= 1, got {self.epochs}")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "TransferParams":
        """The `transfer:` section of `path`, checked (QsensError for unknown keys or bad values)."""
        from search.params import read_section

        return read_section(TransferParams, path, "transfer")


def check_same_layers(base: Any, template: Any, base_dir: Path) -> None:
    """The base predictor's template (`base`) has the new template's layers, options and layer
    sizes, else one QsensError naming the first layer that is missing, added or of another size."""
    old = list(base.layer_names)
    new = list(template.layer_names)
    missing = [n for n in old if n not in set(new)]
    added = [n for n in new if n not in set(old)]
    if missing or added:
        first = (f"layer {missing[0]} is missing from the new checkpoint" if missing
                 else f"layer {added[0]} is not in the base model")
        raise QsensError(f"{base_dir}: the graphs differ ({len(missing)} missing, {len(added)} added; {first}): "
                         "a predictor transfers only between checkpoints of one architecture")
    if list(base.options) != list(template.options):
        raise QsensError(f"{base_dir}: the base predictor knows options {base.options}, the new bank "
                         f"{template.options}: build the new bank with the base bank's options")
    sizes = dict(zip(old, base.n_weights.tolist()))
    for name, n in zip(new, template.n_weights.tolist()):
        if sizes[name] != n:
            raise QsensError(f"{base_dir}: layer {name} has {int(sizes[name])} weights in the base model and "
                             f"{int(n)} in the new checkpoint (a changed shape): not transferable")


def build_template(graph: Path, bank: Any, base: Any | None) -> Any:
    """The new checkpoint's template; with `base` (an Ensemble) its probe rows are carried over."""
    from graphs.io import read_graph
    from predictor.dataset import GraphTemplate

    template = GraphTemplate.build(read_graph(graph), bank, model=bank.model)
    if base is not None and base.template.probe_shift is not None:
        # same layers and options in the same order (check_same_layers)
        template = replace(template, probe_shift=base.template.probe_shift.clone(),
                           probe_offset=base.template.probe_offset.clone())
    return template


def score_random(real: Any, bank: Any, layer_names: Sequence[str], tp: TransferParams, images: int,
                 image_seed: int, path: Path, log: Callable[[str], None]) -> Path:
    """`tp.random_configs` configs of the sampler's stream scored on the new checkpoint into the
    cache file `path` (provenance random); resumable: rows already there are not scored again
    while the scoring inputs are the same (`PATH.key`: the evaluator's identity — weights,
    generation settings, reference statistics, code — the bank, images and seeds). Rows scored
    under other inputs are moved to `stale/<key>/` and scored again, never reused."""
    import pyarrow as pa

    from core.provenance import bank_digest, job_key
    from sampling.cache import CACHE_SCHEMA, read_cache_table, write_cache
    from sampling.sampler import random_configs
    from search.active import _score, cache_row

    key = job_key(scoring=real.identity(),
                  bank=bank_digest(bank), images=int(images), image_seed=int(image_seed),
                  sample_seed=int(tp.sample_seed))
    key_file = path.with_suffix(".key")
    if path.is_file():
        old = key_file.read_text().strip() if key_file.is_file() else "unkeyed"
        if old != key:
            stale = path.parent / "stale" / old
            stale.mkdir(parents=True, exist_ok=True)
            path.replace(stale / path.name)
            log(f"transfer: the random labels in {path} were scored under other inputs (model, reference, "
                f"bank, images or seeds): moved to {stale} and scored again")
    path.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    table = read_cache_table(path) if path.is_file() else pa.Table.from_pylist([], schema=CACHE_SCHEMA)
    have = set(table.column("config_id").to_pylist())
    for i, (index, config) in enumerate(random_configs(bank.model, layer_names, bank.options, tp.sample_seed,
                                                       tp.random_configs)):
        if config.config_id in have:
            continue
        row = cache_row(config, bank, _score(real, config, images, image_seed), image_seed, 0)
        row.update(provenance="random", index=int(index), sample_seed=int(tp.sample_seed), worker="transfer")
        table = pa.concat_tables([table, pa.Table.from_pylist([row], schema=CACHE_SCHEMA)])
        write_cache(table, path)
        log(f"transfer: random config {i + 1}/{tp.random_configs} scored "
            + (f"FID {row['fid']:.3f}" if row["status"] == "ok" else f"failed ({row['reason']})"))
    return path


def run_transfer(ctx: Any, real: Any, budgets: Sequence[float], tp: TransferParams, *, base_predictor: Path | None,
                 graph: Path, bank_dir: Path, train_params: Any, image_seed: int, images: int, out_dir: Path,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The transfer campaign (module doc) into `out_dir` -> the summary written to transfer.json:
    {format, model, base_predictor, scratch, budgets, configs: {budget: {config, avg_bits,
    predicted_fid}}, label_images, labelled_configs, spend: {images, forwards}, learning_curve}.

    ctx: a search SearchContext of the new checkpoint (its bank); real: its Evaluator;
    base_predictor None: the from-scratch campaign at the same spend. Raises QsensError for
    mismatched graphs/banks or missing inputs."""
    from predictor.api import Ensemble
    from core.jsonio import write_json
    from sampling.cache import read_cache
    from sampling.evaluator import METER
    from search.active import ActiveParams, _search, _search_context, run_active

    out_dir = Path(out_dir)
    base = None
    if base_predictor is not None:
        base_predictor = Path(base_predictor)
        if not (base_predictor / "ensemble.json").is_file():
            raise QsensError(f"{base_predictor}: no base predictor (ensemble.json); train one on the base model "
                             "(`qsens predictor train`) or run the base pipeline")
        base = Ensemble.load(base_predictor)
    # the bank must be this checkpoint's before anything is scored (a failed row per config otherwise)
    ctx.bank.check_model(real.denoiser.model, where=str(bank_dir))
    template = build_template(Path(graph), ctx.bank, base)
    if base is not None:
        if base.template.model == ctx.bank.model:
            raise QsensError(f"{base_predictor} is {ctx.bank.model}'s own predictor: name the checkpoint to "
                             "transfer to (--name, --model)")
        check_same_layers(base.template, template, base_predictor)
        train_params = replace(base_params(base, train_params), baselines=[])
    else:
        train_params = replace(train_params, probe=False, baselines=[])
    n_test = int(round(train_params.test_fraction * tp.random_configs))
    if n_test < 2 or tp.random_configs - n_test < 2 * train_params.folds:
        raise QsensError(f"transfer.random_configs = {tp.random_configs} leaves {n_test} test and "
                         f"{tp.random_configs - n_test} train/val configs; train.test_fraction "
                         f"{train_params.test_fraction} and {train_params.folds} folds need >= 2 and >= "
                         f"{2 * train_params.folds}: raise transfer.random_configs")
    out_dir.mkdir(parents=True, exist_ok=True)  # nothing is written when a check above fails
    before = (METER.images, METER.forwards)
    t0 = time.perf_counter()
    random_path = score_random(real, ctx.bank, template.layer_names, tp, images, image_seed,
                               out_dir / "random.parquet", log)
    ap = ActiveParams(rounds=tp.rounds, per_budget=tp.per_budget, disagreement=tp.disagreement,
                      relinearise_rounds=tp.relinearise_rounds, warm_start=True, epochs=tp.epochs)
    curve = run_active(ctx, real, budgets, ap, random_cache=random_path, graph=Path(graph), bank_dir=Path(bank_dir),
                       probe=None, train_params=train_params, image_seed=image_seed, images=images,
                       out_dir=out_dir / "active", log=log, warm_from=base_predictor, template=template)
    union = out_dir / "active" / "quant_cache.parquet"
    sub = _search_context(ctx, out_dir / "active" / "predictor", union, ap)
    ens = sub.ensemble()
    configs, incumbent = {}, None
    family_dir = out_dir / "family"
    family_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    from search.pareto import budget_tag

    for b in sorted(float(x) for x in budgets):
        res = _search(sub, b, incumbent)
        incumbent = res.config
        path = family_dir / f"predictor-{budget_tag(b)}.json"
        reports.append(res.save(path, union, out_dir / "active" / "predictor"))
        pred = float(ens.predict([res.config])[0])
        configs[f"{b:g}"] = {"config": str(path), "config_id": res.config.config_id,
                             "avg_bits": float(res.config.avg_bits), "predicted_fid": pred}
    write_json(family_dir / "family.json", reports, default=str)
    rows = read_cache(union)
    summary = {
        "format": FORMAT, "model": ctx.bank.model,
        "base_predictor": None if base_predictor is None else str(base_predictor),
        "scratch": base_predictor is None, "params": asdict(tp), "budgets": [float(b) for b in budgets],
        "configs": configs, "family": str(family_dir),
        "labelled_configs": int(len(rows)),
        "label_images": int(rows["images_generated"].fillna(rows["n_images"]).sum()),
        "spend": {"images": METER.images - before[0], "forwards": METER.forwards - before[1],
                  "seconds": round(time.perf_counter() - t0, 1)},
        "learning_curve": curve,
    }
    write_json(out_dir / "transfer.json", summary, default=str)
    return summary


def base_params(base: Any, train_params: Any) -> Any:
    """The train params the base ensemble was trained with (architecture must match to warm
    start), with `train_params`' non-architectural fields left as the user set them."""
    saved = dict(base.meta.get("params") or {})
    arch = {k: saved[k] for k in ("conv", "layers", "hidden", "heads", "dropout", "direction", "node_emb",
                                  "folds", "probe", "target", "target_transform", "lambda_bits", "label")
            if k in saved}
    return replace(train_params, **arch)
