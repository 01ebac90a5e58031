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
               vocab_size: int = 120, seed: int = 0, sep_boost: float = 1.3) -> Path:
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
                          num_attention_heads=dec_heads, intermediate_size=dec_hidden * 2, max_position_embeddings=64,
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
