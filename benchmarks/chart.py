"""Draw the table of ``benchmarks.run`` as an SVG chart: for each ratio
(time per operation, librecache / baseline; lower is better) one bar per
topology at the median of the runs, with a whisker from the lowest to the
highest run (the spread), and a line at 1x (as fast as the baseline). The
near cache's speed-up over a Redis hit is written beneath.

Usage: ``.venv/bin/python -m benchmarks.chart [results.json] [out.svg]``
(defaults: ``benchmarks/results/run.json`` and ``docs/_static/performance.svg``).
No dependency: the SVG is written by hand, and scales to its container
(``viewBox``, ``width="100%"``).
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"memory": "#7a8b99", "single": "#2f6fb0", "cluster": "#d9822b"}
NEAR = "near-cache hit speed-up vs redis hit"
PAIRED_NEAR = "near-cache hit speed-up vs redis hit, paired"
WIDTH, LEFT, RIGHT, TOP = 820, 290, 30, 54
BAR, GAP, GROUP_GAP = 12, 3, 14


def _text(x: float, y: float, content: str, size: int = 12, anchor: str = "start", weight: str = "normal",
          fill: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(content)}</text>')


def draw(results: dict[str, Any]) -> str:
    """The SVG of one ``run.json``."""
    ratios: dict[str, dict[str, float | None]] = results["ratios"]
    spread: dict[str, dict[str, list[float] | None]] = results.get("ratio_spread", {})
    topologies = [t for t in COLOURS if t in ratios]
    names = [name for name in next(iter(ratios.values())) if name not in (NEAR, PAIRED_NEAR)
             and any(ratios[t].get(name) is not None for t in topologies)]
    highest = max([2.0] + [v for t in topologies for n in names for v in (spread.get(t, {}).get(n) or [])]
                  + [ratios[t][n] or 0.0 for t in topologies for n in names])
    scale_max = float(int(highest * 2 + 1)) / 2  # next half
    plot = WIDTH - LEFT - RIGHT

    def x_of(value: float) -> float:
        return LEFT + plot * min(value, scale_max) / scale_max

    parts: list[str] = []
    y = TOP
    for name in names:
        shown = [t for t in topologies if ratios[t].get(name) is not None]
        height = len(shown) * (BAR + GAP) - GAP
        parts.append(_text(LEFT - 10, y + height / 2 + 4, name, anchor="end"))
        for topology in shown:
            value = ratios[topology][name]
            assert value is not None
            colour = COLOURS[topology]
            parts.append(f'<rect x="{LEFT}" y="{y:.1f}" width="{x_of(value) - LEFT:.1f}" height="{BAR}" '
                         f'fill="{colour}" opacity="0.85"><title>{escape(topology)}: {value:.2f}x</title></rect>')
            low_high = spread.get(topology, {}).get(name)
            if low_high:
                low, high = x_of(low_high[0]), x_of(low_high[1])
                middle = y + BAR / 2
                parts.append(f'<path d="M{low:.1f} {middle:.1f}H{high:.1f}M{low:.1f} {middle - 4:.1f}V{middle + 4:.1f}'
                             f'M{high:.1f} {middle - 4:.1f}V{middle + 4:.1f}" stroke="#111" stroke-width="1.2"/>')
            label = f"{value:.2f}x"
            parts.append(_text(max(x_of(value), x_of(low_high[1]) if low_high else 0) + 6, y + BAR - 2, label, 11))
            y += BAR + GAP
        y += GROUP_GAP
    bottom = y - GROUP_GAP + 6
    # axis: ticks every half, the 1x line stronger
    axis: list[str] = []
    tick = 0.0
    while tick <= scale_max + 1e-9:
        x = x_of(tick)
        style = 'stroke="#b00020" stroke-width="1.5"' if abs(tick - 1.0) < 1e-9 else \
            'stroke="#ccc" stroke-dasharray="3 3"'
        axis.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{bottom:.1f}" {style}/>')
        axis.append(_text(x, bottom + 16, f"{tick:g}x", 11, "middle"))
        tick += 0.5
    footer = bottom + 40
    which = PAIRED_NEAR if any(ratios[t].get(PAIRED_NEAR) for t in topologies) else NEAR
    near = []
    for topology in topologies:
        value, low_high = ratios[topology].get(which), spread.get(topology, {}).get(which)
        if value:
            near.append(f"{topology} {value:.0f}x" + (f" ({low_high[0]:.0f}-{low_high[1]:.0f})" if low_high else ""))
    texts = [_text(LEFT, footer, "time per operation, librecache / baseline: lower is better", 11, fill="#555"),
             _text(LEFT, footer + 15, f"bars: median of {len(results.get('runs', [])) or 1} runs; "
                   "whiskers: lowest to highest run (paired rows: the quartiles of the pairs)", 11, fill="#555")]
    if near:
        texts.append(_text(LEFT, footer + 35, "near-cache hit, times faster than a Redis hit: " + ", ".join(near), 12))
    legend, lx = [], LEFT
    for topology in topologies:
        legend.append(f'<rect x="{lx}" y="18" width="12" height="12" fill="{COLOURS[topology]}"/>')
        legend.append(_text(lx + 17, 28, topology))
        lx += 90
    height = footer + (45 if near else 25)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" font-family="sans-serif" role="img" '
        f'aria-label="librecache against raw redis-py and dogpile.cache">',
        f'<rect width="{WIDTH}" height="{height:.0f}" fill="#fff"/>',
        *axis, *parts, *legend, *texts, "</svg>", ""])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else Path(__file__).parent / "results" / "run.json"
    target = Path(args[1]) if len(args) > 1 else ROOT / "docs" / "_static" / "performance.svg"
    target.write_text(draw(json.loads(source.read_text())))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
