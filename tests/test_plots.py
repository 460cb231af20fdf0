"""Tests of shrinkssm.plots: the figures a run directory gets, read back from matplotlib."""

import math

import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from shrinkssm import plots
from shrinkssm.compress.history import LayerEvent, ReductionEvent, ReductionHistory


def _history(dims=(32, 32, 16), steps=(10, 20)):
    events, dims = [], list(dims)
    for step in steps:
        layers = []
        for i, old in enumerate(dims):
            new = old * 3 // 4
            layers.append(LayerEvent(layer=i, old=old, new=new, target=new,
                                     hsv=[math.exp(-k / 5) for k in range(old)]))
            dims[i] = new
        events.append(ReductionEvent(step=step, mode="tolerance", method="balanced",
                                     output="complex", layers=layers))
    return ReductionHistory(events)


def _rows(lm=False):
    metric = "bits_per_char" if lm else "accuracy"
    rows = []
    for step in range(5, 201, 5):
        rows.append({"step": step, "wall_seconds": step / 50, "loss": 2.3 - step / 200})
        if step % 20 == 0:
            rows.append({"step": step, "wall_seconds": step / 50, "val_loss": 2.3 - step / 210,
                         f"val_{metric}": step / 250})
    return rows


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, captured just before they are written; the texts
    found outside the figure (or over another panel) are in ``figures["clipped"]``."""
    captured = {"clipped": []}
    save = plots._save

    def keep(fig, path):
        fig.canvas.draw()                       # lays out ticks and labels for inspection
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        for ax, own in zip(fig.axes, panels):
            for text in (ax.yaxis.label, ax.xaxis.label, ax.title):
                if not text.get_text():
                    continue
                e = text.get_window_extent(renderer)
                outside = e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 \
                    or e.y1 > box.y1 + 1
                over = any(p is not own and e.overlaps(p) for p in panels)
                if outside or over:
                    captured["clipped"].append((path.name, text.get_text()))
        captured[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return captured


def test_every_axis_has_a_unit_and_the_loss_says_nats(tmp_path, figures):
    plots.plot_run(_rows(), _history(), [32, 32, 16], 200, tmp_path, "accuracy")
    curves = figures["curves.png"].axes
    assert curves[0].get_ylabel() == "loss: cross-entropy (nats)"
    assert curves[2].get_ylabel() == "validation accuracy (fraction correct)"
    assert curves[3].get_xlabel() == "training time (s, validation excluded)"
    assert curves[0].get_yscale() == "linear"             # 2.3 -> 1.3 spans less than 10x
    plots.plot_run(_rows(lm=True), _history(), [32, 32, 16], 200, tmp_path / "lm", "bits_per_char")
    assert "bits per character" in figures["curves.png"].axes[2].get_ylabel()


def test_state_sizes_are_on_a_linear_integer_axis(tmp_path, figures):
    plots.plot_state_dims(_history(), [32, 32, 16], 200, tmp_path / "state_dims.png")
    ax = figures["state_dims.png"].axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    ticks = [t for t in ax.get_yticks() if 0 <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert not any("times" in s or "\u00d7" in s or "^" in s for s in labels), labels
    # the reductions (steps 10, 20) fill the plot instead of its first tenth
    assert ax.get_xlim()[1] < 200 and "until the end of training, step 200" in ax.get_xlabel()


def test_layers_keep_their_colour_across_plots(tmp_path, figures):
    plots.plot_run(_rows(), _history(), [32, 32, 16], 200, tmp_path, "accuracy")
    steps = figures["state_dims.png"].axes[0].get_lines()
    spectra = figures["hsv_spectra.png"].axes
    for layer in range(3):
        colour = to_rgba(plots.layer_color(layer))
        assert any(to_rgba(line.get_color()) == colour for line in steps)
        last_point = [line for line in spectra[layer].get_lines()
                      if line.get_label().startswith("step 20")][0]
        assert to_rgba(last_point.get_color()) == pytest.approx(colour)
        assert to_rgba(spectra[layer].title.get_color()) == colour


def test_a_one_layer_spectrum_is_a_readable_size(tmp_path):
    path = plots.plot_hsv_spectra(_history(dims=(64,)), tmp_path / "hsv.png")
    width, height = Image.open(path).size
    assert width >= 700 and height >= 450


def test_nothing_is_clipped(tmp_path, figures):
    plots.plot_run(_rows(lm=True), _history(), [32, 32, 16], 200, tmp_path, "bits_per_char")
    plots.plot_run(_rows(), _history(dims=(256,)), [256], 200, tmp_path / "one", "accuracy")
    assert figures["clipped"] == []


def test_a_log_loss_axis_has_plain_labelled_ticks(tmp_path, figures):
    rows = [{"step": s, "wall_seconds": s / 10, "loss": 2.3 * 0.98 ** s} for s in range(1, 200)]
    plots.plot_training_curves(rows, tmp_path / "curves.png")
    ax = figures["curves.png"].axes[0]
    assert ax.get_yscale() == "log"                       # 2.3 -> 0.04 spans more than 10x
    low, high = ax.get_ylim()
    labels = [t.get_text() for t in ax.get_yticklabels()
              if low <= t.get_position()[1] <= high and t.get_text()]
    assert len(labels) >= 3 and all(set(label) <= set("0123456789.") for label in labels), labels


def _track():
    """Tracked HSV rows of one layer: 8 states, a reduction to 6 between steps 20 and 30; the
    per-state energies swap the top two states between steps 10 and 20."""
    rows = []
    for step, n in ((10, 8), (20, 8), (30, 6), (40, 6)):
        hsv = [math.exp(-k / 2) * (1 + step / 100) for k in range(n)]
        energy = list(hsv)
        if step == 20:
            energy[0], energy[1] = energy[1], energy[0] + 1
        rows.append({"step": step, "layers": [{"layer": 0, "d_state": n, "hsv": hsv,
                                               "state_energy": energy}]})
    return rows


def test_hsv_tracks_are_log_scale_with_a_cut_per_tau(tmp_path, figures):
    files = plots.plot_run(_rows(), _history(dims=(8,)), [8], 200, tmp_path, "accuracy",
                           track=_track(), taus=(0.01, 0.2))
    assert {p.name for p in files} >= {"hsv_tracks.png", "hsv_stability.png"}
    ax = figures["hsv_tracks.png"].axes[0]
    assert ax.get_yscale() == "log"
    cuts = [line for line in ax.get_lines() if line.get_label().startswith("cut of")]
    assert [c.get_label().split(" (")[0] for c in cuts] == ["cut of \u03c4 = 0.01", "cut of \u03c4 = 0.2"]
    # the cut of tau = 0.2 at step 40 is sigma_r with r from the energy rule on that row's HSVs
    hsv = _track()[-1]["layers"][0]["hsv"]
    total, running, r = sum(hsv), 0.0, 0
    while running < 0.8 * total:
        running += hsv[r]
        r += 1
    assert cuts[1].get_ydata()[-1] == pytest.approx(hsv[r - 1])
    assert f"keeps {r} at the end" in cuts[1].get_label()
    stability = figures["hsv_stability.png"].axes[0]
    lines = [line for line in stability.get_lines() if line.get_label().startswith("\u03c4")]
    # compared: 10 -> 20 (same size) and 30 -> 40; 20 -> 30 crosses the reduction
    assert list(lines[0].get_xdata()) == [20, 40]
    assert figures["clipped"] == []
