"""The suite's background runs (background.py): started once each, dependencies first, and timed under the
starter that submitted them (the terminal summary's table of where the suite's time goes)."""

import time

from background import STARTERS, Background


def test_background_runs_start_once_and_are_timed_under_their_starter(tmp_path_factory):
    calls = []

    def base(bg, session):
        calls.append("base")
        return bg.run(time.sleep, 0.05)

    def top(bg, session):
        calls.append("top")
        dependency = bg.start("t_base")  # started first, timed as its own
        return bg.run(lambda: dependency.result() or "done")

    STARTERS.update(t_base=base, t_top=top)
    bg = Background(tmp_path_factory, session=None)
    try:
        assert bg.start("t_top").result() == "done" and bg.start("t_base").result() is None
        assert calls == ["top", "base"]  # each starter called once
    finally:
        bg.close()
        del STARTERS["t_base"], STARTERS["t_top"]
    timings = {label: (began, ended) for label, began, ended in bg.timings}
    assert set(timings) == {"t_base", "t_top"}
    assert timings["t_base"][1] - timings["t_base"][0] >= 0.05
    assert timings["t_top"][1] >= timings["t_base"][1]  # it waited for its dependency
    lines = {line.split()[0]: line for line in bg.report()}
    assert set(lines) == {"t_base", "t_top"}
    assert float(lines["t_base"].rsplit("(", 1)[1].split()[0]) >= 0.05  # "... (   0.1 s)"
