"""Draw the table of ``benchmarks.run`` as an SVG chart: for each ratio
(time per operation, librecache / baseline; lower is better) one bar per
topology at the median of the runs, with a whisker from the lowest to the
highest run (the spread), and a line at 1x (as fast as the baseline). The
near cache's speed-up over a Redis hit is written beneath.

Usage: ``.venv/bin/python -m benchmarks.chart [results.json] [out.svg] [--before earlier.json]``
(defaults: ``benchmarks/results/run.json`` and ``docs/_static/performance.svg``);
``--before`` marks each bar with the median of an earlier run (a hollow
diamond), to show a change.
No dependency: the SVG is written by hand, and scales to its container
(``viewBox``, ``width="100%"``).
"""

from __future__ import annotations

import argparse
import json
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


def draw(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The SVG of one ``run.json`` (and the medians of an earlier one)."""
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
            earlier = (before or {}).get("ratios", {}).get(topology, {}).get(name)
            if earlier:
                bx, by = x_of(earlier), y + BAR / 2
                parts.append(f'<path d="M{bx:.1f} {by - 6:.1f}L{bx + 5:.1f} {by:.1f}L{bx:.1f} {by + 6:.1f}'
                             f'L{bx - 5:.1f} {by:.1f}Z" fill="#fff" stroke="#111" stroke-width="1.2">'
                             f'<title>{escape(topology)} before: {earlier:.2f}x</title></path>')
            label = f"{value:.2f}x"
            right = max(x_of(value), x_of(low_high[1]) if low_high else 0, x_of(earlier) + 5 if earlier else 0)
            parts.append(_text(right + 6, y + BAR - 2, label, 11))
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
    if before:
        legend.append(f'<path d="M{lx + 6} 18L{lx + 11} 24L{lx + 6} 30L{lx + 1} 24Z" fill="#fff" stroke="#111"/>')
        legend.append(_text(lx + 17, 28, "before"))
    height = footer + (45 if near else 25)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" font-family="sans-serif" role="img" '
        f'aria-label="librecache against raw redis-py and dogpile.cache">',
        f'<rect width="{WIDTH}" height="{height:.0f}" fill="#fff"/>',
        *axis, *parts, *legend, *texts, "</svg>", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(Path(__file__).parent / "results" / "run.json"))
    parser.add_argument("svg", nargs="?", default=str(ROOT / "docs" / "_static" / "performance.svg"))
    parser.add_argument("--before", help="an earlier run.json whose medians mark the bars")
    args = parser.parse_args(argv)
    before = json.loads(Path(args.before).read_text()) if args.before else None
    Path(args.svg).write_text(draw(json.loads(Path(args.results).read_text()), before))
    print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
