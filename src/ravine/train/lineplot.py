"""The run report's line plots, drawn with Pillow: no matplotlib on the training path.

Every run with a run directory ends by drawing its report (loss, accuracy, learning rate and
gradient norm against epoch or step), so the plots' cost is part of every run. Drawn with
matplotlib they took about 0.1 s for four plots (18 ms a plot went to the axes alone: tick
objects and text laid out through the artist tree), plus about 0.5 s to import matplotlib and
load its fonts once per process -- 4-5% of a 2.4-s benchmark run and most of a short
``ravine train``. These plots need few parts (a frame, nice ticks, grid, lines with gaps, a
dashed reference line, a legend, labels), so they are drawn here directly: lines and grid on a
3x canvas reduced with a box filter (anti-aliasing), text by FreeType at the final size, with
matplotlib's DejaVu Sans and "tab10" colours so they sit beside ravine's other plots. About
5 ms a plot. Every other ravine figure (diagnostics, gallery, compare) is matplotlib's.

:func:`plan` decides what a plot shows (view limits, ticks and their labels, colours, legend
place) as plain data, which tests check; :func:`render` draws a plan to a PNG.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["Axis", "Line", "Plot", "Box", "linear_axis", "log_axis", "plan", "frame",
           "legend_box", "render", "line_plot", "line_plots", "COLORS", "SIZE"]

Series = tuple[str, Sequence[float], Sequence[float | None]]

#: matplotlib's default colour cycle ("tab10").
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
#: Width and height of every plot in pixels (6.4 x 4 inches at 80 dpi, as before).
SIZE = (512, 320)
MARGIN = 0.05  # of the data range on each side, as matplotlib's autoscaling
SCALE = 3  # supersampling factor of the lines
TICK, PAD = 4, 3  # tick length and the gap between a tick and its label, in pixels
GRID = (231, 231, 231)  # matplotlib's grid, #b0b0b0 at alpha 0.3 on white
FONT_SIZE, TITLE_SIZE = 11, 13  # 10 and 12 points at 80 dpi


@dataclass(frozen=True)
class Axis:
    """View limits, ticks and tick labels of one axis. ``lo``/``hi`` are in data units; on a
    log axis positions are linear in log10 of the value."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    log: bool = False
    integer: bool = False

    def fraction(self, value: float) -> float:
        """Where ``value`` lies between the view limits: 0 at ``lo``, 1 at ``hi`` (NaN for a
        non-positive value on a log axis)."""
        if self.log:
            if not value > 0:
                return math.nan
            lo, hi, value = math.log10(self.lo), math.log10(self.hi), math.log10(value)
        else:
            lo, hi = self.lo, self.hi
        return (value - lo) / (hi - lo)


@dataclass(frozen=True)
class Line:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]  # NaN leaves a gap
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Plot:
    """Everything :func:`render` draws."""

    lines: tuple[Line, ...]
    x: Axis
    y: Axis
    xlabel: str
    ylabel: str
    title: str
    legend: str | None  # "upper right", "upper left", "lower left", "lower right" or None


def _finite(values: Any) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def linear_axis(lo: float, hi: float, *, max_bins: int = 6, integer: bool = False) -> Axis:
    """An axis over data from ``lo`` to ``hi``: view limits 5% beyond the data, ticks at the
    multiples of a "nice" step (1, 2, 2.5 or 5 times a power of ten; integer steps of 1, 2 or 5
    times a power of ten when ``integer``): the smallest that gives at most ``max_bins + 1``
    ticks in view (the rule of matplotlib's ``MaxNLocator``, without its offsets)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi == lo:
        pad = 1.0 if integer else (abs(lo) * 0.05 or 0.5)
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    vlo, vhi = lo - MARGIN * span, hi + MARGIN * span
    mag = 10.0 ** math.floor(math.log10((vhi - vlo) / max_bins))
    factors = (1.0, 2.0, 5.0, 10.0, 20.0) if integer else (1.0, 2.0, 2.5, 5.0, 10.0, 20.0)
    for factor in factors:
        step = factor * mag
        if integer and step < 1:
            continue
        first = math.ceil(vlo / step - 1e-9)
        last = math.floor(vhi / step + 1e-9)
        if last - first <= max_bins:
            break
    ticks = tuple(_clean(k * step, step) for k in range(first, last + 1))
    return Axis(vlo, vhi, ticks, tuple(_label(t, step) for t in ticks), integer=integer)


def _clean(value: float, step: float) -> float:
    """A tick value without the float noise of ``k * step`` (and without a negative zero)."""
    value = round(value, max(0, 12 - math.floor(math.log10(step))))
    return 0.0 if abs(value) < step * 1e-9 else value


def _label(value: float, step: float) -> str:
    """A tick label with the digits the step needs (``0.25`` steps: two decimals); very large
    or small values in exponent form, with the digits that tell neighbouring ticks apart."""
    last = math.floor(math.log10(step))  # the place of the step's last non-zero digit
    while abs(step / 10.0**last - round(step / 10.0**last)) > 1e-6:
        last -= 1
    if value != 0 and not 1e-4 <= abs(value) < 1e6:
        digits = math.floor(math.log10(abs(value))) - last + 1
        return f"{value:.{min(max(digits, 1), 17)}g}"
    return f"{value:.{max(0, -last)}f}"


def log_axis(lo: float, hi: float, *, max_ticks: int = 6) -> Axis:
    """A log axis over positive data from ``lo`` to ``hi``: view limits 5% (of the decades)
    beyond the data; ticks at powers of ten (every k-th when there are more than
    ``max_ticks``), or at 1, 2 and 5 times them when the view holds fewer than three powers,
    or at nice linear steps when it spans less than a factor of 2.5."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 1.0, 10.0
    llo, lhi = math.log10(lo), math.log10(hi)
    if lhi == llo:
        llo, lhi = llo - 0.5, lhi + 0.5
    span = lhi - llo
    vlo, vhi = llo - MARGIN * span, lhi + MARGIN * span
    powers = list(range(math.ceil(vlo - 1e-9), math.floor(vhi + 1e-9) + 1))
    if len(powers) >= 3:
        stride = math.ceil(len(powers) / max_ticks)
        ticks = [10.0**p for p in powers[::stride]]
    else:
        ticks = [m * 10.0**p for p in range(math.floor(vlo), math.ceil(vhi) + 1)
                 for m in (1, 2, 5) if vlo - 1e-9 <= math.log10(m * 10.0**p) <= vhi + 1e-9]
        if len(ticks) < 2:  # less than a factor of 2.5 in view: nice linear steps
            inner = linear_axis(10.0**llo, 10.0**lhi, max_bins=4)
            ticks = [t for t in inner.ticks if 10.0**vlo <= t <= 10.0**vhi and t > 0]
    ticks = [float(f"{t:.12g}") for t in ticks]
    return Axis(10.0**vlo, 10.0**vhi, tuple(ticks), tuple(f"{t:g}" for t in ticks), log=True)


def plan(
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    hline: tuple[float, str] | None = None,
    logy: bool = False,
    legend: str = "best",
) -> Plot:
    """What a plot of ``series`` (``(label, xs, ys)``; ``None`` values leave gaps) shows.

    ``hline=(value, label)`` adds a dashed red reference line (e.g. the clip threshold); the
    y view includes it. ``legend`` is a corner ("upper right", ...) or "best" (the corner whose
    box covers the fewest points); a single series without ``hline`` has no legend.
    """
    lines = []
    for index, (label, xs, ys) in enumerate(series):
        values = tuple(math.nan if v is None else float(v) for v in ys)
        if logy:
            values = tuple(v if v > 0 else math.nan for v in values)
        lines.append(Line(label, tuple(float(x) for x in xs), values,
                          COLORS[index % len(COLORS)]))
    xs_all = _finite(x for line in lines for x in line.xs)
    ys_all = _finite(y for line in lines for y in line.ys)
    if hline is not None and (hline[0] > 0 or not logy):
        ys_all.append(float(hline[0]))
    integer = all(float(x).is_integer() for x in xs_all)
    x = linear_axis(min(xs_all, default=0.0), max(xs_all, default=1.0), integer=integer)
    if hline is not None:
        lines.append(Line(hline[1], (x.lo, x.hi), (float(hline[0]),) * 2, COLORS[3], True))
    y = (log_axis if logy else linear_axis)(min(ys_all, default=math.nan),
                                            max(ys_all, default=math.nan))
    shown = legend if len(lines) > 1 else None
    plot = Plot(tuple(lines), x, y, xlabel, ylabel, title, shown)
    if shown == "best":
        plot = replace(plot, legend=_best_corner(plot))
    return plot


# ---------------------------------------------------------------------------- drawing


_THREAD = threading.local()


def _font(size: int) -> Any:
    """DejaVu Sans (matplotlib's default font, found without importing matplotlib), loaded
    once per thread: FreeType's faces must not be used by two threads at once."""
    fonts = _THREAD.__dict__.setdefault("fonts", {})
    if size not in fonts:
        fonts[size] = _load_font(size)
    return fonts[size]


def _load_font(size: int) -> Any:
    from PIL import ImageFont

    path = _font_file()
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _font_file() -> str | None:
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.exists(path):
            return path
    return None


@dataclass(frozen=True)
class Box:
    """The axes' frame in pixels of the final image; :meth:`point` maps data to pixel
    coordinates (pixel ``k`` centred at ``k``, as Pillow draws; the view limits fall on the
    frame)."""

    left: int
    top: int
    right: int
    bottom: int

    def point(self, plot: Plot, x: float, y: float) -> tuple[float, float]:
        return self.column(plot, x), self.row(plot, y)

    def column(self, plot: Plot, x: float) -> float:
        return self.left + plot.x.fraction(x) * (self.right - self.left)

    def row(self, plot: Plot, y: float) -> float:
        return self.bottom - plot.y.fraction(y) * (self.bottom - self.top)


def frame(plot: Plot) -> Box:
    """Where :func:`render` puts the axes' frame: margins sized to the tick labels and titles."""
    font = _font(FONT_SIZE)
    width, height = SIZE
    label_width = max((font.getlength(t) for t in plot.y.labels), default=0.0)
    left = 6 + (FONT_SIZE + 4 if plot.ylabel else 0) + math.ceil(label_width) + PAD + TICK
    last_x = font.getlength(plot.x.labels[-1]) / 2 if plot.x.labels else 0.0
    right = width - max(12, math.ceil(last_x) + 4)
    top = 10 + (TITLE_SIZE + 8 if plot.title else 0)
    bottom = height - (TICK + PAD + FONT_SIZE + 4 + (FONT_SIZE + 6 if plot.xlabel else 0))
    return Box(left, top, right, bottom)


def _legend_size(plot: Plot) -> tuple[int, int]:
    font = _font(FONT_SIZE)
    text = max(font.getlength(line.label) for line in plot.lines)
    return math.ceil(6 + 22 + 6 + text + 6), 6 + 15 * len(plot.lines)


def _corner_box(box: Box, size: tuple[int, int], corner: str) -> tuple[int, int, int, int]:
    w, h = size
    x0 = box.left + 8 if corner.endswith("left") else box.right - 8 - w
    y0 = box.top + 8 if corner.startswith("upper") else box.bottom - 8 - h
    return x0, y0, x0 + w, y0 + h


def legend_box(plot: Plot, box: Box | None = None) -> tuple[int, int, int, int] | None:
    """The legend's box ``(x0, y0, x1, y1)`` in pixels (``box``: the plot's :func:`frame`, if
    already at hand), or ``None`` when there is none."""
    if plot.legend is None:
        return None
    return _corner_box(box or frame(plot), _legend_size(plot), plot.legend)


def _best_corner(plot: Plot) -> str:
    """The corner whose legend box covers the fewest data points (first in matplotlib's order
    on a tie)."""
    box = frame(plot)
    points = [box.point(plot, x, y) for line in plot.lines if not line.dashed
              for x, y in zip(line.xs, line.ys, strict=True) if math.isfinite(y)]
    size = _legend_size(plot)

    def covered(corner: str) -> int:
        x0, y0, x1, y1 = _corner_box(box, size, corner)
        return sum(x0 <= px <= x1 and y0 <= py <= y1 for px, py in points)

    return min(("upper right", "upper left", "lower left", "lower right"), key=covered)


def _fine(pixel: float) -> float:
    """A coordinate of the final image on the supersampled canvas: pixel k of the final image,
    centred at k, is the canvas' pixels kS .. kS+S-1, centred at kS+(S-1)/2."""
    return pixel * SCALE + (SCALE - 1) / 2


def _runs(line: Line, box: Box, plot: Plot) -> list[list[tuple[float, float]]]:
    """The line's stretches between gaps, in pixels of the supersampled canvas."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(line.xs, line.ys, strict=True):
        px, py = box.point(plot, x, y)
        if math.isfinite(px) and math.isfinite(py):
            runs[-1].append((_fine(px), _fine(py)))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


Points = list[tuple[float, float]]


def _dashes(run: Points, on: float, off: float) -> list[Points]:
    """A two-point (horizontal) run cut into dashes."""
    (x0, y), (x1, _) = run[0], run[-1]
    out, x = [], x0
    while x < x1:
        out.append([(x, y), (min(x + on, x1), y)])
        x += on + off
    return out


def render(plot: Plot, path: str | os.PathLike[str]) -> Path:
    """Draw ``plot`` to a PNG at ``path`` (64 colours, fast zlib level: a line plot has a few
    colours and their anti-aliasing ramps, so nothing visible is lost)."""
    from PIL import Image, ImageDraw

    box = frame(plot)
    width, height = SIZE
    canvas = Image.new("RGB", (width * SCALE, height * SCALE), "white")
    draw = ImageDraw.Draw(canvas)
    xt = [round(box.column(plot, t)) for t in plot.x.ticks]
    yt = [round(box.row(plot, t)) for t in plot.y.ticks]
    for px in xt:
        draw.line([(_fine(px), box.top * SCALE), (_fine(px), box.bottom * SCALE)], fill=GRID,
                  width=SCALE)
    for py in yt:
        draw.line([(box.left * SCALE, _fine(py)), (box.right * SCALE, _fine(py))], fill=GRID,
                  width=SCALE)
    for line in plot.lines:
        for run in _runs(line, box, plot):
            pieces = _dashes(run, 6.0 * SCALE, 3.0 * SCALE) if line.dashed else [run]
            for piece in pieces:
                if len(piece) > 1:
                    draw.line(piece, fill=line.color, width=round(1.4 * SCALE), joint="curve")
                if not line.dashed:  # round ends (a lone point between gaps is a dot)
                    for cx, cy in {piece[0], piece[-1]}:
                        r = 0.7 * SCALE
                        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=line.color)
    image = canvas.reduce(SCALE)
    draw = ImageDraw.Draw(image)
    # the frame and the ticks, crisp at the final size
    draw.rectangle([box.left, box.top, box.right, box.bottom], outline="black", width=1)
    font = _font(FONT_SIZE)
    for px, label in zip(xt, plot.x.labels, strict=True):
        if box.left <= px <= box.right:
            draw.line([(px, box.bottom), (px, box.bottom + TICK)], fill="black")
            draw.text((px, box.bottom + TICK + PAD), label, fill="black", font=font, anchor="mt")
    for py, label in zip(yt, plot.y.labels, strict=True):
        if box.top <= py <= box.bottom:
            draw.line([(box.left - TICK, py), (box.left, py)], fill="black")
            draw.text((box.left - TICK - PAD, py), label, fill="black", font=font, anchor="rm")
    middle = (box.left + box.right) / 2
    if plot.xlabel:
        draw.text((middle, box.bottom + TICK + PAD + FONT_SIZE + 4), plot.xlabel, fill="black",
                  font=font, anchor="mt")
    if plot.ylabel:
        _vertical_text(image, plot.ylabel, 6, (box.top + box.bottom) / 2, font)
    if plot.title:
        draw.text((middle, box.top - 6), plot.title, fill="black", font=_font(TITLE_SIZE),
                  anchor="ms")
    corners = legend_box(plot, box)
    if corners is not None:
        _draw_legend(draw, plot, corners, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(64, method=2).save(path, format="png", compress_level=1)  # 2: fast octree
    return path


def _vertical_text(image: Any, text: str, x: int, centre_y: float, font: Any) -> None:
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = font.getbbox(text)
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((1 - x0, 1 - y0), text, fill=255, font=font)
    mask = mask.transpose(Image.Transpose.ROTATE_90)
    image.paste((0, 0, 0), (x, round(centre_y - mask.height / 2)), mask)


def _draw_legend(draw: Any, plot: Plot, corners: tuple[int, int, int, int], font: Any) -> None:
    x0, y0, x1, y1 = corners
    draw.rounded_rectangle([x0, y0, x1, y1], radius=3, fill="white", outline=(204, 204, 204))
    for index, line in enumerate(plot.lines):
        y = y0 + 3 + 15 * index + 7.5
        if line.dashed:
            for start in (x0 + 6, x0 + 17):
                draw.line([(start, y), (start + 6, y)], fill=line.color, width=2)
        else:
            draw.line([(x0 + 6, y), (x0 + 28, y)], fill=line.color, width=2)
        draw.text((x0 + 34, y), line.label, fill="black", font=font, anchor="lm")


def line_plot(path: str | os.PathLike[str], series: Sequence[Series], **options: Any) -> Path:
    """Save a PNG with one line per ``(label, xs, ys)`` (``None`` values leave gaps): the
    :func:`plan` of the series (``options`` are its keywords: ``xlabel``, ``ylabel``,
    ``title``, ``hline``, ``logy``, ``legend``), drawn by :func:`render`."""
    return render(plan(series, **options), path)


@functools.lru_cache(maxsize=1)
def _helper() -> ThreadPoolExecutor:
    """The one thread that draws every other plot of :func:`line_plots`, kept for the process."""
    return ThreadPoolExecutor(1, thread_name_prefix="ravine-plots")


def line_plots(jobs: Sequence[tuple[str | os.PathLike[str], Sequence[Series], dict[str, Any]]]
               ) -> list[Path]:
    """:func:`line_plot` for each ``(path, series, options)``, two at a time: every other plot
    is drawn on one helper thread (kept for the process, with its own fonts). Pillow lets go of
    the GIL while it fills, reduces, quantizes and compresses, so on two cores the plots take
    about 60% of the time one after the other. An error of any plot is raised, once the helper
    has finished its plots (this thread's error first)."""
    if len(jobs) < 2:
        return [line_plot(path, series, **options) for path, series, options in jobs]
    helped = {i: _helper().submit(line_plot, path, series, **options)
              for i, (path, series, options) in enumerate(jobs) if i % 2}
    try:
        done = {i: line_plot(path, series, **options)
                for i, (path, series, options) in enumerate(jobs) if not i % 2}
    finally:
        wait(helped.values())
    done.update((i, future.result()) for i, future in helped.items())
    return [done[i] for i in range(len(jobs))]
