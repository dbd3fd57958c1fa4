"""Rows read back from resumable progress / results files (#23 item 7): a damaged or edited row (a
negative or non-finite FID, a wrong-typed field, a line that is not JSON) is dropped with one
`warning:` line on stderr and measured again; it is never reported as it is, never a crash."""
from __future__ import annotations

import json
from pathlib import Path

from analysis.common import Progress


def _line(**row) -> str:
    return json.dumps({"key": "k", "status": "ok", "content": 0.5, "seconds": 1.0, **row})


def test_progress_drops_damaged_rows_with_one_warning(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.jsonl"
    lines = [_line(layer="a", option="uaq4", fid=3.0),
             _line(layer="b", option="uaq4", fid=-1.0),          # negative FID
             _line(layer="c", option="uaq4", fid=float("nan")),  # NaN (Python's json writes it)
             _line(layer="d", option="uaq4", fid="3"),           # a string
             _line(layer=7, option="uaq4", fid=3.0),             # a wrong-typed layer
             _line(layer="e", option="uaq4", fid=None),          # status ok without an FID
             "[1, 2]", "{not json",
             _line(layer="f", option="uaq4", fid=2.0) + "\n" + _line(layer="x", option="y", fid=1.0, key="other"),
             '{"layer": "g", "op']                               # a killed write: silently ignored
    path.write_text("\n".join(lines))
    with Progress(path, "k", nonneg=("fid", "seconds"), required=("fid", "status", "seconds")) as prog:
        assert sorted(prog.rows) == [("a", "uaq4"), ("f", "uaq4")]
        assert not prog.done("b", "uaq4")  # measured again
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: 7 damaged row(s) dropped and measured again")
    assert "fid -1.0 is not a finite number >= 0" in err[0]
    assert [json.loads(x)["layer"] for x in path.read_text().splitlines()] == ["a", "f"]


def test_progress_with_good_rows_says_nothing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(_line(layer="a", option="uaq4", fid=3.0) + "\n")
    with Progress(path, "k", nonneg=("fid", "seconds")) as prog:
        assert prog.done("a", "uaq4")
    assert capsys.readouterr().err == ""


def _eval_row(**changes) -> dict:
    seed = {"seed": 11, "fid": 2.0, "content": 0.9, "status": "ok", "reason": "", "seconds": 0.5}
    row = {"budget": 3.5, "strategy": "predictor", "act": None, "avg_bits": 3.4, "fid": 2.0, "fids": [2.0],
           "fid_se": 0.1, "content": 0.9, "seconds": 1.0, "score_seconds": 0.5, "status": "ok", "reason": "",
           "config_id": "c", "per_seed": [seed], "key": "k", "score_key": "s"}
    row.update(changes)
    return row


def test_evaluate_rows_damaged_are_redone_and_said_on_stderr(tmp_path: Path, capsys) -> None:
    from search.evaluate import read_rows

    path = tmp_path / "search.json"
    good = _eval_row()
    path.write_text(json.dumps([good, _eval_row(fid=-4.0), _eval_row(fids=[float("inf")]),
                                _eval_row(per_seed=[{"seed": "11", "fid": 1.0, "status": "ok"}]),
                                _eval_row(per_seed=[3]), _eval_row(status=1), "row"]))
    assert read_rows(path) == [good]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6 damaged row(s) dropped and scored again (row 1: fid -4.0" in err[0]
    path.write_text("[{")
    assert read_rows(path) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: not valid JSON") and "scored again" in err[0]
    path.write_text(json.dumps({"rows": []}))
    assert read_rows(path) == [] and "not a list of rows" in capsys.readouterr().err


def test_active_rounds_from_the_first_damaged_one_are_redone(tmp_path: Path, capsys) -> None:
    from search.active import FORMAT, _prepare_out_dir

    def rnd(i: int, fid: object = 2.0) -> dict:
        return {"round": i, "n_active": 0, "n_configs": 10, "test_spearman": 0.9, "scored": 1, "failed": 0,
                "budgets": [{"budget": 3.5, "config_id": "c", "avg_bits": 3.4, "predicted_fid": 2.1,
                             "predicted_std": 0.1, "measured_fid": fid, "picks": []}]}

    (tmp_path / "quant_cache.parquet").write_bytes(b"")
    state = tmp_path / "rounds.json"
    state.write_text(json.dumps({"format": FORMAT, "digest": "d", "rounds": [rnd(0), rnd(1, float("nan")), rnd(2)]}))
    assert _prepare_out_dir(tmp_path, "d", print) == [rnd(0)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "round 1 budget entry: measured_fid nan is not a finite number >= 0" in err[0]
    state.write_text(json.dumps({"format": FORMAT, "digest": "d", "rounds": [rnd(0, "2")]}))
    assert _prepare_out_dir(tmp_path, "d", print) == []
    state.write_text("[1]")  # not a record: the run's files go to stale/, nothing reused, no crash
    assert _prepare_out_dir(tmp_path, "d", lambda m: None) == []
    assert "expected an active-learning record; its rounds are redone" in capsys.readouterr().err
    assert (tmp_path / "stale" / "unknown" / "rounds.json").is_file()
