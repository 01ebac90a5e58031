"""edgecap's export step: Hugging Face checkpoint -> validated ONNX graphs (needs the `export` extra)."""

from .exporter import DEFAULT_OPSET, export_model

__all__ = ["DEFAULT_OPSET", "export_model"]
