"""The two drivers of :mod:`embedrank.plugin.core` operations, and the clients' locks."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from embedrank.plugin.core import Call, Locked, Op, Work


@dataclass(frozen=True)
class Done:
    """An operation's result."""

    value: Any


def _next(op: Op, value: Any) -> Call | Work | Locked | Done:
    """Send ``value`` into ``op``: its next request, or :class:`Done` with its result."""
    try:
        return op.send(value)
    except StopIteration as stop:
        return Done(stop.value)


def run(op: Op, call: Callable[[Call], Any], locked: Callable[[str], Any]) -> Any:
    """Run ``op`` in this thread: ``call`` performs a Call, ``locked(name)`` is a lock."""
    with closing(op):
        request = _next(op, None)
        while not isinstance(request, Done):
            if isinstance(request, Call):
                value = call(request)
            elif isinstance(request, Work):
                value = request.fn(*request.args)
            else:
                with locked(request.collection):
                    value = run(request.op, call, locked)
            request = _next(op, value)
        return request.value


async def arun(op: Op, call: Callable[[Call], Any], locked: Callable[[str], Any]) -> Any:
    """Run ``op`` on the event loop: Calls are awaited, Work runs in the default executor."""
    loop = asyncio.get_running_loop()
    with closing(op):
        request = _next(op, None)
        while not isinstance(request, Done):
            if isinstance(request, Call):
                value = await call(request)
            elif isinstance(request, Work):
                value = await loop.run_in_executor(None, functools.partial(request.fn,
                                                                           *request.args))
            else:
                async with locked(request.collection):
                    value = await arun(request.op, call, locked)
            request = _next(op, value)
        return request.value


class LockTable:
    """One lock per collection name, made by ``factory`` on first use."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory, self._locks, self._guard = factory, {}, threading.Lock()

    def __call__(self, name: str) -> Any:
        with self._guard:
            if name not in self._locks:
                self._locks[name] = self._factory()
            return self._locks[name]


def is_local(init_options: dict) -> bool:
    """Whether a client's ``init_options`` describe qdrant-client's local mode."""
    return init_options.get("location") == ":memory:" or init_options.get("path") is not None
