"""The decoder loop with IO binding (edgecap.device_loop): the same tokens as the plain loop, on the CPU provider
here (EDGECAP_IO_BINDING=1); the CUDA/TensorRT path is the same code on another device and skips without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap import Captioner, synth
from edgecap.device_loop import ENV_FLAG, DeviceStepper, bound_device, gather_model

ort = pytest.importorskip("onnxruntime")


def _frames(n: int) -> list[np.ndarray]:
    return [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(n)]


def test_the_plain_loop_unless_asked_or_on_a_gpu(monkeypatch):
    cap = Captioner("demo")
    monkeypatch.delenv(ENV_FLAG, raising=False)
    assert bound_device(cap.decoder_session) is None
    monkeypatch.setenv(ENV_FLAG, "1")
    assert bound_device(cap.decoder_session) == "cpu"

    class Gpu:
        def get_providers(self):
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.delenv(ENV_FLAG)
    assert bound_device(Gpu()) == "cuda"
    monkeypatch.setenv(ENV_FLAG, "0")
    assert bound_device(Gpu()) is None and bound_device(cap.decoder_session) is None


def test_gather_model_reorders_rows_of_every_tensor():
    sess = ort.InferenceSession(gather_model(3), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(k).standard_normal((4, 2, k, 3)).astype(np.float32) for k in range(3)]
    index = np.array([2, 2, 0, 3], dtype=np.int64)
    outs = sess.run(None, {"index": index, **{f"x{k}": x for k, x in enumerate(xs)}})
    assert all(np.array_equal(o, x[index]) for o, x in zip(outs, xs))


def test_gather_model_is_the_onnx_model_it_describes():
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(gather_model(2))
    onnx.checker.check_model(model)
    assert [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node] == [
        ("Gather", ["x0", "index"], ["y0"]), ("Gather", ["x1", "index"], ["y1"])]


@pytest.mark.parametrize("options", [dict(num_beams=1), dict(num_beams=3), dict(num_beams=4, length_penalty=0.5)],
                         ids=["greedy", "beam3", "beam4-lenpen"])
def test_bound_loop_generates_the_plain_loops_tokens(options, monkeypatch):
    cap = Captioner("demo")
    px = cap.preprocess(_frames(5))
    monkeypatch.delenv(ENV_FLAG, raising=False)
    plain = cap.generate(px, **options)
    calls = []
    original = DeviceStepper.__call__

    def counted(self, input_ids):
        calls.append(input_ids.shape)
        return original(self, input_ids)

    reorders = []
    original_reorder = DeviceStepper.reorder

    def recorded(self, index):
        reorders.append(not np.array_equal(index, np.arange(len(index))))
        return original_reorder(self, index)

    monkeypatch.setattr(DeviceStepper, "__call__", counted)
    monkeypatch.setattr(DeviceStepper, "reorder", recorded)
    monkeypatch.setenv(ENV_FLAG, "1")
    timings: dict = {}
    bound = cap.generate(px, _timings=timings, **options)
    assert calls and bound == plain  # the bound loop ran, and its tokens are the plain loop's
    assert timings["decoder_steps"] == len(calls)
    assert any(reorders) == (options["num_beams"] > 1)  # beams were reordered on the device


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["blip", "florence2"])
def test_bound_loop_with_prompts(arch, exported_factory, monkeypatch):
    """A decoder prefix longer than one id (BLIP's prompt, a prefill step) and a prompt read by the encoder
    (Florence-2's task): greedy and beam ids equal the plain loop's."""
    cap = Captioner(exported_factory(arch))
    px = cap.preprocess([f[:120, :160] for f in _frames(3)])
    prompt = "a picture of the" if arch == "blip" else "<OD>"
    for beams in (1, 3):
        monkeypatch.delenv(ENV_FLAG, raising=False)
        plain = cap.generate(px, prompt, num_beams=beams)
        monkeypatch.setenv(ENV_FLAG, "1")
        assert cap.generate(px, prompt, num_beams=beams) == plain


def test_the_cache_between_steps_is_device_memory_not_numpy(monkeypatch):
    cap = Captioner("demo")
    enc = cap.encode(cap.preprocess(_frames(2)))
    cross, past = cap.decoder_inputs(enc, 2)
    step = DeviceStepper(cap.decoder_session, cap.manifest.io("decoder"), cross, past, device="cpu")
    logits = step(np.zeros((4, 1), dtype=np.int64))
    assert logits.shape[0] == 4 and all(isinstance(p, ort.OrtValue) for p in step.past)
    before = [p.numpy() for p in step.past]
    step.reorder(np.array([1, 0, 3, 3]))
    assert all(isinstance(p, ort.OrtValue) for p in step.past)
    assert all(np.array_equal(p.numpy(), b[[1, 0, 3, 3]]) for p, b in zip(step.past, before))


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_bound_loop_on_a_gpu(provider):
    wanted = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
    if wanted not in ort.get_available_providers():
        pytest.skip(f"{wanted} is not available (needs onnxruntime-gpu and a GPU)")
    frames = _frames(4)
    gpu = Captioner("demo", providers=[provider])
    assert bound_device(gpu.decoder_session) == "cuda"
    assert [c.token_ids for c in gpu.caption(frames, num_beams=3)] == [
        c.token_ids for c in Captioner("demo").caption(frames, num_beams=3)]


# -- the decoder-only loop (SmolVLM): prefill, then IO-bound steps ---------------------------------------------------

@pytest.mark.parametrize("attention, beams", [("contrib", 1), ("contrib", 3),
                                              pytest.param("standard", 3, marks=pytest.mark.slow)])
def test_bound_decoder_only_loop_generates_the_plain_loops_tokens(attention, beams, exported_factory, monkeypatch):
    """SmolVLM's steps with IO binding (the prefill's K/V uploaded once, each step's present fed back as device
    OrtValues, beams reordered on the device) answer a batch of questions of different lengths with the plain
    loop's ids, greedy and beam."""
    from edgecap.device_loop import BoundStep
    from test_smolvlm import QUESTIONS, _images

    cap = Captioner(exported_factory("smol", attention))
    px = cap.preprocess(_images(7, 3))
    monkeypatch.delenv(ENV_FLAG, raising=False)
    plain_timings: dict = {}
    plain = cap.generate(px, QUESTIONS, num_beams=beams, _timings=plain_timings)
    steps, gathers, pasts = [], [], []
    run, gather = BoundStep.__call__, BoundStep.gather

    def counted(self, host_feeds, past):
        steps.append(sorted(host_feeds))
        pasts.append(all(isinstance(p, ort.OrtValue) for p in past))
        return run(self, host_feeds, past)

    def recorded(self, past, index):
        gathers.append(index.copy())
        return gather(self, past, index)

    monkeypatch.setattr(BoundStep, "__call__", counted)
    monkeypatch.setattr(BoundStep, "gather", recorded)
    monkeypatch.setenv(ENV_FLAG, "1")
    timings: dict = {}
    bound = cap.generate(px, QUESTIONS, num_beams=beams, _timings=timings)
    assert bound == plain and any(bound)  # the bound loop's tokens are the plain loop's
    assert steps and timings["decoder_steps"] == len(steps) == plain_timings["decoder_steps"]
    assert all(s == ["attention_mask", "input_ids", "position_ids"] for s in steps) and all(pasts)
    assert bool(gathers) == (beams > 1)  # beams were reordered on the device
