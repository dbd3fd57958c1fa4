"""The quant_cache: one parquet row per config id, merged from the shards. Merge is its only writer.

Schema (`CACHE_SCHEMA`): the config (`options` as canonical JSON), its accounting, its scores,
how it was scored, `status` ok/failed with a reason, and its `provenance` ("random": the
random sampler; "active-r{round}": picked by active learning, `search.active`). Readers
validate the schema; columns added later (`OPTIONAL_COLUMNS`) may be absent from older files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import QsensError
from sampling.shards import SHARD_GLOB, scan_shards

if TYPE_CHECKING:  # pandas only for the annotation: importing the cache module stays light
    import pandas as pd

CACHE_SCHEMA = pa.schema([
    ("config_id", pa.string()),
    ("model", pa.string()),
    ("index", pa.int64()),  # position in the random stream (-1: not from the sampler)
    ("options", pa.string()),  # canonical JSON {layer: option}, fp16 layers omitted
    ("act_bits", pa.int64()),  # null = weight-only
    ("avg_bits", pa.float64()),
    ("quantized_bytes", pa.float64()),
    ("quantized_error", pa.float64()),
    ("bops", pa.float64()),
    ("fid", pa.float64()),
    ("content", pa.float64()),
    ("n_images", pa.int64()),
    ("image_seed", pa.int64()),  # seed set of the generated images
    ("sample_seed", pa.int64()),  # seed of the random config stream
    ("status", pa.string()),  # ok | failed
    ("reason", pa.string()),
    ("attempts", pa.int64()),
    ("seconds", pa.float64()),
    ("worker", pa.string()),
    ("code_version", pa.string()),
    ("job_key", pa.string()),  # the scoring job (sampling.worker.job_key_for); null: synthetic/legacy
    ("provenance", pa.string()),  # why the config was scored: "random" (the sampler) | "active-r{round}"
    # paired scores against the FP images of the same seeds (sampling.paired; null: not scored)
    ("fd_fp", pa.float64()),
    ("feat_dist", pa.float64()),
    ("image_mse", pa.float64()),
    ("psnr", pa.float64()),
    ("dssim", pa.float64()),
    ("content_drop", pa.float64()),
    ("lpips", pa.float64()),
    ("paired_images", pa.int64()),  # images behind the paired scores (n_images: behind fid/content)
    # what scoring the row cost (sampling.evaluator.CostMeter)
    ("images_generated", pa.int64()),
    ("forwards", pa.int64()),
    ("forward_samples", pa.int64()),
])
# Absent in caches written before they existed. job_key reads as null; provenance as "random"
# (every row written before active learning came from the random sampler); scores and costs null.
OPTIONAL_COLUMNS = ("job_key", "provenance", "fd_fp", "feat_dist", "image_mse", "psnr", "dssim",
                    "content_drop", "lpips", "paired_images", "images_generated", "forwards", "forward_samples")
DEFAULT_PROVENANCE = "random"
_FIELDS = [f.name for f in CACHE_SCHEMA]


class CacheError(QsensError):
    """A quant_cache (or shard, or legacy cache) that cannot be read or merged: one error line."""

    pass


@dataclass
class MergeReport:
    """What `merge_shards` wrote: rows (ok / failed), the problems skipped, the output path."""

    rows: int
    ok: int
    failed: int
    problems: list[str]
    out: Path


def _choose(records: list[dict]) -> dict:
    """The row kept for one config id: the first ok record, else the last failure; attempts summed."""
    ok = [r for r in records if r["status"] == "ok"]
    chosen = dict(ok[0] if ok else records[-1])
    chosen["attempts"] = len(records) if not ok else records.index(ok[0]) + 1
    return chosen


def _normalise(record: dict) -> dict:
    row = {name: record.get(name) for name in _FIELDS}
    if isinstance(row["options"], dict):
        row["options"] = json.dumps({k: row["options"][k] for k in sorted(row["options"])
                                     if row["options"][k] != "fp16"}, separators=(",", ":"))
    for name in ("index",):
        row[name] = -1 if row[name] is None else row[name]
    row["reason"] = row["reason"] or ""
    row["provenance"] = row["provenance"] or DEFAULT_PROVENANCE
    return row


def normalise_record(record: dict) -> dict:
    """A scored record (shard line or any dict with the schema's keys) -> one cache row: every
    schema column present (missing ones null), `options` as canonical JSON without fp16 layers,
    `index` -1 when unknown, `reason` "" when none, `provenance` "random" when none."""
    return _normalise(record)


def fill_provenance(table: pa.Table) -> pa.Table:
    """`table` with a `provenance` column in which every null reads "random" (see OPTIONAL_COLUMNS)."""
    import pyarrow.compute as pc

    if "provenance" not in table.schema.names:
        return table.append_column("provenance", pa.array([DEFAULT_PROVENANCE] * table.num_rows, pa.string()))
    i = table.schema.get_field_index("provenance")
    col = pc.fill_null(table.column(i).cast(pa.string()), DEFAULT_PROVENANCE)
    return table.set_column(i, "provenance", col)


def merge_shards(shard_dir: Path, out: Path) -> MergeReport:
    """All shard records → one row per config id, sorted by id; identical inputs, identical bytes."""
    shard_dir, out = Path(shard_dir), Path(out)
    if not shard_dir.is_dir():
        raise CacheError(f"{shard_dir}: no such shard directory (run `qsens sample` first)")
    if out.is_dir():
        raise CacheError(f"--out {out} is a directory; name the .parquet file to write")
    if out.resolve().parent == shard_dir.resolve() and out.match(SHARD_GLOB):
        raise CacheError(f"--out {out} is one of the shards it would be merged from; name a .parquet file")
    scan = scan_shards(shard_dir)
    if not scan.records:
        first = f"; first: {scan.problems[0]}" if scan.problems else ""
        raise CacheError(f"{shard_dir}: no scored records to merge ({len(scan.problems)} skipped{first}); "
                         f"nothing written{' over ' + str(out) if out.exists() else ''}")
    jobs: dict[str, int] = {}
    for record in scan.records:
        jobs[str(record.get("job_key"))] = jobs.get(str(record.get("job_key")), 0) + 1
    if len(jobs) > 1:
        raise CacheError(f"{shard_dir}: records of {len(jobs)} scoring jobs ("
                         + ", ".join(f"{k}: {n}" for k, n in sorted(jobs.items()))
                         + "); merging them would mix settings. Run `qsens sample` on it (it moves the "
                         "other jobs' shards to stale/) or move them yourself")
    models = sorted({str(r.get("model")) for r in scan.records})
    if len(models) > 1:
        raise CacheError(f"{shard_dir}: records for several models ({', '.join(models)}); one cache per model")
    by_id: dict[str, list[dict]] = {}
    for record in scan.records:
        by_id.setdefault(record["config_id"], []).append(record)
    rows = [_normalise(_choose(by_id[cid])) for cid in sorted(by_id)]
    table = pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)
    write_cache(table, out)
    ok = sum(1 for r in rows if r["status"] == "ok")
    return MergeReport(len(rows), ok, len(rows) - ok, scan.problems, out)


def write_cache(table: pa.Table, out: Path) -> None:
    """Write atomically: a failed write (disk full, file size limit) leaves `out` as it was."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".parquet.tmp")
        for name in OPTIONAL_COLUMNS:  # a table built before the column existed still writes
            if name not in table.schema.names:
                table = table.append_column(name, pa.nulls(table.num_rows, CACHE_SCHEMA.field(name).type))
        if set(table.schema.names) == set(_FIELDS):  # same columns in another order
            table = table.select(_FIELDS)
        pq.write_table(table.cast(CACHE_SCHEMA), tmp, compression="zstd", use_dictionary=True,
                       write_statistics=False)
        tmp.replace(out)
    except OSError as exc:
        raise CacheError(f"{out}: cannot write ({exc.strerror or exc}); the previous file is unchanged") from None


_STRINGS = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", lambda t: False))


def _is_string(t: pa.DataType) -> bool:
    return any(check(t) for check in _STRINGS)


def _conform_column(col: pa.ChunkedArray, want: pa.DataType) -> tuple[pa.ChunkedArray | None, str]:
    """`col` as type `want` when that loses and changes no value, else (None, why). Accepted: the
    same type; an all-null column of any type; any string encoding (string, large_string,
    string_view, dictionary of strings) for a string; any integer type for an integer within its
    range; a float column for an integer when every value is a whole number in range (NaN reads as
    null: pandas' encoding of a missing integer); an integer or float type for a float when every
    value converts exactly. Anything else (text for a number, a number for text, fractions for an
    integer) is refused."""
    import pyarrow.compute as pc

    have = col.type
    if have.equals(want):
        return col, ""
    if col.null_count == len(col):
        return pa.nulls(len(col), want) if len(col) else pa.chunked_array([], want), ""
    if pa.types.is_dictionary(have):
        col, have = col.cast(have.value_type), have.value_type
        if have.equals(want):
            return col, ""
    try:
        if _is_string(want):
            if _is_string(have):
                return col.cast(want), ""
            return None, f"{have}, expected text ({want})"
        if pa.types.is_integer(want):
            if pa.types.is_integer(have):
                return col.cast(want, safe=True), ""
            if pa.types.is_floating(have):
                nan = pc.is_nan(col)
                col = pc.if_else(nan, pa.scalar(None, have), col)  # NaN: pandas' missing integer
                return col.cast(want, safe=True), ""  # safe: refuses fractions and out-of-range values
            return None, f"{have}, expected integers ({want})"
        if pa.types.is_floating(want):
            if pa.types.is_floating(have) and have.bit_width <= want.bit_width:
                return col.cast(want), ""
            if pa.types.is_integer(have):
                out = col.cast(want, safe=True)
                if not pc.all(pc.equal(out.cast(have, safe=False), col)).as_py() in (True, None):
                    return None, f"{have} values that {want} cannot hold exactly"
                return out, ""
            return None, f"{have}, expected {want}"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return None, f"{have} values that {want} cannot hold ({str(exc).splitlines()[0][:120]})"
    return None, f"{have}, expected {want}"


def conform_cache_table(table: pa.Table, where: str) -> pa.Table:
    """`table` with exactly CACHE_SCHEMA's columns, in order and of its types. Any lossless Arrow
    encoding of a column is cast (e.g. pandas' large_string text, or an integer column written
    back as float64 because it holds missing values); a column that would lose or change values,
    or a missing required one, is refused in one CacheError naming the column(s). Extra columns
    (a pandas index, a user's notes) are ignored; OPTIONAL_COLUMNS absent from older files read
    as null."""
    for name in OPTIONAL_COLUMNS:
        if name not in table.schema.names:
            table = table.append_column(name, pa.nulls(table.num_rows, CACHE_SCHEMA.field(name).type))
    missing = [f.name for f in CACHE_SCHEMA if f.name not in table.schema.names]
    columns, wrong = [], []
    for f in CACHE_SCHEMA:
        if f.name in missing:
            continue
        if table.schema.get_all_field_indices(f.name).__len__() > 1:
            wrong.append(f"{f.name} (appears twice)")
            continue
        col, why = _conform_column(table.column(f.name), f.type)
        if col is None:
            wrong.append(f"{f.name} ({why})")
        columns.append(col)
    if missing or wrong:
        raise CacheError(f"{where}: not a quant_cache: " + "; ".join(
            ([f"missing column(s) {', '.join(missing)}"] if missing else []) +
            ([f"wrong type(s) {', '.join(wrong)}"] if wrong else [])))
    return pa.Table.from_arrays(columns, schema=CACHE_SCHEMA)


def read_cache_table(path: Path) -> pa.Table:
    """The validated quant_cache at `path` as an Arrow table of exactly CACHE_SCHEMA (see
    `conform_cache_table`), provenance filled. CacheError (one line) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such quant_cache file (run `qsens cache merge`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise CacheError(f"{path}: unreadable parquet ({exc})") from None
    return fill_provenance(conform_cache_table(table, str(path)))


def read_cache(path: Path, ok_only: bool = False) -> pd.DataFrame:
    """Read and validate a quant_cache parquet file."""
    path = Path(path)
    df = read_cache_table(path).to_pandas()
    if df["config_id"].duplicated().any():
        raise CacheError(f"{path}: duplicated config_id rows (the cache must be written by `qsens cache merge`)")
    return df[df["status"] == "ok"].reset_index(drop=True) if ok_only else df


def summary(path: Path) -> str:
    """A few lines describing a quant_cache file: rows, models, avg-bits and FID ranges (`qsens
    cache show`)."""
    df = read_cache(path)
    ok = df[df["status"] == "ok"]
    lines = [f"{path}: {len(df)} configs ({len(ok)} ok, {len(df) - len(ok)} failed), "
             f"model(s) {', '.join(sorted(df['model'].unique()))}"]
    if len(ok):
        lines.append(f"  avg_bits {ok['avg_bits'].min():.3f} .. {ok['avg_bits'].max():.3f}   "
                     f"FID {ok['fid'].min():.2f} .. {ok['fid'].max():.2f} (median {ok['fid'].median():.2f})   "
                     f"content {ok['content'].min():.3f} .. {ok['content'].max():.3f}")
        lines.append(f"  images/config {sorted(ok['n_images'].unique().tolist())}   "
                     f"seconds/config median {ok['seconds'].median():.2f}")
    failed = df[df["status"] != "ok"]
    for reason, count in failed["reason"].value_counts().items():
        lines.append(f"  failed ×{count}: {reason}")
    return "\n".join(lines)
