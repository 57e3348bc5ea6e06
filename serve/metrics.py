"""Prometheus metrics of the server, in the text exposition format (version 0.0.4), by hand.

A handful of counters, gauges and histograms with fixed label sets; no client library needed.
Updates come from the event loop and from worker threads, so each family holds a lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._lock = threading.Lock()

    def _key(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts + [sum, count]

    def observe(self, *labels: str, value: float) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, *labels: str) -> int:
        series = self._series.get(self._key(labels))
        return int(series[-1]) if series else 0

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, n in zip(self.buckets, series, strict=False):
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(n)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return out


class Metrics:
    """Every metric the server exports (names prefixed ``embedrank_``)."""

    def __init__(self) -> None:
        self.requests = Counter("embedrank_requests_total", "HTTP requests answered, by route and status.",
                                ("route", "status"))
        self.errors = Counter("embedrank_request_errors_total",
                              "Requests answered with a 4xx/5xx status, by route and status.",
                              ("route", "status"))
        self.latency = Histogram("embedrank_request_duration_seconds",
                                 "Time from request to response, by route.", ("route",))
        self.inputs = Counter("embedrank_inputs_total", "Texts embedded or pairs scored, by model (lane).",
                              ("model",))
        self.tokens = Counter("embedrank_tokens_total",
                              "Tokens fed to the model (unpadded), by model (lane).", ("model",))
        self.batch_inputs = Histogram("embedrank_batch_size", "Inputs per merged batch, by model.",
                                      ("model",), SIZE_BUCKETS)
        self.batch_requests = Histogram("embedrank_batch_requests",
                                        "Requests merged into one batch, by model.", ("model",),
                                        SIZE_BUCKETS)
        self.batch_tokens = Histogram("embedrank_batch_tokens", "Tokens per merged batch, by model.",
                                      ("model",), TOKEN_BUCKETS)
        self.batch_seconds = Histogram("embedrank_batch_duration_seconds",
                                       "Model time of one merged batch, by model.", ("model",))
        self.queue_seconds = Histogram("embedrank_queue_duration_seconds",
                                       "Time a request's inputs waited for a batch, by model.", ("model",))
        self.queue_depth = Gauge("embedrank_queue_depth", "Inputs waiting for a batch, by model.",
                                 ("model",))
        self.rejected = Counter("embedrank_rejected_total",
                                "Requests refused with 503 because the queue was full.")

    def families(self) -> list[_Family]:
        return [v for v in vars(self).values() if isinstance(v, _Family)]

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families():
            lines += family.header() + family.lines()
        return "\n".join(lines) + "\n"
