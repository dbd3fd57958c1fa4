"""Progress in logs (issue 12, case 6): a non-TTY stream gets a few plain lines, never a flood."""
from __future__ import annotations

import io

from core.progress import LogProgress, progress_bar


def test_non_tty_progress_is_one_line_per_ten_percent_and_no_carriage_returns():
    buf = io.StringIO()  # not a TTY, like stderr under `dvc repro` or CI
    bar = progress_bar(total=10_000, desc="configs", unit="cfg", file=buf)
    assert isinstance(bar, LogProgress)
    for _ in range(10_000):
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("configs: 1000/10000 cfg (10%)")
    assert lines[-1].startswith("configs: 10000/10000 cfg (100%)")


def test_iterating_a_sized_iterable_and_resuming_from_initial():
    buf = io.StringIO()
    seen = list(progress_bar(range(4), desc="layers", file=buf))
    assert seen == [0, 1, 2, 3]
    assert buf.getvalue().splitlines()[-1].startswith("layers: 4/4 it (100%)")
    buf = io.StringIO()
    bar = progress_bar(total=100, initial=95, desc="resume", file=buf)
    for _ in range(5):
        bar.update()
    bar.close()
    # resumed at 95%: only the closing line, not ten catch-up lines
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[0]]
    assert "100/100" in buf.getvalue()


def test_disabled_progress_writes_nothing():
    buf = io.StringIO()
    with progress_bar(total=3, desc="quiet", disable=True, file=buf) as bar:
        bar.update(3)
    assert buf.getvalue() == ""


def test_unknown_total_writes_by_time(monkeypatch):
    buf = io.StringIO()
    clock = iter([0.0, 0.0, 30.0, 61.0, 62.0, 125.0, 126.0, 126.0])
    monkeypatch.setattr("core.progress.time.monotonic", lambda: next(clock))
    bar = LogProgress(desc="stream", file=buf)
    for _ in range(5):
        bar.update()
    assert len(buf.getvalue().splitlines()) == 2  # at 61 s and 125 s, not at every update
