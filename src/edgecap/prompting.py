"""Prompts -> decoder prefixes, as the checkpoint's processor and ``generate`` build them.

The manifest's ``prompt`` section says how (see :mod:`edgecap.manifest`); a model without one takes no prompt.
Kind ``"prefix"`` (BLIP): the prompt is the start of the caption. BLIP's processor tokenizes it with the
tokenizer's template (``[CLS] text [SEP]``) and ``BlipForConditionalGeneration.generate`` replaces the first id
with the decoder's bos (``[DEC]``) and drops the last one, so the decoder continues the text.
Kind ``"task"`` (Florence-2): the prompt is a task token from the manifest's table, with text after it for the
tasks that take text; ``Florence2Processor`` expands it into the task's instruction and the encoder reads
``<s> instruction </s>`` (:meth:`PromptEncoder.encoder_ids`); the decoder starts from its start token alone.
Kind ``"chat"`` (SmolVLM, decoder-only): the prompt is the user's text (a question, an instruction); the export
rendered the checkpoint's chat template around it once, with the image expanded into its tokens, so the prefill's
prompt is ``before + text + after`` tokenized whole, as the processor tokenizes the rendered template (no jinja here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InputError

PromptArg = str | Sequence[str | None] | None
_TASK_TOKEN = re.compile(r"\s*<[A-Z][A-Z0-9_]*>")  # Florence-2's task tokens: <OD>, <DETAILED_CAPTION>, ...


@dataclass(frozen=True)
class PromptEncoder:
    """Turns prompts into decoder prefixes (lists of token ids, start token first).

    Attributes:
        model: the model's display name, for messages.
        start_token_id: the decoder start token: the whole prefix when there is no prompt.
        spec: the manifest's ``prompt`` section, or None when the model takes no prompt.
        tokenizer: a ``tokenizers.Tokenizer``.
    """

    model: str
    start_token_id: int
    spec: dict[str, Any] | None
    tokenizer: Any

    @classmethod
    def for_model(cls, model: str, start_token_id: int, spec: dict[str, Any] | None,
                  tokenizer: Any) -> "PromptEncoder":
        """An encoder over a copy of ``tokenizer`` with padding and truncation off: a processor called without
        ``padding``/``truncation`` turns off whatever tokenizer.json configures, so prompts tokenize the same way."""
        if spec is not None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_padding()
            tokenizer.no_truncation()
        return cls(model, start_token_id, spec, tokenizer)

    @property
    def accepts_prompts(self) -> bool:
        return self.spec is not None

    def per_image(self, prompt: PromptArg, batch: int) -> list[str | None]:
        """One prompt (or None) per image: a string applies to every image, a list gives one per image."""
        if prompt is None or isinstance(prompt, str):
            prompts: list[str | None] = [prompt] * batch
        elif isinstance(prompt, (list, tuple)):
            prompts = list(prompt)
            if len(prompts) != batch:
                raise InputError(f"expected one prompt per image ({batch}), got {len(prompts)} prompts")
        else:
            raise InputError(f"expected the prompt as a string or a list of strings, got {type(prompt).__name__}")
        for p in prompts:
            if p is not None and not isinstance(p, str):
                raise InputError(f"expected each prompt as a string or None, got {type(p).__name__}")
        if self.spec is None and any(p is not None for p in prompts):
            raise InputError(f"{self.model} takes no prompt (it captions unconditionally); drop the prompt")
        return prompts

    @property
    def accepts_questions(self) -> bool:
        """True when the prompt may be any free text (a question about the image), not a prefix or a task token."""
        return self.spec is not None and bool(self.spec.get("accepts_questions", False))

    @property
    def encodes_prompt(self) -> bool:
        """True when the prompt goes to the encoder (a task prompt) rather than the decoder's prefix."""
        return self.spec is not None and self.spec["kind"] == "task"

    def task(self, prompt: str | None) -> tuple[str, str]:
        """(the task token, the instruction the processor expands it into) for a task prompt (None: the default
        task).

        Raises:
            InputError: the prompt holds no task token of the model, or adds text to a task that takes none.
        """
        tasks = self.spec["tasks"]
        prompt = self.spec["default_task"] if prompt is None else prompt
        for token, entry in tasks.items():  # as Florence2Processor: a task without text must be the whole prompt
            if not entry["takes_input"] and token in prompt:
                if prompt != token:
                    raise InputError(f"the task {token} takes no text after it, got {prompt[:40]!r}; "
                                     f"pass {token} alone")
                return token, entry["text"]
        # as Florence2Processor: any task it runs without text (edgecap's or not) must be the whole prompt
        other = next((t for t in self.spec.get("standalone_tokens", ()) if t in prompt), None)
        if other is not None:
            raise InputError(f"{self.model} expects a task prompt, one of {', '.join(tasks)}, got {prompt[:40]!r} "
                             f"(Florence2Processor refuses {other} anywhere but alone)")
        # as Florence2Processor: a task that takes text is found anywhere in the prompt, not only at its start
        token = next((t for t, e in tasks.items() if e["takes_input"] and t in prompt), None)
        if token is None:
            raise InputError(f"{self.model} expects a task prompt, one of {', '.join(tasks)}, got {prompt[:40]!r}")
        # the processor removes every occurrence of the task token from the text, not only the leading one
        return token, tasks[token]["text"].format(input=prompt.replace(token, "").strip())

    def encoder_ids(self, prompt: str | None) -> list[int]:
        """The encoder's input_ids for a task prompt: ``<s> instruction </s>``, tokenized as the processor does."""
        _, text = self.task(prompt)
        self._refuse_reserved(text)
        ids = list(self.tokenizer.encode(self.spec["bos_token"] + text + self.spec["eos_token"],
                                         add_special_tokens=False).ids)
        # the image features come first in the encoder's sequence and share its positions with the prompt
        image, limit = int(self.spec.get("image_positions", 0)), int(self.spec["max_positions"])
        if image + len(ids) > limit:
            raise InputError(f"the prompt is {len(ids)} tokens and the image {image}, the model's encoder holds "
                             f"{limit} positions in all; shorten the prompt")
        return ids

    def prefix(self, prompt: str | None) -> list[int]:
        """The decoder prefix for one prompt (None: the start token alone)."""
        if self.encodes_prompt:
            self.encoder_ids(prompt)  # checks the prompt and its length
            return [self.start_token_id]
        if self.spec is not None and self.spec["kind"] == "chat":
            return self.chat_ids(prompt)
        if prompt is None or self.spec is None:
            return [self.start_token_id]
        spec = self.spec
        marker = _TASK_TOKEN.match(prompt)
        if marker:
            token = marker.group(0).strip()
            raise InputError(f"{self.model} takes the start of a caption as its prompt (for example \"a photography "
                             f"of\"), not a task token like {token}; task tokens are for Florence-2 models")
        ids = [int(spec["first_token_id"])] + list(
            self.tokenizer.encode(prompt, add_special_tokens=bool(spec["add_special_tokens"])).ids)[1:]
        if spec["drop_last"]:
            ids = ids[:-1]
        if not ids:
            raise InputError(f"the prompt {prompt!r} leaves no token once the model's prompt rule applies; "
                             "use a longer prompt or none")
        if len(ids) > int(spec["max_positions"]):  # a prefix that fills every position can still be fed once
            raise InputError(f"the prompt is {len(ids)} tokens, the model's decoder holds {spec['max_positions']} "
                             "positions in all; shorten the prompt")
        return ids

    def _refuse_reserved(self, text: str) -> None:
        """The processor counts an image token in the text as one more image placeholder and refuses the prompt."""
        reserved = next((t for t in self.spec.get("reserved", ()) if t in text), None)
        if reserved is not None:
            raise InputError(f"the prompt holds {reserved!r}, one of the model's image tokens; edgecap places the "
                             "image itself: remove it from the prompt")

    def chat_ids(self, prompt: str | None) -> list[int]:
        """A decoder-only model's whole prompt ids: the chat template around ``prompt`` (None: the default prompt),
        image tokens included, tokenized as the checkpoint's processor tokenizes it.

        Raises:
            InputError: the text holds an image token (the processor would count another image), or the prompt
                does not fit the model's positions.
        """
        spec = self.spec
        text = spec["default_prompt"] if prompt is None else prompt
        self._refuse_reserved(text)
        ids = list(self.tokenizer.encode(spec["before"] + text + spec["after"],
                                         add_special_tokens=bool(spec["add_special_tokens"])).ids)
        if len(ids) >= int(spec["max_positions"]):
            raise InputError(f"the prompt is {len(ids)} tokens with the image, the model holds "
                             f"{spec['max_positions']} positions in all; shorten the prompt")
        return ids
