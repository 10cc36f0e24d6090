"""What a causal LM looks like from outside: its decoder layers, its hidden size and its name, found by
architecture (no table of model classes). The hooks attach to these layers; checkpoints record these facts."""

from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM, found by architecture.

    Looks for the one ``nn.ModuleList`` whose length is ``config.num_hidden_layers``
    (Llama/Mistral/Qwen2: ``model.layers``; GPT-2: ``transformer.h``; GPT-NeoX:
    ``gpt_neox.layers``), so new architectures work without a hand-written table.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) > 0 and (n_layers is None or len(m) == n_layers)]
    if not candidates:
        raise ValueError(f"Could not find the decoder layers of {type(model).__name__}: no nn.ModuleList with "
                         f"config.num_hidden_layers={n_layers} entries. Pass a Hugging Face causal LM.")
    return min(candidates, key=lambda item: item[0].count("."))[1]  # the shallowest (deeper ones: e.g. per-layer experts)


def model_name(model: nn.Module) -> str:
    """A human-readable identity for checkpoints and summaries."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def hidden_size(model: nn.Module) -> int:
    """The residual-stream width ``d`` of a model."""
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
