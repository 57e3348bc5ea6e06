"""Every error embedrank raises derives from :class:`EmbedrankError`.

Each message says what went wrong and what to do next.
"""

from __future__ import annotations


class EmbedrankError(Exception):
    """Base class of all embedrank errors."""


class ModelDirError(EmbedrankError):
    """A model directory is missing, incomplete or corrupt."""


class ManifestError(ModelDirError):
    """``embedrank.json`` is missing, malformed, or does not match the graph/tokenizer."""


class InputError(EmbedrankError, ValueError):
    """Bad user input (wrong type, empty text, malformed data line...)."""


class TrainingError(EmbedrankError):
    """A training run diverged (non-finite losses or gradients)."""


class DeviceError(EmbedrankError):
    """The requested execution device is not available."""


class ParityError(EmbedrankError):
    """An exported graph does not reproduce the PyTorch reference within tolerance."""


class FusionError(EmbedrankError):
    """The fused export found no attention / RMSNorm pattern to fuse in the graph."""


class CollectionMismatchError(EmbedrankError):
    """A Qdrant collection was built with another embedder (fingerprint, dim or instruction)."""


class ServiceError(EmbedrankError):
    """Qdrant kept failing with transient errors (network, timeouts, overload) after retries."""


class OverloadedError(EmbedrankError):
    """The server's queue is full: the request was refused before any work (HTTP 503)."""


class AuthError(EmbedrankError):
    """A request to `embedrank serve` lacks the token the server was started with (HTTP 401)."""


class MissingDependencyError(EmbedrankError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"{module!r} is needed for this command: pip install 'embedrank[{extra}]'"
        ) from exc


class OpsError(EmbedrankError):
    """embedrank's ONNX Runtime custom-op library is missing, or could not be built."""
