"""From instruction records (``{"instruction", "output"}`` or chat ``{"messages"}``) to padded batches. Labels are -100
on the prompt, so only the response is learned. Each example keeps its ``prompt_length`` (positions such as ``f5+l5``
count prompt tokens, at training and generation alike) and its ``instruction_span``: the instruction's own tokens,
without template or chat markers, which the router reads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from .hooks import Positions, resolve_positions
from .validate import check_gates, warn_short_prompts

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PLAIN_TEMPLATE = "{instruction}\n"


def _uses_chat(tokenizer, template: str) -> bool:
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ValueError("template='chat' but this tokenizer has no chat template; use template='alpaca' or 'plain'.")
    return has_chat if template == "auto" else template == "chat"


def format_prompt(tokenizer, instruction: "str | Sequence[Mapping[str, str]]", template: str = "auto") -> str:
    """The text the model sees before its answer.

    ``template``: ``"auto"`` (the tokenizer's chat template when it has one, else Alpaca's), ``"chat"``,
    ``"alpaca"`` (the no-input Alpaca template of the LoReFT recipe), ``"plain"``, or a string with ``{instruction}``.
    """
    if not isinstance(instruction, str) or _uses_chat(tokenizer, template):
        messages = [{"role": "user", "content": instruction}] if isinstance(instruction, str) else list(instruction)
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
    for name in ("instruction", "output", *(["input"] if record.get("input") else [])):
        if not isinstance(record[name], str):
            raise ValueError(f"'{name}' must be text, got {type(record[name]).__name__} {record[name]!r:.40}.")
    extra = f"\n\n{record['input']}" if record.get("input") else ""  # Alpaca records with an input field
    return record["instruction"] + extra, record["output"]


_SLOT = "\x00instruction\x00"  # stands in for the instruction, to find where a template puts it


def _char_span(tokenizer, prompt: str, source, template: str) -> tuple[int, int]:
    """Where the instruction's own text (a string, or the last user message) sits in the formatted prompt, in characters."""
    if isinstance(source, str):
        text, slotted = source, _SLOT
    else:
        users = [i for i, m in enumerate(source) if m.get("role") == "user"]
        if not users:
            raise ValueError("A chat record needs a user message before the assistant's reply: the router reads the last one.")
        text, slotted = source[users[-1]]["content"], [dict(m) for m in source]
        slotted[users[-1]]["content"] = _SLOT
    text = text.strip()  # templates may strip the content's edges
    before = format_prompt(tokenizer, slotted, template).split(_SLOT)[0]
    start = prompt.find(text, len(before)) if prompt.startswith(before) else prompt.rfind(text)
    if start < 0:
        raise ValueError(f"Cannot find the instruction {text[:60]!r} in its formatted prompt; the template changed its text.")
    return start, start + len(text)


def encode_prompt(tokenizer, instruction: "str | Sequence[Mapping[str, str]]", template: str = "auto") -> tuple[list[int], tuple[int, int]]:
    """The prompt's token ids and the span ``(start, end)`` of the instruction's own tokens in them.

    The span leaves out the template's words and chat markers (a token that straddles the instruction's edge
    counts as inside). Training and generation both encode prompts here, so the router reads the same tokens.
    """
    prompt = format_prompt(tokenizer, instruction, template)
    special = isinstance(instruction, str) and not _uses_chat(tokenizer, template)  # chat templates write their own
    c0, c1 = _char_span(tokenizer, prompt, instruction, template)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(prompt, add_special_tokens=special, return_offsets_mapping=True)
        inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < c1 and b > c0]
        return encoded["input_ids"], (inside[0], inside[-1] + 1) if inside else (0, 0)
    # slow tokenizers have no offsets: count the tokens of the text up to the instruction's start and end
    ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    before, upto = (len(tokenizer(prompt[:c], add_special_tokens=special)["input_ids"]) for c in (c0, c1))
    return ids, (before, min(upto, len(ids))) if c1 > c0 else (0, 0)


def tokenize_example(tokenizer, record: Mapping, template: str = "auto", max_length: int = 512) -> dict:
    """One record to ``input_ids``, ``labels`` (-100 on the prompt), ``prompt_length``, ``instruction_span``, ``truncated``."""
    prompt_source, response = _split_record(record)
    prompt_ids, span = encode_prompt(tokenizer, prompt_source, template)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full, labels = prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids
    row = {"input_ids": full[:max_length], "labels": labels[:max_length], "prompt_length": len(prompt_ids),
           "instruction_span": list(span), "truncated": len(full) > max_length}
    if "gates" in record:  # CS-ReFT gates fixed for this example, e.g. its skill label as a one-hot vector
        row["gates"] = check_gates(record["gates"], len(record["gates"]))[0].tolist()
    return row


def make_dataset(records: Iterable[Mapping], tokenizer, template: str = "auto", max_length: int = 512,
                 positions: "str | Positions | None" = None):
    """A ``datasets.Dataset`` of ``tokenize_example`` rows (with ``gates`` when the records carry them).

    Warns when truncation cuts responses; drops (with a warning) examples whose prompt alone fills ``max_length``;
    with ``positions``, warns when prompts are too short to hold that many distinct positions.
    """
    from datasets import Dataset

    if tokenizer is None or not callable(tokenizer):
        raise ValueError(f"make_dataset(records, tokenizer) needs the model's tokenizer, got {tokenizer!r}.")
    records = list(records)
    if not records:
        raise ValueError("The data set is empty: pass at least one {'instruction': ..., 'output': ...} record.")
    rows = []
    for i, record in enumerate(records):
        try:
            rows.append(tokenize_example(tokenizer, record, template, max_length))
        except (ValueError, TypeError) as error:  # name the record: a data set has thousands
            raise ValueError(f"Record {i} ({str(record)[:80]}): {error}") from error
    kept = [row for row in rows if row["prompt_length"] < max_length]
    cut = sum(row["truncated"] for row in kept)
    if cut:
        warnings.warn(f"{cut} of {len(records)} responses were cut at max_length={max_length} tokens; raise max_length to keep them whole.")
    if len(kept) < len(rows):
        warnings.warn(f"{len(rows) - len(kept)} of {len(records)} examples were dropped: their prompt alone fills max_length={max_length}.")
    if not kept:
        raise ValueError(f"No example fits in max_length={max_length}: every prompt is at least that long.")
    if positions is not None:
        warn_short_prompts([r["prompt_length"] for r in kept], Positions.parse(positions), "")
    return Dataset.from_list([{k: v for k, v in row.items() if k != "truncated"} for row in kept])


@dataclass
class Collator:
    """Pads examples into ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding), ``prompt_lengths``, and
    ``instruction_spans [batch, 2]`` and ``gates [batch, k]`` when the examples carry them. Right padding trains."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty batch.")
        longest = max(len(e["input_ids"]) for e in examples)

        def pad(row: list, fill: int) -> list:
            extra = [fill] * (longest - len(row))
            return extra + row if self.padding_side == "left" else row + extra

        out = {
            "input_ids": torch.tensor([pad(list(e["input_ids"]), self.pad_token_id) for e in examples]),
            "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
            "labels": torch.tensor([pad(list(e.get("labels", e["input_ids"])), -100) for e in examples]),
        }
        if all("prompt_length" in e for e in examples):  # without: ReftModel reads them from the labels
            out["prompt_lengths"] = torch.tensor([e["prompt_length"] for e in examples], dtype=torch.long)
        if all("instruction_span" in e for e in examples):
            out["instruction_spans"] = torch.tensor([list(e["instruction_span"]) for e in examples], dtype=torch.long)
        if any("gates" in e for e in examples):
            if not all("gates" in e for e in examples):
                raise ValueError("Some examples of this batch carry 'gates' and some do not: give every example its gates.")
            out["gates"] = torch.tensor([list(e["gates"]) for e in examples], dtype=torch.float32)
        return out


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, or its EOS token when it has none (Llama-2's tokenizer has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collator_for(tokenizer, padding_side: str = "right") -> Collator:
    """A ``Collator`` with the tokenizer's pad token (``pad_token_id``)."""
    if tokenizer is None:
        raise ValueError("Batches are padded with the tokenizer's pad token: pass the tokenizer (or a collator).")
    return Collator(pad_token_id=pad_token_id(tokenizer), padding_side=padding_side)


def prompt_batch(tokenizer, instructions: Sequence, template: str = "auto") -> dict[str, torch.Tensor]:
    """Prompts left-padded for generation: ``input_ids``, ``attention_mask``, ``prompt_lengths``, ``instruction_spans``."""
    encoded = [encode_prompt(tokenizer, x, template) for x in instructions]
    batch = collator_for(tokenizer, "left")([{"input_ids": ids, "prompt_length": len(ids), "instruction_span": span}
                                             for ids, span in encoded])
    del batch["labels"]
    return batch


def show_positions(tokenizer, instruction: str, positions: "str | Positions" = "f5+l5", template: str = "auto") -> list[tuple[int, str]]:
    """Which prompt tokens an intervention edits, ``[(position, token text), ...]``: the spec made visible before training.

    A prompt shorter than the spec is edited at each of its tokens once, the first group taking its tokens first.
    """
    ids, _ = encode_prompt(tokenizer, instruction, template)
    where = resolve_positions(positions, torch.ones(1, len(ids), dtype=torch.long))
    return [(i, tokenizer.decode([ids[i]])) for i in where.index[0][where.mask[0]].tolist()]
