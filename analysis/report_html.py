"""Standalone, offline HTML plots for the QuantAnalyzer report (plotly, JS inlined).

Every page is written by `fig.write_html(..., include_plotlyjs=True, full_html=True)`: the
plotly.js bundle is inside the file (~4.8 MB), MathJax is off and the modebar logo link is off, so
a page opens without network access. Per-layer views (one histogram or channel-range plot per
layer) are one page with a plotly dropdown (`updatemenus`, plotly's own `restyle`), each button
carrying only its layer's data; no hand-written JS. The index is plain HTML (no scripts).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def write_figure(fig, path: str | Path) -> Path:
    """Write `fig` as one self-contained HTML page (atomic: temp file renamed over `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True, full_html=True, include_mathjax=False,
                   config=PLOT_CONFIG)
    tmp.replace(path)
    return path


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def sweep_figure(title: str, layers: Sequence[str], series: dict[str, dict[str, dict]],
                 references: dict[str, dict[str, float | None]], metrics: Sequence[tuple[str, str]]):
    """Layers on x, one row per metric (key, axis title), one line per series
    ({name: {layer: {metric: value}}}); dashed horizontal lines for `references`
    ({name: {metric: value}}: FP, all quantized...)."""
    import plotly
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[label for _, label in metrics])
    dashes = ["dash", "dot", "dashdot", "longdash"]
    colors = plotly.colors.qualitative.Plotly  # one colour per series in every row
    for row, (key, label) in enumerate(metrics, 1):
        for i, (name, rows) in enumerate(series.items()):
            fig.add_trace(go.Scatter(x=list(layers), y=[_num(rows.get(l, {}).get(key)) for l in layers],
                                     mode="lines+markers", name=name, legendgroup=name,
                                     line_color=colors[i % len(colors)], showlegend=row == 1), row=row, col=1)
        for i, (name, values) in enumerate(references.items()):
            v = _num(values.get(key))
            if v is not None:
                fig.add_hline(y=v, line_dash=dashes[i % len(dashes)], line_color="grey", row=row, col=1,
                              annotation_text=name, annotation_position="top left")
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_xaxes(tickangle=-60, row=len(metrics), col=1)
    fig.update_layout(title=title, height=320 * len(metrics) + 200, hovermode="x unified",
                      margin=dict(b=220))
    return fig


def bars_figure(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]],
                y_title: str, log_y: bool = False):
    """Grouped bars: `labels` on x, one bar trace per series."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(x=list(labels), y=[_num(v) for v in ys], name=name) for name, ys in series.items()])
    fig.update_layout(title=title, barmode="group", yaxis_title=y_title, height=560, margin=dict(b=220))
    fig.update_xaxes(tickangle=-60)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def range_figure(title: str, labels: Sequence[str], lo: Sequence[float], hi: Sequence[float],
                 x_title: str = "layer"):
    """AIMET's min-max plot: one vertical bar per label from its min to its max."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=list(labels), y=[h - l for l, h in zip(lo, hi)], base=list(lo), name="range",
                           customdata=list(zip(lo, hi)),
                           hovertemplate="%{x}<br>min %{customdata[0]:.4g}<br>max %{customdata[1]:.4g}"
                                         "<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="value", height=560, margin=dict(b=220))
    fig.update_xaxes(tickangle=-60)
    return fig


def dropdown_figure(title: str, views: dict[str, dict[str, Any]], kind: str, x_title: str, y_title: str):
    """One trace whose data a dropdown swaps: `views` = {label: {"x": [...], "y": [...],
    ["base": [...]]}}; `kind` "bar" (histogram or min-max ranges) or "line"."""
    import plotly.graph_objects as go

    labels = list(views)
    first = views[labels[0]]
    if kind == "bar":
        trace = go.Bar(x=first["x"], y=first["y"], base=first.get("base"))
    else:
        trace = go.Scatter(x=first["x"], y=first["y"], mode="lines")
    fig = go.Figure(trace)
    buttons = []
    for label in labels:
        v = views[label]
        args: dict[str, Any] = {"x": [v["x"]], "y": [v["y"]]}
        if kind == "bar":
            args["base"] = [v.get("base")]
        buttons.append(dict(label=label, method="restyle", args=[args]))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=600,
                      updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left",
                                        y=1.13, yanchor="top", showactive=True)],
                      margin=dict(t=140))
    return fig


def index_page(title: str, paragraph: str, table: list[dict[str, Any]], links: list[tuple[str, str, str]]) -> str:
    """The report's index: a heading, the reading of the results, the FP / W / A / W+A table and
    links ([(href, name, what it shows)]). Plain HTML, no scripts, no external resources."""
    e = html.escape
    head = {"setting": "setting", "fid": "FID", "content": "content", "status": "status"}
    rows = "".join("<tr>" + "".join(f"<td>{e(_cell(r.get(k)))}</td>" for k in head) + "</tr>" for r in table)
    items = "".join(f'<li><a href="{e(href)}">{e(name)}</a> — {e(what)}</li>' for href, name, what in links)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>{e(title)}</h1>
<p>{e(paragraph)}</p>
<h2>Sensitivity to weight and activation quantization</h2>
<table><tr>{''.join(f'<th>{e(h)}</th>' for h in head.values())}</tr>{rows}</table>
<h2>Analyses</h2><ul>{items}</ul>
</body></html>
"""


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "—"
    return str(v)
