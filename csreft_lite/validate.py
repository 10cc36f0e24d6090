"""Checks on what a user passes in, each failing with a message that names the problem and the fix. They run where the
input arrives (constructors, ``ReftModel``'s forward and generate, and each intervention's forward for the hidden
size), one line each in the code they guard, so a wrong layer or a gate outside [0, 1] fails at once and says why."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn


def check_sizes(name: str, n_subspaces: int = 1, **sizes) -> None:
    """Sizes are positive whole numbers, and ``n_subspaces × rank`` orthonormal directions fit in ``d_model``."""
    for key, value in {**sizes, "n_subspaces": n_subspaces}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive whole number, got {value!r}.")
    if "rank" in sizes and n_subspaces * sizes["rank"] > sizes["d_model"]:
        raise ValueError(f"{n_subspaces} subspace(s) of rank {sizes['rank']} need {n_subspaces * sizes['rank']} orthonormal "
                         f"directions, but the hidden size is only {sizes['d_model']}. Use a smaller rank or fewer subspaces.")


def check_weights(name: str, **weights) -> None:
    """Penalty weights are numbers ≥ 0 (0 switches a penalty off)."""
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: {key} is the weight of a penalty, a number >= 0 (0 switches it off); got {value!r}.")


def check_input(h: torch.Tensor, d_model: int, name: str) -> None:
    """Hidden states have the width the module was built for."""
    if h.shape[-1] != d_model:
        raise ValueError(f"{name} was built for hidden size {d_model} but got a tensor of shape {tuple(h.shape)} (last dimension "
                         f"{h.shape[-1]}). Build it with d_model={h.shape[-1]}, or attach it to a model with hidden size {d_model}.")


def check_layers(n: int, layers: Sequence[int]) -> list[int]:
    """Indices of a model's ``n`` layers (ints or numpy ints; negative ones count from the end), as indices from 0."""
    for layer in layers:
        if isinstance(layer, bool) or not hasattr(layer, "__index__") or not -n <= int(layer) < n:
            raise ValueError(f"Layer {layer!r} does not exist: this model has {n} decoder layers, numbered 0 to {n - 1} "
                             f"(negative numbers count from the end).")
    return [int(layer) % n for layer in layers]


def check_interventions(n_layers: int, interventions: dict, d_model: int) -> list[int]:
    """``{layer: intervention}``: existing layers, one intervention each, built for the model's hidden size ``d_model``.
    Returns the layers as indices from 0."""
    if not interventions:
        raise ValueError(f"ReftModel needs at least one intervention, e.g. {{9: LoReFT({d_model}, rank=4)}}.")
    layers = check_layers(n_layers, list(interventions))
    if len(set(layers)) != len(layers):
        raise ValueError(f"Two interventions were given for the same layer: {sorted(interventions)}.")
    for layer, module in zip(layers, interventions.values()):
        if not isinstance(module, nn.Module):
            raise TypeError(f"The intervention for layer {layer} is a {type(module).__name__} ({module!r:.40}), not a module: "
                            f"build one, e.g. {{{layer}: cl.LoReFT({d_model}, rank=4)}}.")
        if getattr(module, "d_model", d_model) != d_model:
            raise ValueError(f"The intervention for layer {layer} was built for hidden size {module.d_model}, but the "
                             f"model's hidden size is {d_model}. Build it with d_model={d_model}.")
    return layers


def check_prompt_lengths(lengths: torch.Tensor, available: torch.Tensor) -> None:
    """One prompt length per example, at least 1 and at most the example's real (unpadded) tokens."""
    if lengths.shape != available.shape:
        raise ValueError(f"prompt_lengths must have one entry per example ({len(available)}), got shape {tuple(lengths.shape)}.")
    if bool((lengths > available).any()):
        i = int((lengths > available).nonzero()[0])
        raise ValueError(f"Positions past the sequence: example {i} has a prompt of {int(lengths[i])} tokens but only "
                         f"{int(available[i])} real tokens. Check prompt_lengths (they count prompt tokens, without padding).")
    if bool((lengths < 1).any()):
        raise ValueError("An example has an empty prompt (prompt length 0): there is no position to intervene on.")


def check_spans(spans: torch.Tensor, lengths: torch.Tensor) -> None:
    """Instruction spans ``[batch, 2]`` with ``0 <= start < end <= prompt length``."""
    if spans.shape != (len(lengths), 2):
        raise ValueError(f"instruction_spans must be [batch, 2] = [{len(lengths)}, 2] (start, end) pairs, got shape {tuple(spans.shape)}.")
    start, end = spans[:, 0], spans[:, 1]
    bad = (start < 0) | (end <= start) | (end > lengths)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"Example {i} has the instruction span [{int(start[i])}, {int(end[i])}) in a prompt of {int(lengths[i])} "
                         f"tokens: a span must be 0 <= start < end <= prompt length. An empty span means the prompt has no "
                         f"instruction text for the router to read; spans come from data.make_dataset / data.encode_prompt.")


def check_batch(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels=None,
                other: dict | None = None) -> torch.Tensor:
    """``input_ids [batch, seq]`` on the model's device, a mask and labels of the same shape, and with labels no ``other``
    keyword (it would be ignored); returns the mask."""
    if labels is not None and other:
        raise TypeError(f"ReftModel.forward with labels takes input_ids, attention_mask, labels, prompt_lengths, "
                        f"instruction_spans and gates; it got {sorted(other)} as well. Drop them (with transformers' "
                        f"Trainer: collate with data.collator_for(tokenizer)).")
    device = next(model.parameters()).device
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device} but the model is on {device}; move the batch with .to({str(device)!r}).")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids (torch.long), got {input_ids.dtype}: tokenize the text, or "
                         f"convert with input_ids.long() if the ids were stored as floats.")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    for name, t in (("attention_mask has", attention_mask), ("labels have", labels)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} but input_ids {tuple(input_ids.shape)}: give one value per token "
                             f"(labels: -100 where nothing is learned), padded like input_ids, e.g. with "
                             f"csreft_lite.data.collator_for(tokenizer).")
    return attention_mask


def check_gates(gates, k: int, batch: int | None = None) -> torch.Tensor:
    """Given gates: ``[k]`` or ``[batch, k]``, each in [0, 1]; returned as ``[1 or batch, k]`` float32, or with ``batch``
    as ``[batch, k]`` (one row serves every example)."""
    g = torch.as_tensor(gates, dtype=torch.float32)
    if g.dim() not in (1, 2) or g.shape[-1] != k:
        raise ValueError(f"force_gates takes one gate per subspace ({k} values, or [batch, {k}]), got shape {tuple(g.shape)}.")
    if not bool(((g >= 0) & (g <= 1)).all()):  # NaN fails both
        raise ValueError(f"Gates lie in [0, 1] (0: subspace off, 1: fully on); got {g.tolist()}.")
    g = g.reshape(-1, k)
    if batch is not None and len(g) not in (1, batch):
        raise ValueError(f"Gates for {len(g)} examples were given but the batch has {batch}.")
    return g if batch is None else g.expand(batch, -1)


def warn_short_prompts(prompt_lengths: Sequence[int], positions, what: str = "training ") -> None:
    """One warning (pointing at the caller's caller) when prompts are shorter than ``positions`` (a ``hooks.Positions``)
    asks for: they get fewer edited positions, since no token is edited twice and the first group goes first."""
    need = positions.first + positions.last
    short = [n for n in prompt_lengths if n < need]
    if positions.all or not short:
        return
    n, both = min(short), positions.first and positions.last
    hint = f"f{n // 2}+l{n // 2}" if both and n >= 2 else f"l{n}" if positions.last else f"f{n}"
    how = " No token is edited twice: the first group takes its tokens first and the last group gets what is left." if both else ""
    warnings.warn(f"{len(short)} of {len(prompt_lengths)} {what}prompts are shorter than the {need} tokens that positions "
                  f"'{positions}' edits (the shortest has {n}): they get fewer edited positions.{how} If that is not what you "
                  f"want, use fewer positions ('{hint}' fits every prompt) or a longer prompt template.", stacklevel=3)


def check_router(routed: dict, d_model: int, n_layers: int, router=None, router_layer: int | None = None) -> int | None:
    """One router gates every CS-ReFT layer (``routed``: ``{layer: CSReFT}``): it gives one gate per subspace and reads a
    layer of the model's ``n_layers`` at or below the first edit. Returns the layer it reads (default: the first CS-ReFT
    layer), None without any."""
    if router_layer is not None:
        router_layer = check_layers(n_layers, [router_layer])[0]
    if not routed:
        if router is not None or router_layer is not None:
            raise ValueError("router and router_layer are for cl.CSReFT interventions, and none was given.")
        return None
    ks = sorted({m.n_subspaces for m in routed.values()})
    if len(ks) > 1:
        raise ValueError(f"One router gates every CS-ReFT layer, so they need the same n_subspaces; got {ks}.")
    if router is not None and (router.n_subspaces != ks[0] or router.d_model != d_model):
        raise ValueError(f"The router gives {router.n_subspaces} gates from hidden size {router.d_model}, but the CS-ReFT "
                         f"interventions have {ks[0]} subspaces on hidden size {d_model}. Build it as cl.Router({d_model}, {ks[0]}).")
    first = min(routed)
    if router_layer is not None and router_layer > first:
        raise ValueError(f"router_layer={router_layer} is above the first CS-ReFT layer ({first}): the gates must exist "
                         f"before the first edit. Use a layer from 0 to {first}.")
    return first if router_layer is None else router_layer


def check_training(epochs: float, batch_size: int, grad_accum: int, max_steps: int | None, warmup_ratio: float,
                   schedule: str) -> None:
    """``train``'s settings: a positive length of training, whole positive counts, a warm-up share in [0, 1)."""
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"train: {name} must be a whole number >= 1, got {value!r}.")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < math.inf:
        raise ValueError(f"train: epochs must be a number > 0 (fractions train part of an epoch), got {epochs!r}; "
                         f"to train a fixed number of steps pass max_steps.")
    if isinstance(warmup_ratio, bool) or not isinstance(warmup_ratio, (int, float)) or not 0 <= warmup_ratio < 1:
        raise ValueError(f"train: warmup_ratio is the share of the steps spent warming up, in [0, 1), got {warmup_ratio!r}.")
    if schedule not in ("linear", "constant"):
        raise ValueError(f"train: schedule must be 'linear' or 'constant', got {schedule!r}.")
