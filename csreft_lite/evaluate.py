"""Evaluation: batched generation, per-skill accuracy, and AlpacaEval output files.

``generate_answers`` works for a plain Hugging Face model and for a ``ReftModel`` alike, so
"before" and "after" are measured by the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .data import format_prompt


def generate_answers(
    model,
    tokenizer,
    instructions: Sequence,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    template: str = "auto",
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers (by default) to each instruction, decoded without the prompt.

    Prompts are left-padded in batches; ``generate_kwargs`` go to ``generate`` (e.g.
    ``repetition_penalty=1.1, no_repeat_ngram_size=5`` as in the LoReFT AlpacaEval recipe).
    """
    from tqdm.auto import tqdm

    instructions = list(instructions)
    if not instructions:
        raise ValueError("No instructions to answer.")
    generate_kwargs.setdefault("do_sample", False)
    base = getattr(model, "model", model) if hasattr(model, "interventions") else model
    device = next(base.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        starts = range(0, len(instructions), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress, leave=False):
            prompts = [format_prompt(tokenizer, x, template) for x in instructions[start:start + batch_size]]
            chat = bool(getattr(tokenizer, "chat_template", None)) and template in ("auto", "chat")
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    **generate_kwargs,
                )
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


def skill_accuracy(model, tokenizer, examples: Sequence, *, max_new_tokens: int = 16, batch_size: int = 32, **kwargs) -> dict[str, float]:
    """Held-out accuracy per skill (and the mean) of ``tasks.Example``s, by greedy generation."""
    from .tasks import score

    predictions = generate_answers(
        model, tokenizer, [e.instruction for e in examples], max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs
    )
    return score(predictions, examples)


# ---------------------------------------------------------------- AlpacaEval


def write_alpaca_eval_outputs(
    path: str | Path,
    instructions: Sequence[str],
    outputs: Sequence[str],
    generator: str,
    datasets: Sequence[str] | None = None,
) -> Path:
    """Write answers in alpaca_eval's ``model_outputs`` format: a JSON list of
    ``{"instruction", "output", "generator", "dataset"}`` records."""
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs; they must pair up.")
    if not instructions:
        raise ValueError("No outputs to write.")
    datasets = list(datasets) if datasets is not None else ["helpful_base"] * len(outputs)
    records = [
        {"instruction": i, "output": o, "generator": generator, "dataset": d}
        for i, o, d in zip(instructions, outputs, datasets)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    return path
