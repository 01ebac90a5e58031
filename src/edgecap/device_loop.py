"""The decoder loop with ONNX Runtime's IO binding: the KV cache stays on the device between steps.

With the CUDA or TensorRT provider, the plain loop (``generation.Stepper``) copies every layer's present K/V from
the GPU to the host after each step and back as the next step's past, and repeats the cross K/V upload at every
step. :class:`DeviceStepper` instead:

* uploads the cross K/V (already repeated per beam) once per decode, as device OrtValues;
* binds each step's present K/V outputs to device memory that ONNX Runtime allocates, and binds those OrtValues as
  the next step's past inputs (nothing crosses to the host but the new ids in and the last logits out);
* reorders the cache for beam search on the device: one tiny graph of Gather nodes (axis 0, rows of every past
  tensor by the beam index) run on the same device, its outputs bound to device memory too.

:class:`BoundStep` is that bound call on its own; the decoder-only loop (``edgecap.decoder_only``, SmolVLM) uses it
with the prefill's K/V as the first past and the mask and positions as host inputs next to the ids.

The device is "cuda" when the decoder session runs on the CUDA or TensorRT provider, and "cpu" when the environment
variable ``EDGECAP_IO_BINDING=1`` asks for the bound loop on the CPU provider: the same code path, which the tests
run here for token identity with the plain loop (greedy and beam). ``EDGECAP_IO_BINDING=0`` keeps the plain loop
everywhere. The CUDA path has NOT been run (no GPU here).

The Gather graph is written as ONNX protobuf bytes by hand (a few fields), because the runtime does not import onnx.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ENV_FLAG = "EDGECAP_IO_BINDING"
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def bound_device(session: Any) -> str | None:
    """The device a decoder session's loop keeps its cache on: "cuda" (CUDA or TensorRT provider), "cpu" when
    ``EDGECAP_IO_BINDING=1``, else None (the plain loop); ``EDGECAP_IO_BINDING=0`` turns it off on a GPU too (to
    compare the two loops)."""
    flag = os.environ.get(ENV_FLAG, "")
    if flag == "0":
        return None
    if any(p in _GPU_PROVIDERS for p in session.get_providers()):
        return "cuda"
    return "cpu" if flag == "1" else None


class BoundStep:
    """Runs one step graph with IO binding: the per-step host inputs are bound from numpy, the past K/V and the
    per-decode constants (the cross K/V) as device OrtValues, the present K/V are bound to device memory and come
    back as OrtValues (the next step's past), and only the logits are copied to the host. Shared by the
    encoder-decoder loop (:class:`DeviceStepper`) and the decoder-only loop (``edgecap.decoder_only``).

    Args:
        session: the step graph's InferenceSession.
        past_names, present_names: the past inputs and present outputs, interleaved (k0, v0, k1, v1, ...).
        logits: the logits output's name.
        device: "cuda" or "cpu".
        constants: input name -> array uploaded once and bound at every step (the cross K/V), if any.
        times: step durations in ms are appended here (the caller's timings), if given.
    """

    def __init__(self, session: Any, *, past_names: Sequence[str], present_names: Sequence[str], logits: str,
                 device: str, constants: dict[str, np.ndarray] | None = None, times: list[float] | None = None):
        import onnxruntime as ort

        self._ort = ort
        self._session = session
        self._device = device
        self._times = times
        self._logits = logits
        self._past_names, self._present_names = list(past_names), list(present_names)
        self._constants = {name: self.upload(a) for name, a in (constants or {}).items()}
        self._gather: Any = None

    def upload(self, array: np.ndarray) -> Any:
        """``array`` as an OrtValue on the device."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, 0)

    def __call__(self, host_feeds: dict[str, np.ndarray], past: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        """One step: ``host_feeds`` (name -> array: the new ids, and the mask and positions of a decoder-only
        step) with ``past`` (device OrtValues, interleaved) -> (logits on the host, present K/V on the device)."""
        import time

        t = time.perf_counter()
        binding = self._session.io_binding()
        for name, array in host_feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in list(zip(self._past_names, past)) + list(self._constants.items()):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self._logits, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self._device, 0)
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if self._times is not None:
            self._times.append((time.perf_counter() - t) * 1e3)
        return outputs[0].numpy(), list(outputs[1:])

    def gather(self, past: Sequence[Any], index: np.ndarray) -> list[Any]:
        """Rows of every past tensor by ``index`` (beam search), gathered on the device."""
        if self._gather is None:
            self._gather = _gather_session(len(past), self._session, self._device)
        binding = self._gather.io_binding()
        binding.bind_cpu_input("index", np.ascontiguousarray(index, dtype=np.int64))
        for k, value in enumerate(past):
            binding.bind_ortvalue_input(f"x{k}", value)
            binding.bind_output(f"y{k}", self._device, 0)
        self._gather.run_with_iobinding(binding)
        return list(binding.get_outputs())


class DeviceStepper:
    """A cached encoder-decoder step (the ``generation.Stepper`` interface: call with new ids, ``reorder`` by beam
    index) whose past K/V live on ``device`` as OrtValues.

    Args:
        session: the decoder's InferenceSession.
        io: the manifest's decoder io names (input_ids, past_k/v, cross_k/v, logits, present_k/v).
        cross_feeds: cross K/V name -> array, already repeated per beam.
        past: the empty past, interleaved (k0, v0, k1, v1, ...), [rows, heads, 0, head_dim].
        device: "cuda" or "cpu".
        times: step durations in ms are appended here (the caller's timings), if given.
    """

    def __init__(self, session: Any, io: dict[str, Any], cross_feeds: dict[str, np.ndarray],
                 past: Sequence[np.ndarray], *, device: str, times: list[float] | None = None):
        self._ids = io["input_ids"]
        self._bound = BoundStep(session, past_names=interleaved(io, "past"), present_names=interleaved(io, "present"),
                                logits=io["logits"], device=device, constants=cross_feeds, times=times)
        self.past = [self._bound.upload(p) for p in past]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        logits, self.past = self._bound({self._ids: np.asarray(input_ids, dtype=np.int64)}, self.past)
        return logits

    def reorder(self, index: np.ndarray) -> None:
        """Rows of every past tensor by ``index`` (beam search), gathered on the device."""
        if not np.array_equal(index, np.arange(len(index))):
            self.past = self._bound.gather(self.past, index)


def interleaved(io: dict[str, Any], kind: str) -> list[str]:
    """A graph's ``kind`` ("past" or "present") K/V names from its manifest io, interleaved (k0, v0, k1, ...)."""
    return [n for pair in zip(io[f"{kind}_k"], io[f"{kind}_v"]) for n in pair]


def _gather_session(n: int, decoder: Any, device: str) -> Any:
    """A session of ``gather_model(n)`` on the decoder's device (the CUDA provider for "cuda": a Gather needs no
    TensorRT engine)."""
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(gather_model(n), sess_options=opts, providers=providers)


# -- a minimal ONNX model, serialized by hand (field numbers from onnx.proto) --------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, elem_type: int, dims: Sequence[str]) -> bytes:
    shape = b"".join(_field(1, _field(2, d.encode())) for d in dims)  # TensorShapeProto.dim.dim_param
    tensor_type = _field(1, elem_type) + _field(2, shape)  # TypeProto.Tensor: elem_type, shape
    return _field(1, name.encode()) + _field(2, _field(1, tensor_type))


def gather_model(n: int, *, opset: int = 17) -> bytes:
    """ModelProto bytes: inputs x0..x{n-1} (float [rows, heads, len, head_dim]) and index (int64 [rows]); outputs
    y_k = Gather(x_k, index) along axis 0.

    Args:
        n: the number of tensors gathered per run.
        opset: the default-domain opset.

    Returns:
        The serialized model (for ``InferenceSession(bytes)``).
    """
    float32, int64 = 1, 7
    graph = b"".join(_field(1, _field(1, f"x{k}".encode()) + _field(1, b"index") + _field(2, f"y{k}".encode())
                                + _field(3, f"gather{k}".encode()) + _field(4, b"Gather")) for k in range(n))
    graph += _field(2, b"reorder_cache")
    graph += b"".join(_field(11, _value_info(f"x{k}", float32, ("rows", "heads", f"len{k}", "head_dim")))
                      for k in range(n))
    graph += _field(11, _value_info("index", int64, ("rows",)))
    graph += b"".join(_field(12, _value_info(f"y{k}", float32, ("rows", "heads", f"len{k}", "head_dim")))
                      for k in range(n))
    return _field(1, 8) + _field(8, _field(1, b"") + _field(2, opset)) + _field(7, graph)
