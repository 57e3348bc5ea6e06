"""Export side: Qwen3-style checkpoints to ONNX model directories, with a parity check."""

from embedrank.errors import require

require("torch", "train")
require("onnx", "train")

from embedrank.export.onnx import ExportResult, export_model  # noqa: E402
from embedrank.export.parity import ParityReport, verify  # noqa: E402

__all__ = ["ExportResult", "ParityReport", "export_model", "verify"]
