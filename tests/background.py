"""Recipe runs the tests wait for, started in the background before they are needed.

A recipe run is a chain of subprocesses, so two of them run at once in two threads while pytest runs
the tests that need none (one process). At the start of the session :func:`prefetch` walks the
collected tests in the order they will run and starts what each needs, in that order: the shared
tiny experiments (``conftest.py``), the corpus matrix (``test_corpora_e2e.py``), the fault scenarios
(``test_faults.py``). A test's fixture then waits for its run's result; a run no selected test needs
is never started, so ``pytest tests/test_x.py`` starts only what that file needs.

A starter (``@starts("name")``, named like the fixture that returns its result) is called once, in
the main thread, with the :class:`Background`; it starts what it depends on first, through
:meth:`Background.start`, then submits its own work with :meth:`Background.run`. Work is taken in
submission order, so a run that waits for another (the matrix's cells for its demo runs, the fault
scenarios for their base experiment) only waits for one already running or done: no deadlock.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import pytest

WORKERS = 2  # recipe runs at once (each mostly one single-threaded process), beside the test process

STARTERS: dict[str, Callable] = {}


def starts(name: str):
    """Register ``fn(background, session) -> handle`` as the starter of the fixture ``name``."""

    def register(fn):
        STARTERS[name] = fn
        return fn

    return register


def needed_starters(item) -> list[str]:
    """The starters a test needs: its fixtures', and ``<which>_exp`` of a test parametrized by ``which``
    that asks for that experiment with ``request.getfixturevalue``."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    asked = [f"{params['which']}_exp"] if isinstance(params.get("which"), str) else []
    return [name for name in [*item.fixturenames, *asked] if name in STARTERS]


def started(name: str, scope: str = "module"):
    """A fixture ``name`` giving the handle of the starter ``name`` (its futures: the test waits on them)."""

    @pytest.fixture(scope=scope, name=name)
    def handle(background):
        return background.start(name)

    return handle


class Background:
    def __init__(self, tmp_path_factory, session, workers: int = WORKERS):
        self.tmp, self.session = tmp_path_factory, session
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="recipe-run")
        self.handles: dict[str, object] = {}
        self.starting: list[str] = []  # the starters being called (a starter starts what it depends on first)
        self.t0 = time.monotonic()
        self.timings: list[tuple[str, float, float]] = []  # (starter, began, ended) in s since the session began

    def run(self, fn: Callable, *args) -> Future:
        """Submit ``fn(*args)``; its result (or exception) is in the returned future, its wall time in
        :attr:`timings` under the starter that submitted it."""
        label = self.starting[-1] if self.starting else getattr(fn, "__name__", "run")

        def timed():
            began = time.monotonic() - self.t0
            try:
                return fn(*args)
            finally:
                self.timings.append((label, began, time.monotonic() - self.t0))

        return self.pool.submit(timed)

    def start(self, name: str):
        """The handle of the starter ``name`` (started now, once)."""
        if name not in self.handles:
            self.starting.append(name)
            try:
                self.handles[name] = STARTERS[name](self, self.session)
            finally:
                self.starting.pop()
        return self.handles[name]

    def report(self) -> list[str]:
        """One line per finished background run, in the order they began: when it ran and how long (the suite's
        critical path is the chain of these on the two workers)."""
        return [f"{label:<22} {began:7.1f} s -> {ended:7.1f} s ({ended - began:6.1f} s)"
                for label, began, ended in sorted(self.timings, key=lambda t: t[1])]

    def prefetch(self, items) -> list[str]:
        """Start what ``items`` need, in their order; returns the starters' names in the order started."""
        for item in items:
            for name in needed_starters(item):
                self.start(name)
        return list(self.handles)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
