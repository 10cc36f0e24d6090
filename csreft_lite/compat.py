"""Version shims: every place where versions of a dependency differ (transformers 4.x and 5.x, alpaca_eval under
pandas 3), in one room. Each says which version needs it and when it can go; the rest of the library never asks for
a version itself. CI runs transformers 4.45.1, 4.57.6 and 5.x (README, "Tested versions")."""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch
from torch import nn


def transformers_major() -> int:
    """4 or 5: their config and tokenizer files differ, so the course-model cache keeps one folder per major version."""
    return int(metadata.version("transformers").split(".")[0])


# ---------------------------------------------------------------- decoder layers and checkpointing


def hidden_of(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output. 4.x layers return a tuple, 5.x a tensor (goes with 4.x)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_hidden(output, hidden: torch.Tensor):
    """The same decoder-layer output with its hidden states replaced (tuple in 4.x, tensor in 5.x)."""
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


def is_checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on. 5.x renamed ``is_gradient_checkpointing`` (goes with 4.x)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


# The hooks of the ReftModel call under way, as a function that returns them as a context manager (None: no call).
UNDER_WAY: ContextVar = ContextVar("csreft_call_under_way", default=None)


def recompute_context() -> tuple:
    """``torch.utils.checkpoint``'s ``context_fn``: a layer recomputed in the backward pass runs under the hooks of the
    call that ran it first, taken when it ran. 4.x checkpoints a layer's ``__call__``, forward hooks included, so its
    backward re-runs them, long after that call took its hooks off; 5.x checkpoints ``forward`` only (goes with 4.x)."""
    hooks = UNDER_WAY.get()
    return nullcontext(), (nullcontext() if hooks is None else hooks())


def set_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Activation (gradient) checkpointing on or off, non-reentrant (so gradients reach interventions whose inputs need
    none) with ``recompute_context``; transformers checkpoints only in training mode. 5.x renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` and warns on the old name (goes with 4.x)."""
    new = hasattr(model, "activation_checkpointing_enable")
    kwargs = {"use_reentrant": False, "context_fn": recompute_context}
    if enabled and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif new:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def logits_to_keep(model: nn.Module, n: int) -> dict:
    """The keyword that makes ``model`` compute logits for its last ``n`` positions only: ``logits_to_keep`` (4.50+),
    ``num_logits_to_keep`` (4.45-4.49); none for a model that takes neither (it computes them all; goes with 4.49)."""
    accepted = inspect.signature(model.forward).parameters
    return next(({name: n} for name in ("logits_to_keep", "num_logits_to_keep") if name in accepted), {})


# ---------------------------------------------------------------- loading


def dtype_kwarg(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype=`` from 4.56 on, ``torch_dtype=`` before, where an unknown
    ``dtype=`` reaches the model's ``__init__`` and fails (goes when 4.56 is the oldest supported)."""
    from packaging.version import Version

    return {"dtype" if Version(metadata.version("transformers")) >= Version("4.56") else "torch_dtype": dtype}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars while transformers loads or converts weights. 5.x draws a "Loading weights" bar on every
    load, which stays in a notebook's saved output looking stalled; 4.x draws one for GGUF conversion only."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def _output_weight_name(model) -> str:
    return next(f"{name}.weight" for name, module in model.named_modules() if module is model.get_output_embeddings())


def tie_output_to_embedding(model, missing_keys: list) -> None:
    """A GGUF without an output layer reuses the embedding (llama.cpp's rule). Before 4.47 transformers leaves
    ``tie_word_embeddings`` False here and the output layer random (goes when 4.47 is the oldest supported)."""
    if _output_weight_name(model) in missing_keys:
        model.config.tie_word_embeddings = True
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def special_tokens_from_config(tokenizer, model) -> None:
    """BOS, EOS and padding as the GGUF file says. 4.x's GGUF tokenizer converter takes EOS from the BOS id
    (``<|im_start|>``, not ``<|im_end|>``); transformers copies the file's ids into the config (goes with 4.x)."""
    for role in ("bos", "eos", "pad"):
        token_id = getattr(model.config, f"{role}_token_id", None)
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
            setattr(model.generation_config, f"{role}_token_id", token_id)  # generate() stops at this EOS


def gguf_adds_bos(tokenizer, gguf: Path) -> None:
    """Add a BOS token only if the GGUF says so (``tokenizer.ggml.add_bos_token``). 5.x reads the flag itself;
    4.x's LlamaTokenizerFast adds BOS by default (goes with 4.x)."""
    if not getattr(tokenizer, "add_bos_token", False):
        return
    from gguf import GGUFReader  # reads the whole header (all 49k tokens): seconds, so only when needed

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    if field is not None and not field.parts[field.data[0]][0]:
        tokenizer.add_bos_token = False  # LlamaTokenizerFast rebuilds its post-processor on assignment


def save_for_every_version(model, tokenizer, folder: Path) -> dict[str, torch.Tensor]:
    """Write config, generation config and tokenizer so that 4.45+ and 5.x read them; return the weights to save (the
    tied output layer once, as the embedding). 5.x records the GGUF as a ``quantization_config`` (the cache is plain
    float32); 4.4x reads the chat template from tokenizer_config.json, not a .jinja file; 4.x's safetensors loader
    needs ``{"format": "pt"}`` metadata (the caller writes it)."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    tied = model.config.tie_word_embeddings
    return {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == _output_weight_name(model))}


# ---------------------------------------------------------------- scoring


def alpaca_eval_annotator():
    """alpaca_eval's ``PairwiseAnnotator``, reading its verdict cache back with float preferences. pandas 3 reads a
    cache of whole preferences (1.0, 2.0) as int64, where alpaca_eval 0.6.6 then fails to set a tie (1.5): "Invalid
    value '1.5' for dtype 'int64'" on every re-score (goes when alpaca_eval casts the column itself)."""
    from alpaca_eval.annotators import PairwiseAnnotator

    class Annotator(PairwiseAnnotator):
        def load_(self, path=None):
            super().load_(path)
            if self.df_annotations is not None:
                self.df_annotations[self.annotation_key] = self.df_annotations[self.annotation_key].astype(float)

    return Annotator
