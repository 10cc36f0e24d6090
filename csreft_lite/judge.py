"""A local pairwise judge: AlpacaEval's question (which of two answers is better?) asked of any instruct model,
for a run without an OpenAI key. The preference is read off the next-token distribution, P("A") against P("B"),
not parsed from a reply; every pair is judged in both orders and averaged, which cancels the judge's bias for a
position. Results follow AlpacaEval's conventions (``preference`` 1 = ``output_1`` better, 2 = ``output_2``, 1.5 a
tie), so alpaca_eval's ``get_winrate`` reads them; the number is an **approximation, never the AlpacaEval score**.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .hooks import position_ids
from .progress import Progress

JUDGE_INSTRUCTION = (
    "You are a careful judge of answers written by AI assistants. Read the instruction and the two "
    "answers, then decide which answer is more helpful, correct and relevant. Length alone is not a merit.\n\n"
    "### Instruction:\n{instruction}\n\n### Answer A:\n{answer_a}\n\n### Answer B:\n{answer_b}\n\n"
    "Which answer is better? Reply with a single letter, A or B."
)
PLAIN_SUFFIX = "\n\n### Better answer:"


def _letter_ids(tokenizer, letter: str) -> list[int]:
    """Token ids that start the reply ``letter``: with and without a leading space (tokenizers differ)."""
    ids = {tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (letter, f" {letter}")}
    return sorted(ids)


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]) + " [...]"


def judge_prompt(tokenizer, instruction: str, answer_a: str, answer_b: str) -> tuple[str, bool]:
    """The judge's prompt (its chat template when it has one) and whether the template adds special tokens."""
    text = JUDGE_INSTRUCTION.format(instruction=instruction, answer_a=answer_a, answer_b=answer_b)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    return text + PLAIN_SUFFIX, False


@torch.no_grad()
def _prob_first_is_a(judge, tokenizer, prompts: list[str], chat: bool) -> torch.Tensor:
    """P("A") / (P("A") + P("B")) for the next token after each prompt: ``[n]``."""
    device = next(judge.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
    finally:
        tokenizer.padding_side = side
    mask = batch["attention_mask"]
    logits = judge(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1].float()
    log_probs = logits.log_softmax(-1)  # [n, vocab]
    a = log_probs[:, _letter_ids(tokenizer, "A")].logsumexp(-1)
    b = log_probs[:, _letter_ids(tokenizer, "B")].logsumexp(-1)
    return torch.sigmoid(a - b).cpu()  # = P(A) / (P(A) + P(B))


def judge_preferences(judge, tokenizer, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str],
                      *, batch_size: int = 4, max_answer_tokens: int = 512, progress: bool = False) -> list[float]:
    """AlpacaEval-style preferences in [1, 2] for each pair (2 = ``outputs_2`` better), both orders averaged.

    ``judge`` is any causal LM (ideally an instruct model); answers longer than
    ``max_answer_tokens`` are cut so that prompts fit.
    """
    instructions, outputs_1, outputs_2 = list(instructions), list(outputs_1), list(outputs_2)
    if not (len(instructions) == len(outputs_1) == len(outputs_2)):
        raise ValueError(f"{len(instructions)} instructions, {len(outputs_1)} and {len(outputs_2)} outputs: they must pair up.")
    if not instructions:
        raise ValueError("Nothing to judge.")
    preferences: list[float] = []
    bar = Progress(len(instructions), "judging", unit="pair", enabled=progress)
    for start in range(0, len(instructions), batch_size):
        rows = range(start, min(start + batch_size, len(instructions)))
        firsts, seconds, chat = [], [], False
        for i in rows:
            one = _truncate(tokenizer, outputs_1[i], max_answer_tokens)
            two = _truncate(tokenizer, outputs_2[i], max_answer_tokens)
            p, chat = judge_prompt(tokenizer, instructions[i], one, two)  # output_1 shown as A
            q, _ = judge_prompt(tokenizer, instructions[i], two, one)  # output_1 shown as B
            firsts.append(p)
            seconds.append(q)
        one_as_a = _prob_first_is_a(judge, tokenizer, firsts, chat)  # P(output_1 better), order 1
        one_as_b = 1 - _prob_first_is_a(judge, tokenizer, seconds, chat)  # P(output_1 better), order 2
        p_one = (one_as_a + one_as_b) / 2
        preferences += (2 - p_one).tolist()  # 1 when output_1 surely better, 2 when output_2 is
        bar.update(len(rows))
    bar.close()
    return preferences


def judge_annotations(judge, tokenizer, instructions: Sequence[str], reference_outputs: Sequence[str],
                      model_outputs: Sequence[str], *, reference_name: str, model_name: str, judge_name: str,
                      **kwargs) -> list[dict]:
    """Annotations shaped like alpaca_eval's ``annotations.json`` (reference = ``output_1``, model = ``output_2``)."""
    prefs = judge_preferences(judge, tokenizer, instructions, reference_outputs, model_outputs, **kwargs)
    return [{"instruction": i, "output_1": r, "generator_1": reference_name, "output_2": m, "generator_2": model_name,
             "annotator": f"local_judge:{judge_name}", "preference": p}
            for i, r, m, p in zip(instructions, reference_outputs, model_outputs, prefs)]
