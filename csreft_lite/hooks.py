"""Reading and writing hidden states at chosen layers and prompt positions.

A decoder layer's output is the residual stream after that layer, ``[batch, seq, d]``; forward hooks read or
replace it without touching the model's code. Positions are written like the ReFT paper: ``"f5+l5"`` is the
first 5 and last 5 tokens of each prompt, ``"l1"`` the last, ``"all"`` every one; they count from each prompt's
first real token, so padding on either side is fine. (``record`` and ``add_vector``, by hand: residual.py;
a model's decoder layers: architecture.py.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .architecture import decoder_layers
from .compat import hidden_of, replace_hidden
from .validate import check_layers, check_prompt_lengths, check_spans


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
        return "all" if self.all else "+".join(f"{g}{n}" for g, n in (("f", self.first), ("l", self.last)) if n)


@dataclass
class PositionIndex:
    """Where to edit: ``index [batch, n]`` into the sequence, ``mask [batch, n]`` (False = skip), and ``groups``,
    the slices of the ``n`` columns named ``"first"`` and ``"last"`` (for untied weights)."""

    index: torch.Tensor
    mask: torch.Tensor
    groups: dict[str, slice]
    seq_len: int


def prompt_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token: 0 under right padding, the pad count under left padding."""
    return attention_mask.long().argmax(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count from each row's first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _prompt_lengths(attention_mask: torch.Tensor, prompt_lengths) -> torch.Tensor:
    """Each row's prompt length, checked against its real tokens (without ``prompt_lengths``, every real token)."""
    available = attention_mask.bool().sum(1)
    lengths = available if prompt_lengths is None else torch.as_tensor(prompt_lengths, device=attention_mask.device).long()
    check_prompt_lengths(lengths, available)
    return lengths


def prompt_lengths_from_labels(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's prompt length read from its labels: the real tokens before its first label (-100 on the prompt, as
    ``data.make_dataset`` writes them). A row supervised from its first token has no prompt: an error naming the fix."""
    supervised = labels != -100
    first = torch.where(supervised.any(1), supervised.int().argmax(1), attention_mask.shape[1])  # [batch]
    lengths = torch.minimum(first, prompt_starts(attention_mask) + attention_mask.long().sum(1)) - prompt_starts(attention_mask)
    if bool((lengths < 1).any()):
        i = int((lengths < 1).nonzero()[0])
        raise ValueError(f"Row {i} has no prompt_lengths and its labels learn from its first token, so none of its tokens "
                         f"is a prompt position to edit (positions such as 'f5+l5' count prompt tokens). Give the prompt "
                         f"labels -100 (data.make_dataset does), or pass prompt_lengths [batch].")
    return lengths


def resolve_positions(spec: "str | Positions", attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> PositionIndex:
    """Turn a spec into sequence indices for a padded batch; ``prompt_lengths [batch]`` (default: every real token).

    A position is edited at most once, the first group taking its tokens first: with ``f5+l5`` a 7-token prompt gets
    0–4 (first) and 5–6 (last), a 4-token prompt 0–3 and nothing in the last group (pyreft halves the prompt instead).
    """
    spec = Positions.parse(spec)
    batch, seq_len = attention_mask.shape
    device = attention_mask.device
    lengths = _prompt_lengths(attention_mask, prompt_lengths)
    if spec.all:
        offsets = torch.arange(int(lengths.max()), device=device).expand(batch, -1)
        valid = offsets < lengths[:, None]
        groups = {}  # one group: positions='all' is always tied
    else:
        first = torch.arange(spec.first, device=device).expand(batch, -1)
        last = lengths[:, None] - spec.last + torch.arange(spec.last, device=device)
        offsets = torch.cat([first, last], dim=1)
        valid = torch.cat([first < lengths[:, None], (last >= 0) & (last >= spec.first)], dim=1)  # no position twice
        groups = {"first": slice(0, spec.first), "last": slice(spec.first, spec.first + spec.last)}
    starts = prompt_starts(attention_mask)[:, None]
    index = torch.where(valid, starts + offsets, starts)  # masked slots point at a real token
    return PositionIndex(index=index, mask=valid, groups=groups, seq_len=seq_len)


def span_mask(attention_mask: torch.Tensor, spans: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, seq]`` float mask, 1 on each example's span ``[start, end)`` of prompt tokens: ``spans [batch, 2]`` count
    from each prompt's first real token, like positions. The router reads the instruction's tokens through it."""
    spans = torch.as_tensor(spans, device=attention_mask.device).long()
    check_spans(spans, _prompt_lengths(attention_mask, prompt_lengths))
    start, end = spans[:, 0], spans[:, 1]
    offsets = torch.arange(attention_mask.shape[1], device=attention_mask.device) - prompt_starts(attention_mask)[:, None]
    return ((offsets >= start[:, None]) & (offsets < end[:, None])).float()


def edit_at(hidden: torch.Tensor, where: PositionIndex, fn: Callable, group: slice | None = None) -> torch.Tensor:
    """A copy of ``hidden [batch, seq, d]`` with ``fn`` applied at the selected positions; the rest stays exact."""
    index, mask = where.index, where.mask
    if group is not None:
        index, mask = index[:, group], mask[:, group]
    if index.shape[1] == 0:
        return hidden
    expanded = index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # [batch, n, d]
    selected = hidden.gather(1, expanded)
    delta = (fn(selected) - selected) * mask.unsqueeze(-1).to(hidden.dtype)
    return hidden.scatter_add(1, expanded, delta)


# ---------------------------------------------------------------- hooks on decoder layers


def hook_layers(model: nn.Module, edits: dict[int, Callable[[torch.Tensor], torch.Tensor]], first: bool = False) -> list:
    """Replace the output ``h`` of each chosen decoder layer by ``edits[layer](h)`` (forward hooks; ``first``: before the
    layer's other hooks, which then see the edited output); returns their handles."""
    layers = decoder_layers(model)
    handles = []
    for layer, fn in zip(check_layers(len(layers), list(edits)), edits.values()):
        def hook(module, args, output, fn=fn):
            return replace_hidden(output, fn(hidden_of(output)))

        handles.append(layers[layer].register_forward_hook(hook, prepend=first))
    return handles
