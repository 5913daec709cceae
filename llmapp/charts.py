"""Line charts drawn on the server as SVG (no JavaScript, nothing inline for the CSP to block).

``line_chart`` turns chart points into what the template macro draws: paths (broken where there is
no data, so a gap is never drawn as zero), axis ticks with units, and one hover column per point
whose <title> the browser shows as a tooltip.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from babel.dates import format_skeleton
from flask_babel import get_locale
from flask_babel import gettext as _

WIDTH, HEIGHT = 420, 150
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 22  # the plot's margins, room for the axis labels


@dataclass
class Line:
    name: str
    css: str
    d: str


@dataclass
class Chart:
    title: str
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    hovers: list[tuple[float, float, str]] = field(default_factory=list)  # x, width, text
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (an axis maximum people read easily)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _time_label(at: float, span_s: float) -> str:
    """An axis's time, in UTC: with its day ("6 Dec 05:20", "12月6日 05:20") when the chart spans days."""
    moment = datetime.fromtimestamp(at, UTC)
    locale = get_locale() or "en"
    time = format_skeleton("Hm", moment, tzinfo=UTC, locale=locale)
    return f"{format_skeleton('MMMd', moment, tzinfo=UTC, locale=locale)} {time}" if span_s > 24 * 3600 else time


def line_chart(
    title: str,
    points: list[dict],
    series: list[tuple[str, str, str]],
    fmt: Callable[[float], str],
    point_s: int,
) -> Chart:
    """``series``: (name, key in each point, css class). A point without data (``data`` false) or
    without the key's value leaves a gap."""
    chart = Chart(title)
    if not points:
        return chart
    start, end = points[0]["at"], points[-1]["at"] + point_s
    span = max(end - start, 1)
    plot_w, plot_h = chart.plot_right - chart.plot_left, chart.plot_bottom - chart.plot_top
    values = [p.get(key) for p in points if p.get("data") for _, key, _ in series]
    top = nice_ceiling(max([v for v in values if v is not None] or [0]))

    def x(at: float) -> float:
        return round(chart.plot_left + (at - start) / span * plot_w, 1)

    def y(value: float) -> float:
        return round(chart.plot_bottom - value / top * plot_h, 1)

    for name, key, css in series:
        runs, run = [], []
        for point in points:
            value = point.get(key) if point.get("data") else None
            if value is None:
                runs, run = runs + [run] if run else runs, []
                continue
            run.append(f"{x(point['at'] + point_s / 2)},{y(value)}")
        runs += [run] if run else []
        # A run of one point is drawn as a dot (a zero-length line with round caps).
        d = " ".join("M" + " L".join(r) + (" h0.01" if len(r) == 1 else "") for r in runs)
        chart.lines.append(Line(name, css, d))
    chart.y_ticks = [(y(v), fmt(v)) for v in (0, top / 2, top)]
    chart.x_ticks = [(x(at), _time_label(at, span)) for at in (start, start + span / 2, end)]
    column = plot_w / len(points)
    for point in points:
        moment = _time_label(point["at"], span) + (
            f":{datetime.fromtimestamp(point['at'], UTC):%S}" if point_s < 60 else ""
        )
        if point.get("data"):
            readings = " · ".join(
                f"{name} {fmt(point[key]) if point.get(key) is not None else '—'}" for name, key, _ in series
            )
        else:
            readings = _("no data (not running)")
        chart.hovers.append((round(x(point["at"]), 1), round(column, 1), f"{moment} UTC — {readings}"))
    return chart


def number(value: float) -> str:
    """Short and exact enough to read: 0.25, 3.5, 250, 1.2k, 3.4M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


def rate(value: float) -> str:
    return f"{number(value)}/s" if value else "0/s"


def seconds(value: float) -> str:
    if not value:
        return "0"
    if value < 0.001:
        return f"{value * 1e6:.3g} µs"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def percent(value: float) -> str:
    return f"{value:.3g} %"


def size(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} GB"


def monitoring_charts(points: list[dict], point_s: int) -> list[Chart]:
    """The Monitoring pane's charts of one window (titles and series names in the request's language)."""
    return [
        line_chart(
            _("Requests"), points,
            [(_("answered"), "requests_per_s", "series-a"), (_("errors"), "errors_per_s", "series-bad")],
            rate, point_s,
        ),
        line_chart(
            _("Latency"), points, [("p50", "p50_s", "series-a"), ("p95", "p95_s", "series-b")], seconds, point_s
        ),
        line_chart(_("Output tokens"), points, [(_("tokens"), "output_tokens_per_s", "series-a")], rate, point_s),
        line_chart("CPU", points, [("CPU", "cpu_percent", "series-b")], percent, point_s),
        line_chart(_("Memory (RSS)"), points, [("RSS", "rss_bytes", "series-a")], size, point_s),
    ]  # fmt: skip
