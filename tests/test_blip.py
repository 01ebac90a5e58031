"""BLIP (BlipForConditionalGeneration): export, preprocessing, prompts and token-identical generation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BLIP_ARCHS

torch = pytest.importorskip("torch")

from edgecap import Captioner  # noqa: E402
from edgecap.errors import InputError  # noqa: E402
from edgecap.generation import strip_sequence  # noqa: E402

PROMPTS = [None, "a photography of", "a picture of the"]
FAST = ("blip", "contrib")


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 9 * i, 50 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def _hf(arch, checkpoint_factory):
    from transformers import AutoProcessor, BlipForConditionalGeneration

    path = checkpoint_factory(arch)
    return BlipForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def _hf_ids(model, processor, px: np.ndarray, prompt: str | None, eos, **kw) -> list[list[int]]:
    """What transformers returns, as the runtime's contract states it: the leading [DEC] dropped, cut after the
    first [SEP] the model generated, padding removed."""
    inputs = {"pixel_values": torch.from_numpy(px)}
    prompt_len = 1
    if prompt is not None:
        inputs["input_ids"] = processor(text=[prompt] * len(px), return_tensors="pt")["input_ids"]
        prompt_len = inputs["input_ids"].shape[1] - 1
    with torch.no_grad():
        out = model.generate(**inputs, **kw).numpy()
    return [strip_sequence(r, eos, prompt_len) for r in out]


def _slow_unless(fast: bool, *values, **param):  # noqa: ANN002, ANN003, ANN202
    return pytest.param(*values, marks=() if fast else pytest.mark.slow, **param)


DECODING = [("greedy", dict(num_beams=1)), ("beam3", dict(num_beams=3)),
            ("beam3-ngram2-lenpen", dict(num_beams=3, no_repeat_ngram_size=2, length_penalty=0.6)),
            ("greedy-minnew", dict(num_beams=1, min_new_tokens=3, repetition_penalty=1.3))]
GRID = [_slow_unless((arch, attention) == FAST and batch == 3 and case in ("greedy", "beam3"),
                     arch, attention, case, kw, batch, prompt, id=f"{arch}-{attention}-{case}-b{batch}-{prompt}")
        for arch in sorted(BLIP_ARCHS) for attention in ("contrib", "standard") for case, kw in DECODING
        for batch in (1, 3) for prompt in PROMPTS[:2]]


@pytest.mark.parametrize("arch,attention,case,kw,batch,prompt", GRID)
def test_generate_matches_transformers(arch, attention, case, kw, batch, prompt, checkpoint_factory,
                                       exported_factory):
    model, processor = _hf(arch, checkpoint_factory)
    cap = Captioner(exported_factory(arch, attention))
    px = cap.preprocess(_images(batch, batch))
    kw = dict(kw, max_new_tokens=12)
    assert cap.generate(px, prompt, **kw) == _hf_ids(model, processor, px, prompt, cap.defaults.eos_token_id, **kw)


def test_the_grid_exercises_early_sep_and_image_dependence(exported_factory):
    # Parity would be weak if every caption ran to the limit or all images gave one caption.
    cap = Captioner(exported_factory("blip"))
    px = cap.preprocess(_images(7, 8))
    unconditional = cap.generate(px, max_new_tokens=12)
    prompted = cap.generate(px, "a photography of", max_new_tokens=12, num_beams=3)
    assert min(len(ids) for ids in unconditional) < 12 and len({tuple(i) for i in unconditional}) >= 3
    assert len({tuple(i) for i in prompted}) >= 2


@pytest.mark.parametrize("arch,attention", [_slow_unless((a, att) == FAST, a, att)
                                             for a in sorted(BLIP_ARCHS) for att in ("contrib", "standard")])
def test_export_records_blip_manifest_and_passing_validation(arch, attention, checkpoint_factory,
                                                             exported_factory):
    out = exported_factory(arch, attention)
    m = json.loads((out / "manifest.json").read_text())
    text = json.loads((checkpoint_factory(arch) / "config.json").read_text())["text_config"]
    # transformers 5 keeps the image processor inside processor_config.json: the manifest holds what is there
    pc = json.loads((checkpoint_factory(arch) / "processor_config.json").read_text())["image_processor"]
    assert not (checkpoint_factory(arch) / "preprocessor_config.json").exists()
    assert m["family"] == "blip" and m["architecture"]["attention"] == attention
    assert (m["image"]["mean"], m["image"]["std"], m["image"]["resample_name"]) == (
        pc["image_mean"], pc["image_std"], "bicubic")
    assert m["special_tokens"]["decoder_start_token_id"] == text["bos_token_id"]
    assert m["special_tokens"]["eos_token_id"] == [text["sep_token_id"]] != [text["eos_token_id"]]
    assert m["prompt"] == {"kind": "prefix", "add_special_tokens": True, "first_token_id": text["bos_token_id"],
                           "drop_last": True, "max_positions": text["max_position_embeddings"]}
    v = m["validation"]
    assert v["passed"] and not v["mismatches"]
    assert set(v["generate"]) == {f"{mode}.batch{b}{p}" for mode in ("greedy", "beam") for b in (1, 3)
                                  for p in ("", ".prompt")}
    assert v["outputs"]["prompt.prefix_ids"]["ok"]
    assert v["outputs"]["preprocess.pixel_values"]["max_abs_diff"] <= 1e-4


def test_preprocess_equals_the_processor(checkpoint_factory, exported_factory):
    _, processor = _hf("blip", checkpoint_factory)
    cap = Captioner(exported_factory("blip"))
    images = _images(3, 4) + [np.full((500, 20, 3), 200, np.uint8)]
    ref = processor(images=images, return_tensors="np")["pixel_values"]
    assert np.max(np.abs(cap.preprocess(images) - ref)) <= 1e-4



def _older_layout(src, dst, *, minimal: bool) -> None:
    """``src`` with its image processor saved the transformers-4 way, in preprocessor_config.json: ``minimal``
    leaves out every key at the class default (BLIP's processor resizes bicubic with CLIP's mean/std); otherwise a
    stale copy with another mean and resample sits beside processor_config.json's own settings, which win."""
    import shutil

    shutil.copytree(src, dst)
    proc = json.loads((dst / "processor_config.json").read_text())
    saved = proc["image_processor"] if not minimal else proc.pop("image_processor")
    if minimal:
        pre = {"image_processor_type": saved["image_processor_type"], "size": saved["size"]}
    else:
        pre = dict(saved, image_mean=[0.6, 0.1, 0.2], resample=0)
    (dst / "processor_config.json").write_text(json.dumps(proc))
    (dst / "preprocessor_config.json").write_text(json.dumps(pre))


@pytest.mark.parametrize("minimal", [True, False], ids=["minimal preprocessor_config", "stale beside nested"])
def test_image_settings_are_the_ones_the_loaded_processor_runs_with(minimal, checkpoint_factory, tmp_path):
    # transformers fills the keys a saved file leaves out from the processor class and prefers the settings nested
    # in processor_config.json; the manifest's recipe must be what the loaded processor runs, not the raw JSON
    from transformers import AutoImageProcessor, AutoConfig

    from edgecap.imaging import ImageConfig, preprocess
    from edgecap_export.exporter import image_config
    from edgecap_export.families import family_for

    ckpt = tmp_path / "ckpt"
    _older_layout(checkpoint_factory("blip"), ckpt, minimal=minimal)
    processor = AutoImageProcessor.from_pretrained(ckpt, backend="pil")
    config = AutoConfig.from_pretrained(ckpt)
    cfg = ImageConfig.from_manifest(image_config(str(ckpt), family_for(config).shape(config)))
    images = _images(5, 2) + [np.full((30, 70, 3), 90, np.uint8)]
    ref = processor(images=images, return_tensors="np")["pixel_values"]
    assert np.max(np.abs(preprocess(images, cfg) - ref)) <= 1e-4
    assert cfg.resample == 3 and cfg.mean != (0.5, 0.5, 0.5)  # bicubic, CLIP's mean: the class's, not a fallback

@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_saved_in_half_precision_export_in_float32(dtype, checkpoint_factory, tmp_path):
    # transformers 5 loads such weights in their own dtype (dtype="auto"); the graphs compute in float32, so the
    # export widens them (exactly) and generates what transformers generates from the same weights in float32
    from transformers import BlipForConditionalGeneration

    from edgecap_export import export_model

    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("blip"), ckpt)
    BlipForConditionalGeneration.from_pretrained(ckpt).to(getattr(torch, dtype)).save_pretrained(ckpt)
    assert BlipForConditionalGeneration.from_pretrained(ckpt).dtype == getattr(torch, dtype)
    cap = Captioner(export_model(str(ckpt), tmp_path / "out", progress=False))
    ref = BlipForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    _, processor = _hf("blip", checkpoint_factory)
    px = cap.preprocess(_images(7, 3))
    for prompt in PROMPTS[:2]:
        assert cap.generate(px, prompt, num_beams=3) == _hf_ids(ref, processor, px, prompt, cap.defaults.eos_token_id,
                                                                num_beams=3)


def test_default_length_stops_at_the_text_decoders_positions(tmp_path):
    # transformers caps its default length (20 new tokens after the prefix) at the text decoder's
    # max_position_embeddings: with 16 positions an unprompted caption has 15 ids, a 6-token prompt leaves 9
    from transformers import AutoProcessor, BlipForConditionalGeneration

    from edgecap_export import export_model
    from tiny_models import build_blip

    ckpt = build_blip(tmp_path / "ckpt", text_positions=16, sep_boost=0.3)  # [SEP] rare: captions run to the cap
    out = export_model(str(ckpt), tmp_path / "out", progress=False)  # validates against transformers first
    cap = Captioner(out)
    assert cap.manifest.data["generation"]["length_cap"] == 16
    model, processor = BlipForConditionalGeneration.from_pretrained(ckpt).eval(), AutoProcessor.from_pretrained(ckpt)
    px = cap.preprocess(_images(9, 3))
    lengths = set()
    for prompt in (None, "a picture of the red car"):
        for kw in (dict(num_beams=1), dict(num_beams=3)):
            ours = cap.generate(px, prompt, **kw)
            assert ours == _hf_ids(model, processor, px, prompt, cap.defaults.eos_token_id, **kw)
            lengths |= {len(r) for r in ours}
    assert 15 in lengths  # the cap was reached, not only the [SEP]
    assert len(cap.generate(px[:1], None, max_new_tokens=16, min_new_tokens=16)[0]) == 16  # a set length: no cap
    # a prompt whose prefix fills all 16 positions is fed once and its last position picks one token, as in
    # transformers (it was refused); at the default length nothing is left, where transformers raises ValueError
    words = "the red car on a street at night".split()
    full = " ".join(words[i % len(words)] for i in range(15))
    assert len(cap.prompts.prefix(full)) == 16
    for kw in (dict(num_beams=1), dict(num_beams=3)):
        assert cap.generate(px, full, max_new_tokens=1, **kw) == \
            _hf_ids(model, processor, px, full, cap.defaults.eos_token_id, max_new_tokens=1, **kw)
    with pytest.raises(ValueError, match="max_length"):
        _hf_ids(model, processor, px, full, cap.defaults.eos_token_id)
    with pytest.raises(InputError, match="is 16 tokens and the model's default length stops at 16"):
        cap.generate(px, full)
    with pytest.raises(InputError, match="the prompt is 17 tokens, the model's decoder holds 16 positions"):
        cap.generate(px, full + " car", max_new_tokens=1)


def test_a_processor_that_does_not_resize_exports_and_quantizes(checkpoint_factory, tmp_path):
    # validation and the quality gate fed it 240x320 frames, which such a model refuses: the export and quantize
    # stopped with "expected a 32x32 image", though transformers and the runtime run the checkpoint
    import shutil

    from edgecap_export import export_model
    from edgecap_export.quantize import quantize_dir

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("blip"), ckpt)
    pc = json.loads((ckpt / "processor_config.json").read_text())
    pc["image_processor"]["do_resize"] = False
    (ckpt / "processor_config.json").write_text(json.dumps(pc))
    out = export_model(str(ckpt), tmp_path / "out", progress=False)
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"]
    report = quantize_dir(out, calib_frames=4, eval_frames=4, progress=False, accept_quality_drop=True)
    assert report["frames"] == 4
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert Captioner(out, precision="int8").caption(img, max_new_tokens=3).token_ids
    with pytest.raises(InputError, match="expected a 32x32 image"):
        Captioner(out).caption(np.zeros((40, 40, 3), np.uint8))


def test_a_start_token_equal_to_the_pad_token_is_not_masked(checkpoint_factory, tmp_path):
    # model.generate(**processor(images, text)) passes the processor's attention mask, so a start token that equals
    # pad_token_id is attended; the export's reference must run it that way (it masked the start token: ParityError)
    import shutil

    from transformers import AutoProcessor, BlipForConditionalGeneration

    from edgecap_export import export_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("blip"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["bos_token_id"] = config["text_config"]["pad_token_id"]
    (ckpt / "config.json").write_text(json.dumps(config))
    cap = Captioner(export_model(str(ckpt), tmp_path / "out", progress=False))
    model, processor = BlipForConditionalGeneration.from_pretrained(ckpt).eval(), AutoProcessor.from_pretrained(ckpt)
    images = _images(6, 3)
    inputs = processor(images=images, text=["a photography of"] * 3, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**inputs, num_beams=3).numpy()
    prompt_len = inputs["input_ids"].shape[1] - 1
    assert cap.generate(cap.preprocess(images), "a photography of", num_beams=3) == [
        strip_sequence(r, cap.defaults.eos_token_id, prompt_len) for r in ref]


def test_a_checkpoint_missing_weights_is_refused(checkpoint_factory, tmp_path):
    # transformers draws missing weights at random on every load: an export of one draw could match no later load
    import shutil

    from safetensors.torch import load_file, save_file

    from edgecap.errors import ExportError
    from edgecap_export import export_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("blip"), ckpt)
    gone = "text_decoder.bert.encoder.layer.0.crossattention.self.query.weight"
    weights = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != gone}, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=f"lacks 1 of the model's weights [(]{gone}[)]") as err:
        export_model(str(ckpt), tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("prompt", ["a photography of", "A Picture of THE", "", "street at night"])
def test_prompt_prefix_is_what_generate_starts_from(prompt, checkpoint_factory, exported_factory):
    _, processor = _hf("blip", checkpoint_factory)
    cap = Captioner(exported_factory("blip"))
    ids = processor(text=prompt)["input_ids"]
    bos = cap.defaults.decoder_start_token_id
    assert cap.prompts.prefix(prompt) == [bos] + ids[1:-1]
    assert cap.prompts.prefix(None) == [bos]


def test_prompt_ignores_padding_and_truncation_in_tokenizer_json(checkpoint_factory, exported_factory, tmp_path):
    # The processor, called without padding/truncation, turns both off whatever tokenizer.json says.
    import shutil

    _, processor = _hf("blip", checkpoint_factory)
    d = tmp_path / "m"
    shutil.copytree(exported_factory("blip"), d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["padding"] = {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                      "pad_type_id": 0, "pad_token": "[PAD]"}
    tok["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    cap = Captioner(d)
    prompt = "a picture of the street"
    want = [cap.defaults.decoder_start_token_id] + processor(text=prompt)["input_ids"][1:-1]
    assert cap.prompts.prefix(prompt) == want


def test_one_prompt_per_image_decodes_each_as_alone(checkpoint_factory, exported_factory):
    model, processor = _hf("blip", checkpoint_factory)
    cap = Captioner(exported_factory("blip"))
    px = cap.preprocess(_images(11, 3))
    prompts = [None, "a photography of", "a picture of the"]
    for kw in (dict(num_beams=1), dict(num_beams=3)):
        got = cap.generate(px, prompts, max_new_tokens=10, **kw)
        want = [_hf_ids(model, processor, px[i:i + 1], p, cap.defaults.eos_token_id, max_new_tokens=10, **kw)[0]
                for i, p in enumerate(prompts)]
        assert got == want


def test_captions_carry_the_prompt_and_decode_as_the_processor(checkpoint_factory, exported_factory):
    _, processor = _hf("blip", checkpoint_factory)
    cap = Captioner(exported_factory("blip"))
    images = _images(5, 2)
    caps = cap.caption(images, prompt="a photography of", max_new_tokens=8)
    plain = cap.caption(images[0], max_new_tokens=8)
    for c in caps:
        assert c.prompt == "a photography of"
        assert c.text == processor.decode(c.token_ids, skip_special_tokens=True)
        assert c.text.startswith("a photography of")
    assert plain.prompt is None and plain.text == processor.decode(plain.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_prefill_then_steps_equals_uncached_decoding(num_beams, exported_factory):
    cap = Captioner(exported_factory("blip"))
    px = cap.preprocess(_images(2, 3))
    kw = dict(num_beams=num_beams, max_new_tokens=10, no_repeat_ngram_size=2)
    assert cap.generate(px, "a photography of", use_cache=True, **kw) == \
        cap.generate(px, "a photography of", use_cache=False, **kw)


def test_max_length_counts_the_prompt_as_in_transformers(checkpoint_factory, exported_factory, tmp_path):
    import shutil

    model, processor = _hf("blip", checkpoint_factory)
    d = tmp_path / "m"
    shutil.copytree(exported_factory("blip"), d)
    m = json.loads((d / "manifest.json").read_text())
    m["generation"].update(max_new_tokens=None, max_length=9)
    (d / "manifest.json").write_text(json.dumps(m))
    cap = Captioner(d)
    px = cap.preprocess(_images(4, 3))
    eos = cap.defaults.eos_token_id
    for prompt in PROMPTS:
        assert cap.generate(px, prompt) == _hf_ids(model, processor, px, prompt, eos, max_length=9)
    with pytest.raises(InputError, match="max_length"):
        cap.generate(px, "a photography of a red car on the street at night")
    # a caller's max_length is a total too, over the model's default of 20 new tokens
    default = Captioner(exported_factory("blip"))
    for prompt in PROMPTS:
        assert default.generate(px, prompt, max_length=7) == _hf_ids(model, processor, px, prompt, eos, max_length=7)


def test_unsupported_prompts_fail_with_one_line(exported_factory, tiny_export):
    blip = Captioner(exported_factory("blip"))
    px = blip.preprocess(_images(0, 2))
    cases = [(Captioner(tiny_export), "a photography of", "takes no prompt"),
             (blip, ["a photography of"], "one prompt per image"),
             (blip, 3, "string"), (blip, ["ok", 4], "string"),
             (blip, " ".join(["street"] * 80), "positions"),
             (blip, "<OD>", "not a task token like <OD>"), (blip, " <DETAILED_CAPTION>", "task token")]
    for cap, prompt, message in cases:
        with pytest.raises(InputError, match=message) as err:
            cap.generate(px, prompt, max_new_tokens=3)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="takes no prompt"):
        Captioner(tiny_export).caption(np.zeros((8, 8, 3), np.uint8), prompt="a")


def test_caption_cli_prompt(exported_factory, tmp_path, capsys):
    from PIL import Image

    from cli_helpers import run_cli

    img = tmp_path / "x.png"
    Image.fromarray(_images(1, 1)[0]).save(img)
    code, out, err = run_cli(["caption", str(exported_factory("blip")), str(img), "--prompt", "a photography of",
                              "--json", "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["prompt"] == "a photography of" and row["text"].startswith("a photography of")
    # a prompt the model cannot take is one line and a usage error, not one error per image
    code, out, err = run_cli(["caption", str(exported_factory("blip")), str(img), str(img), str(img),
                              "--prompt", "<OD>"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "task token like <OD>" in err


def test_run_refuses_a_prompt_the_model_cannot_take_before_it_creates_the_log(exported_factory, tmp_path, capsys):
    from PIL import Image

    from cli_helpers import run_cli

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(_images(1, 1)[0]).save(frames / "x.png")
    db = tmp_path / "events.sqlite"
    code, out, err = run_cli(["run", str(frames), "--model", str(exported_factory("blip")), "--prompt", "<OD>",
                              "--db", str(db), "--jsonl", str(tmp_path / "events.jsonl")], capsys)
    assert code == 2 and "not a task token like <OD>" in err and "camera 'frames'" in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no log, no thumbnails, no JSONL


def test_blip_graph_contract_and_lowerings(exported_factory):
    onnx = pytest.importorskip("onnx")
    layers = json.loads((exported_factory("blip") / "manifest.json").read_text())["architecture"]["num_layers"]

    def ops(attention: str, part: str) -> list[str]:
        path = exported_factory("blip", attention) / f"{part}.onnx"
        return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]

    dec, enc = ops("contrib", "decoder"), ops("contrib", "encoder")
    assert not {"If", "Loop", "Scan"} & set(dec)
    # self-attention fused; cross-attention over the cached K/V as MatMul/Softmax/MatMul (wrappers.cross_attend)
    assert dec.count("MultiHeadAttention") == layers and dec.count("Softmax") == layers
    assert enc.count("MultiHeadAttention") == 2 and "Softmax" not in enc  # one per ViT layer
    for part in ("encoder", "decoder"):
        std = ops("standard", part)
        assert "MultiHeadAttention" not in std and "Softmax" in std


def test_runtime_isolation_covers_blip(exported_factory):
    import subprocess
    import sys
    import textwrap

    from test_runtime_isolation import BLOCK

    code = BLOCK.format(blocked=("torch", "transformers", "onnx", "edgecap_export")) + textwrap.dedent(f"""
        import numpy as np
        from edgecap import Captioner
        cap = Captioner({str(exported_factory("blip"))!r})
        out = cap.caption(np.zeros((20, 20, 3), np.uint8), prompt="a photography of", max_new_tokens=4,
                          num_beams=2)
        assert out.prompt == "a photography of"
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        assert not leaked, leaked
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_default_length_is_transformers_default(checkpoint_factory, exported_factory):
    # No max_new_tokens nor max_length in the generation config: transformers makes 20 new tokens after any prefix.
    model, processor = _hf("blip", checkpoint_factory)
    cap = Captioner(exported_factory("blip"))
    px = cap.preprocess(_images(9, 3))
    for prompt in PROMPTS:
        want = _hf_ids(model, processor, px, prompt, cap.defaults.eos_token_id)
        assert cap.generate(px, prompt) == want
        assert max(len(ids) for ids in want) == len(cap.prompts.prefix(prompt)) - 1 + 20


def _weight_matmuls(graph) -> list:  # noqa: ANN001
    inits = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def test_int8_dynamic_quantizes_every_weight_matmul(exported_factory, tmp_path):
    import shutil

    onnx = pytest.importorskip("onnx")
    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(exported_factory("blip"), d)
    # random weights: the gate's verdict means nothing here, as for `edgecap bench`
    report = quantize_dir(d, calib_frames=4, eval_frames=4, accept_quality_drop=True, progress=False)
    assert report["frames"] == 4
    integer = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    for part in ("encoder", "decoder"):
        fp32, int8 = (onnx.load(str(d / f"{part}{s}.onnx")).graph for s in ("", ".int8"))
        assert _weight_matmuls(fp32) and not _weight_matmuls(int8), part
        assert integer & {n.op_type for n in int8.node}, part
    cap = Captioner(d, precision="int8")
    out = cap.caption(_images(0, 1)[0], prompt="a photography of", max_new_tokens=4, min_new_tokens=4)
    assert len(out.token_ids) == len(cap.prompts.prefix("a photography of")) - 1 + 4


@pytest.mark.slow
def test_int8_static_qdq_on_standard_graphs(exported_factory, tmp_path):
    import shutil

    onnx = pytest.importorskip("onnx")
    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(exported_factory("blip", "standard"), d)
    quantize_dir(d, calib_frames=6, eval_frames=4, encoder_mode="static", decoder_mode="static",
                 accept_quality_drop=True, progress=False)
    for part in ("encoder", "decoder"):
        g = onnx.load(str(d / f"{part}.int8.onnx")).graph
        inits = {i.name for i in g.initializer}
        producers = {o: n for n in g.node for o in n.output}
        weight_mm = [n for n in g.node if n.op_type in ("MatMul", "Gemm") and (
            producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
            and producers[n.input[1]].input[0] in inits)]
        assert weight_mm, part
        assert all(producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear"
                   for n in weight_mm), part
        assert not _weight_matmuls(g), part  # no weight MatMul left in float
    cap = Captioner(d, precision="int8")
    assert len(cap.caption(_images(1, 1)[0], max_new_tokens=4, min_new_tokens=4).token_ids) == 4


@pytest.mark.slow
def test_bench_runs_blip_side_by_side_with_transformers(checkpoint_factory, exported_factory, tmp_path):
    import shutil

    from edgecap_export.bench import main

    d = tmp_path / "model"
    shutil.copytree(exported_factory("blip"), d)
    shutil.copytree(checkpoint_factory("blip"), d / "hf")
    out = tmp_path / "bench.json"
    assert main(["--model", str(d), "--runs", "2", "--tokens", "3", "--batch", "2", "--systems", "eager", "fp32",
                 "--out", str(out), "--settle-ms", "0"]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"transformers_eager/batch2", "edgecap_fp32/batch2"}
    assert report["speedups"]["edgecap_fp32_vs_eager/batch2"] > 0


def test_floor_counts_every_blip_weight_matrix(checkpoint_factory, floor):
    """benchmarks/floor.py's BLIP GEMMs hold exactly the ViT's patch embedding and linear weights with every text
    layer's cross K/V (encoder side), and one decoder step's projections, prediction transform and LM head."""
    from transformers import BlipForConditionalGeneration

    path = checkpoint_factory("blip-wide")
    encoder, decoder = floor.blip_gemms(json.loads((path / "config.json").read_text()))
    model = BlipForConditionalGeneration.from_pretrained(path).eval()
    vit = [x for x in model.vision_model.encoder.modules() if isinstance(x, torch.nn.Linear)]
    vit.append(model.vision_model.embeddings.patch_embedding)
    bert = model.text_decoder.bert.encoder.layer
    cross = [x for layer in bert for x in (layer.crossattention.self.key, layer.crossattention.self.value)]
    assert sum(k * n for k, n, _ in encoder) == sum(x.weight.numel() for x in vit + cross)
    step = [x for layer in bert for x in (layer.attention.self.query, layer.attention.self.key,
                                          layer.attention.self.value, layer.attention.output.dense,
                                          layer.crossattention.self.query, layer.crossattention.output.dense,
                                          layer.intermediate.dense, layer.output.dense)]
    step += [model.text_decoder.cls.predictions.transform.dense, model.text_decoder.cls.predictions.decoder]
    assert sum(k * n for k, n in decoder) == sum(x.weight.numel() for x in step)
    assert {r for _, _, r in encoder} == {9, 10}  # 48 px in 16 px patches, + the class token
