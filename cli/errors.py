"""One line for the errors a command can meet outside embedrank's own: Qdrant's HTTP answers,
a server that is not Qdrant, a malformed ``--url``, a local database another process holds.

No message carries the URL's password or the API key: URLs are shown with their credentials
masked, and a server's own error text is shown only from its JSON ``status.error`` field.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import click

from embedrank.errors import InputError

HINTS = {
    401: "the server wants an API key: pass --api-key or set QDRANT_API_KEY",
    403: "the API key was refused or lacks the permission (a read-only key?): check --api-key "
         "or QDRANT_API_KEY",
    404: "check that --url is the REST address of a Qdrant server (e.g. http://localhost:6333) "
         "and that the collection exists",
}
LOCKED = "is already accessed by another instance of Qdrant client"


def redact(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


def check_url(ctx: click.Context | None, param: click.Parameter | None, url: str | None) -> str | None:
    """A click callback: ``url`` must be http(s)://HOST[:PORT] with a port from 1 to 65535."""
    if url is None:
        return None
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InputError(f"--url {shown!r} has no valid port: give a number from 1 to 65535, "
                                 "e.g. http://localhost:6333") from None
    if parts.scheme not in ("http", "https"):
        raise InputError(f"--url {shown!r} must start with http:// or https:// "
                                 "(e.g. http://localhost:6333)")
    if not parts.hostname or any(c.isspace() for c in parts.netloc):
        raise InputError(f"--url {shown!r} has no valid host name (e.g. http://localhost:6333)")
    if port == 0:
        raise InputError(f"--url {shown!r}: port 0 is not a port; give a number from 1 to 65535")
    return url


def _from_qdrant_http(exc: BaseException) -> bool:
    """True when ``exc`` was raised inside qdrant-client's remote (HTTP) code."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("qdrant_client.http", "qdrant_client.qdrant_remote")):
            return True
        tb = tb.tb_next
    return False


def _server_error(content: bytes | None) -> str:
    try:
        error = json.loads(content or b"")["status"]["error"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {' '.join(str(error).split())[:200]}" if error else ""


def explain(exc: BaseException) -> str | None:
    """One line for an error from qdrant-client (or None when it is not one we know)."""
    from pydantic import ValidationError
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        hint = HINTS.get(exc.status_code, "see the server's log")
        return (f"the Qdrant server answered HTTP {exc.status_code} {exc.reason_phrase}"
                f"{_server_error(exc.content)}; {hint}")
    if isinstance(exc, ResponseHandlingException):
        source = exc.source if exc.source is not None else exc
        text = " ".join(str(source).split())[:200]
        return (f"cannot reach the Qdrant server ({type(source).__name__}: {text}); check --url "
                "and that the server is up")
    if isinstance(exc, (ValueError, ValidationError, AssertionError)) and _from_qdrant_http(exc):
        return ("the server at --url did not answer as a Qdrant server does (its response is not "
                "Qdrant's JSON); check that --url is the REST address of a Qdrant server, e.g. "
                "http://localhost:6333")
    if isinstance(exc, RuntimeError) and LOCKED in str(exc):
        return ("the --path database is locked by another process (another embedrank or Qdrant "
                "client has it open): wait for it to finish, or use a Qdrant server (--url) to "
                "share a database")
    return None
