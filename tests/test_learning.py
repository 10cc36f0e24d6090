"""The method works end to end on the real course model: a rank-4 LoReFT learns a course skill.

Slow (a minute or two on 2 CPU cores), so marked ``slow``; CI runs it. The training time is
printed (run pytest with ``-s`` to see it), never asserted: speed is measured by ``bench/``.
"""

import time

import pytest
import torch

import csreft_lite as cl
from csreft_lite import data, evaluate, tasks, train


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
    finally:
        reft.remove()
