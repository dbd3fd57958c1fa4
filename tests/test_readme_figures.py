"""Every figure README and docs/ quote comes from a stored file, and every bench stores its result.

README.md and every docs/*.md page mark sourced figures with an HTML comment (invisible when
rendered; a page without markers quotes no sourced figure and passes):

- on a line of its own, `<!-- source: FILE [FILE ...] [tol=R] -->` covers the block below it (up
  to the next blank line: a paragraph or a whole table);
- at the end of a line or inside a table cell, the same comment covers the text before it on that
  line (in a table: its cell), and that text is not checked against an enclosing block marker.

Each number in the covered text must equal, as printed (its decimals; 1,797 = 1797; 9.7e-7), a
numeric value anywhere in one of the FILEs (JSON: nested values and list lengths; CSV: cells), up
to the sign; a number followed by `%`, `M`, `min` or `h` may also be the stored value × 100,
/ 1e6, / 60 or / 3600 (files store fractions, counts and seconds). `tol=R` accepts a relative
difference up to R instead: only for timings of a file `dvc repro` or a bench rewrites. Numbers
inside `code spans`, glued to letters (`uaq4`, `v1.5`, `3-bit`), in headings, in a table's
header row (column names) or in the first cell of a row without a marker (its label) are not
figures.

Also: README.md stays at most 15,000 bytes (depth goes to docs/), links every docs/*.md page, and
every relative link in README.md and docs/*.md points to an existing file (and, for `#anchor`s into
Markdown, to an existing heading).
"""
from __future__ import annotations

import ast
import csv
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS  # every Markdown page whose figures and links are checked
README_MAX_BYTES = 15_000


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))

MARKER = re.compile(r"<!--\s*source:\s*(?P<body>.*?)\s*-->")
NUMBER = re.compile(
    r"(?<![\w.\-^/])"                      # not glued to a word, a dot, a hyphen, a power or a path
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?!\.?\d)"   # whole numbers only
    r"(?:[eE](?P<exp>[-−+]?\d+))?"
    r"(?P<unit>\s?(?:%|M\b|min\b|h\b))?"
    r"(?![\w.]*[A-Za-z_]|-[A-Za-z])")      # not glued to letters after it (3-bit, 1024-MS, uaq4)
SCALES = {"%": 0.01, "M": 1e6, "min": 60.0, "h": 3600.0}


# ----------------------------------------------------------------------------- parsing README
def parse_marker(body: str) -> tuple[list[str], float | None]:
    files, tol = [], None
    for word in body.split():
        if word.startswith("tol="):
            tol = float(word[4:])
        else:
            files.append(word.rstrip(","))
    assert files, f"source marker without a file: {body!r}"
    return files, tol


def figures(text: str) -> list[tuple[str, float, int, str | None]]:
    """(printed, value, decimals, unit) for every figure in `text` (code spans removed)."""
    text = re.sub(r"`[^`]*`", " ", text)
    out = []
    for m in NUMBER.finditer(text):
        printed = m.group("num")
        mantissa = printed.replace(",", "")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        value = float(mantissa)
        if m.group("exp"):
            exp = int(m.group("exp").replace("−", "-"))
            value *= 10.0 ** exp
            decimals -= exp  # 9.7e-7: one mantissa decimal = 8 decimals
        unit = (m.group("unit") or "").strip() or None
        out.append((m.group(0).strip(), value, decimals, unit))
    return out


def claims(readme: str) -> list[tuple[int, str, list[str], float | None]]:
    """(line number, covered text, files, tol) for every marker in README."""
    lines = readme.splitlines()
    out = []
    block: tuple[list[str], float | None] | None = None
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            block = None
            continue
        if stripped.startswith("#"):
            block = None
            continue
        if stripped.startswith("|") and (
                re.fullmatch(r"[|:\-\s]+", stripped)  # a table's delimiter row
                or (no < len(lines) and re.fullmatch(r"\|[|:\-\s]+", lines[no].strip()))):  # its header
            continue
        markers = list(MARKER.finditer(line))
        if markers and MARKER.fullmatch(stripped):
            block = parse_marker(markers[0].group("body"))
            continue
        rest, start = [], 0
        for m in markers:
            seg_start = start
            if stripped.startswith("|"):  # a table cell: from the last | before the marker
                seg_start = max(start, line.rfind("|", 0, m.start()) + 1)
                rest.append(line[start:seg_start])
            files, tol = parse_marker(m.group("body"))
            out.append((no, line[seg_start:m.start()], files, tol))
            start = m.end()
        rest.append(line[start:])
        if stripped.startswith("|") and not markers:  # a row's first cell is its label, not a figure
            rest = ["|" + line.strip()[1:].split("|", 1)[-1]]
        if block is not None:
            out.append((no, " ".join(rest), *block))
    return out


# ----------------------------------------------------------------------------- stored values
def stored_values(path: Path) -> list[float]:
    """Every number in a JSON (nested values and list lengths) or CSV file (cells)."""
    values: list[float] = []
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    try:
                        values.append(float(cell))
                    except ValueError:
                        pass
        return values

    def walk(x):
        if isinstance(x, bool) or x is None:
            return
        if isinstance(x, (int, float)):
            if math.isfinite(x):
                values.append(float(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            values.append(float(len(x)))
            for v in x:
                walk(v)
    walk(json.loads(path.read_text()))
    return values


def matches(value: float, decimals: int, unit: str | None, stored: list[float], tol: float | None) -> bool:
    scales = [1.0] + ([SCALES[unit]] if unit else [])
    half = 0.5 * 10.0 ** (-decimals)
    for v in stored:
        for s in scales:
            v_s = abs(v) / s
            if tol is not None:
                if abs(v_s - value) <= tol * max(abs(v_s), 1e-12):
                    return True
            elif abs(v_s - value) <= half * (1 + 1e-9) + 1e-12 * abs(value):
                return True
    return False


def check(readme: str, root: Path, name: str = "README.md") -> list[str]:
    """One line per figure a page (README or a docs page, called `name`) quotes that its source
    files do not hold. Source paths are relative to the repository root, from any page."""
    problems, cache = [], {}
    for no, text, files, tol in claims(readme):
        stored = []
        for f in files:
            path = root / f
            if not path.is_file():
                problems.append(f"{name}:{no}: source {f} does not exist")
                continue
            if f not in cache:
                cache[f] = stored_values(path)
            stored += cache[f]
        for printed, value, decimals, unit in figures(text):
            if stored and not matches(value, decimals, unit, stored, tol):
                problems.append(f"{name}:{no}: {printed!r} is in none of {', '.join(files)}"
                                + (f" (tol {tol})" if tol else ""))
    return problems


# ----------------------------------------------------------------------------- the checker itself
def write(tmp: Path, name: str, data) -> None:
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text(json.dumps(data))


def test_checker_accepts_printed_roundings_and_rejects_wrong_figures(tmp_path):
    write(tmp_path, "m.json", {"a": {"fid": 1.7471995, "s": 0.3251}, "n": 1797, "err": 9.724e-07,
                               "sec": 1662.2, "frac": 0.25, "xs": [1, 2, 3], "neg": -0.358})
    ok = ("<!-- source: m.json -->\n| fid | 1.75, 0.33 (1,797 digits) |\n"
          "9.7e-7 and 27.7 min, 25 %, 3 items, −0.36, `uaq3` 4-bit v1.5 64-d\n\n")
    assert check(ok, tmp_path) == []
    # a wrong value, a wrong rounding, and a number after the block are told apart
    bad = "<!-- source: m.json -->\nFID 1.76 and 0.326\n\n2.24 is outside any block\n"
    assert check(bad, tmp_path) == ["README.md:2: '1.76' is in none of m.json",
                                    "README.md:2: '0.326' is in none of m.json"]


def test_checker_inline_markers_cover_their_cell_only_and_tolerance_is_relative(tmp_path):
    write(tmp_path, "a.json", {"s": 1.4616})
    write(tmp_path, "b.json", {"r": 12.74})
    table = ("<!-- source: a.json -->\n| x (99 units) | y | z |\n|---|---|---|\n"
             "| label 256 | 1.46 | 1.46 |\n| per config | 1.46 | 12.7 <!-- source: b.json --> |\n\n")
    assert check(table, tmp_path) == []
    # the cell's figure is checked against its own marker only, not the block's file
    assert check(table.replace("12.7 <!--", "1.46 <!--"), tmp_path) == [
        "README.md:5: '1.46' is in none of b.json"]
    assert check(table.replace("| 1.46 | 1.46 |", "| 1.46 | 1.47 |"), tmp_path) == [
        "README.md:4: '1.47' is in none of a.json"]
    # tol: a timing within 25 % passes; the README's old 2.24 s against 1.46 does not
    assert check("took 1.6 s <!-- source: a.json tol=0.25 -->\n", tmp_path) == []
    assert check("took 2.24 s <!-- source: a.json tol=0.25 -->\n", tmp_path) == [
        "README.md:1: '2.24' is in none of a.json (tol 0.25)"]
    assert check("<!-- source: missing.json -->\n1.0\n", tmp_path) == [
        "README.md:2: source missing.json does not exist"]


# ----------------------------------------------------------------------------- README and docs/
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_readme_figures_come_from_their_stored_files(page):
    text = page.read_text()
    if page == README:
        assert MARKER.search(text), "README has no source markers"
    problems = check(text, ROOT, _page_id(page))
    assert not problems, f"{_page_id(page)} figures not in their stored files:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_readme_sources_are_stored_results_with_machine_conditions(page):
    """Sources live in metrics/ or bench/results/ (tracked), and bench results say where they ran."""
    # Written before bench/machine.py, with what they lack; re-running the bench refreshes them.
    legacy = {"bench/results/gpu_sd15.json": {"machine", "command"},  # `python bench/gpu.py` (a GPU)
              "bench/results/gpu_pixart_sigma.json": {"machine", "command"},
              "bench/results/fid.json": {"command"}}  # its own machine block; `python bench/fid.py`
    files = sorted({f for _, _, fs, _ in claims(page.read_text()) for f in fs})
    assert files or page != README
    for f in files:
        assert f.startswith(("metrics/", "bench/results/")), \
            f"{_page_id(page)}: {f}: sources must be stored results"
        if f.startswith("bench/results/"):
            data = json.loads((ROOT / f).read_text())
            missing = {"machine", "command"} - legacy.get(f, set()) - set(data)
            assert not missing, f"{f}: no {', '.join(sorted(missing))}"
            if "command" in data:
                assert data["command"].startswith("python bench/"), f"{f}: command {data['command']!r}"
            if "machine" in data and f not in legacy:
                assert {"cpu_model", "logical_cores", "threadpools", "utc"} <= set(data["machine"]), f


def test_readme_is_short_and_links_every_docs_page():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes (at most {README_MAX_BYTES:,}: move depth to docs/)"
    linked = {ROOT / t for t, _ in (_split_anchor(t) for t in relative_links(README.read_text()))}
    missing = [_page_id(p) for p in DOCS if p not in linked]
    assert not missing, f"README's Documentation list does not link: {', '.join(missing)}"


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>[^\s>]+)>?", re.M)


def _outside_code(text: str) -> str:
    """The text without fenced code blocks and code spans (their brackets are not links)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        out.append("" if fence else re.sub(r"`[^`]*`", " ", line))
    return "\n".join(out)


def relative_links(text: str) -> list[str]:
    """Link and image targets that are not URLs (http:, mailto:, ...), in order."""
    text = _outside_code(text)
    targets = [m.group("target") for m in LINK.finditer(text)]
    targets += [m.group("target") for m in REF_LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", t)]


def _split_anchor(target: str) -> tuple[str, str | None]:
    path, _, anchor = target.partition("#")
    return path, (anchor or None)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (lowercase, punctuation dropped, spaces → -)."""
    anchors: set[str] = set()
    for line in _outside_code(text.replace("`", "")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, candidate = 0, slug
            while candidate in anchors:
                n += 1
                candidate = f"{slug}-{n}"
            anchors.add(candidate)
    return anchors


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in relative_links(text):
        path, anchor = _split_anchor(target)
        if not path:  # an anchor on the page itself
            if anchor.lower() not in heading_anchors(text):
                problems.append(f"{target}: no heading #{anchor} in {page.name}")
            continue
        dest = (page.parent / path).resolve()
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and dest.is_file() \
                and anchor.lower() not in heading_anchors(dest.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The bank (`quant/`)\n")
    page = tmp_path / "README.md"
    text = ("[a](docs/a.md) ![img](docs/img/x.png) [web](https://x.org/y) `[not](a/link.md)`\n"
            "[anchor](docs/a.md#the-bank-quant) [bad anchor](docs/a.md#nope) [self](#top) [up](#a-readme)\n"
            "```\n[in code](nowhere.md)\n# not a heading\n```\n# A README\n[ref]: docs/missing.md\n")
    assert relative_links(text) == ["docs/a.md", "docs/img/x.png", "docs/a.md#the-bank-quant",
                                    "docs/a.md#nope", "#top", "#a-readme", "docs/missing.md"]
    assert link_problems(page, text) == ["docs/img/x.png: no such file",
                                         "docs/a.md#nope: no heading #nope in a.md",
                                         "#top: no heading #top in README.md",
                                         "docs/missing.md: no such file"]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_point_to_existing_files(page):
    problems = link_problems(page, page.read_text())
    assert not problems, f"{_page_id(page)}: broken links:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- bench scripts
BENCH_HELPERS = {"machine.py", "bench_reference.py", "sd15_shapes.py"}  # imported by benches, not run


def _bench_scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "bench").glob("*.py") if p.name not in BENCH_HELPERS)


@pytest.mark.parametrize("script", _bench_scripts(), ids=lambda p: p.name)
def test_every_bench_script_stores_its_result_with_machine_info(script):
    """Read, not run (benches take minutes): the script calls bench/machine.py's writer, puts
    machine_info() into the JSON it writes, or writes a `"machine"` entry into bench/results/."""
    source = script.read_text()
    tree = ast.parse(source)
    called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    keys = {k.value for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys
            if isinstance(k, ast.Constant)}
    keys |= {n.slice.value for n in ast.walk(tree) if isinstance(n, ast.Subscript)
             and isinstance(n.slice, ast.Constant)}
    own_record = "machine" in keys and "bench/results" in source
    assert "write_result" in called or "machine_info" in called or own_record, (
        f"bench/{script.name} writes no bench/results/*.json with machine conditions "
        f"(use bench/machine.py: write_result)")


def test_write_result_records_command_and_machine(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import machine

    out = machine.write_result("demo", {"speedup": 2.5}, out=tmp_path / "demo.json",
                               argv=[str(ROOT / "bench" / "demo.py"), "--n", "a b"])
    data = json.loads(out.read_text())
    assert data["speedup"] == 2.5 and data["bench"] == "demo"
    assert data["command"] == "python bench/demo.py --n 'a b'"
    m = data["machine"]
    import os

    assert m["logical_cores"] == os.cpu_count()
    assert m["affinity_cores"] == len(os.sched_getaffinity(0))
    assert m["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]
    assert m["utc"].endswith("+00:00")
    assert any(p["api"] == "blas" and p["num_threads"] >= 1 for p in m["threadpools"])


# ----------------------------------------------------------------------------- bench/figures.py
def _figures_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import importlib

    return importlib.import_module("figures")


def _cache(tmp: Path, rows: list[dict]) -> Path:
    import pyarrow as pa

    from sampling.cache import CACHE_SCHEMA, write_cache

    full = [{"model": "m", "index": i, "act_bits": None, "quantized_bytes": 1.0, "quantized_error": 1.0,
             "bops": 1.0, "content": 0.5, "n_images": 10, "image_seed": 0, "sample_seed": 0, "reason": "",
             "attempts": 1, "code_version": "t", "status": "ok", **r} for i, r in enumerate(rows)]
    write_cache(pa.Table.from_pylist(full, schema=CACHE_SCHEMA), tmp / "cache.parquet")
    return tmp / "cache.parquet"


def test_figures_cache_and_probe_spearman_against_hand_values(tmp_path, monkeypatch):
    """Cache ranges/timings by hand; the probe's zero-training Spearman is +1 when FID is the
    linearised mean term itself and -1 when it is reversed, over all configs and on the test split."""
    import numpy as np

    from predictor.probe import Probe

    fig = _figures_module(monkeypatch)
    layers, options = ["a", "b"], ["uaq3", "uaq4"]
    shift = np.array([[[1.0, 0.0], [0.5, 0.0]], [[0.0, 2.0], [0.0, 0.25]]], dtype=np.float32)  # (L, O, D)
    probe = Probe("m", "fp", layers, options, shift, np.array([0.1, 0.0]), np.zeros(2), 7, 31)
    probe.save(tmp_path / "probe.safetensors")
    combos = [{"a": oa, "b": ob} for oa in options + ["fp16"] for ob in options + ["fp16"]]
    term = probe.linearised_mean_term(combos)  # (0.1 + shift_a)² + shift_b², all distinct here
    assert len(set(np.round(term, 9))) == len(combos)
    rows = [{"config_id": f"c{i}", "options": json.dumps(c), "avg_bits": 3.0 + i / 10, "fid": float(t),
             "seconds": 1.0 + i, "worker": f"w{i % 2}"} for i, (c, t) in enumerate(zip(combos, term))]
    rows.append({"config_id": "bad", "options": "{}", "avg_bits": 9.0, "fid": None, "seconds": 50.0,
                 "worker": "w0", "status": "failed"})
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  test_fraction: 0.34\n  folds: 2\n  seed: 0\n")

    cache = _cache(tmp_path, rows)
    c = fig.cache_figures(cache)
    assert (c["configs"], c["ok"], c["failed"], c["workers"]) == (10, 9, 1, 2)
    assert c["fid_min"] == pytest.approx(term.min()) and c["fid_max"] == pytest.approx(term.max())
    assert (c["avg_bits_min"], c["avg_bits_max"]) == pytest.approx((3.0, 3.8))  # the failed row is left out
    assert c["worker_scoring_seconds"] == {"w0": 1 + 3 + 5 + 7 + 9, "w1": 2 + 4 + 6 + 8}
    assert c["seconds_per_config_median"] == 5.0

    p = fig.probe_figures(tmp_path / "probe.safetensors", cache, params)
    assert (p["configs"], p["test_configs"], p["images"]) == (9, 3, 7)
    assert p["spearman_all_configs"] == pytest.approx(1.0) and p["spearman_test_split"] == pytest.approx(1.0)
    for r in rows[:-1]:
        r["fid"] = -r["fid"]
    p = fig.probe_figures(tmp_path / "probe.safetensors", _cache(tmp_path, rows), params)
    assert p["spearman_all_configs"] == pytest.approx(-1.0)


def test_figures_search_path_start_chosen_and_others(tmp_path, monkeypatch):
    fig = _figures_module(monkeypatch)
    d = tmp_path / "data" / "search" / "m" / "family" / "predictor"  # the search stage's family
    d.mkdir(parents=True)
    report = {"budget": 3.5, "config_id": "mid", "seconds": 12.5, "starts": 3,
              "rounds": [{"config_id": "ip0"}, {"config_id": "x"}],
              "path": ["start", "mid", "end"],
              "candidates": [{"config_id": "ip0", "predicted_fid": 15.6, "selection_fid": None},
                             {"config_id": "start", "predicted_fid": 4.0, "selection_fid": 4.3},
                             {"config_id": "mid", "predicted_fid": 1.0, "selection_fid": 2.4},
                             {"config_id": "end", "predicted_fid": 0.7, "selection_fid": 3.1}]}
    (d / "predictor-3.5.report.json").write_text(json.dumps(report))
    s = fig.search_figures(tmp_path / "data", "m")["3.5"]
    assert s == {"seconds": 12.5, "rounds": 2, "starts": 3, "first_ip_predicted_fid": 15.6,
                 "path_predicted_fid_min": 0.7, "start_selection_fid": 4.3, "chosen_selection_fid": 2.4,
                 "chosen_is_start": False, "other_selection_fid_min": 3.1, "other_selection_fid_max": 4.3}
