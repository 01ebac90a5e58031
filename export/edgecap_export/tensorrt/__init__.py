"""The TensorRT target: a lint against TensorRT's ONNX support (kept as data), and the export/quantize settings
that produce graphs TensorRT parses. Needs onnx (the export extra), never TensorRT itself."""

from .lint import Violation, graph_files, lint_dir, lint_model, opset_range, support_table

__all__ = ["Violation", "graph_files", "lint_dir", "lint_model", "opset_range", "support_table"]
