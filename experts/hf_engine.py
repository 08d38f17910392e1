"""HFEngine: a transformers causal LM, with any number of peft LoRA adapters on it.

One ``generate`` call is one batch (left padded). Rows may each name an adapter, or
``None`` for the base model: peft runs such a mixed batch in one forward pass per step
(``adapter_names``; the base rows are peft's ``"__base__"``). By default each LoRA layer
serves all the rows with one gathered matmul pair (:mod:`experts.gathered_lora`) instead of
peft's loop over the adapters; ``lora_kernel="peft"`` keeps peft's own path.
``generate_streaming`` is the same batch with a streamer attached (:mod:`experts.streaming`).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence

from experts.adapters import check_adapter_base
from experts.engine import (
    Generation,
    GenerationEngine,
    GenerationParams,
    Prompt,
    TextSink,
    encode_prompt,
)
from experts.errors import ExpertError
from experts.gathered_lora import GatheredLoRA
from experts.streaming import BatchTextStreamer, RowCut

BASE_ROW = "__base__"  # peft's name for "no adapter" in adapter_names
# transformers and peft build modules on the meta device through process-wide patches, so
# two loads in threads at once (a pool replica preloads its engines side by side) can leave
# one model's weights on meta ("Cannot copy out of meta tensor"): one load at a time here.
_LOADING = threading.Lock()
LORA_KERNELS = ("gathered", "peft")  # how a mixed-adapter batch runs in each LoRA layer


class HFEngine(GenerationEngine):
    """A causal LM from a Hugging Face id or a local folder."""

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        dtype: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        lora_kernel: str = "gathered",
    ):
        if lora_kernel not in LORA_KERNELS:
            raise ExpertError(f"lora_kernel {lora_kernel!r} is not one of {LORA_KERNELS}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("auto" if self.device.startswith("cuda") else "float32")
        try:
            with _LOADING:
                self.tokenizer = AutoTokenizer.from_pretrained(
                    model, trust_remote_code=trust_remote_code, padding_side="left"
                )
                self.model = AutoModelForCausalLM.from_pretrained(
                    model,
                    dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                    trust_remote_code=trust_remote_code,
                )
                self.model.to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ExpertError(f"model {model!r} does not load: {_first_line(err)}") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._peft = None  # the PeftModel wrapping self.model, once an adapter is loaded
        self._adapters: dict[str, str] = {}
        self._gathered = GatheredLoRA() if lora_kernel == "gathered" else None
        self._lock = threading.RLock()

    # -- adapters -------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapters: name → path or HF id."""
        return dict(self._adapters)

    def load_adapter(self, name: str, path: str) -> None:
        """Load a peft LoRA adapter as ``name``. A no-op when ``name`` is loaded.

        Raises :class:`IncompatibleAdapterError` before reading any weights when the
        adapter was made for another base model."""
        with self._lock:
            if name in self._adapters:
                return
            if name == BASE_ROW:
                raise ExpertError(f"adapter name {BASE_ROW!r} is reserved")
            check_adapter_base(path, self.model_name)
            self._stacks_stale()  # also when the load fails half way through
            try:
                self._attach(name, path)
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise ExpertError(f"adapter {path!r} does not load: {_first_line(err)}") from None
            self._adapters[name] = path

    def _attach(self, name: str, path: str) -> None:
        with _LOADING:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self._peft.eval()
            else:
                self._peft.load_adapter(path, adapter_name=name)

    def unload_adapter(self, name: str) -> None:
        """Drop adapter ``name``; unknown names raise :class:`ExpertError`."""
        with self._lock:
            if name not in self._adapters:
                raise ExpertError(f"adapter {name!r} is not loaded")
            del self._adapters[name]
            self._stacks_stale()
            if self._adapters:
                if name in self._peft.active_adapters:
                    self._peft.set_adapter(next(iter(self._adapters)))
                self._peft.delete_adapter(name)
            else:  # last one: take the LoRA layers out, back to the plain base model
                self.model = self._peft.unload()
                self._peft = None

    def _stacks_stale(self) -> None:
        """The gathered kernel's stacks no longer match the adapters: rebuilt on next use."""
        if self._gathered is not None:
            self._gathered.invalidate()

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[Generation]:
        """One :class:`Generation` per prompt; ``adapters[i]`` is row i's adapter or None."""
        return self._generate(prompts, params, adapters, None)

    def generate_streaming(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
        on_text: TextSink | None = None,
    ) -> list[Generation]:
        """:meth:`generate`, with ``on_text(row, delta)`` called at each step as a row's
        text grows: the same single batch, so streamed and other rows share it."""
        return self._generate(prompts, params, adapters, on_text)

    def _generate(self, prompts, params, adapters, on_text: TextSink | None) -> list[Generation]:
        if not prompts:
            return []
        params = params or GenerationParams()
        if adapters is not None and len(adapters) != len(prompts):
            raise ExpertError(f"{len(adapters)} adapters for {len(prompts)} prompts")
        import torch

        cut = self._row_cut(params.stop)
        rows = [encode_prompt(self.tokenizer, prompt) for prompt in prompts]
        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.device)
        with self._lock, torch.inference_mode():
            kwargs = self._generate_kwargs(params, adapters, len(rows))
            if on_text is not None:  # peft's generate hands it on to the base model's
                kwargs["streamer"] = BatchTextStreamer(cut, len(rows), on_text)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            if self._peft is not None and self._gathered is not None:
                self._gathered.prepare(self._peft)
            output = (self._peft or self.model).generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [
            self._finish(row, len(ids), cut) for row, ids in zip(new_tokens, rows, strict=True)
        ]

    def _generate_kwargs(self, params: GenerationParams, adapters, rows: int) -> dict:
        kwargs = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # greedy: silence sampling options a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        names = [name or BASE_ROW for name in adapters or [None] * rows]
        unknown = sorted({n for n in names if n != BASE_ROW and n not in self._adapters})
        if unknown:
            raise ExpertError(f"adapter(s) not loaded: {', '.join(unknown)}")
        if self._peft is not None:
            kwargs["adapter_names"] = names
        return kwargs

    def _row_cut(self, stop: list[str]) -> RowCut:
        """Where a row ends (EOS, trailing padding, stop strings): one rule for the final
        text and for the streamed one."""
        return RowCut(
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            eos=frozenset(self._eos_ids()),
            pad=self.tokenizer.pad_token_id,
            stop=tuple(stop),
        )

    @staticmethod
    def _finish(tokens: list[int], prompt_tokens: int, cut: RowCut) -> Generation:
        """Cut one row at its end (EOS, stop string or trailing padding) and decode it."""
        text, end, stopped = cut.text(tokens)
        return Generation(text, prompt_tokens, end, "stop" if stopped else "length")

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos}

    # -- resources ------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes of the weights and buffers, adapters included."""
        module = self._peft or self.model
        if module is None:
            return 0
        tensors = list(module.parameters()) + list(module.buffers())
        stacks = self._gathered.memory_bytes() if self._gathered is not None else 0
        return stacks + sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        """Release the model; empties the CUDA cache on GPU. Idempotent."""
        with self._lock:
            self._stacks_stale()  # the stacks hold copies of the adapters' weights
            self._peft = None
            self.model = None
            self._adapters.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
