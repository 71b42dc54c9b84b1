"""The run report's line plots (ravine.train.lineplot): the tick rule checked on many ranges and
on hand-worked answers, and the drawn PNG checked pixel by pixel against where the plan says
each point, gap, tick, reference line and legend must be."""

from __future__ import annotations

import math
import random
import threading

import pytest
from PIL import Image

from ravine.train.lineplot import (
    COLORS,
    SIZE,
    frame,
    legend_box,
    line_plot,
    line_plots,
    linear_axis,
    log_axis,
    plan,
    render,
)


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def near(a, b, tol=40) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) <= tol


def pixels(path) -> Image.Image:
    with Image.open(path) as image:
        assert image.size == SIZE and image.mode == "P"
        return image.convert("RGB")


def colour_near(image, point, colour, radius=1, tol=40) -> bool:
    x, y = round(point[0]), round(point[1])
    return any(near(image.getpixel((x + dx, y + dy)), colour, tol)
               for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1))


# ---------------------------------------------------------------------------- ticks


@pytest.mark.parametrize(
    ("lo", "hi", "integer", "labels"),
    [
        # view 5% beyond the data; the smallest nice step giving at most 7 ticks in view
        (0.0, 1.0, False, ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0")),
        (-0.37, 2.4, False, ("-0.5", "0.0", "0.5", "1.0", "1.5", "2.0", "2.5")),
        (1e-6, 3e-6, False, ("1e-06", "1.5e-06", "2e-06", "2.5e-06", "3e-06")),
        (0.0, 360.0, True, ("0", "100", "200", "300")),  # steps of a 360-step run
        (1.0, 10.0, True, ("2", "4", "6", "8", "10")),  # 10 epochs: view 0.55 .. 10.45
        (1.0, 3.0, True, ("1", "2", "3")),
        (1.0, 1.0, True, ("0", "1", "2")),  # one epoch: widened by 1 each side
    ],
)
def test_linear_ticks_hand_worked(lo, hi, integer, labels):
    axis = linear_axis(lo, hi, integer=integer)
    assert axis.labels == labels


def test_linear_ticks_on_many_ranges_are_nice_even_and_in_view():
    rng = random.Random(0)
    for case in range(3000):
        integer = case % 3 == 0
        if integer:
            lo = float(rng.randint(0, 50))
            hi = lo + rng.randint(0, 20000)
        else:
            lo = rng.uniform(-10, 10) * 10.0 ** rng.randint(-5, 5)
            # spans down to a millionth of the values (smaller ones would need an offset)
            hi = lo + max(abs(rng.gauss(0, 1)) * 10.0 ** rng.randint(-5, 5), 1e-6 * abs(lo))
        axis = linear_axis(lo, hi, integer=integer)
        ticks = axis.ticks
        assert 2 <= len(ticks) <= 7, (lo, hi, ticks)
        span = axis.hi - axis.lo
        if hi > lo:  # the view is the data's range widened by 5% on each side
            assert axis.lo == pytest.approx(lo - 0.05 * (hi - lo), rel=1e-9, abs=1e-300)
            assert axis.hi == pytest.approx(hi + 0.05 * (hi - lo), rel=1e-9, abs=1e-300)
        assert all(axis.lo - 1e-9 * span <= t <= axis.hi + 1e-9 * span for t in ticks)
        steps = [b - a for a, b in zip(ticks[:-1], ticks[1:], strict=True)]
        step = steps[0]
        assert all(s == pytest.approx(step, rel=1e-6) for s in steps)
        mantissa = step / 10.0 ** math.floor(math.log10(step) + 1e-6)
        allowed = (1, 2, 5) if integer else (1, 2, 2.5, 5)
        assert any(mantissa == pytest.approx(m, rel=1e-6) for m in allowed), (step, mantissa)
        assert all(round(t / step) * step == pytest.approx(t, rel=1e-6, abs=1e-9 * step)
                   for t in ticks)  # multiples of the step
        if integer:
            assert all(float(t).is_integer() for t in ticks) and step >= 1
        # the next smaller nice step would have put more than 7 ticks in view
        smaller = [m * 10.0 ** k for k in range(-20, 20) for m in allowed]
        below = max(s for s in smaller if s < step * (1 - 1e-9))
        if not integer or below >= 1:
            count = math.floor(axis.hi / below + 1e-9) - math.ceil(axis.lo / below - 1e-9) + 1
            assert count > 7, (lo, hi, step, below, count)
        # every label reads back as its tick, and no two labels are the same
        assert all(float(label) == pytest.approx(t, rel=1e-6, abs=1e-6 * step)
                   for label, t in zip(axis.labels, ticks, strict=True))
        assert len(set(axis.labels)) == len(ticks)


@pytest.mark.parametrize(
    ("lo", "hi", "labels"),
    [
        (0.09, 5.0, ("0.1", "0.2", "0.5", "1", "2", "5")),  # fewer than 3 powers: 1-2-5
        (1e-3, 10.0, ("0.001", "0.01", "0.1", "1", "10")),
        (1e-8, 1e3, ("1e-08", "1e-06", "0.0001", "0.01", "1", "100")),  # every 2nd power
        (0.8, 1.2, ("0.8", "0.9", "1", "1.1", "1.2")),  # under a factor 2.5: linear steps
    ],
)
def test_log_ticks_hand_worked(lo, hi, labels):
    axis = log_axis(lo, hi)
    assert axis.labels == labels
    assert math.log10(axis.lo) == pytest.approx(math.log10(lo) - 0.05 * math.log10(hi / lo))
    assert axis.fraction(lo) == pytest.approx(0.05 / 1.1) and axis.fraction(hi) == pytest.approx(
        1.05 / 1.1)
    assert math.isnan(axis.fraction(0.0)) and math.isnan(axis.fraction(-1.0))


# ---------------------------------------------------------------------------- pixels


def test_every_point_lies_on_its_line_and_a_gap_stays_empty(tmp_path):
    xs = list(range(21))
    ys = [None if 8 <= x <= 12 else 0.1 * x for x in xs]  # a gap from 8 to 12
    down = [2.0 - 0.1 * x for x in xs]
    p = plan([("up", xs, ys), ("down", xs, down)], xlabel="epoch", ylabel="value",
             title="Two lines")
    path = render(p, tmp_path / "p.png")
    image = pixels(path)
    box = frame(p)
    up, dn = rgb(COLORS[0]), rgb(COLORS[1])
    x0, y0, x1, y1 = legend_box(p)

    def visible(point):  # not under the legend, which is drawn over the lines
        return not (x0 - 2 <= point[0] <= x1 + 2 and y0 - 2 <= point[1] <= y1 + 2)

    checked = 0
    for x, y in zip(xs, ys, strict=True):
        for value, colour in ((y, up), (down[x], dn)):
            if value is not None and visible(box.point(p, x, value)):
                assert colour_near(image, box.point(p, x, value), colour), (x, value)
                checked += 1
    assert checked >= 30
    for x in (9, 10, 11):  # inside the gap: where the line would be, there is none
        assert not colour_near(image, box.point(p, x, 0.1 * x), up, radius=2)
    # the frame is black, and a tick mark hangs below it at each x tick
    assert near(image.getpixel((box.left, (box.top + box.bottom) // 2)), (0, 0, 0), 60)
    for t in p.x.ticks:
        px = round(box.column(p, t))
        assert near(image.getpixel((px, box.bottom + 2)), (0, 0, 0), 60), t
    assert p.x.integer and all(float(t).is_integer() for t in p.x.ticks)


def test_best_legend_corner_leaves_the_data_visible(tmp_path):
    xs = list(range(50))
    rising = [float(x) for x in xs]  # lower left to upper right
    p = plan([("a", xs, rising), ("b", xs, [x + 3.0 for x in rising])], xlabel="step",
             ylabel="y")
    assert p.legend in ("upper left", "lower right")
    for legend in ("upper right", "lower left"):  # a named corner is kept
        assert plan([("a", xs, rising), ("b", xs, rising)], xlabel="x", ylabel="y",
                    legend=legend).legend == legend
    # one line and no reference line: no legend
    assert plan([("a", xs, rising)], xlabel="x", ylabel="y").legend is None
    image = pixels(render(p, tmp_path / "legend.png"))
    box = frame(p)
    # the legend's sample lines are drawn in the lines' colours inside the chosen corner
    x0 = box.left + 8 if p.legend.endswith("left") else None
    region = (image.crop((box.left, box.top, box.right, box.bottom)) if x0 is None else
              image.crop((x0, box.top, x0 + 40, box.bottom)))
    colours = {c for _, c in region.getcolors(1 << 16)}
    assert any(near(c, rgb(COLORS[0]), 12) for c in colours)


def test_reference_line_is_dashed_red_and_in_view_on_a_log_axis(tmp_path):
    steps = list(range(1, 101))
    norms = [0.5 + 0.01 * s for s in steps]
    norms[10] = -1.0  # not drawable on a log axis: a gap, not an error
    p = plan([("pre-clip norm", steps, norms)], xlabel="step", ylabel="gradient norm",
             logy=True, hline=(5.0, "clip_norm = 5"))
    assert p.y.log and p.y.hi > 5.0 and p.legend is not None
    assert math.isnan(p.lines[0].ys[10])
    image = pixels(render(p, tmp_path / "norm.png"))
    box = frame(p)
    _, row = box.point(p, 1, 5.0)
    red = [colour_near(image, (x, row), rgb(COLORS[3]), radius=0, tol=60)
           for x in range(box.left + 2, box.right - 2)]
    assert 0.4 < sum(red) / len(red) < 0.9  # dashes: red, then a gap, along the whole row
    assert colour_near(image, box.point(p, 50, norms[49]), rgb(COLORS[0]))


def test_line_plot_writes_a_small_palette_png(tmp_path):
    path = line_plot(tmp_path / "sub" / "lr.png", [("lr", [0, 1, 2], [0.1, 0.05, 0.0])],
                     xlabel="step", ylabel="learning rate", title="Learning rate")
    assert path == tmp_path / "sub" / "lr.png"
    image = pixels(path)
    assert len(image.getcolors(64)) <= 64
    # nothing to draw is still a plot (empty axes), not an error
    empty = line_plot(tmp_path / "empty.png", [("x", [], [])], xlabel="step", ylabel="y")
    assert near(pixels(empty).getpixel((SIZE[0] // 2, SIZE[1] // 2)), (255, 255, 255), 6)


def test_plots_drawn_two_at_a_time_are_the_plots_drawn_one_by_one(tmp_path):
    xs = list(range(1, 41))
    jobs = [(tmp_path / "two" / f"p{i}.png",
             [("a", xs, [math.sin(x / (i + 1)) + 2 for x in xs]), ("b", xs, [1.0 + i] * 40)],
             {"title": f"plot {i}", "xlabel": "step", "ylabel": "value", "logy": i % 2 == 1})
            for i in range(5)]
    drawn = line_plots(jobs)
    assert drawn == [path for path, _, _ in jobs]
    for path, series, options in jobs:
        alone = line_plot(tmp_path / "one" / path.name, series, **options)
        assert path.read_bytes() == alone.read_bytes(), path.name


def test_an_error_in_either_thread_is_raised_after_both_finish(tmp_path):
    good = [("a", [1, 2, 3], [1.0, 2.0, 3.0])]
    for bad_index in (0, 1):  # drawn here, and drawn by the helper thread
        axes = {"xlabel": "x", "ylabel": "y"}
        jobs = [(tmp_path / f"{bad_index}-{i}.png", good, axes) for i in range(4)]
        jobs[bad_index] = (tmp_path / "x.png", good, {**axes, "no_such_option": 1})
        with pytest.raises(TypeError, match="no_such_option"):
            line_plots(jobs)
        # the helper thread's plots (every other one) are finished, not left half-drawn
        assert all(path.exists() for i, (path, _, _) in enumerate(jobs)
                   if i % 2 and i != bad_index)


def test_each_thread_draws_text_with_a_font_of_its_own():
    from ravine.train import lineplot

    here = lineplot._font(11)
    there: list[object] = []
    worker = threading.Thread(target=lambda: there.append(lineplot._font(11)))
    worker.start()
    worker.join()
    assert lineplot._font(11) is here and there[0] is not here
