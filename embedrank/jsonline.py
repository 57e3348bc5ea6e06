"""One line of a JSONL file parsed, or an :class:`InputError` saying why not (callers add FILE:LINE).

Beyond syntax errors (kept with their column), this refuses what ``json.loads`` lets through or
crashes on: nesting deep enough to exhaust the recursion limit, integers too long to convert,
and numbers that are not finite (``NaN``, ``Infinity``, ``1e999``), which no JSON consumer after
us (Qdrant's payloads, an HTTP body) accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

from embedrank.errors import InputError

MAX_NUMBER_CHARS = 100  # longer numerals are refused before conversion


def _number(text: str, kind: type) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise InputError(f"a number with {len(text)} digits ({text[:12]}...); write it as a string")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise InputError(f"the number {text} is too large for a float; write it as a string")
    return value


def _constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number; write it as a string or null")


def parse_json_line(line: str) -> Any:
    """``json.loads(line)`` with the refusals above; the error keeps the column of a syntax error."""
    line = line.rstrip("\r\n")  # else an error at the end of the line reports "line 2 column 1"
    try:
        return json.loads(line, parse_int=lambda t: _number(t, int),
                          parse_float=lambda t: _number(t, float), parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InputError("JSON nested too deeply to read; flatten the record") from None
