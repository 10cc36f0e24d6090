"""Data preparation and the training loop, on the course model's tokenizer and a tiny random model."""

import math
import warnings

import pytest
import torch

import csreft_lite as cl
from csreft_lite import data, evaluate, tasks
from csreft_lite import training as train

from .tiny import tiny_llama


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    cl.load_course_model  # the tokenizer comes from the course model's cache
    from csreft_lite.models import course_model_cache

    if not course_model_cache().exists():
        cl.load_course_model()
    tokenizer = AutoTokenizer.from_pretrained(course_model_cache())
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


RECORDS = [{"instruction": "Name a red fruit.", "output": "Cherry"}, {"instruction": "Say hi.", "output": "Hi there, my good friend, how are you today?"}]


def test_labels_cover_the_response_only(tok):
    row = data.tokenize_example(tok, RECORDS[0])
    n = row["prompt_length"]
    assert all(label == -100 for label in row["labels"][:n])
    response = [t for t in row["labels"][n:]]
    assert tok.decode(response) == "Cherry" + tok.eos_token
    assert row["input_ids"][n:] == response
    prompt = tok.decode(row["input_ids"][:n])
    assert prompt == data.format_prompt(tok, "Name a red fruit.") and prompt.endswith("assistant\n")


def test_chat_messages_records(tok):
    messages = [{"role": "user", "content": "Name a red fruit."}, {"role": "assistant", "content": "Cherry"}]
    a = data.tokenize_example(tok, {"messages": messages})
    b = data.tokenize_example(tok, RECORDS[0])
    assert a == b


def test_plain_and_alpaca_templates(tok):
    assert "### Instruction:\nSay hi." in data.format_prompt(tok, "Say hi.", template="alpaca")
    assert data.format_prompt(tok, "Q: {x}", template="plain") == "Q: {x}\n"
    with pytest.raises(ValueError, match="Unknown template"):
        data.format_prompt(tok, "x", template="no field here")


def test_truncation_warns_and_long_prompts_are_dropped(tok):
    long = {"instruction": "Say hi.", "output": "word " * 200}
    with pytest.warns(UserWarning, match="1 of 2 responses were cut at max_length=48"):
        ds = data.make_dataset([long, RECORDS[0]], tok, max_length=48)
    assert max(len(r) for r in ds["input_ids"]) == 48
    with pytest.warns(UserWarning, match="dropped"):
        data.make_dataset([{"instruction": "x " * 100, "output": "y"}, RECORDS[0]], tok, max_length=40)


def test_empty_and_malformed_data_sets_are_refused(tok):
    with pytest.raises(ValueError, match="empty"):
        data.make_dataset([], tok)
    with pytest.raises(ValueError, match="'instruction' and 'output'"):
        data.make_dataset([{"question": "x", "answer": "y"}], tok)
    with pytest.raises(ValueError, match="No example fits"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data.make_dataset([{"instruction": "x " * 100, "output": "y"}], tok, max_length=20)


def test_collator_pads_both_sides_and_keeps_prompt_lengths(tok):
    ds = data.make_dataset(RECORDS, tok)
    rows = [ds[0], ds[1]]
    right = data.collator_for(tok)(rows)
    left = data.collator_for(tok, padding_side="left")(rows)
    for batch in (right, left):
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert batch["prompt_lengths"].tolist() == [rows[0]["prompt_length"], rows[1]["prompt_length"]]
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    short = int(right["attention_mask"].sum(1).argmin())
    assert right["attention_mask"][short, -1] == 0 and left["attention_mask"][short, 0] == 0


def test_show_positions_lists_the_edited_tokens(tok):
    shown = data.show_positions(tok, "Say hi.", "f2+l2")
    assert [text for _, text in shown][:2] == ["<|im_start|>", "system"]
    assert shown[-1][1] == "\n" and len(shown) == 4


def _tiny_dataset(n=16):
    rows = []
    for i in range(n):
        prompt = [3 + (i % 5), 10, 11, 12]
        response = [20 + (i % 5), 1]
        rows.append({"input_ids": prompt + response, "labels": [-100] * 4 + response, "prompt_length": 4})
    return rows


def test_training_lowers_the_loss_and_is_seeded():
    def run(seed):
        model = tiny_llama(init=0.3)  # larger weights than the default 0.02, so edits can move the logits
        reft = cl.ReftModel(model, {1: cl.LoReFT(32, 4), 3: cl.LoReFT(32, 4)}, positions="f2+l2")
        collate = data.Collator(pad_token_id=0)
        return train.train(reft, _tiny_dataset(), collator=collate, epochs=4, batch_size=4, lr=1e-2, seed=seed, progress=False)

    a, b = run(0), run(0)
    assert a.losses == b.losses and len(a) == 4 * 4
    assert a.final_loss < 0.8 * a.losses[0]
    assert a.tokens == 4 * 16 * 2


def test_history_keeps_each_steps_cross_entropy_and_router_penalty_apart():
    def run(interventions, **router):
        reft = cl.ReftModel(tiny_llama(init=0.3), interventions, positions="f2+l2", **router)
        rows = [dict(row, instruction_span=[0, 2]) for row in _tiny_dataset()]
        return train.train(reft, rows, collator=data.Collator(0), epochs=2, batch_size=4, grad_accum=2, lr=1e-2, progress=False)

    routed = run({1: cl.CSReFT(32, 2, 2)}, router=cl.Router(32, 2, gating="soft", sparsity=0.5))
    assert len(routed.ce_losses) == len(routed.penalties) == len(routed.losses) == routed.steps
    for loss, ce, penalty in zip(routed.losses, routed.ce_losses, routed.penalties):
        assert penalty > 0 and loss == pytest.approx(ce + penalty, abs=1e-6)  # soft gates: the sparsity term is positive
    plain = run({1: cl.LoReFT(32, 2)})
    assert plain.penalties == [0.0] * plain.steps and plain.ce_losses == plain.losses


def test_gradient_accumulation_counts_optimizer_steps():
    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(32, 2)}, positions="l2")
    history = train.train(reft, _tiny_dataset(), collator=data.Collator(0), epochs=1, batch_size=2, grad_accum=4, progress=False)
    assert history.steps == 2 and len(history.losses) == 2


def test_training_on_an_empty_data_set_is_refused():
    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(32, 2)})
    with pytest.raises(ValueError, match="empty"):
        train.train(reft, [], collator=data.Collator(0))


def test_train_leaves_frozen_subspaces_exactly_as_they_were_and_refuses_when_nothing_is_left():
    cs = cl.CSReFT(32, 2, 3)
    reft = cl.ReftModel(tiny_llama(init=0.3), {1: cs}, positions="f2+l2")
    rows = [dict(row, gates=[1.0, 1.0, 1.0]) for row in _tiny_dataset()]  # every gate open, the frozen one too
    train.train(reft, rows, collator=data.Collator(0), epochs=1, batch_size=4, lr=1e-2, weight_decay=0.1, progress=False)
    cs.freeze_subspaces(1)
    before = [t.detach().clone() for t in (cs.R, cs.W, cs.b)]
    train.train(reft, rows, collator=data.Collator(0), epochs=2, batch_size=4, lr=1e-2, weight_decay=0.1, progress=False)
    after = (cs.R.detach(), cs.W.detach(), cs.b.detach())
    assert all(torch.equal(a[1], b[1]) for a, b in zip(before, after))  # subspace 1: bit for bit
    assert all(not torch.equal(a[i], b[i]) for a, b in zip(before, after) for i in (0, 2))  # the others learned
    cs.freeze_subspaces(0, 2)  # the router is there but unused: the records bring their gates
    with pytest.raises(ValueError, match="The loss depends on no trainable parameter"):
        train.train(reft, rows, collator=data.Collator(0), progress=False)
    reft.router.requires_grad_(False)
    with pytest.raises(ValueError, match="Nothing to train: every parameter of the interventions"):
        train.train(reft, rows, collator=data.Collator(0), progress=False)


def test_checkpoints_are_written_and_resumable(tmp_path):
    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(32, 2)}, positions="l2")
    train.train(reft, _tiny_dataset(), collator=data.Collator(0), max_steps=3, batch_size=4, checkpoint_dir=str(tmp_path / "c"), save_every=2, progress=False)
    loaded = cl.ReftModel.load(tmp_path / "c", tiny_llama())
    for (name, p), (_, q) in zip(reft.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_alpaca_eval_outputs_file(tmp_path):
    path = evaluate.write_alpaca_eval_outputs(tmp_path / "out.json", ["a", "b"], ["x", "y"], generator="me")
    import json

    records = json.loads(path.read_text())
    assert records[0] == {"instruction": "a", "output": "x", "generator": "me", "dataset": "helpful_base"}
    with pytest.raises(ValueError, match="pair up"):
        evaluate.write_alpaca_eval_outputs(tmp_path / "bad.json", ["a"], [], generator="me")


def test_bare_chat_template_is_the_models_chat_turn_without_the_system_prompt(tok):
    """Notebooks 03-04 rely on it: the model's own markers, only the default system turn left out."""
    full = data.format_prompt(tok, "Say hi.", "chat")
    bare = data.format_prompt(tok, "Say hi.", tasks.BARE_CHAT_TEMPLATE)
    assert full.endswith(bare) and full != bare
    assert "system" in full[: -len(bare)] and "system" not in bare
    assert len(tok(bare)["input_ids"]) < len(tok(full)["input_ids"]) / 2 + 2


# ------------------------------------------------------------------ instruction spans and routing


@pytest.mark.parametrize("template", ["auto", "alpaca", "plain", tasks.BARE_CHAT_TEMPLATE])
def test_instruction_span_covers_exactly_the_instructions_tokens(tok, template):
    text = "Write the plural of this word: Garden"
    ids, (start, end) = data.encode_prompt(tok, text, template)
    assert tok.decode(ids[start:end]).strip() == text
    row = data.tokenize_example(tok, {"instruction": text, "output": "Gardens"}, template)
    assert row["instruction_span"] == [start, end] and row["input_ids"][: row["prompt_length"]] == ids


def test_instruction_span_of_a_chat_record_is_its_last_user_message(tok):
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Name a fruit."}]
    ids, (start, end) = data.encode_prompt(tok, messages)
    assert tok.decode(ids[start:end]) == "Name a fruit."
    with pytest.raises(ValueError, match="needs a user message"):
        data.encode_prompt(tok, [{"role": "system", "content": "Be brief."}])


def test_a_prompt_without_instruction_text_gets_an_empty_span_and_a_clear_error_when_routed(tok):
    ids, span = data.encode_prompt(tok, "   ", "plain")
    assert span == (0, 0)
    model = _tokenizer_sized_llama(tok)
    reft = cl.ReftModel(model, {1: cl.CSReFT(32, 2, 3)}, positions="f2+l2")
    with pytest.raises(ValueError, match=r"\[0, 0\).*no instruction text for the router"):
        evaluate.generate_answers(reft, tok, ["   "], template="plain", max_new_tokens=1)


def _tokenizer_sized_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def test_the_same_prompt_gets_the_same_gates_in_a_padded_training_batch_and_in_batched_generation(tok):
    """Training batches are right-padded, generation batches left-padded and grouped differently; the router must not care."""
    from .tiny import randomize

    model = _tokenizer_sized_llama(tok)
    reft = cl.ReftModel(model, {1: cl.CSReFT(32, 2, 3), 2: cl.CSReFT(32, 2, 3)}, positions="f3+l3",
                        router=cl.Router(32, 3, gating="soft"), router_layer=0)
    randomize(reft)
    records = [
        {"instruction": "Write the plural of this word: Garden", "output": "Gardens"},
        {"instruction": "Hi", "output": "Hello there, how can I help you today?"},
        {"instruction": "Write the first letter of this word: Tiger, and then say nothing else at all", "output": "T"},
    ]
    rows = data.make_dataset(records, tok, template=tasks.BARE_CHAT_TEMPLATE)
    batch = data.collator_for(tok)([rows[i] for i in range(3)])  # right padding, whole responses included
    with torch.no_grad():
        reft(**batch)
    training_gates = reft.last_gates.clone()
    seen = []
    original = reft.router.forward
    reft.router.forward = lambda summary, **kw: seen.append(original(summary, **kw)) or seen[-1]
    evaluate.generate_answers(reft, tok, [r["instruction"] for r in reversed(records)], batch_size=2,
                              template=tasks.BARE_CHAT_TEMPLATE, max_new_tokens=2)  # left padding, other groups
    generation_gates = torch.cat([gates for gates, probs in seen]).flip(0)
    assert len(seen) == 2  # one routing per batch: at the prefill, never at decode steps
    assert torch.allclose(training_gates, generation_gates, atol=1e-5)
    assert not torch.allclose(training_gates[0], training_gates[1], atol=1e-3)  # the gates do depend on the prompt


def test_routing_nmi_is_one_for_a_subspace_per_skill_and_zero_for_collapse():
    skills = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert evaluate.routing_nmi(skills, [2] * 4 + [0] * 4 + [1] * 4) == pytest.approx(1.0)  # any labelling of subspaces
    assert evaluate.routing_nmi(skills, [0] * 12) == 0.0  # one subspace for everything
    assert evaluate.routing_nmi(skills, [0, 1, 2, 3] * 3) == pytest.approx(0.0, abs=1e-12)  # independent of the skill
    shared = evaluate.routing_nmi(skills, [0] * 4 + [1] * 8)  # b and c share a subspace
    # by hand: I = H(choice) = H(1/3, 2/3); H(skill) = log 3
    h_choice = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert shared == pytest.approx(h_choice / ((math.log(3) + h_choice) / 2))
    assert round(shared, 2) == 0.73
    with pytest.raises(ValueError, match="one choice per example"):
        evaluate.routing_nmi(skills, [0])


def test_route_gives_the_gates_generation_uses(tok):
    from .tiny import randomize

    model = _tokenizer_sized_llama(tok)
    reft = cl.ReftModel(model, {1: cl.CSReFT(32, 2, 3)}, positions="f2+l2", router=cl.Router(32, 3, gating="topk"))
    randomize(reft)
    prompts = ["Write the plural of this word: Garden", "Hi", "Name a fruit."]
    gates, probs = evaluate.route_prompts(reft, tok, prompts, batch_size=2)
    assert gates.shape == probs.shape == (3, 3)
    assert torch.equal(gates, torch.nn.functional.one_hot(probs.argmax(-1), 3).float())
    evaluate.generate_answers(reft, tok, prompts[2:], max_new_tokens=1)
    assert torch.equal(reft.last_gates, gates[2:])
    with pytest.raises(ValueError, match="needs a ReftModel with a router"):
        evaluate.route_prompts(cl.ReftModel(model, {2: cl.LoReFT(32, 2)}), tok, prompts)


def test_cl_train_is_the_training_function_and_the_module_keeps_its_names():
    """``cl.train(reft, ds, ...)`` is what users type: the function of ``csreft_lite.training``, no module trick."""
    import inspect
    import types

    from csreft_lite.training import set_seed, train as train_function

    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(32, 2)}, positions="l2")
    history = cl.train(reft, _tiny_dataset(8), collator=data.Collator(0), batch_size=4, progress=False)
    assert isinstance(history, train.TrainHistory) and history.steps == 2
    assert cl.train is train_function and cl.set_seed is set_seed and isinstance(train, types.ModuleType)
    assert list(inspect.signature(cl.train).parameters)[:3] == ["reft", "dataset", "tokenizer"]


def test_short_prompts_fill_the_first_group_first(tok):
    """The rule documented in hooks.resolve_positions, data.show_positions and notebook 02."""
    from csreft_lite.hooks import resolve_positions

    def groups(n):
        where = resolve_positions("f5+l5", torch.ones(1, n, dtype=torch.long))
        return [where.index[0, g][where.mask[0, g]].tolist() for g in (where.groups["first"], where.groups["last"])]

    assert groups(12) == [[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]
    assert groups(7) == [[0, 1, 2, 3, 4], [5, 6]]
    assert groups(4) == [[0, 1, 2, 3], []]
    shown = data.show_positions(tok, "Name a fruit", "f5+l5", template="plain")
    assert shown == [(0, "Name"), (1, " a"), (2, " fruit"), (3, "\n")]


def _short_prompt_rows(n_short):
    rows = _tiny_dataset(8)  # prompts of 4 tokens
    for row in rows[:n_short]:  # prompts of 3 tokens
        row.update(input_ids=row["input_ids"][1:], labels=row["labels"][1:], prompt_length=3)
    return rows


def test_training_warns_once_about_prompts_shorter_than_the_positions():
    def warnings_of(rows, positions):
        reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(32, 2)}, positions=positions, share_positions=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cl.train(reft, rows, collator=data.Collator(0), batch_size=2, epochs=2, progress=False)
        return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    shown = warnings_of(_short_prompt_rows(3), "f2+l2")
    assert len(shown) == 1  # once per run, not once per batch or epoch
    assert shown[0].startswith("3 of 8 training prompts are shorter than the 4 tokens that positions 'f2+l2' edits (the shortest has 3)")
    assert "the last group gets what is left" in shown[0] and "'f1+l1' fits every prompt" in shown[0]
    assert warnings_of(_short_prompt_rows(0), "f2+l2") == []
    assert warnings_of(_short_prompt_rows(3), "f1+l2") == []  # 3 tokens are enough for f1+l2
    from datasets import Dataset

    shown = warnings_of(Dataset.from_list(_short_prompt_rows(2)), "l5")  # a datasets.Dataset is read by column
    assert len(shown) == 1 and shown[0].startswith("8 of 8 training prompts are shorter than the 5 tokens that positions 'l5'")
    assert "last group" not in shown[0] and "'l3' fits every prompt" in shown[0]


def test_records_with_gates_train_each_example_with_its_own_gates(tok):
    """Label-gated training is train() on records that carry their gates: each example trains only its subspace."""
    model = _tokenizer_sized_llama(tok)
    reft = cl.ReftModel(model, {1: cl.CSReFT(32, 2, 2)}, positions="f2+l2")
    records = [{"instruction": "Say a.", "output": "a", "gates": [1, 0]}, {"instruction": "Say b.", "output": "b", "gates": [1, 0]}]
    rows = data.make_dataset(records, tok, template="plain")
    batch = data.collator_for(tok)(list(rows))
    assert batch["gates"].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    before = reft.interventions["layer1"].W.detach().clone()
    cl.train(reft, rows, tok, epochs=2, batch_size=2, lr=1e-2, progress=False)
    after = reft.interventions["layer1"].W.detach()
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])  # subspace 1 never gated on
    assert reft.router.net.weight.grad is None  # the router never ran
    with pytest.raises(ValueError, match="Some examples of this batch carry 'gates'"):
        data.collator_for(tok)([rows[0], {k: v for k, v in rows[1].items() if k != "gates"}])
