"""The ``hf`` engine: transformers ``generate`` with real batching (left padding, prompts sorted by length).

CPU or GPU; the offline default, with ``smollm2``. torch and transformers are imported when the engine
loads its tokenizer or model, not with this module.
"""

from __future__ import annotations

import logging

from agentrec.llm.base import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_MODEL,
    Engine,
    EngineConfig,
    Generation,
    check_prompt_lengths,
    cut_at_stop,
    end_of_turn_ids,
    model_context_tokens,
    model_label,
    resolve_model,
)

logger = logging.getLogger(__name__)


class HFEngine(Engine):
    """transformers ``generate``: chats rendered with the model's chat template, batched with left padding.

    Chats are sorted by prompt length and cut into batches of ``batch_size``, so a batch pads to
    similar lengths; results come back in the input order. Each finished batch is reported
    (:meth:`~agentrec.llm.base.Engine.report_batch`: its chats and generated tokens), so a bar moves per batch.
    Counting tokens and the context length need only the tokenizer and the model config, not the weights.
    """

    name = "hf"

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, threads: int | None = None, context_tokens: int | None = None):
        self.model_ref = resolve_model(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.threads = threads
        self._context_tokens = context_tokens
        self._tokenizer = None
        self._loaded = None

    @property
    def fingerprint(self) -> str:
        return f"hf|{model_label(self.model_ref)}|{self._dtype_name()}"

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self._device().startswith("cuda") else "float32"

    @property
    def tokenizer(self):
        """The model's tokenizer (loaded once, without the weights), left-padding."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
            tokenizer.padding_side = "left"  # generation continues from the right end of every row
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def context_tokens(self) -> int:
        """The configured length, else the model's (its config, or the tokenizer's ``model_max_length``)."""
        if self._context_tokens is None:
            from transformers import AutoConfig

            found = model_context_tokens(AutoConfig.from_pretrained(self.model_ref), self.tokenizer)
            if found is None:
                logger.warning("%s does not say its context length; assuming %d tokens (set context_tokens)",
                               model_label(self.model_ref), DEFAULT_CONTEXT_TOKENS)
            self._context_tokens = found or DEFAULT_CONTEXT_TOKENS
        return self._context_tokens

    def load(self):
        """Load the tokenizer and model once; returns ``(tokenizer, model)``."""
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM

            if self.threads:
                torch.set_num_threads(int(self.threads))
            tokenizer = self.tokenizer
            model = AutoModelForCausalLM.from_pretrained(self.model_ref, dtype=getattr(torch, self._dtype_name()))
            model = model.to(self._device()).eval()
            self._loaded = (tokenizer, model, end_of_turn_ids(tokenizer))
        return self._loaded[:2]

    def prompt_ids(self, chats: list[list[dict]]) -> list[list[int]]:
        """Token ids of each chat after the chat template, with the generation prompt."""
        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        # the template already holds any BOS token: no second one
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        return [len(ids) for ids in self.prompt_ids(chats)]

    def generate(self, chats, params):
        import numpy as np
        import torch

        prompts = self.prompt_ids(chats)
        # before the weights load: a prompt over the context would fail to allocate, or hang
        check_prompt_lengths([len(p) for p in prompts], context_tokens=self.context_tokens,
                             max_new_tokens=params.max_new_tokens, model=model_label(self.model_ref))
        tokenizer, model = self.load()
        stop_ids = self._loaded[2]
        order = np.argsort([len(p) for p in prompts], kind="stable")
        out: list[Generation | None] = [None] * len(chats)
        options = dict(max_new_tokens=params.max_new_tokens, eos_token_id=stop_ids,
                       pad_token_id=tokenizer.pad_token_id, do_sample=params.temperature > 0)
        if params.temperature > 0:
            options.update(temperature=params.temperature, top_p=params.top_p)
            torch.manual_seed(params.seed)
        else:
            options.update(temperature=None, top_p=None, top_k=None)  # no warnings about unused settings
        if params.stop:
            options.update(stop_strings=list(params.stop), tokenizer=tokenizer)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = tokenizer.pad({"input_ids": [prompts[i] for i in index]}, padding=True, return_tensors="pt")
                batch = {key: value.to(model.device) for key, value in batch.items()}
                width = batch["input_ids"].shape[1]
                generated = model.generate(**batch, **options)[:, width:].cpu()  # (B, new tokens)
                for row, i in enumerate(index):
                    tokens = generated[row].tolist()
                    ends = [j for j, t in enumerate(tokens) if t in stop_ids]
                    used = tokens[: ends[0] + 1] if ends else tokens  # after the end: padding
                    text = tokenizer.decode(used, skip_special_tokens=True)
                    text, stopped = cut_at_stop(text, params.stop)
                    out[i] = Generation(text=text, tokens_in=len(prompts[i]), tokens_out=len(used),
                                        finish_reason="stop" if ends or stopped else "length")
                self.report_batch(len(index), sum(out[i].tokens_out for i in index))  # a progress bar moves
        return out


def make_engine(config: EngineConfig) -> HFEngine:
    """The factory registered as ``hf`` in :data:`agentrec.llm.ENGINES`."""
    return HFEngine(config.model or DEFAULT_MODEL, device=config.device, dtype=config.dtype,
                    batch_size=config.batch_size, threads=config.threads, context_tokens=config.context_tokens)
