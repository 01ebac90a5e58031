"""Florence-2 (Florence2ForConditionalGeneration): export, preprocessing, task prompts, token-identical generation
and <loc_N> post-processing equal to transformers'."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FLORENCE_ARCHS

torch = pytest.importorskip("torch")

from edgecap import Captioner  # noqa: E402
from edgecap.errors import InputError  # noqa: E402
from edgecap.generation import GenerationOptions, process_scores, strip_sequence  # noqa: E402

GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>a red car on the street"
TASKS = ["<CAPTION>", "<DETAILED_CAPTION>", "<OD>", "<MORE_DETAILED_CAPTION>", "<OCR>", GROUNDING]
FAST = ("florence2", "contrib")


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:80]
    out = []
    for i in range(n):  # gradients and blocks: images the tiny model tells apart
        img = np.stack([xx * (3 + i) % 256, yy * (5 + 2 * i) % 256, (xx // (4 + i) + yy // 8) % 2 * 220], -1)
        img = img + rng.integers(0, 30, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8)[: 40 + 7 * i, : 50 + 9 * i])
    return out


def _hf(arch, checkpoint_factory):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    path = checkpoint_factory(arch)
    return Florence2ForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def _hf_generate(model, processor, px: np.ndarray, prompt: str, **kw) -> np.ndarray:
    ids = processor(text=[prompt] * len(px), images=[np.zeros((8, 8, 3), np.uint8)] * len(px),
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.generate(input_ids=ids, pixel_values=torch.from_numpy(px), **kw).numpy()


def _hf_ids(model, processor, px, prompt, eos, **kw) -> list[list[int]]:
    return [strip_sequence(r, eos) for r in _hf_generate(model, processor, px, prompt, **kw)]


def _slow_unless(fast: bool, *values, **param):  # noqa: ANN002, ANN003, ANN202
    return pytest.param(*values, marks=() if fast else pytest.mark.slow, **param)


DECODING = [("greedy", dict(num_beams=1)), ("beam3", dict(num_beams=3)),
            ("default", dict()),  # the checkpoint's: 3 beams, no_repeat_ngram_size 3, early stopping, forced tokens
            ("beam3-lenpen-minnew", dict(num_beams=3, length_penalty=0.6, min_new_tokens=3))]
GRID = [_slow_unless((arch, attention) == FAST and batch == 3 and case != "beam3-lenpen-minnew"
                     and task in ("<CAPTION>", "<OD>"),
                     arch, attention, case, kw, batch, task, id=f"{arch}-{attention}-{case}-b{batch}-{task}")
        for arch in sorted(FLORENCE_ARCHS) for attention in ("contrib", "standard") for case, kw in DECODING
        for batch in (1, 3) for task in TASKS]


@pytest.mark.parametrize("arch,attention,case,kw,batch,task", GRID)
def test_generate_matches_transformers(arch, attention, case, kw, batch, task, checkpoint_factory, exported_factory):
    model, processor = _hf(arch, checkpoint_factory)
    cap = Captioner(exported_factory(arch, attention))
    px = cap.preprocess(_images(batch, batch))
    assert cap.generate(px, task, **kw) == _hf_ids(model, processor, px, task, cap.defaults.eos_token_id, **kw)


def test_the_grid_exercises_early_eos_forced_eos_and_image_dependence(exported_factory):
    # Parity would be weak if every answer ran to the limit (or none did) or all images gave one answer.
    cap = Captioner(exported_factory("florence2"))
    px = cap.preprocess(_images(7, 8))
    limit = cap.defaults.new_tokens(1)
    for task in ("<CAPTION>", "<OD>"):
        out = cap.generate(px, task, num_beams=1)
        assert {len(ids) for ids in out} > {limit} and limit in {len(ids) for ids in out}, task
        assert all(ids[0] == 0 and ids[-1] == 2 for ids in out)  # forced <s> first; </s> last (forced at the limit)
        assert len({tuple(i) for i in out}) >= 2, task


def test_forced_tokens_follow_transformers_processors():
    opts = GenerationOptions(max_new_tokens=4, decoder_start_token_id=2, eos_token_id=(2,), forced_bos_token_id=0,
                             forced_eos_token_id=2)
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    first = process_scores(np.full((2, 1), 2), scores.copy(), opts, 1, 5)
    assert (first.argmax(1) == 0).all() and np.isinf(first[:, 1:]).all()
    last = process_scores(np.full((2, 4), 3), scores.copy(), opts, 1, 5)
    assert (last.argmax(1) == 2).all() and np.isinf(np.delete(last, 2, axis=1)).all()
    middle = process_scores(np.full((2, 2), 3), scores.copy(), opts, 1, 5)
    assert np.array_equal(middle, scores)


@pytest.mark.parametrize("arch,attention", [_slow_unless((a, att) == FAST, a, att)
                                             for a in sorted(FLORENCE_ARCHS) for att in ("contrib", "standard")])
def test_export_records_florence2_manifest_and_passing_validation(arch, attention, checkpoint_factory,
                                                                 exported_factory):
    out = exported_factory(arch, attention)
    m = json.loads((out / "manifest.json").read_text())
    ckpt = checkpoint_factory(arch)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    pc = json.loads((ckpt / "processor_config.json").read_text())
    assert not (ckpt / "preprocessor_config.json").exists()
    ip = pc["image_processor"]
    assert m["family"] == "florence2" and m["architecture"]["attention"] == attention
    assert (m["image"]["height"], m["image"]["width"]) == (ip["size"]["height"], ip["size"]["width"])
    assert (m["image"]["mean"], m["image"]["std"], m["image"]["resample_name"]) == (
        ip["image_mean"], ip["image_std"], "bicubic")
    assert m["special_tokens"]["decoder_start_token_id"] == gen["decoder_start_token_id"]
    for key in ("num_beams", "no_repeat_ngram_size", "early_stopping", "forced_bos_token_id", "forced_eos_token_id",
                "max_length"):
        assert m["generation"][key] == gen[key], key
    p = m["prompt"]
    assert p["kind"] == "task" and p["default_task"] == "<CAPTION>" and m["io"]["encoder"]["input_ids"]
    assert p["tasks"]["<OD>"] == {"text": "Locate the objects with category name in the image.",
                                  "takes_input": False, "post_processing": "description_with_bboxes"}
    assert p["banned_grounding_tokens"] == pc["post_processor_config"]["phrase_grounding"]["banned_grounding_tokens"]
    v = m["validation"]
    assert v["passed"] and not v["mismatches"]
    assert set(v["generate"]) == {f"{mode}.batch{b}.{t}" for mode in ("greedy", "beam") for b in (1, 3)
                                  for t in ("<CAPTION>", "<DETAILED_CAPTION>", "<OD>")}
    assert v["outputs"]["preprocess.pixel_values"]["max_abs_diff"] <= 1e-4
    assert all(r["ok"] for k, r in v["outputs"].items() if k.startswith(("encoder.", "decoder.")))


def test_preprocess_equals_the_processor(checkpoint_factory, exported_factory):
    _, processor = _hf("florence2", checkpoint_factory)
    cap = Captioner(exported_factory("florence2"))
    images = _images(3, 4) + [np.full((500, 20, 3), 200, np.uint8)]
    ref = processor(text=["<CAPTION>"] * len(images), images=images, return_tensors="np")["pixel_values"]
    assert np.max(np.abs(cap.preprocess(images) - ref)) <= 1e-4


@pytest.mark.parametrize("prompt", TASKS + ["<CAPTION_TO_PHRASE_GROUNDING>", "<CAPTION_TO_PHRASE_GROUNDING>  Two cars ",
                                    "<CAPTION_TO_PHRASE_GROUNDING>a car <CAPTION_TO_PHRASE_GROUNDING> and a bus",
                                    " <CAPTION_TO_PHRASE_GROUNDING>car", "car <CAPTION_TO_PHRASE_GROUNDING>"])
def test_encoder_ids_are_the_processors_without_image_placeholders(prompt, checkpoint_factory, exported_factory):
    _, processor = _hf("florence2", checkpoint_factory)
    cap = Captioner(exported_factory("florence2"))
    ids = processor(text=prompt, images=np.zeros((8, 8, 3), np.uint8))["input_ids"][0]
    assert cap.prompts.encoder_ids(prompt) == ids[processor.num_image_tokens:]
    assert cap.prompts.prefix(prompt) == [cap.defaults.decoder_start_token_id]
    assert cap.prompts.encoder_ids(None) == cap.prompts.encoder_ids("<CAPTION>")


def test_the_image_and_the_prompt_share_the_encoders_positions(checkpoint_factory, exported_factory):
    """The image features come first in BART's encoder: the longest prompt that fits beside them generates as
    transformers does, one letter more is one InputError line (not an ONNX Runtime index error)."""
    model, processor = _hf("florence2", checkpoint_factory)
    out = exported_factory("florence2")
    spec = json.loads((out / "manifest.json").read_text())["prompt"]
    assert spec["image_positions"] == processor.num_image_tokens > 0
    limit = spec["max_positions"]
    assert limit == model.config.text_config.max_position_embeddings

    def prompt(words: int) -> str:  # one token per letter with this tokenizer
        return "<CAPTION_TO_PHRASE_GROUNDING>" + "x" * words

    def length(words: int) -> int:  # the processor's encoder sequence: image placeholders + the prompt's ids
        return len(processor(text=prompt(words), images=np.zeros((8, 8, 3), np.uint8))["input_ids"][0])

    words = max(w for w in range(limit) if length(w) <= limit)
    assert length(words) == limit  # the bound is hit exactly, not skipped
    cap = Captioner(out)
    px = cap.preprocess(_images(0, 1))
    assert cap.generate(px, prompt(words), num_beams=1) == _hf_ids(model, processor, px, prompt(words),
                                                                    cap.defaults.eos_token_id, num_beams=1)
    with pytest.raises(IndexError):  # transformers' own limit, one letter later
        _hf_generate(model, processor, px, prompt(words + 1), num_beams=1)
    with pytest.raises(InputError, match=f"holds {limit} positions") as err:
        cap.generate(px, prompt(words + 1), num_beams=1)
    assert "\n" not in str(err.value)


def _post_processed(processor, token_ids, task, size):
    text = processor.batch_decode([[2] + token_ids], skip_special_tokens=False)[0]
    return processor.post_process_generation(text, task=task.split(">")[0] + ">", image_size=size)


@pytest.mark.parametrize("task", ["<OD>", GROUNDING])
def test_objects_equal_post_process_generation(task, checkpoint_factory, exported_factory):
    _, processor = _hf("florence2", checkpoint_factory)
    cap = Captioner(exported_factory("florence2"))
    images = _images(4, 3)
    caps = cap.caption(images, prompt=task, num_beams=1)
    tok = processor.tokenizer
    answers = ["car<loc_10><loc_20><loc_300><loc_999>red person<loc_0><loc_5><loc_7><loc_999>",
               "<s>the image<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>street</s>",
               "a car at night<loc_500><loc_500><loc_501><loc_502>\u00e9t\u00e9<loc_9><loc_9><loc_9><loc_9>",
               "no boxes here", "<loc_1><loc_2><loc_3>",
               # no <s> first (a checkpoint without forced_bos_token_id): the leading space is part of the text
               # post_process_generation reads, of an empty label here and of the label in the next one
               " <loc_5><loc_6><loc_7><loc_8>", " car<loc_1><loc_2><loc_3><loc_4> red<loc_5><loc_6><loc_7><loc_8>"]
    crafted = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    found = 0
    for c, image in zip(caps, images):
        size = (image.shape[1], image.shape[0])
        for ids in [c.token_ids] + crafted:
            want = _post_processed(processor, ids, task, size)[task.split(">")[0] + ">"]
            got = cap._caption(ids, 0.0, task, size, {}).objects  # as Captioner.caption reads an answer
            assert [o.label for o in got] == want["labels"]
            assert [list(o.box) for o in got] == want["bboxes"]
            found += len(got)
        want = _post_processed(processor, c.token_ids, task, size)[task.split(">")[0] + ">"]
        assert c.objects is not None and [list(o.box) for o in c.objects] == want["bboxes"]
        assert c.text == ", ".join(want["labels"]) and c.prompt == task
    assert found >= 3 * 3  # the crafted answers hold boxes


def test_text_tasks_decode_as_post_process_generation(checkpoint_factory, exported_factory):
    _, processor = _hf("florence2", checkpoint_factory)
    cap = Captioner(exported_factory("florence2"))
    for task in ("<CAPTION>", "<OCR>"):
        for c in cap.caption(_images(2, 2), prompt=task, num_beams=1):
            assert c.objects is None
            assert c.text == _post_processed(processor, c.token_ids, task, (1, 1))[task]


def test_one_prompt_per_image_decodes_each_as_alone(checkpoint_factory, exported_factory):
    model, processor = _hf("florence2", checkpoint_factory)
    cap = Captioner(exported_factory("florence2"))
    images = _images(11, 3)
    px = cap.preprocess(images)
    prompts = ["<OD>", "<CAPTION>", GROUNDING]
    got = cap.generate(px, prompts, num_beams=3)
    want = [_hf_ids(model, processor, px[i:i + 1], p, cap.defaults.eos_token_id, num_beams=3)[0]
            for i, p in enumerate(prompts)]
    assert got == want
    assert [c.token_ids for c in cap.caption(images, prompt=prompts, num_beams=3)] == want


@pytest.mark.parametrize("num_beams", [1, 3])
def test_prefill_then_steps_equals_uncached_decoding(num_beams, exported_factory):
    cap = Captioner(exported_factory("florence2"))
    px = cap.preprocess(_images(2, 3))
    assert cap.generate(px, "<OD>", num_beams=num_beams) == cap.generate(px, "<OD>", use_cache=False,
                                                                         num_beams=num_beams)


def test_unsupported_prompts_fail_with_one_line(exported_factory):
    cap = Captioner(exported_factory("florence2"))
    px = cap.preprocess(_images(0, 2))
    cases = [("a photography of", "expects a task prompt"), ("<REGION_PROPOSAL>", "expects a task prompt"),
             ("<OD> cars", "takes no text"), (GROUNDING + " <OD>", "takes no text"), (["<OD>"], "one prompt per image"),
             (GROUNDING + " street" * 200, "positions"), (GROUNDING + " <image>", "image tokens"),
             # tasks edgecap does not run, but which Florence2Processor refuses anywhere but alone
             (GROUNDING + " <OCR_WITH_REGION>", "refuses <OCR_WITH_REGION> anywhere but alone"),
             ("a <REGION_PROPOSAL> b", "refuses <REGION_PROPOSAL>")]
    for prompt, message in cases:
        with pytest.raises(InputError, match=message) as err:
            cap.generate(px, prompt, max_new_tokens=3)
        assert "\n" not in str(err.value)
    # the decoder prefix is the model's: a start token of the caller's is refused, not silently replaced
    start = cap.defaults.decoder_start_token_id
    with pytest.raises(InputError, match="decoder_start_token_id cannot be changed per call"):
        cap.generate(px, "<OD>", max_new_tokens=3, decoder_start_token_id=start + 1)
    assert cap.generate(px, "<OD>", max_new_tokens=3, decoder_start_token_id=start) == \
        cap.generate(px, "<OD>", max_new_tokens=3)
    enc = cap.encode_images(_images(0, 1), "<OD>")
    with pytest.raises(InputError, match="encoded for the prompt"):
        cap.caption_encoded(enc, "<CAPTION>")
    assert cap.caption_encoded(enc, "<OD>")[0].prompt == "<OD>"


def _edited(src, dst, **edits):
    """A copy of checkpoint ``src`` whose JSON files get ``edits``: {file stem: function(dict) editing it}."""
    import shutil

    shutil.copytree(src, dst)
    for stem, edit in edits.items():
        path = dst / f"{stem}.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("edits,message", [
    ({"config": lambda c: c["text_config"].update(model_type="mbart")}, "text model 'mbart' is not supported"),
    ({"config": lambda c: c["vision_config"].update(projection_dim=40)}, "projection_dim 40 differs"),
    ({"processor_config": lambda c: c["image_processor"].update(image_seq_length=30)},
     "image_seq_length 30 differs from the 17 image features"),
    ({"generation_config": lambda c: c.update(renormalize_logits=True)}, "renormalize_logits=True is not supported"),
])
def test_export_refuses_what_it_cannot_reproduce_with_one_line(edits, message, checkpoint_factory, tmp_path):
    """A checkpoint the graphs could not reproduce (another text model, image features that do not fit the encoder
    or the processor's placeholders, a logits processor the runtime lacks) is refused before anything is written,
    where before the export raised a traceback, or wrote graphs the parity check then failed."""
    from edgecap.errors import UnsupportedModelError
    from edgecap_export import export_model

    src = _edited(checkpoint_factory("florence2"), tmp_path / "ckpt", **edits)
    with pytest.raises(UnsupportedModelError, match=message) as err:
        export_model(str(src), tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_caption_cli_task_prompt_prints_objects(exported_factory, tmp_path, capsys):
    from PIL import Image

    from cli_helpers import run_cli

    img = tmp_path / "x.png"
    Image.fromarray(_images(1, 1)[0]).save(img)
    code, out, err = run_cli(["caption", str(exported_factory("florence2")), str(img), "--prompt", "<OD>",
                              "--json", "--beams", "1"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["prompt"] == "<OD>" and isinstance(row["objects"], list)
    assert all(set(o) == {"label", "box"} and len(o["box"]) == 4 for o in row["objects"])


def test_florence2_graph_contract_and_lowerings(exported_factory):
    onnx = pytest.importorskip("onnx")

    def graph(attention: str, part: str):
        return onnx.load(str(exported_factory("florence2", attention) / f"{part}.onnx"), load_external_data=False).graph

    layers = json.loads((exported_factory("florence2") / "manifest.json").read_text())["architecture"]["num_layers"]
    dec = [n.op_type for n in graph("contrib", "decoder").node]
    assert not {"If", "Loop", "Scan"} & set(dec)
    # self-attention fused; cross-attention over the cached K/V as MatMul/Softmax/MatMul (wrappers.cross_attend)
    assert dec.count("MultiHeadAttention") == layers and dec.count("Softmax") == layers
    assert [i.name for i in graph("contrib", "encoder").input] == ["pixel_values", "input_ids"]
    std = [n.op_type for n in graph("standard", "decoder").node]
    assert "MultiHeadAttention" not in std and "Softmax" in std and "If" not in std


def test_runtime_isolation_covers_florence2(exported_factory):
    import subprocess
    import sys
    import textwrap

    from test_runtime_isolation import BLOCK

    code = BLOCK.format(blocked=("torch", "transformers", "onnx", "edgecap_export")) + textwrap.dedent(f"""
        import numpy as np
        from edgecap import Captioner
        cap = Captioner({str(exported_factory("florence2"))!r})
        out = cap.caption(np.zeros((20, 30, 3), np.uint8), prompt="<OD>", max_new_tokens=4, num_beams=2)
        assert out.prompt == "<OD>" and out.objects is not None
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        assert not leaked, leaked
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_int8_dynamic_quantizes_every_weight_matmul(exported_factory, tmp_path):
    import shutil

    onnx = pytest.importorskip("onnx")
    from edgecap_export.quantize import quantize_dir

    d = tmp_path / "model"
    shutil.copytree(exported_factory("florence2"), d)
    # random weights: the gate's verdict means nothing here, as for `edgecap bench`
    quantize_dir(d, calib_frames=4, eval_frames=4, accept_quality_drop=True, progress=False)
    integer = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    for part in ("encoder", "decoder"):
        int8 = onnx.load(str(d / f"{part}.int8.onnx")).graph
        inits = {i.name for i in int8.initializer}
        assert not [n for n in int8.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits], part
        assert integer & {n.op_type for n in int8.node}, part
    # DaViT's downsampling convolutions are integer GEMMs too; the 3-channel stem and the depthwise position
    # convolutions stay float
    fp32 = [n for n in onnx.load(str(d / "encoder.onnx")).graph.node if n.op_type == "Conv"]
    downsampling = [n for n in fp32 if onnx.helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "strides")) != [1, 1]][1:]
    int8_convs = [n for n in onnx.load(str(d / "encoder.int8.onnx")).graph.node if n.op_type == "Conv"]
    assert downsampling and len(int8_convs) == len(fp32) - len(downsampling)
    recipe = json.loads((d / "manifest.json").read_text())["graphs"]["int8"]["recipe"]
    assert recipe["convs_as_matmuls"] == {"encoder": len(downsampling), "decoder": 0}
    cap = Captioner(d, precision="int8")
    out = cap.caption(_images(0, 1)[0], prompt="<OD>", max_new_tokens=4, min_new_tokens=4)
    assert len(out.token_ids) == 4


@pytest.mark.parametrize("arch,window", [("florence2", None), ("florence2-deep", None), ("florence2-deep", 8)])
def test_davit_tower_computes_transformers_image_features(arch, window, checkpoint_factory):
    """davit_graphs' channels-last tower gives get_image_features' output in both lowerings; with a window that
    does not divide every stage's map (8 on florence2-deep's 16/8/4 maps) those stages take transformers' padded
    path."""
    from transformers import Florence2ForConditionalGeneration

    from edgecap_export.davit_graphs import davit_image_features

    model = Florence2ForConditionalGeneration.from_pretrained(checkpoint_factory(arch)).eval()
    if window:
        for block in model.model.vision_tower.blocks:
            for layer in block:
                layer.spatial_block.window_attn.window_size = window
    size = 64 if arch == "florence2-deep" else 32
    px = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        ref = model.model.get_image_features(px).pooler_output
        for attention in ("contrib", "standard"):
            torch.testing.assert_close(davit_image_features(model.model, px, attention), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["contrib", "standard"])
def test_davit_windows_are_one_attention_node_each(attention, checkpoint_factory, exported_factory):
    """contrib: one com.microsoft.MultiHeadAttention per window attention (transformers' window partition and
    attention matmuls gone); standard: none, only standard operators."""
    onnx = pytest.importorskip("onnx")
    depths = json.loads((checkpoint_factory("florence2") / "config.json").read_text())["vision_config"]["depths"]
    g = onnx.load(str(exported_factory("florence2", attention) / "encoder.onnx"), load_external_data=False).graph
    mha = [n for n in g.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == (sum(depths) if attention == "contrib" else 0)
    assert {n.domain for n in g.node} <= ({"", "com.microsoft"} if attention == "contrib" else {""})


def test_floor_counts_every_florence2_weight_matrix(checkpoint_factory, floor):
    """benchmarks/floor.py's Florence-2 GEMMs hold exactly the weights of the tower's patch embeddings and linear
    layers, the projector, the BART encoder and the decoder's cross K/V (encoder side), and of one decoder step;
    rows follow each stage's map."""
    from transformers import Florence2ForConditionalGeneration

    path = checkpoint_factory("florence2-deep")
    encoder, decoder = floor.florence2_gemms(json.loads((path / "config.json").read_text()), 64, 7)
    model = Florence2ForConditionalGeneration.from_pretrained(path).eval()
    m, text = model.model, model.model.language_model

    def weights(modules) -> int:
        return sum(w.weight.numel() for w in modules)

    tower = [x for x in m.vision_tower.modules() if isinstance(x, torch.nn.Linear)]
    tower += [c.conv for c in m.vision_tower.convs]
    bart = [x for layer in text.encoder.layers for x in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                        layer.self_attn.v_proj, layer.self_attn.out_proj,
                                                        layer.fc1, layer.fc2)]
    cross = [x for layer in text.decoder.layers for x in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj)]
    projector = [m.multi_modal_projector.image_projection]
    assert sum(k * n for k, n, _ in encoder) == weights(tower + bart + cross + projector)
    step = [x for layer in text.decoder.layers for x in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                        layer.self_attn.v_proj, layer.self_attn.out_proj,
                                                        layer.encoder_attn.q_proj, layer.encoder_attn.out_proj,
                                                        layer.fc1, layer.fc2)]
    assert sum(k * n for k, n in decoder) == weights(step + [model.lm_head])
    assert encoder[0] == (3 * 7 * 7, 16, 16 * 16)  # stride 4 at 64 px: a 16 x 16 map
    assert encoder[-1][2] == 4 * 4 + 1 + 7  # the last stage's 4 x 4 map, its mean token, the prompt
