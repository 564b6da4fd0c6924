"""Progress events: the one interface through which the deploy pipeline says what it is doing.

The core never prints. Each pipeline step runs inside :meth:`Events.stage`, which emits ``start``, then any
number of ``step`` / ``note`` events, then ``done`` (with the stage's duration) or ``fail``. A listener turns
them into output: the CLI shows a live spinner on a terminal and one timestamped line per event elsewhere (a
CI log), and a Python caller may pass any callable, or nothing.

    events = Events(lambda e: print(e.stage, e.kind, e.message))
    with events.stage("build", "building iris:1a2b3c") as stage:
        stage.step("Step 3/14 : RUN pip install ...")
    events.timings  # {"build": 41.2}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["start", "step", "note", "done", "fail", "skip"]


@dataclass(frozen=True)
class Event:
    stage: str  # preflight, plan, build, test, deploy, status, rollback, destroy, logs
    kind: EventKind
    message: str
    at: float = field(default_factory=time.time)  # Unix time
    seconds: float | None = None  # done / fail: how long the stage took


Listener = Callable[[Event], None]


class Stage:
    """The running stage: ``step`` for progress lines, ``note`` for things the user should read."""

    def __init__(self, events: Events, name: str) -> None:
        self.events, self.name = events, name
        self.summary: str | None = None  # the ``done`` event's message when set

    def step(self, message: str) -> None:
        self.events.emit(Event(self.name, "step", message))

    def note(self, message: str) -> None:
        self.events.emit(Event(self.name, "note", message))


class Events:
    """Emits events to a listener and keeps each finished stage's duration in ``timings``."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener
        self.timings: dict[str, float] = {}

    def emit(self, event: Event) -> None:
        if self.listener is not None:
            self.listener(event)

    def skip(self, stage: str, message: str) -> None:
        self.emit(Event(stage, "skip", message))

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[Stage]:
        """Run a stage: ``start`` now; at the end ``done`` (message: the stage's ``summary`` if set, else
        ``message``) or, when it raises, ``fail``."""
        self.emit(Event(name, "start", message))
        started = time.perf_counter()
        handle = Stage(self, name)
        try:
            yield handle
        except BaseException as exc:
            seconds = round(time.perf_counter() - started, 3)
            self.timings[name] = seconds
            what = getattr(exc, "message", None) or ("interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
                                                     else type(exc).__name__)
            self.emit(Event(name, "fail", str(what).splitlines()[0], seconds=seconds))
            raise
        seconds = round(time.perf_counter() - started, 3)
        self.timings[name] = seconds
        self.emit(Event(name, "done", handle.summary or message, seconds=seconds))
