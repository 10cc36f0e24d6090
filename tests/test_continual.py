"""Skills added one at a time (``ReftModel.add_skill``): a growing CS-ReFT, earlier subspaces frozen bit for bit, and a
nearest-centroid router that keeps routing earlier skills as before. Tiny random models; one test on the course model."""

import pytest
import torch

import csreft_lite as cl
from csreft_lite.controls import SeparateBases, SharedBasis
from csreft_lite.data import Collator
from csreft_lite.continual import CentroidRouter, new_skill_subspace

from .tiny import tiny_llama

COLLATE = Collator(pad_token_id=0)


def skill_rows(low: int, answer: int, n: int = 8, seed: int = 0) -> list[dict]:
    """A toy skill: its instruction (tokens ``low``, ``low + 1``, ``low + 2``) and 3 random "words" from a pool that
    every skill shares, answered by token ``answer``."""
    g = torch.Generator().manual_seed(seed + low)
    rows = []
    for _ in range(n):
        prompt = [low, low + 1, low + 2] + torch.randint(30, 100, (3,), generator=g).tolist()
        rows.append({"input_ids": prompt + [answer], "labels": [-100] * 6 + [answer], "prompt_length": 6,
                     "instruction_span": (0, 6)})
    return rows


SKILLS = [skill_rows(3, 5), skill_rows(10, 7), skill_rows(20, 9)]


def grown_model(n_skills: int, steps: int = 4):
    torch.manual_seed(0)
    model = tiny_llama()
    d = model.config.hidden_size
    reft = cl.ReftModel(model, {1: cl.CSReFT(d, 2, n_subspaces=1), 2: cl.CSReFT(d, 2, n_subspaces=1)},
                        positions="f2+l2", router=CentroidRouter(d))
    for rows in SKILLS[:n_skills]:
        reft.add_skill(rows, collator=COLLATE, max_steps=steps, epochs=10, batch_size=4, lr=0.05, progress=False)
    return reft


def routes(reft, rows) -> torch.Tensor:
    batch = COLLATE(rows)
    return reft.route(batch["input_ids"], batch["attention_mask"], batch["instruction_spans"])[0].argmax(-1)


def subspace_state(reft, i: int) -> list[torch.Tensor]:
    return [p.detach().clone() for m in reft.interventions.values() for p in m.subspace(i)]


def test_each_skill_adds_one_frozen_subspace_and_one_centroid():
    reft = grown_model(1)
    assert [(m.n_subspaces, m.frozen) for m in reft.interventions.values()] == [(1, (0,))] * 2
    reft.add_skill(SKILLS[1], collator=COLLATE, max_steps=2, batch_size=4, progress=False)
    assert [(m.n_subspaces, m.frozen) for m in reft.interventions.values()] == [(2, (0, 1))] * 2
    assert reft.router.n_subspaces == 2 and reft.router.centroids.shape == (2, reft.router.d_model)
    assert reft.trainable_parameters() == 0  # everything learned is frozen until the next skill
    assert "2 subspaces (0, 1 frozen)" in reft.summary()


def test_earlier_subspaces_and_centroids_stay_bit_for_bit_and_route_as_before():
    reft = grown_model(2)
    before = [subspace_state(reft, i) for i in range(2)]
    centroids = reft.router.centroids.clone()
    old_routes = [routes(reft, rows) for rows in SKILLS[:2]]
    assert old_routes[0].tolist() == [0] * 8 and old_routes[1].tolist() == [1] * 8  # each skill to its own subspace
    history = reft.add_skill(SKILLS[2], collator=COLLATE, max_steps=4, epochs=10, batch_size=4, lr=0.05, progress=False)
    assert history.steps == 4
    for i in range(2):
        assert all(torch.equal(a, b) for a, b in zip(before[i], subspace_state(reft, i)))
    assert torch.equal(reft.router.centroids[:2], centroids)
    assert [routes(reft, rows).tolist() for rows in SKILLS[:2]] == [r.tolist() for r in old_routes]
    assert routes(reft, SKILLS[2]).tolist() == [2] * 8
    assert not torch.equal(subspace_state(reft, 2)[1], reft.interventions["layer1"].R[2])  # the new W learned


def test_an_earlier_skill_answers_as_before_the_new_one_was_added():
    reft = grown_model(1, steps=20)
    batch = COLLATE(SKILLS[0])
    logits = reft(batch["input_ids"], batch["attention_mask"], instruction_spans=batch["instruction_spans"]).logits
    reft.add_skill(SKILLS[1], collator=COLLATE, max_steps=20, epochs=10, batch_size=4, lr=0.05, progress=False)
    after = reft(batch["input_ids"], batch["attention_mask"], instruction_spans=batch["instruction_spans"]).logits
    assert torch.allclose(logits, after, atol=1e-5)  # equal up to float rounding (the stacked QR has one more block)
    assert (after[:, 5].argmax(-1) == 5).float().mean() >= 0.75  # and skill 0 was learned in the first place


def test_a_grown_model_saves_and_loads(tmp_path):
    reft = grown_model(3, steps=2)
    reft.save(tmp_path / "grown")
    gates = [routes(reft, rows) for rows in SKILLS]
    batch = COLLATE(SKILLS[1])
    expected = reft(batch["input_ids"], batch["attention_mask"], instruction_spans=batch["instruction_spans"]).logits
    model = reft.model
    reft.remove()
    loaded = cl.ReftModel.load(tmp_path / "grown", model)
    assert isinstance(loaded.router, CentroidRouter) and torch.equal(loaded.router.centroids, reft.router.centroids)
    assert [m.frozen for m in loaded.interventions.values()] == [(0, 1, 2)] * 2
    assert [routes(loaded, rows).tolist() for rows in SKILLS] == [g.tolist() for g in gates]
    got = loaded(batch["input_ids"], batch["attention_mask"], instruction_spans=batch["instruction_spans"]).logits
    assert torch.equal(got, expected)
    loaded.add_skill(skill_rows(14, 11), collator=COLLATE, max_steps=1, batch_size=4, progress=False)  # and grows on
    assert loaded.router.n_subspaces == 4


def test_the_controls_grow_too_and_keep_their_geometry():
    torch.manual_seed(0)
    for cls, shared in ((SeparateBases, False), (SharedBasis, True)):
        m = cls(16, 2, 1)
        before = [p.clone() for p in m.subspace(0)]
        assert m.add_subspace() == 1 and m.frozen == (0,)
        assert all(torch.equal(a, b) for a, b in zip(before, m.subspace(0)))
        overlap = (m.R[0] @ m.R[1].T).abs().max().item()
        assert (overlap > 0.999) if shared else (1e-3 < overlap < 0.999)
        h = torch.randn(2, 3, 16)
        assert torch.allclose(m(h, gates=torch.tensor([0.0, 1.0])), h, atol=1e-6)  # the new edit starts at zero
    sb = SharedBasis(16, 2, 2)
    assert [n for n, p in sb.named_parameters() if p.requires_grad] == ["R_raw_0", "W_0", "b_0", "W_1", "b_1"]


def test_bad_input_gets_a_clear_error():
    torch.manual_seed(0)
    model = tiny_llama()
    d = model.config.hidden_size
    with cl.ReftModel(model, {1: cl.LoReFT(d, 2)}) as plain:
        with pytest.raises(ValueError, match="CentroidRouter"):
            plain.add_skill(SKILLS[0], collator=COLLATE)
    with cl.ReftModel(model, {1: cl.CSReFT(d, 2, 2)}) as learned:
        with pytest.raises(ValueError, match="CentroidRouter"):
            learned.add_skill(SKILLS[0], collator=COLLATE)
    with cl.ReftModel(model, {1: cl.CSReFT(d, 2, 3)}, router=CentroidRouter(d, 3)) as fresh3:
        with pytest.raises(ValueError, match="only \\[\\] are frozen"):
            fresh3.add_skill(SKILLS[0], collator=COLLATE)
    with cl.ReftModel(model, {1: cl.CSReFT(d, 2, 1)}, router=CentroidRouter(d)) as reft:
        with pytest.raises(ValueError, match="empty dataset"):
            reft.add_skill([], collator=COLLATE)
        with pytest.raises(ValueError, match="without 'gates'"):
            reft.add_skill([{**r, "gates": [1.0]} for r in SKILLS[0]], collator=COLLATE)
        with pytest.raises(ValueError, match="instruction_span"):
            reft.add_skill([{k: v for k, v in r.items() if k != "instruction_span"} for r in SKILLS[0]], collator=COLLATE)
        with pytest.raises(ValueError, match="pass the tokenizer"):
            reft.add_skill(SKILLS[0])
    with pytest.raises(ValueError, match="different subspaces"):
        new_skill_subspace([cl.CSReFT(d, 2, 1), cl.CSReFT(d, 2, 2)])
    with pytest.raises(ValueError, match="orthonormal directions"):
        cl.CSReFT(4, 2, 2, frozen=[0, 1]).add_subspace()  # a third rank-2 subspace does not fit in 4 dimensions
    router = CentroidRouter(d)
    with pytest.raises(ValueError, match="centroids 0 to 0"):
        router.learn(2, torch.randn(3, d))
    with pytest.raises(ValueError, match="n >= 1"):
        router.learn(0, torch.randn(0, d))
    with pytest.raises(ValueError, match="temperature"):
        CentroidRouter(d, 1, temperature=0)


def test_the_course_model_routes_real_skills_without_labels(course_model):
    """Two of tasks' skills, a few steps each: the router sends every held-out prompt to its skill's subspace."""
    model, tok = course_model
    d = model.config.hidden_size
    tasks = cl.tasks
    with cl.ReftModel(model, {4: cl.CSReFT(d, 4, n_subspaces=1)}, router=CentroidRouter(d)) as reft:
        for name in ("lowercase", "first_letter"):
            rows = [{"instruction": e.instruction, "output": e.output} for e in tasks.get_skill(name).generate(16)]
            reft.add_skill(cl.data.make_dataset(rows, tok), tok, max_steps=2, batch_size=8, progress=False)
        for i, name in enumerate(("lowercase", "first_letter")):
            held_out = [e.instruction for e in tasks.get_skill(name).generate(20, "test")]
            gates, _ = cl.evaluate.route_prompts(reft, tok, held_out)
            assert gates.argmax(-1).tolist() == [i] * 20
