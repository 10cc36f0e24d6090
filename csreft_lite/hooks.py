"""Reading and writing hidden states at chosen layers and prompt positions.

A decoder layer's output is the residual stream after that layer: ``[batch, seq, d]``.
PyTorch forward hooks let us read it or replace it without touching the model's code.
transformers 4.x layers return a tuple ``(hidden, ...)``, transformers 5 layers a bare
tensor; ``hidden_of`` and ``replace_hidden`` hide that difference.

Positions are written like the ReFT paper: ``"f5+l5"`` means the first 5 and the last 5
tokens of each prompt, ``"l1"`` the last prompt token, ``"all"`` every prompt token.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .models import decoder_layers

# ---------------------------------------------------------------- layer outputs


def hidden_of(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output (tuple in transformers 4.x, tensor in 5)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_hidden(output, hidden: torch.Tensor):
    """The same layer output with its hidden states replaced."""
    if isinstance(output, (tuple, list)):
        return (hidden, *output[1:])
    return hidden


def check_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Validate layer indices against the model; negative indices count from the end."""
    n = len(decoder_layers(model))
    checked = []
    for layer in layers:
        if not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(
                f"Layer {layer!r} does not exist: this model has {n} decoder layers, numbered 0 to {n - 1} "
                f"(negative numbers count from the end)."
            )
        checked.append(layer % n)
    return checked


# ---------------------------------------------------------------- positions


@dataclass(frozen=True)
class Positions:
    """A position spec: the first ``first`` and last ``last`` prompt tokens (``all`` for every one)."""

    first: int = 0
    last: int = 0
    all: bool = False

    @classmethod
    def parse(cls, spec: "str | Positions") -> "Positions":
        """``"f5+l5"``, ``"f3"``, ``"l1"``, ``"all"``."""
        if isinstance(spec, Positions):
            return spec
        text = str(spec).replace(" ", "").lower()
        if text == "all":
            return cls(all=True)
        match = re.fullmatch(r"(?:f(\d+))?\+?(?:l(\d+))?", text)
        if not text or not match or not (match.group(1) or match.group(2)):
            raise ValueError(f"Cannot read positions {spec!r}: write e.g. 'f5+l5', 'f3', 'l1' or 'all'.")
        first, last = int(match.group(1) or 0), int(match.group(2) or 0)
        if first + last == 0:
            raise ValueError(f"Positions {spec!r} select no token; use e.g. 'f5+l5'.")
        return cls(first=first, last=last)

    def __str__(self) -> str:
        if self.all:
            return "all"
        return "+".join(part for part in (f"f{self.first}" * bool(self.first), f"l{self.last}" * bool(self.last)) if part)


@dataclass
class PositionIndex:
    """Where to edit, per example: ``index [batch, n]`` into the sequence, ``mask [batch, n]`` (False = skip).

    ``groups`` names slices of the ``n`` columns (``"first"``, ``"last"``) for untied weights.
    """

    index: torch.Tensor
    mask: torch.Tensor
    groups: dict[str, slice]
    seq_len: int


def prompt_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token: 0 under right padding, the pad count under left padding."""
    return attention_mask.long().argmax(dim=1)


def resolve_positions(
    spec: "str | Positions",
    attention_mask: torch.Tensor,
    prompt_lengths: torch.Tensor | None = None,
) -> PositionIndex:
    """Turn a spec into sequence indices for a padded batch (left or right padding).

    ``prompt_lengths`` (``[batch]``) counts the prompt tokens of each example; without it the
    whole unpadded input is the prompt (as at generation time).

    Short prompts: a position is edited at most once, and the first group takes its tokens
    first. A prompt of n < ``first + last`` tokens gets its first ``min(first, n)`` tokens in the
    first group and, in the last group, only the last tokens that the first group left: with
    ``f5+l5``, a 7-token prompt gets 0–4 (first) and 5–6 (last), a 4-token prompt 0–3 (first)
    and nothing in the last group. (pyreft caps each group at about half the prompt instead, so
    the same spec edits other tokens there.) ``train`` warns when training prompts are this short.
    """
    spec = Positions.parse(spec)
    mask_2d = attention_mask.bool()
    batch, seq_len = mask_2d.shape
    device = attention_mask.device
    starts = prompt_starts(attention_mask)
    available = mask_2d.sum(dim=1)  # real (unpadded) tokens per row
    lengths = available if prompt_lengths is None else torch.as_tensor(prompt_lengths, device=device).long()
    if lengths.shape != (batch,):
        raise ValueError(f"prompt_lengths must have one entry per example ({batch}), got shape {tuple(lengths.shape)}.")
    too_long = lengths > available
    if bool(too_long.any()):
        i = int(too_long.nonzero()[0])
        raise ValueError(
            f"Positions past the sequence: example {i} has a prompt of {int(lengths[i])} tokens but only "
            f"{int(available[i])} real tokens. Check prompt_lengths (they count prompt tokens, without padding)."
        )
    if bool((lengths < 1).any()):
        raise ValueError("An example has an empty prompt (prompt length 0): there is no position to intervene on.")
    if spec.all:
        offsets = torch.arange(int(lengths.max()), device=device).expand(batch, -1)
        valid = offsets < lengths[:, None]
        groups = {"all": slice(0, offsets.shape[1])}
    else:
        first = torch.arange(spec.first, device=device).expand(batch, -1)
        first_valid = first < lengths[:, None]
        last = lengths[:, None] - spec.last + torch.arange(spec.last, device=device)
        last_valid = (last >= 0) & (last >= spec.first)  # no position twice
        offsets = torch.cat([first, last], dim=1)
        valid = torch.cat([first_valid, last_valid], dim=1)
        groups = {"first": slice(0, spec.first), "last": slice(spec.first, spec.first + spec.last)}
    index = torch.where(valid, starts[:, None] + offsets, starts[:, None])  # masked slots point at a real token
    return PositionIndex(index=index, mask=valid, groups=groups, seq_len=seq_len)


def span_mask(attention_mask: torch.Tensor, spans: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, seq]`` float mask, 1 on each example's span ``[start, end)`` of prompt tokens (left or right padding).

    ``spans`` (``[batch, 2]``) count from each prompt's first real token, like positions; the router
    uses this to average the hidden states over the instruction's own tokens.
    """
    spans = torch.as_tensor(spans, device=attention_mask.device).long()
    batch, seq_len = attention_mask.shape
    if spans.shape != (batch, 2):
        raise ValueError(f"instruction_spans must be [batch, 2] = [{batch}, 2] (start, end) pairs, got shape {tuple(spans.shape)}.")
    available = attention_mask.bool().sum(1)
    lengths = available if prompt_lengths is None else torch.as_tensor(prompt_lengths, device=attention_mask.device).long()
    start, end = spans[:, 0], spans[:, 1]
    bad = (start < 0) | (end <= start) | (end > lengths)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"Example {i} has the instruction span [{int(start[i])}, {int(end[i])}) in a prompt of {int(lengths[i])} tokens: "
            f"a span must be 0 <= start < end <= prompt length. An empty span means the prompt has no instruction "
            f"text for the router to read; spans come from data.make_dataset / data.encode_prompt."
        )
    offsets = torch.arange(seq_len, device=attention_mask.device) - prompt_starts(attention_mask)[:, None]
    return ((offsets >= start[:, None]) & (offsets < end[:, None])).float()


def edit_at(hidden: torch.Tensor, where: PositionIndex, fn: Callable, group: slice | None = None) -> torch.Tensor:
    """Apply ``fn(selected, mask) -> edited`` to the selected positions of ``hidden [batch, seq, d]``.

    Returns a new tensor; positions whose mask is False are left exactly as they were.
    """
    index, mask = where.index, where.mask
    if group is not None:
        index, mask = index[:, group], mask[:, group]
    if index.shape[1] == 0:
        return hidden
    expanded = index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # [batch, n, d]
    selected = hidden.gather(1, expanded)
    delta = (fn(selected, mask) - selected) * mask.unsqueeze(-1).to(hidden.dtype)
    return hidden.scatter_add(1, expanded, delta)


# ---------------------------------------------------------------- context managers


@contextmanager
def edit_layers(model: nn.Module, edits: dict[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Replace the output ``h`` of each chosen decoder layer by ``edits[layer](h)`` while inside."""
    layers = decoder_layers(model)
    handles = []
    try:
        for layer, fn in zip(check_layers(model, list(edits)), edits.values()):
            def hook(module, args, output, fn=fn):
                return replace_hidden(output, fn(hidden_of(output)))

            handles.append(layers[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream after each chosen layer: ``{layer: [batch, seq, d]}``.

    >>> with record(model, [3, 9]) as states:
    ...     model(**batch)
    >>> states[3].shape
    """
    states: dict[int, torch.Tensor] = {}

    def recorder(layer: int):
        def fn(h: torch.Tensor) -> torch.Tensor:
            states[layer] = h.detach()
            return h

        return fn

    checked = check_layers(model, list(layers))
    with edit_layers(model, {layer: recorder(layer) for layer in checked}):
        yield states


@contextmanager
def add_vector(
    model: nn.Module,
    layer: int,
    vector: torch.Tensor,
    scale: float = 1.0,
    positions: slice | None = None,
) -> Iterator[None]:
    """Add ``scale * vector`` to the residual stream after ``layer`` (a steering vector).

    ``positions`` limits the addition to a slice of the sequence; by default every position,
    generated tokens included, is steered.
    """
    d = hidden_size(model)
    if vector.shape != (d,):
        raise ValueError(f"The steering vector must have shape ({d},) for this model, got {tuple(vector.shape)}.")

    def steer(h: torch.Tensor) -> torch.Tensor:
        added = (scale * vector).to(device=h.device, dtype=h.dtype)
        if positions is None:
            return h + added
        h = h.clone()
        h[:, positions] += added
        return h

    with edit_layers(model, {layer: steer}):
        yield


def hidden_size(model: nn.Module) -> int:
    """The residual-stream width ``d`` of a model."""
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
