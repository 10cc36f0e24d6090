"""ReftModel on tiny random models: positions, padding, removal, generation, save/load, bad input."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import csreft_lite as cl
from csreft_lite.hooks import Positions, resolve_positions
from csreft_lite import reft_model
from csreft_lite.reft_model import settings

from .tiny import randomize, tiny_llama, tiny_model

D = 32


@pytest.fixture
def model():
    return tiny_llama()


def make_reft(model, positions="f3+l3", share=True, kinds=("LoReFT", "CSReFT"), router=None):
    built = {"LoReFT": lambda: cl.LoReFT(D, 4), "DiReFT": lambda: cl.DiReFT(D, 4), "CSReFT": lambda: cl.CSReFT(D, 2, 3)}
    reft = cl.ReftModel(model, {layer: built[k]() for layer, k in zip((1, 2), kinds)}, positions=positions,
                        share_positions=share, router=router)
    randomize(reft)
    return reft


def ids(batch=2, seq=12, seed=0):
    return torch.randint(3, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


def spans(batch=2, start=1, end=5):
    """Instruction spans for a routed model: tokens [start, end) of every prompt."""
    return torch.tensor([[start, end]] * batch)


# ------------------------------------------------------------------ positions


def test_positions_parse_and_print():
    assert Positions.parse("f5+l5") == Positions(5, 5)
    assert Positions.parse("l1") == Positions(0, 1)
    assert str(Positions.parse("F3")) == "f3"
    assert Positions.parse("all").all
    for bad in ("x5", "f0", "", "f5+l5+m2"):
        with pytest.raises(ValueError, match="positions|select no token"):
            Positions.parse(bad)


def test_positions_right_and_left_padding_point_at_the_same_tokens():
    right = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    r = resolve_positions("f2+l2", right)
    lft = resolve_positions("f2+l2", left)
    assert r.index[0].tolist() == [0, 1, 3, 4]
    assert lft.index[0].tolist() == [2, 3, 5, 6]
    assert r.mask.all() and lft.mask.all()


def test_short_prompts_edit_each_position_once():
    where = resolve_positions("f3+l3", torch.ones(1, 4, dtype=torch.long))
    edited = where.index[0][where.mask[0]].tolist()
    assert sorted(edited) == [0, 1, 2, 3] and len(edited) == len(set(edited))


def test_prompt_lengths_limit_positions_to_the_prompt():
    where = resolve_positions("l2", torch.ones(1, 10, dtype=torch.long), torch.tensor([6]))
    assert where.index[0].tolist() == [4, 5]


def test_positions_past_the_sequence_are_refused():
    with pytest.raises(ValueError, match="Positions past the sequence.*example 1"):
        resolve_positions("f2", torch.ones(2, 5, dtype=torch.long), torch.tensor([3, 9]))


# ------------------------------------------------------------------ the base model is never modified


def test_remove_restores_bit_identical_logits(model):
    x = ids()
    base = model(x).logits
    reft = make_reft(model)
    edited = reft(x, instruction_spans=spans()).logits
    assert not torch.allclose(edited, base)
    reft.remove()
    assert torch.equal(model(x).logits, base)


def test_with_block_and_disabled_restore_the_base_model(model):
    x = ids()
    base = model(x).logits
    with make_reft(model) as reft:
        with reft.disabled():
            assert torch.equal(reft(x).logits, base)
        assert not torch.allclose(reft(x, instruction_spans=spans()).logits, base)
    assert torch.equal(model(x).logits, base)


def test_calling_the_base_model_directly_is_not_edited(model):
    x = ids()
    base = model(x).logits
    reft = make_reft(model)
    reft(x, instruction_spans=spans())
    assert torch.equal(model(x).logits, base)  # hooks act only inside ReftModel calls


def test_base_weights_frozen_and_only_interventions_train(model):
    reft = make_reft(model)
    assert not any(p.requires_grad for p in model.parameters())
    names = [n for n, _ in reft.named_parameters()]
    assert names and all(n.startswith(("interventions.", "router.")) for n in names)
    assert any(n.startswith("router.") for n in names)  # the shared router trains too


def test_only_the_chosen_positions_change(model):
    x = ids(batch=1, seq=12)
    with cl.record(model, [1]) as before:
        model(x)
    reft = make_reft(model, positions="f2+l2")
    with cl.record(model, [1]) as after:
        reft(x, instruction_spans=spans(1))
    changed = (after[1] - before[1]).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [0, 1, 10, 11]


# ------------------------------------------------------------------ padding


@pytest.mark.parametrize("share", [True, False])
def test_left_and_right_padding_give_the_same_edited_logits(model, share):
    x = ids(batch=2, seq=12)
    short = 8
    right, mask_r = x.clone(), torch.ones_like(x)
    right[1, short:], mask_r[1, short:] = 0, 0
    left, mask_l = x.clone(), torch.ones_like(x)
    left[1] = torch.cat([torch.zeros(12 - short, dtype=torch.long), x[1, :short]])
    mask_l[1, : 12 - short] = 0
    reft = make_reft(model, share=share)
    out_r = reft(right, mask_r, instruction_spans=spans()).logits
    gates_r = reft.last_gates
    out_l = reft(left, mask_l, instruction_spans=spans()).logits
    assert torch.allclose(out_r[0], out_l[0], atol=1e-5)
    assert torch.allclose(out_r[1, :short], out_l[1, 12 - short:], atol=1e-5)
    assert torch.allclose(gates_r, reft.last_gates) and gates_r.shape == (2, 3)


def test_untied_positions_use_separate_copies(model):
    reft = make_reft(model, share=False)
    keys = set(reft.interventions)
    assert {"layer1_first", "layer1_last", "layer2_first", "layer2_last"} == keys
    a, b = reft.interventions["layer1_first"], reft.interventions["layer1_last"]
    assert a is not b and a.W.data_ptr() != b.W.data_ptr()


# ------------------------------------------------------------------ loss


def test_loss_matches_the_full_model_cross_entropy_on_response_tokens(model):
    x = ids(batch=2, seq=12)
    labels = x.clone()
    labels[:, :7] = -100
    reft = make_reft(model)
    out = reft(x, labels=labels, prompt_lengths=torch.tensor([7, 7]), instruction_spans=spans())
    logits = reft(x, prompt_lengths=torch.tensor([7, 7]), instruction_spans=spans()).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.ce_loss, expected, atol=1e-5)
    assert out.penalty is not None and torch.allclose(out.loss, out.ce_loss + out.penalty)  # the default balance term
    assert out.n_tokens == 2 * 5


def test_router_penalty_is_added_to_the_loss_only_when_the_router_ran(model):
    router = cl.Router(D, 3, gating="soft", sparsity=0.5, balance=1.0)
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3)}, positions="f2", router=router)
    x = ids()
    labels = x.clone()
    labels[:, :6] = -100  # the prompt: 6 tokens
    out = reft(x, labels=labels, instruction_spans=spans())
    assert out.penalty is not None and torch.allclose(out.loss, out.ce_loss + out.penalty)
    assert torch.allclose(out.penalty, router.penalty(reft.last_probs))  # the probabilities of this very call
    with reft.force_gates([1, 0, 0]):  # no router in this call, so no router penalty from an earlier one
        assert reft(x, labels=labels).penalty is None


def test_all_labels_masked_is_refused(model):
    reft = make_reft(model)
    x = ids()
    with pytest.raises(ValueError, match="no response token"):
        reft(x, labels=torch.full_like(x, -100), instruction_spans=spans())


def test_gradients_reach_every_intervention(model):
    reft = make_reft(model, share=False)
    x = ids()
    labels = x.clone()
    labels[:, :6] = -100
    reft(x, labels=labels, prompt_lengths=torch.tensor([6, 6]), instruction_spans=spans()).loss.backward()
    # a CS-ReFT subspace whose gate is shut gets a zero gradient; each intervention and the router get one
    for name, module in [*reft.interventions.items(), ("router", reft.router)]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name


# ------------------------------------------------------------------ generation


def test_generate_edits_the_prompt_only_and_matches_a_manual_loop(model):
    x = ids(batch=1, seq=10)
    reft = make_reft(model)
    out = reft.generate(x, instruction_spans=spans(1), max_new_tokens=4, do_sample=False)
    # Manual greedy decoding: recompute the whole sequence each step with edits on the prompt only.
    seq = x
    for _ in range(4):
        logits = reft(seq, prompt_lengths=torch.tensor([10]), instruction_spans=spans(1)).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_batched_left_padded_generation_matches_one_by_one(model):
    reft = make_reft(model)
    a, b = ids(1, 10, seed=1), ids(1, 7, seed=2)
    batch = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 3:], mask[1, 3:] = b[0], 1
    together = reft.generate(batch, mask, instruction_spans=spans(2), max_new_tokens=3, do_sample=False)
    gates_together = reft.last_gates
    alone_b = reft.generate(b, instruction_spans=spans(1), max_new_tokens=3, do_sample=False)
    assert torch.equal(together[1, 10:], alone_b[0, 7:])
    assert torch.allclose(gates_together[1], reft.last_gates[0], atol=1e-6)


def test_generate_refuses_right_padding(model):
    reft = make_reft(model)
    x = ids()
    mask = torch.ones_like(x)
    mask[1, -2:] = 0
    with pytest.raises(ValueError, match="left padding"):
        reft.generate(x, mask, instruction_spans=spans(), max_new_tokens=2)


# ------------------------------------------------------------------ save and load


@pytest.mark.parametrize("share", [True, False])
def test_save_then_load_gives_identical_outputs(model, tmp_path, share):
    x = ids()
    router = cl.Router(D, 3, hidden=8, gating="soft", sparsity=0.1, balance=0.5)
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3), 2: cl.LoReFT(D, 4), 3: cl.CSReFT(D, 2, 3)}, positions="f3+l3",
                        share_positions=share, router=router, router_layer=0)
    randomize(reft)
    expected = reft(x, instruction_spans=spans()).logits
    expected_gates = reft.last_gates
    reft.save(tmp_path / "ckpt")
    reft.remove()
    config = json.loads((tmp_path / "ckpt" / "reft_config.json").read_text())
    assert config["base_model"] == "tiny-llama-32x4" and config["hidden_size"] == D
    assert config["router"] == {"kind": "Router", "layer": 0, "config": settings(router)}  # rebuilt by class name
    assert not list(tmp_path.glob("ckpt/*.bin")) and not list(tmp_path.glob("ckpt/*.pt"))
    loaded = cl.ReftModel.load(tmp_path / "ckpt", model)
    assert torch.equal(loaded(x, instruction_spans=spans()).logits, expected)
    assert torch.equal(loaded.last_gates, expected_gates)
    assert loaded.router_layer == 0 and settings(loaded.router) == settings(router)


def test_reft_config_is_what_the_checkpoint_holds_and_builds_the_same_model_fresh(model, tmp_path):
    """The settings live in one dataclass: the JSON file is it (plus the base model's identity), and from_config builds
    a model of the same shape with fresh weights, so that loading the saved weights into it gives the saved outputs."""
    x = ids()
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3, frozen=[1]), 3: cl.CSReFT(D, 2, 3)}, positions="f2+l3",
                        share_positions=False, router=cl.Router(D, 3, hidden=8), router_layer=0)
    randomize(reft)
    expected = reft(x, instruction_spans=spans()).logits
    settings = reft.reft_config
    assert isinstance(settings, cl.ReftConfig) and settings.layers == [1, 3] and settings.positions == "f2+l3"
    assert settings.interventions["layer1_last"] == {"kind": "CSReFT", "config": {"d_model": D, "rank": 2, "n_subspaces": 3, "frozen": [1]}}
    reft.save(tmp_path / "ckpt")
    reft.remove()
    saved = json.loads((tmp_path / "ckpt" / "reft_config.json").read_text())
    assert {k: saved[k] for k in ("positions", "share_positions", "layers", "interventions", "router")} == dataclasses.asdict(settings)
    fresh = cl.ReftModel.from_config(model, settings)
    assert fresh.reft_config == settings and not torch.equal(fresh(x, instruction_spans=spans()).logits, expected)
    fresh.load_state_dict(cl.ReftModel.from_pretrained(model, tmp_path / "ckpt").state_dict())
    assert torch.equal(fresh(x, instruction_spans=spans()).logits, expected)
    broken = dataclasses.replace(settings, layers=[1, 2])
    with pytest.raises(ValueError, match=r"entries do not match 'layers' \[1, 2\].*missing \['layer2_first', 'layer2_last'\]"):
        cl.ReftModel.from_config(model, broken)


def test_frozen_subspaces_survive_save_and_load_and_are_not_counted(model, tmp_path, capsys):
    x = ids()
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3), 2: cl.CSReFT(D, 2, 3)}, positions="f3+l3")
    randomize(reft)
    total = reft.trainable_parameters()
    for module in reft.interventions.values():
        module.freeze_subspaces(1)
    per_subspace = 2 * (2 * D * 2 + 2)  # two layers, each R_raw, W [2, D] and b [2]
    assert reft.trainable_parameters() == total - per_subspace
    reft.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert "3 subspaces (1 frozen)" in printed and f"{total - per_subspace:,} trainable" in printed
    expected = reft(x, instruction_spans=spans()).logits
    reft.save(tmp_path / "ckpt")
    reft.remove()
    loaded = cl.ReftModel.load(tmp_path / "ckpt", model)
    assert [m.frozen for m in loaded.interventions.values()] == [(1,), (1,)]
    assert loaded.trainable_parameters() == total - per_subspace
    assert torch.equal(loaded(x, instruction_spans=spans()).logits, expected)


def test_loading_into_another_model_names_both_sides(model, tmp_path):
    make_reft(model).save(tmp_path / "ckpt")
    other = tiny_llama(hidden=48)
    with pytest.raises(ValueError, match=r"hidden_size: checkpoint 32 vs model 48"):
        cl.ReftModel.load(tmp_path / "ckpt", other)
    renamed = tiny_llama()
    renamed.config._name_or_path = "someone-else"
    with pytest.raises(ValueError, match="base_model: checkpoint 'tiny-llama-32x4' vs model 'someone-else'.*check_model_name=False"):
        cl.ReftModel.load(tmp_path / "ckpt", renamed)
    cl.ReftModel.load(tmp_path / "ckpt", renamed, check_model_name=False)


def test_loading_mismatched_shapes_is_refused(model, tmp_path):
    make_reft(model).save(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "reft_config.json"
    config = json.loads(config_file.read_text())
    config["interventions"]["layer1"]["config"]["rank"] = 2
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches"):
        cl.ReftModel.load(tmp_path / "ckpt", tiny_llama())


def test_loading_from_an_empty_folder_is_clear(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="No ReftModel checkpoint"):
        cl.ReftModel.load(tmp_path, model)


# ------------------------------------------------------------------ bad input and other models


def test_wrong_layer_index_names_the_valid_range(model):
    with pytest.raises(ValueError, match="Layer 7 does not exist: this model has 4 decoder layers, numbered 0 to 3"):
        cl.ReftModel(model, {7: cl.LoReFT(D, 2)})


def test_wrong_hidden_size_is_refused_at_construction(model):
    with pytest.raises(ValueError, match="hidden size 16, but the model's hidden size is 32"):
        cl.ReftModel(model, {1: cl.LoReFT(16, 2)})


def test_empty_interventions_are_refused(model):
    with pytest.raises(ValueError, match="at least one intervention"):
        cl.ReftModel(model, {})


def test_inputs_on_another_device_are_refused(model):
    reft = make_reft(model)
    fake = torch.ones(1, 4, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="input_ids are on meta but the model is on cpu"):
        reft(fake)


def test_bf16_model_with_float32_interventions(model):
    model = model.to(torch.bfloat16)
    base_logits_dtype = model(ids()).logits.dtype  # float32 before transformers 4.46 (Llama upcast), bf16 since
    reft = make_reft(model)
    out = reft(ids(), instruction_spans=spans(), output_hidden_states=True)
    assert all(h.dtype == torch.bfloat16 for h in out.hidden_states), "an edit must hand back the model's dtype"
    assert out.logits.dtype == base_logits_dtype and torch.isfinite(out.logits.float()).all()
    assert all(p.dtype == torch.float32 for p in reft.parameters())


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2", "mistral"])
def test_other_architectures_are_found_and_restored(arch):
    model = tiny_model(arch)
    x = ids(seq=8)
    base = model(x).logits
    d = model.config.hidden_size
    reft = cl.ReftModel(model, {1: cl.LoReFT(d, 2)}, positions="f2+l2")
    randomize(reft)
    assert not torch.allclose(reft(x).logits, base)
    labels = x.clone()
    labels[:, :4] = -100
    reft(x, labels=labels, prompt_lengths=torch.tensor([4, 4])).loss.backward()
    reft.remove()
    assert torch.equal(model(x).logits, base)


def test_summary_and_parameter_share(model):
    reft = cl.ReftModel(model, {1: cl.LoReFT(D, 4)}, positions="f5+l5")
    n = 4 * D * 2 + 4
    assert reft.trainable_parameters() == n
    base = sum(p.numel() for p in model.parameters())
    assert reft.parameter_share() == pytest.approx(100 * n / base)
    assert f"{n:,} trainable parameters" in reft.summary() and "layers [1]" in reft.summary()


def test_force_gates_sets_every_routed_layer_and_restores_the_router(model):
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3), 2: cl.CSReFT(D, 2, 3)}, positions="f3+l3")
    randomize(reft)
    x = ids()
    with torch.no_grad():
        routed = reft(input_ids=x, instruction_spans=spans()).logits
        with reft.force_gates([0, 0, 0]):
            closed = reft(input_ids=x).logits  # forced gates need no spans
            assert torch.equal(reft.last_gates, torch.zeros(2, 3))
        with reft.force_gates([[1, 0, 0], [0, 0, 1]]):  # per example
            reft(input_ids=x)
            assert torch.equal(reft.last_gates, torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
        with reft.disabled():
            base = reft(input_ids=x).logits
        after = reft(input_ids=x, instruction_spans=spans()).logits
    assert torch.allclose(closed, base, atol=1e-5)  # every gate shut at every layer: the base model
    assert not torch.allclose(routed, base, atol=1e-3)
    assert torch.equal(after, routed)  # the router is back


def test_one_router_gates_every_layer_with_the_same_gates(model):
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3), 3: cl.CSReFT(D, 2, 3)}, positions="f3+l3", router_layer=0)
    randomize(reft)
    seen = []
    for key in ("layer1", "layer3"):
        reft.interventions[key].register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["gates"]), with_kwargs=True)
    reft(ids(), instruction_spans=spans())
    assert len(seen) == 2 and seen[0] is seen[1]  # computed once, handed to both layers
    assert torch.equal(seen[0].detach(), reft.last_gates)


def test_the_router_reads_the_mean_of_the_layer_normed_instruction_tokens_only(model):
    reft = cl.ReftModel(model, {2: cl.CSReFT(D, 2, 3)}, positions="f3+l3", router=cl.Router(D, 3, gating="soft"), router_layer=1)
    randomize(reft)
    x = ids(batch=1, seq=12)
    with torch.no_grad():
        with cl.record(model, [1]) as states:
            reft(x, instruction_spans=torch.tensor([[3, 7]]))
        expected = reft.router(torch.nn.functional.layer_norm(states[1][:, 3:7], (D,)).mean(1))
        assert torch.allclose(reft.last_gates, expected, atol=1e-6)
        changed = x.clone()
        changed[0, 9:] = 5  # tokens after the span (and their positions) change nothing in the summary of layer 1
        reft(changed, instruction_spans=torch.tensor([[3, 7]]))
        assert torch.allclose(reft.last_gates, expected, atol=1e-6)


def test_bad_or_missing_instruction_spans_are_clear_errors(model):
    reft = make_reft(model)
    x = ids(batch=2, seq=12)
    with pytest.raises(ValueError, match="pass instruction_spans"):
        reft(x)
    with pytest.raises(ValueError, match=r"Example 1 has the instruction span \[4, 20\) in a prompt of 12 tokens"):
        reft(x, instruction_spans=torch.tensor([[1, 4], [4, 20]]))
    with pytest.raises(ValueError, match=r"Example 0 .*\[3, 3\).*no instruction"):
        reft(x, instruction_spans=torch.tensor([[3, 3], [1, 4]]))
    with pytest.raises(ValueError, match=r"must be \[batch, 2\] = \[2, 2\]"):
        reft(x, instruction_spans=torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="in a prompt of 6 tokens"):  # the span must lie inside the prompt
        reft(x, prompt_lengths=torch.tensor([6, 6]), instruction_spans=torch.tensor([[1, 4], [2, 8]]))


def test_router_placement_and_shape_mistakes_are_named(model):
    with pytest.raises(ValueError, match="router_layer=2 is above the first CS-ReFT layer \\(1\\)"):
        cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3)}, router_layer=2)
    with pytest.raises(ValueError, match="same n_subspaces; got \\[2, 3\\]"):
        cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3), 2: cl.CSReFT(D, 2, 2)})
    with pytest.raises(ValueError, match=r"cl.Router\(32, 3\)"):
        cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3)}, router=cl.Router(D, 4))
    with pytest.raises(ValueError, match="none was given"):
        cl.ReftModel(model, {1: cl.LoReFT(D, 2)}, router=cl.Router(D, 3))


def test_a_checkpoint_from_unreleased_code_with_per_layer_routers_gets_a_clear_error(model, tmp_path):
    make_reft(model).save(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "reft_config.json"
    config = json.loads(config_file.read_text())
    config.pop("format"), config.pop("router")  # what the code before the shared router wrote
    config["version"] = "0.1.0"
    config["interventions"]["layer2"]["config"].update(router_hidden=None, gating="soft", top_k=None, sparsity=0.0)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown keys \['gating', 'router_hidden', 'sparsity', 'top_k'\].*another version"):
        cl.ReftModel.load(tmp_path / "ckpt", tiny_llama())


def test_force_gates_without_routed_interventions_is_an_error(model):
    reft = make_reft(model, kinds=("LoReFT", "DiReFT"))
    with pytest.raises(ValueError, match="routed interventions"):
        with reft.force_gates([1.0]):
            pass


@pytest.mark.parametrize("gates", [[float("nan"), 0, 0], [-0.5, 1, 0], [0, 2, 0]])
def test_forced_gates_outside_zero_to_one_are_refused(model, gates):
    reft = make_reft(model)
    with pytest.raises(ValueError, match=r"Gates lie in \[0, 1\]"):
        with reft.force_gates(gates):
            pass
    assert reft(ids(), instruction_spans=spans()).logits is not None  # the router is back


def test_saving_onto_a_file_says_a_checkpoint_is_a_folder(model, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file; a checkpoint is a folder"):
        make_reft(model).save(taken)
    assert taken.read_text() == "keep me"


def test_gates_given_with_a_batch_fix_each_examples_gates_for_that_call(model):
    reft = make_reft(model)
    x = ids()
    per_example = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    with torch.no_grad():
        given = reft(x, gates=per_example).logits
        assert torch.equal(reft.last_gates, per_example)
        with reft.force_gates(per_example):
            forced = reft(x).logits
        routed = reft(x, instruction_spans=spans()).logits  # afterwards the router is back
    assert torch.equal(given, forced) and not torch.allclose(given, routed)


def test_init_router_starts_the_router_at_the_clusters_of_what_it_reads(model):
    reft = cl.ReftModel(model, {2: cl.CSReFT(D, 2, 2)}, positions="f2+l2", router=cl.Router(D, 2), router_layer=1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(12):  # two kinds of prompt: their instructions use different token ranges
        low = 3 if i % 2 else 50
        prompt = torch.randint(low, low + 40, (6,), generator=g).tolist()
        rows.append({"input_ids": prompt + [7, 1], "labels": [-100] * 6 + [7, 1], "prompt_length": 6, "instruction_span": [1, 5]})
    collate = cl.data.Collator(0)
    clusters = reft.init_router(rows, collator=collate)
    batch = collate(rows)
    with reft.force_gates([1.0, 0.0]):  # forced gates are set aside while the router's inputs are read
        summaries = reft.router_inputs(**batch)
    assert summaries.shape == (12, D)
    assert torch.equal(reft.router.probabilities(summaries).argmax(-1), clusters)
    reft(**{k: v for k, v in batch.items() if k != "labels"})
    assert torch.equal(reft.last_gates.argmax(-1), clusters)  # the router routes by cluster from the first step


def test_route_gives_a_forward_passs_gates_without_the_layers_after_the_router_or_the_vocabulary(model):
    reft = make_reft(model)  # LoReFT at layer 1, CS-ReFT at layer 2: the router reads layer 2
    randomize(reft)
    x = ids()
    reft(x, instruction_spans=spans())
    expected = reft.last_gates, reft.last_probs, reft.last_router_input
    ran = []
    handles = [cl.decoder_layers(model)[3].register_forward_hook(lambda *a: ran.append("layer 3")),
               model.get_output_embeddings().register_forward_hook(lambda *a: ran.append("lm_head"))]
    gates, probs, summary = reft.route(x, instruction_spans=spans())
    for handle in handles:
        handle.remove()
    assert ran == []
    assert torch.equal(gates, expected[0]) and torch.equal(probs, expected[1]) and torch.equal(summary, expected[2])
    assert not gates.requires_grad and not probs.requires_grad  # what a call produced is kept detached
    with reft.force_gates([0, 1, 0]):
        assert torch.equal(reft.route(x)[0], torch.tensor([[0.0, 1, 0]] * 2))


def test_bad_raw_inputs_get_clear_errors(model):
    reft = make_reft(model, kinds=("LoReFT", "LoReFT"))
    with pytest.raises(ValueError, match="integer token ids"):
        reft(ids().float())


def test_init_router_and_make_dataset_without_a_tokenizer_say_so(model):
    reft = make_reft(model)
    with pytest.raises(ValueError, match="pass the tokenizer"):
        reft.init_router([{"input_ids": [5, 6, 7], "prompt_length": 3, "instruction_span": [0, 2]}])
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        cl.data.make_dataset([{"instruction": "a", "output": "b"}], None)


def test_a_checkpoint_of_the_first_release_without_a_router_kind_loads(model, tmp_path):
    """The first release wrote the router section without "kind": it is a Router."""
    reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 3)}, positions="f3+l3")
    randomize(reft)
    reft.save(tmp_path)
    config = json.loads((tmp_path / "reft_config.json").read_text())
    del config["router"]["kind"]
    (tmp_path / "reft_config.json").write_text(json.dumps(config))
    loaded = cl.ReftModel.from_pretrained(model, tmp_path)
    assert type(loaded.router) is cl.Router and torch.equal(loaded.router.net.weight, reft.router.net.weight)


FORMAT2 = Path(__file__).resolve().parent / "fixtures" / "format2"


@pytest.mark.parametrize("name", ["csreft_tied", "csreft_untied"])
def test_checkpoints_the_stacked_format_2_code_wrote_load_and_answer_as_they_did(model, name, tmp_path):
    """tests/fixtures/format2 was written by 61d4735 (format 2: a CS-ReFT's subspaces stacked), with its logits. They load,
    answer the same, and saved again they are format 3 (one tensor per subspace) and load as well."""
    expected = json.loads((FORMAT2 / "expected.json").read_text())
    x, s = torch.tensor(expected["input_ids"]), torch.tensor(expected["instruction_spans"])
    assert json.loads((FORMAT2 / name / "reft_config.json").read_text())["format"] == 2
    reft = cl.ReftModel.from_pretrained(model, FORMAT2 / name)
    logits = reft(x, instruction_spans=s).logits[:, -1, :5]
    assert torch.allclose(logits, torch.tensor(expected["logits_last_5"][name]), atol=1e-6)
    reft.save(tmp_path)
    assert json.loads((tmp_path / "reft_config.json").read_text())["format"] == 3
    reft.remove()
    again = cl.ReftModel.from_pretrained(model, tmp_path)
    assert torch.equal(again(x, instruction_spans=s).logits[:, -1, :5], logits)
    assert any(key.endswith(".W_1") for key in again.state_dict())


class Scale(torch.nn.Module):
    """An intervention of one's own: multiplies the edited hidden states by a learned factor."""

    def __init__(self, d_model: int, start: float = 1.0):
        super().__init__()
        self.d_model, self.start = d_model, start
        self.factor = torch.nn.Parameter(torch.tensor(start))

    def forward(self, h):
        return h * self.factor


def test_an_intervention_of_one_s_own_saves_and_loads_once_registered(model, tmp_path, monkeypatch):
    reft = cl.ReftModel(model, {1: Scale(D, 0.5)}, positions="l2")
    with torch.no_grad():
        reft.interventions["layer1"].factor.fill_(1.5)
    x = ids()
    out = reft(x).logits
    reft.save(tmp_path)
    assert json.loads((tmp_path / "reft_config.json").read_text())["interventions"]["layer1"] == {
        "kind": "Scale", "config": {"d_model": D, "start": 0.5}}
    with pytest.raises(cl.CheckpointError, match=r"Unknown intervention kind 'Scale'.*add it to csreft_lite\.reft_model\.KINDS"):
        cl.ReftModel.from_pretrained(model, tmp_path)
    monkeypatch.setitem(reft_model.KINDS, "Scale", Scale)
    assert torch.equal(cl.ReftModel.from_pretrained(model, tmp_path)(x).logits, out)


def test_a_module_whose_settings_cannot_be_read_back_says_which_argument(model, tmp_path):
    class Forgetful(Scale):
        def __init__(self, d_model: int, strength: float = 1.0):
            super().__init__(d_model)

    reft = cl.ReftModel(model, {1: Forgetful(D)}, positions="l2")
    with pytest.raises(TypeError, match=r"constructor arguments \['strength'\] are not attributes.*self\.strength = strength"):
        reft.save(tmp_path)


def test_a_damaged_format_2_entry_is_named_not_a_crash(model, tmp_path):
    shutil.copytree(FORMAT2 / "csreft_tied", tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "reft_config.json").read_text())
    config["interventions"]["layer1"]["config"] = [32, 2, 3]
    (tmp_path / "ckpt" / "reft_config.json").write_text(json.dumps(config))
    with pytest.raises(cl.CheckpointError, match=r"entry 'layer1' must be \{\"kind\": \.\.\., \"config\": \{\.\.\.\}\}"):
        cl.ReftModel.from_pretrained(model, tmp_path / "ckpt")
