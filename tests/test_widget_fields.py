"""The widgets' option fields come from the config dataclasses' field metadata (issue 12):
each control's default, choices, range and tooltip are the field's, except where a widget
differs on purpose (listed here, so that a new difference is a visible change)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

pytest.importorskip("napari")

from napari_sim_uq.core.config import (
    field_default,
    field_type,
    option,
    option_choices,
    option_meta,
)

pytestmark = pytest.mark.gui  # needs a Qt application (and napari's viewer)

PLUGIN = "napari-sim-uq"

#: bounds each widget narrows on purpose (a value the dataclass refuses, e.g. lr > 0)
NARROWED = {
    "Train SIM model": {
        "lr": {"minimum"},
        "model.dropout": {"maximum"},
        "loss.var_floor": {"minimum"},
    },
    "Generate SIM data": {
        "read_noise": {"minimum"},
        "period_lr": {"minimum"},
        "psf_sigma_lr": {"minimum"},
        "high_noise_factor": {"minimum"},
        "line_width_hr": {"minimum"},
    },
}
#: fields whose tooltip is the widget's own text, not the field's help (which names
#: command-line things: CKPT_DIR, a comma-separated word, only the dataset's GT files)
OWN_TIPS = {
    "Train SIM model": {
        "resume",
        "supervised",
        "lr_schedule",
        "model.uq_targets",
        "debug_every_epochs",
    },
    "Generate SIM data": set(),
}


def _value(values: dict, key: str):
    for part in key.split("."):
        values = values[part]
    return values


def _spins(widget):
    from qtpy.QtWidgets import QAbstractSpinBox

    if isinstance(widget, QAbstractSpinBox):
        return [widget]
    return list(getattr(widget, "spins", ()))


@pytest.mark.parametrize("name", ["Train SIM model", "Generate SIM data"])
def test_widget_fields_are_the_config_fields(make_napari_viewer, name):
    from qtpy.QtWidgets import QComboBox

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    f = widget.fields
    values = f.values()
    # every option of the widget is a config field, except the generator job's options
    unbound = {k for k in f.keys() if k not in f.bindings}
    assert all(k.startswith("job.") for k in unbound), unbound
    assert len(f.bindings) >= 20

    narrowed, own_tips = {}, set()
    for key, b in f.bindings.items():
        fl = {x.name: x for x in fields(b.config_cls)}[b.name]
        meta = option_meta(fl) or {}
        control = f.widgets[key]
        assert _value(values, key) == field_default(fl), key
        choices = option_choices(meta) if meta else None
        if choices is not None:
            if isinstance(control, QComboBox):
                items = [control.itemText(i) for i in range(control.count())]
                assert items == [str(c) for c in choices], key
            else:
                assert list(control.boxes) == list(choices), key
        for spin in _spins(control):
            lo, hi = meta.get("minimum"), meta.get("maximum")
            _tp, optional = field_type(b.config_cls, b.name)
            if optional and spin.specialValueText():
                lo = None if lo is None else lo - 1  # the minimum shows None
            if lo is not None:
                if "minimum" in b.narrowed:
                    assert spin.minimum() > lo, key
                else:
                    assert spin.minimum() == lo, key
            if hi is not None:
                if "maximum" in b.narrowed:
                    assert spin.maximum() < hi, key
                else:
                    assert spin.maximum() == hi, key
        if b.narrowed:
            narrowed[key] = set(b.narrowed)
        if b.own_tip:
            own_tips.add(key)
        else:
            assert control.toolTip() == meta.get("help", control.toolTip()), key
    assert narrowed == NARROWED[name]
    assert own_tips == OWN_TIPS[name]


def test_config_field_controls_follow_type_and_metadata(qtbot):
    from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

    from napari_sim_uq._napari._widgets import Fields

    @dataclass
    class Demo:
        n: int = option(3, help="a count", minimum=1, maximum=9)
        x: float = option(0.5, help="a fraction", minimum=0.0, maximum=1.0)
        mode: str = option("b", help="a mode", choices=("a", "b"))
        on: bool = option(True, help="a switch")
        pick: tuple[str, ...] = option(("a",), help="some", choices=("a", "b"), sep=",")
        size: tuple[int, int] = option((4, 6), help="a pair", minimum=2)
        limit: int | None = option(None, help="a limit", minimum=1)
        plain: float = 2.0

    f = Fields()
    n = f.add_config_field(Demo, "n")
    assert isinstance(n, QSpinBox) and (n.minimum(), n.maximum(), n.value()) == (1, 9, 3)
    assert n.toolTip() == "a count"
    x = f.add_config_field(Demo, "x", "group.x", hi=0.8)  # narrowed on purpose
    assert isinstance(x, QDoubleSpinBox) and (x.minimum(), x.maximum()) == (0.0, 0.8)
    assert f.bindings["group.x"].narrowed == {"maximum"}
    mode = f.add_config_field(Demo, "mode")
    assert isinstance(mode, QComboBox) and mode.currentText() == "b" and mode.count() == 2
    assert isinstance(f.add_config_field(Demo, "on"), QCheckBox)
    assert list(f.add_config_field(Demo, "pick").boxes) == ["a", "b"]
    size = f.add_config_field(Demo, "size", hi=100)
    assert [(s.minimum(), s.maximum(), s.value()) for s in size.spins] == [(2, 100, 4), (2, 100, 6)]
    limit = f.add_config_field(Demo, "limit", hi=50, none_label="none")
    assert limit.minimum() == 0 and limit.specialValueText() == "none"
    plain = f.add_config_field(Demo, "plain", lo=0.0, hi=5.0, tip="own")
    assert plain.toolTip() == "own" and not f.bindings["plain"].own_tip  # no help to replace
    for w in (n, x, mode, size, limit, plain):
        qtbot.addWidget(w)
    assert f.values() == {
        "n": 3,
        "group": {"x": 0.5},
        "mode": "b",
        "on": True,
        "pick": ("a",),
        "size": (4, 6),
        "limit": None,
        "plain": 2.0,
    }

    g = Fields()
    with pytest.raises(ValueError, match="widens"):
        g.add_config_field(Demo, "n", lo=0)
    with pytest.raises(ValueError, match="already"):
        g.add_config_field(Demo, "mode", choices=("a", "b"))
    with pytest.raises(ValueError, match="no maximum"):
        g.add_config_field(Demo, "size")
    with pytest.raises(ValueError, match="cannot be None"):
        g.add_config_field(Demo, "n", none_label="none")
    with pytest.raises(ValueError, match="no field"):
        g.add_config_field(Demo, "missing")
