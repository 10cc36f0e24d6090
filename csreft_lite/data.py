"""From instruction records to training batches: prompt templates, labels, prompt lengths, padding.

Each record is ``{"instruction": ..., "output": ...}`` or ``{"messages": [...]}`` (chat
messages whose last one is the assistant's reply). A training example is the prompt's
tokens followed by the response's tokens; labels are ``-100`` on the prompt so that only
the response is learned. We store each example's ``prompt_length``: ``ReftModel`` turns it
into intervention positions (``f5+l5`` = first/last 5 *prompt* tokens), the same way at
training and at generation time. We also store ``instruction_span``, the tokens of the
instruction's own text inside the formatted prompt (without template or chat markers):
CS-ReFT's router reads the mean hidden state over exactly those tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from .hooks import Positions, resolve_positions

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PLAIN_TEMPLATE = "{instruction}\n"
# The course model's chat markers (ChatML) without SmolLM2's default system prompt: the same turn
# structure in about 17 prompt tokens instead of 38, so every training step and answer costs about
# half. Notebooks 03-04 and bench/interference.py use it for speed; it fits ChatML models only.
BARE_CHAT_TEMPLATE = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"


def _uses_chat(tokenizer, template: str) -> bool:
    if template == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("template='chat' but this tokenizer has no chat template; use template='alpaca' or 'plain'.")
    return template == "chat"


def format_prompt(tokenizer, instruction: "str | Sequence[Mapping[str, str]]", template: str = "auto") -> str:
    """The text the model sees before its answer.

    ``template``: ``"auto"`` (the tokenizer's chat template when it has one, else Alpaca's),
    ``"chat"``, ``"alpaca"`` (the no-input Alpaca template used by the LoReFT recipe),
    ``"plain"``, or any string with an ``{instruction}`` field.
    """
    if not isinstance(instruction, str):  # chat messages, without the final reply
        return tokenizer.apply_chat_template(list(instruction), add_generation_prompt=True, tokenize=False)
    if _uses_chat(tokenizer, template):
        messages = [{"role": "user", "content": instruction}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = {"auto": ALPACA_TEMPLATE, "alpaca": ALPACA_TEMPLATE, "plain": PLAIN_TEMPLATE}.get(template, template)
    if "{instruction}" not in text:
        raise ValueError(f"Unknown template {template!r}: use 'auto', 'chat', 'alpaca', 'plain' or a string with {{instruction}}.")
    return text.format(instruction=instruction)


def _split_record(record: Mapping) -> tuple:
    """(prompt source, response text) from an instruction record or a chat conversation."""
    if "messages" in record:
        messages = list(record["messages"])
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("A chat record's last message must be the assistant's reply.")
        return messages[:-1], messages[-1]["content"]
    if "instruction" not in record or "output" not in record:
        raise ValueError(f"Each record needs 'instruction' and 'output' (or 'messages'); got keys {sorted(record)}.")
    instruction = record["instruction"]
    if record.get("input"):  # Alpaca records with an input field
        instruction = f"{instruction}\n\n{record['input']}"
    return instruction, record["output"]


_SLOT = "\x00instruction\x00"  # stands in for the instruction to find where a template puts it


def _instruction_text(source: "str | Sequence[Mapping[str, str]]") -> str:
    """The instruction's own text: the string, or the content of the last user message."""
    if isinstance(source, str):
        return source
    users = [m for m in source if m.get("role") == "user"]
    if not users:
        raise ValueError("A chat record needs a user message before the assistant's reply: the router reads the last one.")
    return users[-1]["content"]


def _with_slot(source):
    if isinstance(source, str):
        return _SLOT
    messages = [dict(m) for m in source]
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[last_user]["content"] = _SLOT
    return messages


def _char_span(tokenizer, prompt: str, source, template: str) -> tuple[int, int]:
    """Where the instruction's text sits in the formatted prompt, in characters (empty if it has none)."""
    text = _instruction_text(source).strip()  # templates may strip the content's edges
    slot = format_prompt(tokenizer, _with_slot(source), template).split(_SLOT)[0]
    start = prompt.find(text, len(slot)) if prompt.startswith(slot) else prompt.rfind(text)
    if start < 0:
        raise ValueError(f"Cannot find the instruction {text[:60]!r} in its formatted prompt; the template changed its text.")
    return start, start + len(text)


def encode_prompt(tokenizer, instruction: "str | Sequence[Mapping[str, str]]", template: str = "auto") -> tuple[list[int], tuple[int, int]]:
    """The prompt's token ids and the span ``(start, end)`` of the instruction's own tokens in them.

    The span excludes the template's words and chat markers, so it reads the same kind of tokens for
    every prompt; a token that straddles the instruction's edge counts as inside. Training
    (``tokenize_example``) and generation (``evaluate.generate_answers``) both call this, so the
    router sees the same tokens in both.
    """
    prompt = format_prompt(tokenizer, instruction, template)
    chat = not isinstance(instruction, str) or _uses_chat(tokenizer, template)
    # Chat templates write their own special tokens; plain templates need the BOS token.
    c0, c1 = _char_span(tokenizer, prompt, instruction, template)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(prompt, add_special_tokens=not chat, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < c1 and b > c0]
        span = (inside[0], inside[-1] + 1) if inside else (0, 0)
    else:  # slow tokenizers have no offsets: count the tokens of the text before and up to the instruction's end
        ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        before = len(tokenizer(prompt[:c0], add_special_tokens=not chat)["input_ids"])
        upto = len(tokenizer(prompt[:c1], add_special_tokens=not chat)["input_ids"])
        span = (before, min(upto, len(ids))) if c1 > c0 else (0, 0)
    return ids, span


def tokenize_example(tokenizer, record: Mapping, template: str = "auto", max_length: int = 512) -> dict:
    """One record to ``input_ids``, ``labels``, ``prompt_length`` and ``instruction_span`` (plus ``truncated``)."""
    prompt_source, response = _split_record(record)
    prompt_ids, span = encode_prompt(tokenizer, prompt_source, template)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full = prompt_ids + response_ids
    truncated = len(full) > max_length
    full = full[:max_length]
    labels = [-100] * len(prompt_ids) + response_ids
    row = {
        "input_ids": full,
        "labels": labels[:max_length],
        "prompt_length": len(prompt_ids),
        "instruction_span": list(span),
        "truncated": truncated,
    }
    if "gates" in record:  # CS-ReFT gates fixed for this example, e.g. its skill label as a one-hot vector
        row["gates"] = [float(g) for g in record["gates"]]
    return row


def make_dataset(
    records: Iterable[Mapping],
    tokenizer,
    template: str = "auto",
    max_length: int = 512,
    positions: "str | Positions | None" = None,
):
    """A ``datasets.Dataset`` with ``input_ids``, ``labels`` (-100 on the prompt), ``prompt_length`` and ``instruction_span``
    (and ``gates`` when the records have them: CS-ReFT gates fixed per example, e.g. a skill label).

    Warns when truncation cuts responses; drops (with a warning) examples whose prompt alone
    fills ``max_length``, since nothing would be learned from them. ``positions`` only checks
    that every prompt is long enough to hold that many distinct positions (a warning, not an
    error: short prompts simply get fewer edited positions).
    """
    from datasets import Dataset

    records = list(records)
    if not records:
        raise ValueError("The data set is empty: pass at least one {'instruction': ..., 'output': ...} record.")
    rows, dropped, cut = [], 0, 0
    for record in records:
        row = tokenize_example(tokenizer, record, template, max_length)
        if row["prompt_length"] >= max_length:
            dropped += 1
            continue
        cut += row.pop("truncated")
        rows.append(row)
    if cut:
        warnings.warn(f"{cut} of {len(records)} responses were cut at max_length={max_length} tokens; raise max_length to keep them whole.")
    if dropped:
        warnings.warn(f"{dropped} of {len(records)} examples were dropped: their prompt alone fills max_length={max_length}.")
    if not rows:
        raise ValueError(f"No example fits in max_length={max_length}: every prompt is at least that long.")
    if positions is not None:
        spec = Positions.parse(positions)
        shortest = min(r["prompt_length"] for r in rows)
        if not spec.all and shortest < spec.first + spec.last:
            warnings.warn(f"The shortest prompt has {shortest} tokens, fewer than {spec}: it gets fewer edited positions.")
    return Dataset.from_list(rows)


@dataclass
class Collator:
    """Pads a list of examples into tensors; ``padding_side="right"`` for training.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding), ``prompt_lengths``, and
    ``instruction_spans`` (``[batch, 2]``) and ``gates`` (``[batch, k]``) when the examples carry them.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty batch.")
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            n = len(e["input_ids"])
            pad = longest - n
            parts = {
                "input_ids": (list(e["input_ids"]), self.pad_token_id),
                "attention_mask": ([1] * n, 0),
                "labels": (list(e.get("labels", e["input_ids"])), -100),
            }
            for key, (values, fill) in parts.items():
                batch[key].append([fill] * pad + values if self.padding_side == "left" else values + [fill] * pad)
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out["prompt_lengths"] = torch.tensor([e["prompt_length"] for e in examples], dtype=torch.long)
        if all("instruction_span" in e for e in examples):
            out["instruction_spans"] = torch.tensor([list(e["instruction_span"]) for e in examples], dtype=torch.long)
        if any("gates" in e for e in examples):
            if not all("gates" in e for e in examples):
                raise ValueError("Some examples of this batch carry 'gates' and some do not: give every example its gates.")
            out["gates"] = torch.tensor([list(e["gates"]) for e in examples], dtype=torch.float32)
        return out


def collator_for(tokenizer, padding_side: str = "right", pad_to_multiple_of: int | None = None) -> Collator:
    """A ``Collator`` using the tokenizer's pad token (its EOS token when it has none)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Collator(pad_token_id=pad, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)


def show_positions(tokenizer, instruction: str, positions: "str | Positions" = "f5+l5", template: str = "auto") -> list[tuple[int, str]]:
    """Which prompt tokens an intervention edits: ``[(position, token text), ...]``.

    Makes the position spec visible before training, e.g.
    ``show_positions(tok, "Name a fruit.", "f5+l5")``. A prompt shorter than the spec is edited at
    each of its tokens once, the first group taking its tokens first (see ``hooks.resolve_positions``):
    with the course model, ``show_positions(tok, "Name a fruit", "f5+l5", template="plain")`` lists
    all 4 tokens, every one in the first group.
    """
    prompt = format_prompt(tokenizer, instruction, template)
    ids = tokenizer(prompt, add_special_tokens=not _uses_chat(tokenizer, template))["input_ids"]
    where = resolve_positions(positions, torch.ones(1, len(ids), dtype=torch.long))
    picked = where.index[0][where.mask[0]].tolist()
    return [(i, tokenizer.decode([ids[i]])) for i in picked]
