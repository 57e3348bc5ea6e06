"""JSONL / CSV ingestion into Qdrant with deterministic ids (a rerun resumes), and result tables."""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import models

from embedrank.errors import InputError
from embedrank.formats import text_problem
from embedrank.jsonline import parse_json_line
from embedrank.plugin.qdrant import QdrantClient
from embedrank.plugin.retry import Backoff, retry_call
from embedrank.plugin.vectorizer import registration

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/embedrank/ingest")


def open_client(path: str | None = None, url: str | None = None,
                api_key: str | None = None) -> QdrantClient:
    """``--url`` for a server, ``--path`` for local mode on disk, else an in-memory database."""
    if path and url:
        raise InputError("give either --path (local mode) or --url (a Qdrant server), not both")
    if api_key and not url:
        raise InputError("--api-key is for a Qdrant server: give --url as well")
    if url:
        return QdrantClient(url=url, api_key=api_key or None)
    return QdrantClient(path=str(path)) if path else QdrantClient(":memory:")


def model_name(model_dir: str | os.PathLike) -> str:
    """The name the CLI registers a model directory under (recorded in the collection)."""
    return Path(model_dir).resolve().name


def point_id(record: dict, text: str, id_field: str) -> str:
    """uuid5 of the record's id field when it has one, else of its text.

    The id is read as a string (``1`` and ``"1"`` give one point): :func:`plan_input` and the
    write refuse ids that are equal only as strings."""
    key = record.get(id_field)
    return str(uuid.uuid5(ID_NAMESPACE, f"id:{key}" if key is not None else f"text:{text}"))


class _Undecodable(Exception):
    def __init__(self, number: int, reason: str) -> None:
        super().__init__(reason)
        self.number = number


def _decoded(fh) -> Iterator[str]:
    """The lines of a binary file as str (a UTF-8 BOM is dropped); bad bytes name their line."""
    for number, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise _Undecodable(number, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                                       f"{exc.start + 1}); re-save the file as UTF-8") from None


def read_records(file: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for a .jsonl/.ndjson or .csv file; errors come as values."""
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv"):
        raise InputError(f"{path}: unknown format {suffix!r}; use .jsonl (one JSON object per "
                         "line) or .csv (with a header row)")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with open(path, "rb") as fh:
        try:
            yield from (_csv_records(_decoded(fh)) if suffix == ".csv" else
                        _jsonl_records(_decoded(fh)))
        except _Undecodable as exc:
            yield exc.number, InputError(str(exc))


def _csv_records(lines: Iterator[str]) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # allow long passages
    reader = csv.DictReader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, InputError(f"malformed CSV ({exc})")
            return
        yield reader.line_num, ({k: v for k, v in row.items() if k is not None}
                                if None not in row else InputError("too many fields"))


def _jsonl_records(lines: Iterator[str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield number, parse_json_line(line)
            except InputError as exc:
                yield number, exc


def count_lines(file: str | os.PathLike) -> int:
    """The records the progress bar expects: non-blank lines, less a CSV file's header row."""
    with open(file, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(lines - 1, 0) if Path(file).suffix.lower() == ".csv" else lines


def _checked(file: Any, number: int, record: Any, text_field: str) -> dict:
    if isinstance(record, InputError):
        raise InputError(f"{file}:{number}: {record}; fix the line and rerun (nothing was written)")
    if not isinstance(record, dict):
        raise InputError(f"{file}:{number}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        raise InputError(f"{file}:{number}: no text in field {text_field!r} (use --text-field "
                         "to name the field that holds the passage)")
    problem = text_problem(record[text_field])
    if problem is not None:
        raise InputError(f"{file}:{number}: field {text_field!r} {problem}")
    return record


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


ON_DUPLICATE = ("first", "last", "fail")
SHOWN = 5  # duplicate lines named in messages


@dataclass
class IngestResult:
    added: int = 0
    skipped: int = 0  # already present, unchanged
    updated: int = 0  # present with another payload (e.g. the text changed): written again
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line it repeats)
    on_duplicate: str = "last"

    def summary(self, collection: str) -> str:
        text = f"{collection}: {self.added} added, {self.skipped} already present, " \
               f"{self.updated} updated"
        if self.duplicates:
            text += f"\n{collection}: {describe_duplicates(self.duplicates)}; the " \
                    f"{self.on_duplicate} of each was kept"
        return text


def describe_duplicates(duplicates: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"line {n} repeats line {m}" for n, m in duplicates[:SHOWN])
    more = ", ..." if len(duplicates) > SHOWN else ""
    return f"{len(duplicates)} duplicates in input ({shown}{more})"


def _same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@dataclass
class _Plan:
    """The first pass over the input: which line writes each point, and the duplicates."""

    keep: dict[str, int] = field(default_factory=dict)  # point id -> the line written
    duplicates: list[tuple[int, int]] = field(default_factory=list)


def plan_input(numbered: Iterable[tuple[int, Any]], source: Any, text_field: str, id_field: str,
               on_duplicate: str) -> _Plan:
    """Check every record; map each point id to the line that writes it (``on_duplicate``).

    Two records name one point when they have the same id (or, without one, the same text).
    Ids that differ but are equal as strings (``1`` and ``"1"``) are refused: they would
    collide. With ``on_duplicate="fail"`` any duplicate is refused. Nothing is written here.
    """
    plan, first = _Plan(), {}  # first: point id -> (line, id value)
    for number, record in numbered:
        row = _checked(source, number, record, text_field)
        pid, key = point_id(row, row[text_field], id_field), row.get(id_field)
        if pid not in first:
            first[pid] = (number, key)
            plan.keep[pid] = number
            continue
        line, earlier = first[pid]
        if not _same_id(key, earlier):
            raise InputError(f"{source}:{number}: {id_field} {key!r} and the {id_field} {earlier!r} "
                             f"of line {line} are equal as strings, so they name one point; use one "
                             "type for ids (nothing was written)")
        plan.duplicates.append((number, line))
        if on_duplicate == "last":
            plan.keep[pid] = number
    if plan.duplicates and on_duplicate == "fail":
        raise InputError(f"{source}: {describe_duplicates(plan.duplicates)}: records with the "
                         f"same {id_field!r} (or the same text, without one) name one point. "
                         "Nothing was written; remove them, or choose --on-duplicate first|last")
    return plan


def ensure_collection(client: QdrantClient, collection: str, model: str,
                      backoff: Backoff | None = None) -> None:
    def ensure() -> None:  # retried whole: a create that landed unanswered is seen next time
        if not client.collection_exists(collection):
            client.create_collection(collection, vectors_config=models.VectorParams(
                size=registration(model).dim, distance=models.Distance.COSINE))

    retry_call(ensure, what=f"creating collection {collection!r}", backoff=backoff)
    retry_call(client.check_embedder, collection, model, backoff=backoff,
               what=f"checking the embedder of {collection!r}")


def ingest_records(client: QdrantClient, collection: str,
                   numbered: Iterable[tuple[int, Any]] | Callable[[], Iterable[tuple[int, Any]]],
                   model: str, *, text_field: str = "text", id_field: str = "id",
                   batch_size: int = 64, source: Any = "<records>",
                   progress: Callable[[int], None] | None = None, backoff: Backoff | None = None,
                   on_duplicate: str = "last") -> IngestResult:
    """Embed and upsert records batch by batch: new ids are added, stored points whose payload
    differs (the text changed) are updated, identical ones skipped.

    ``numbered`` is read twice, so give a function that returns a fresh iterator (or a list;
    another iterable is read into one): the first pass checks every record and resolves
    duplicates (:func:`plan_input`), so a bad line or ``on_duplicate="fail"`` writes nothing,
    and the points written do not depend on ``batch_size``. A collection built with another
    embedder is refused before anything is written. Calls to Qdrant that fail transiently are
    retried with ``backoff`` (upserts of deterministic ids are idempotent); after the last
    attempt :class:`ServiceError` is raised.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if on_duplicate not in ON_DUPLICATE:
        raise InputError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
    if not callable(numbered):
        numbered = numbered if isinstance(numbered, (list, tuple)) else list(numbered)
    read = numbered if callable(numbered) else lambda: numbered
    plan = plan_input(read(), source, text_field, id_field, on_duplicate)
    ensure_collection(client, collection, model, backoff)
    result = IngestResult(duplicates=plan.duplicates, on_duplicate=on_duplicate)
    for batch in batched(_kept(read(), plan, source, text_field, id_field, progress), batch_size):
        _write_batch(client, collection, batch, model, result, source, id_field, backoff)
        if progress is not None:
            progress(len(batch))
    return result


def _kept(numbered: Iterable[tuple[int, Any]], plan: _Plan, source: Any, text_field: str,
          id_field: str, progress: Callable[[int], None] | None) -> Iterator[tuple]:
    """(line, point id, row, text) of the lines that write their point; the others are counted."""
    for number, record in numbered:
        row = _checked(source, number, record, text_field)
        pid = point_id(row, row[text_field], id_field)
        if plan.keep.get(pid) == number:
            yield number, pid, row, row[text_field]
        elif progress is not None:
            progress(1)


def _write_batch(client: QdrantClient, collection: str, batch: list[tuple], model: str,
                 result: IngestResult, source: Any, id_field: str, backoff: Backoff | None) -> None:
    where = f"{source}:{batch[0][0]}-{batch[-1][0]}"
    stored = {str(r.id): r.payload for r in retry_call(
        client.retrieve, collection, [pid for _, pid, _, _ in batch], with_payload=True,
        backoff=backoff, what=f"reading the ids of {where}")}
    fresh = []
    for number, pid, row, text in batch:
        if pid in stored and stored[pid] == row:
            result.skipped += 1
            continue
        if pid in stored and not _same_id((stored[pid] or {}).get(id_field), row.get(id_field)):
            raise InputError(f"{source}:{number}: point {pid} holds the record with {id_field} "
                             f"{(stored[pid] or {}).get(id_field)!r}; this line's {id_field} "
                             f"{row.get(id_field)!r} is equal to it only as a string: use one type "
                             "for ids")
        result.updated += pid in stored
        result.added += pid not in stored
        fresh.append(models.PointStruct(id=pid, vector=models.Document(text=text, model=model),
                                        payload=row))
    if fresh:
        retry_call(client.upsert, collection, fresh, wait=True, backoff=backoff,
                   what=f"writing {where}")


def hits_table(hits: list, text_field: str = "text", width: int = 60) -> str:
    """rank, id, score, text snippet: one aligned row per hit."""
    rows = [("rank", "id", "score", "text")]
    for rank, hit in enumerate(hits, 1):
        rows.append((str(rank), str(hit.id), f"{hit.score:.4f}",
                     snippet(str((hit.payload or {}).get(text_field, "")), width)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
                     for r in rows)


def snippet(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
