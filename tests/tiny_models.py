"""Tiny VisionEncoderDecoder checkpoints built from configs in code (random weights, no hub)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "the", "red", "blue", "car", "person", "street", "at", "night", "day", "on", "left", "right"]


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained in code, wrapped for transformers (GPT-2 style specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(out: Path, *, encoder: str = "vit", image_size: int = 32, patch_size: int = 8,
                enc_layers: int = 2, enc_hidden: int = 32, enc_heads: int = 2, dec_layers: int = 2,
                dec_hidden: int = 32, dec_heads: int = 2, vocab_size: int = 300, seed: int = 0,
                generation: dict | None = None, resample: int = 2, eos_boost: float = 2.0) -> Path:
    """save_pretrained a random-weight captioner + tokenizer + ViT image processor into ``out``."""
    import torch
    from transformers import (DeiTConfig, GPT2Config, ViTConfig, ViTImageProcessorPil,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    torch.manual_seed(seed)
    tok = build_tokenizer(vocab_size)
    enc_cls = {"vit": ViTConfig, "deit": DeiTConfig}[encoder]
    enc_cfg = enc_cls(image_size=image_size, patch_size=patch_size, num_hidden_layers=enc_layers,
                      hidden_size=enc_hidden, num_attention_heads=enc_heads, intermediate_size=enc_hidden * 2)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    dec_cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=dec_hidden, n_layer=dec_layers,
                         n_head=dec_heads, add_cross_attention=True, is_decoder=True, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=False)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc_cfg, dec_cfg)
    cfg.decoder_start_token_id = bos
    cfg.pad_token_id = pad
    cfg.eos_token_id = eos
    cfg.tie_word_embeddings = False
    model = VisionEncoderDecoderModel(config=cfg).eval()
    # Random init gives near-uniform logits; scale the LM head so scores are decisive (like a trained model's)
    # and boost EOS so that some sequences end early: finished beams and padding get exercised.
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(40.0)
        model.decoder.lm_head.weight[eos].mul_(eos_boost)
    gen = {"max_length": 12, **(generation or {})}
    for k, v in gen.items():
        setattr(model.generation_config, k, v)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}, resample=resample).save_pretrained(out)
    return out


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def build_bert_tokenizer(vocab_size: int):
    """A BERT-style WordPiece tokenizer trained in code (lower-casing, [CLS] x [SEP] template) holding the special
    tokens BLIP's processor and generate use: [PAD] 0, [UNK], [CLS], [SEP], [MASK] and [DEC] (BLIP's bos)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(200)]
    corpus += ["a photography of", "a picture of the"]
    tok.train_from_iterator(corpus, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]")


def build_blip(out: Path, *, image_size: int = 32, patch_size: int = 8, enc_layers: int = 2, enc_hidden: int = 32,
               enc_heads: int = 2, dec_layers: int = 2, dec_hidden: int = 32, dec_heads: int = 2,
               vocab_size: int = 120, seed: int = 0, sep_boost: float = 1.3, text_positions: int = 64) -> Path:
    """save_pretrained a random-weight BlipForConditionalGeneration + BlipProcessor (Pillow image processor,
    BERT-style tokenizer) into ``out``. BLIP's generate reads the text decoder's generation config, which
    save_pretrained does not hold, so there are no generation settings to pass."""
    import torch
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor,
                              BlipTextConfig, BlipVisionConfig)

    torch.manual_seed(seed)
    tok = build_bert_tokenizer(vocab_size)
    ids = {name: tok.convert_tokens_to_ids(name) for name in BERT_SPECIALS}
    # BlipVisionConfig initialises with std 1e-10: every image would look the same to the decoder
    vision = BlipVisionConfig(image_size=image_size, patch_size=patch_size, num_hidden_layers=enc_layers,
                              hidden_size=enc_hidden, num_attention_heads=enc_heads, intermediate_size=enc_hidden * 2,
                              initializer_range=0.5)
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=dec_hidden, num_hidden_layers=dec_layers,
                          num_attention_heads=dec_heads, intermediate_size=dec_hidden * 2,
                          max_position_embeddings=text_positions,
                          encoder_hidden_size=enc_hidden, bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"],
                          sep_token_id=ids["[SEP]"],
                          eos_token_id=ids["[CLS]"])  # as published: eos is not what ends a caption, [SEP] is
    cfg = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
    model = BlipForConditionalGeneration(cfg).eval()
    # As for the GPT-2 models: decisive logits, and [SEP] boosted so that some captions end early; the
    # cross-attention outputs are scaled up so that the image, not only the text so far, picks the next token.
    with torch.no_grad():
        head = model.text_decoder.cls.predictions.decoder
        head.weight.mul_(40.0)
        head.weight[ids["[SEP]"]].mul_(sep_boost)
        for layer in model.text_decoder.bert.encoder.layer:
            layer.crossattention.output.dense.weight.mul_(30.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor = BlipProcessor(BlipImageProcessorPil(size={"height": image_size, "width": image_size}), tok)
    processor.save_pretrained(out)
    return out


FLORENCE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
# The task markers Florence-2's tokenizer holds besides the 1000 location bins (post-processing patterns name them).
FLORENCE_MARKERS = ["<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ground>", "<obj>", "<box>", "</box>",
                    "<bbox>", "</bbox>", "<poly>", "</poly>", "<sep>"]


# The published checkpoints' post-processor settings (processor_config.json), which post_process_generation reads.
FLORENCE_POST_PROCESSING = {"ocr": {"PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
                                               r"<loc_(\d+)><loc_(\d+)>", "AREA_THRESHOLD": 0.0},
                            "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
                            "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {},
                            "polygons": {}, "bboxes": {}, "description_with_bboxes_or_polygons": {}}


def build_bart_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer in BART's layout (<s> 0, <pad> 1, </s> 2, <unk> 3, then <mask>), trained in code
    on the task prompts, holding the tokens Florence2Processor needs: <image> (its image_token), the task markers
    and <loc_0> ... <loc_999>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BartTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=FLORENCE_SPECIALS + ["<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(200)]
    corpus += ["What does the image describe?", "Describe in detail what is shown in the image.",
               "Describe with a paragraph what is shown in the image.", "What is the text in the image?",
               "Locate the objects with category name in the image.", "Locate the phrases in the caption:"]
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    wrapped = BartTokenizer(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", sep_token="</s>", cls_token="<s>", mask_token="<mask>",
                            extra_special_tokens={"image_token": "<image>"})
    wrapped.add_tokens(FLORENCE_MARKERS + [f"<loc_{i}>" for i in range(1000)], special_tokens=True)
    return wrapped


def build_florence2(out: Path, *, image_size: int = 32, embed_dim: tuple[int, ...] = (16, 32),
                    depths: tuple[int, ...] = (1, 1), vision_heads: tuple[int, ...] = (2, 4), d_model: int = 32,
                    layers: int = 2, heads: int = 2, vocab_size: int = 160, seed: int = 0,
                    generation: dict | None = None, eos_boost: float = 1.0) -> Path:
    """save_pretrained a random-weight Florence2ForConditionalGeneration (a tiny DaViT of ``len(depths)`` stages,
    strides 4 then 2, + a BART encoder-decoder) and its Florence2Processor (Pillow CLIP image processor at
    ``image_size``, the BART-layout tokenizer above) into ``out``. The generation settings default to the published
    checkpoints' (3 beams, no_repeat_ngram_size 3, early stopping, forced <s> first and </s> last) with a short
    max_length; ``eos_boost`` scales </s>'s logit so that some answers end before the limit."""
    import torch
    from transformers import (BartConfig, CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, Florence2VisionConfig)

    torch.manual_seed(seed)
    tok = build_bart_tokenizer(vocab_size)
    stages = len(depths)
    strides = (4,) + (2,) * (stages - 1)
    vision = Florence2VisionConfig(depths=list(depths), patch_size=[7] + [3] * (stages - 1), patch_stride=list(strides),
                                   patch_padding=[3] + [1] * (stages - 1), patch_prenorm=[False] + [True] * (stages - 1),
                                   embed_dim=list(embed_dim), num_heads=list(vision_heads),
                                   num_groups=list(vision_heads), window_size=2, projection_dim=d_model,
                                   drop_path_rate=0.0, initializer_range=0.5)
    text = BartConfig(vocab_size=len(tok), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                      encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=d_model * 2,
                      decoder_ffn_dim=d_model * 2, max_position_embeddings=128, bos_token_id=0, pad_token_id=1,
                      eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
                      scale_embedding=False, tie_word_embeddings=False)
    # untied LM head: tied to the embeddings, a random decoder mostly predicts the token it was just fed
    cfg = Florence2Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                          image_token_id=tok.image_token_id, tie_word_embeddings=False)
    model = Florence2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # the cross-attention made to matter (as for BLIP): the image picks the tokens
        for layer in model.model.language_model.decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(30.0)
        # decisive logits, and </s> boosted so that some answers end early
        model.lm_head.weight.mul_(40.0)
        model.lm_head.weight[2].mul_(eos_boost)
    gen = {"num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True, "decoder_start_token_id": 2,
           "forced_bos_token_id": 0, "forced_eos_token_id": 2, "bos_token_id": 0, "eos_token_id": 2,
           "pad_token_id": 1, "max_length": 20, **(generation or {})}
    for k, v in gen.items():
        setattr(model.generation_config, k, v)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    grid = image_size // (4 * 2 ** (stages - 1))
    images = CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False,
                                   resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    images.image_seq_length = grid * grid + 1
    Florence2Processor(images, tok, post_processor_config=FLORENCE_POST_PROCESSING).save_pretrained(out)
    return out


# SmolLM2's special tokens (ids 0-2) and the image/turn tokens SmolVLM's tokenizer adds (Idefics3Processor's names).
SMOL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SMOL_ADDED = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
# HuggingFaceTB/SmolVLM-256M-Instruct's chat template, as published.
SMOL_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def build_smol_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer in SmolLM2's layout (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2) trained in code
    on questions and answers, holding SmolVLM's image and turn tokens as added special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SMOL_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(200)]
    corpus += ["User: Assistant: Describe this image.", "Is the gate open?", "How many people are at the door?"]
    tok.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                      pad_token="<|im_end|>", unk_token="<|endoftext|>")
    wrapped.add_special_tokens({"additional_special_tokens": SMOL_ADDED})
    return wrapped


def build_smolvlm(out: Path, *, image_size: int = 64, patch_size: int = 8, scale_factor: int = 2,
                  vision_layers: int = 2, vision_hidden: int = 32, vision_heads: int = 2, layers: int = 2,
                  hidden: int = 32, heads: int = 4, kv_heads: int = 2, vocab_size: int = 200, seed: int = 0,
                  arch: str = "idefics3", eos_like: int | None = None, eos_boost: float = 1.1, init_range: float = 0.02,
                  generation: dict | None = None, image_splitting: bool = False) -> Path:
    """save_pretrained a random-weight SmolVLM (``arch`` "idefics3": Idefics3ForConditionalGeneration, as the
    published SmolVLM-256M/500M checkpoints name it; "smolvlm": SmolVLMForConditionalGeneration) with a tiny SigLIP
    tower, a pixel-shuffle connector and a Llama decoder with grouped-query attention (``kv_heads`` < ``heads``), and
    its Idefics3Processor (Pillow image processor, single tile: ``do_image_splitting`` off) with SmolVLM's chat
    template, into ``out``. With ``eos_like``, <end_of_utterance>'s LM-head row becomes that token's times ``eos_boost``
    so that answers end where the random model would say that token; ``init_range`` is the decoder's initializer
    range (0.2 makes the image and the prompt change the answers). ``image_splitting``: the processor splits images
    into tiles (longest edge resized to 2 tiles first), as the published SmolVLM processors do."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, SmolVLMConfig, SmolVLMForConditionalGeneration)

    torch.manual_seed(seed)
    tok = build_smol_tokenizer(vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SMOL_SPECIALS + SMOL_ADDED}
    vision = dict(image_size=image_size, patch_size=patch_size, num_hidden_layers=vision_layers,
                  hidden_size=vision_hidden, num_attention_heads=vision_heads, intermediate_size=vision_hidden * 2,
                  initializer_range=0.5)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=512, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                pad_token_id=ids["<|im_end|>"], initializer_range=init_range)
    config_cls, model_cls = {"idefics3": (Idefics3Config, Idefics3ForConditionalGeneration),
                             "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration)}[arch]
    cfg = config_cls(vision_config=vision, text_config=text, scale_factor=scale_factor,
                     image_token_id=ids["<image>"], tie_word_embeddings=False)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        # decisive logits, and the image features made to matter (as for BLIP and Florence-2)
        model.lm_head.weight.mul_(40.0)
        if eos_like is not None:  # EOS scores as a token the random decoder often picks: some answers end early
            model.lm_head.weight[ids["<end_of_utterance>"]] = model.lm_head.weight[eos_like] * eos_boost
        model.model.connector.modality_projection.proj.weight.mul_(20.0)
    gen = {"bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<end_of_utterance>"],
           "pad_token_id": ids["<|im_end|>"], "max_new_tokens": 12, **(generation or {})}
    for k, v in gen.items():
        setattr(model.generation_config, k, v)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    images = Idefics3ImageProcessorPil(do_image_splitting=image_splitting,
                                       size={"longest_edge": image_size * (2 if image_splitting else 1)},
                                       max_image_size={"longest_edge": image_size})
    seq = (image_size // patch_size) ** 2 // scale_factor ** 2
    Idefics3Processor(images, tok, image_seq_len=seq, chat_template=SMOL_CHAT_TEMPLATE).save_pretrained(out)
    return out
