"""JSONL / CSV ingestion into Qdrant with deterministic ids (a rerun resumes), and result tables."""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
    """uuid5 of the record's id field when it has one, else of its text."""
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
        raise InputError(f"{file}:{number}: {record}; fix the line and rerun (finished batches "
                         "are kept, the rerun resumes)")
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


@dataclass
class IngestResult:
    added: int = 0
    skipped: int = 0


def ensure_collection(client: QdrantClient, collection: str, model: str,
                      backoff: Backoff | None = None) -> None:
    def ensure() -> None:  # retried whole: a create that landed unanswered is seen next time
        if not client.collection_exists(collection):
            client.create_collection(collection, vectors_config=models.VectorParams(
                size=registration(model).dim, distance=models.Distance.COSINE))

    retry_call(ensure, what=f"creating collection {collection!r}", backoff=backoff)


def ingest_records(client: QdrantClient, collection: str, numbered: Iterable[tuple[int, Any]],
                   model: str, *, text_field: str = "text", id_field: str = "id",
                   batch_size: int = 64, source: Any = "<records>",
                   progress: Callable[[int], None] | None = None,
                   backoff: Backoff | None = None) -> IngestResult:
    """Embed and upsert records batch by batch; ids already in the collection are skipped.

    A malformed record raises :class:`InputError` naming its line before its batch is written.
    Calls to Qdrant that fail transiently are retried with ``backoff`` (upserts of
    deterministic ids are idempotent); after the last attempt :class:`ServiceError` is raised.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    ensure_collection(client, collection, model, backoff)
    result = IngestResult()
    for batch in batched(numbered, batch_size):
        rows = [_checked(source, n, record, text_field) for n, record in batch]
        ids = [point_id(row, row[text_field], id_field) for row in rows]
        where = f"{source}:{batch[0][0]}-{batch[-1][0]}"
        existing = {str(r.id) for r in retry_call(
            client.retrieve, collection, ids, with_payload=False, backoff=backoff,
            what=f"reading the ids of {where}")}
        fresh = {i: row for i, row in zip(ids, rows, strict=True) if i not in existing}
        if fresh:
            retry_call(client.upsert, collection, [models.PointStruct(
                id=i, vector=models.Document(text=row[text_field], model=model), payload=row)
                for i, row in fresh.items()], wait=True, backoff=backoff,
                what=f"writing {where}")
        result.added += len(fresh)
        result.skipped += len(rows) - len(fresh)
        if progress is not None:
            progress(len(batch))
    return result


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
