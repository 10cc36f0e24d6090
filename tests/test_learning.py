"""The method works end to end on the real course model: a rank-4 LoReFT learns a course skill.

Slow (a minute or two on 2 CPU cores), so marked ``slow``; CI runs it. The training time is
printed (run pytest with ``-s`` to see it), never asserted: speed is measured by ``bench/``.
"""

import time

import pytest
import torch

import csreft_lite as cl
from csreft_lite import data, evaluate, tasks
from csreft_lite import training as train


@pytest.mark.slow
def test_rank4_loreft_learns_first_letter_from_80_examples(course_model):
    model, tok = course_model
    torch.manual_seed(0)
    train_examples = tasks.get_skill("first_letter").generate(80, "train", seed=0)
    test_examples = tasks.get_skill("first_letter").generate(40, "test", seed=0)
    d = model.config.hidden_size
    reft = cl.ReftModel(model, {layer: cl.LoReFT(d, rank=4) for layer in (3, 9, 18, 24)}, positions="f5+l5")
    try:
        with reft.disabled():
            before = evaluate.skill_accuracy(reft, tok, test_examples, max_new_tokens=6)["first_letter"]
        ds = data.make_dataset([{"instruction": e.instruction, "output": e.output} for e in train_examples], tok)
        start = time.perf_counter()
        history = train.train(reft, ds, tok, epochs=2, batch_size=8, lr=4e-3, seed=0, progress=False)
        seconds = time.perf_counter() - start
        after = evaluate.skill_accuracy(reft, tok, test_examples, max_new_tokens=6)["first_letter"]
        print(f"\nfirst_letter: {before:.0%} -> {after:.0%} held-out after {history.steps} steps, {seconds:.0f} s of training")
        assert before <= 0.3
        assert after >= 0.9
        assert history.final_loss < history.losses[0]
        stopped = _answers_that_stop_at_eos(reft, tok, test_examples[:10])
        assert sum(stopped) >= 9, f"answers must be the letter, then EOS ({tok.eos_token}): {stopped}"
    finally:
        reft.remove()


def _answers_that_stop_at_eos(reft, tok, examples) -> list:
    """For each example: are the generated tokens exactly its answer followed by the EOS token?

    Training appends ``tok.eos_token_id`` to every response (``data.make_dataset``), so a trained edit
    stops only if that id is the model's end of turn, ``<|im_end|>``, and ``generate`` stops at it.
    """
    prompts = [data.format_prompt(tok, e.instruction) for e in examples]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    out = reft.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6, do_sample=False)
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    expected = [tok(e.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for e in examples]
    return [got[: len(want)] == want for got, want in zip(new, expected)]
