"""A small line chart as inline SVG, drawn on the server: compliance rate (0-100 %) per key over
periods. No chart library and no script; colours come from CSS classes (s0..s7), each point is a
link to the studies behind it and carries its numbers as a <title> tooltip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 170, 12, 36
MAX_SERIES = 8


def line_chart(rows: Sequence[dict[str, Any]], by: str, link: Callable[[str, str], str]) -> Markup:
    """rows: {"key", "period", "studies", "compliant", "rate"} as compliance.dashboard gives them."""
    periods = sorted({r["period"] for r in rows})
    totals: dict[str, int] = {}
    for r in rows:
        totals[r["key"]] = totals.get(r["key"], 0) + r["studies"]
    keys = sorted(totals, key=lambda k: (-totals[k], k))[:MAX_SERIES]
    if not periods:
        return Markup('<p class="empty">No checked studies in this selection.</p>')
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (len(periods) - 1) if len(periods) > 1 else plot_w / 2)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - rate)

    out = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
           f'aria-label="Compliance rate by {escape(by)}">']
    for pct in (0, 25, 50, 75, 100):
        yy = y(pct / 100)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{pct}%</text>')
    step = max(1, len(periods) // 8)
    for i, p in enumerate(periods):
        if i % step == 0:
            out.append(f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 12}" text-anchor="middle">{escape(p)}</text>')
    index = {p: i for i, p in enumerate(periods)}
    for n, key in enumerate(keys):
        pts = sorted((index[r["period"]], r) for r in rows if r["key"] == key)
        path = " ".join(f"{x(i):.1f},{y(r['rate'] or 0):.1f}" for i, r in pts)
        out.append(f'<g class="series s{n}"><polyline points="{path}"/>')
        for i, r in pts:
            tip = f"{key} {r['period']}: {r['compliant']}/{r['studies']} compliant ({(r['rate'] or 0) * 100:.0f}%)"
            out.append(f'<a href="{escape(link(key, r["period"]))}"><circle cx="{x(i):.1f}" cy="{y(r["rate"] or 0):.1f}" '
                       f'r="4"><title>{escape(tip)}</title></circle></a>')
        ly = TOP + 16 * n + 8
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{ly - 8}" width="10" height="10"/>'
                   f'<text class="legend" x="{WIDTH - RIGHT + 28}" y="{ly + 1}">{escape(key[:22])}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))
