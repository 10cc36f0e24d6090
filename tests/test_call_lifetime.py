"""A ``ReftModel`` call edits the base model during that call only: after checkpointed training (transformers 4.x
re-runs a layer's hooks in the backward pass, 5.x does not) the base model, ``disabled()`` and later calls of any
length run unedited; a recomputed layer is edited as the call that ran it first edited it."""

import pytest
import torch

import csreft_lite as cl

from .tiny import hooks_inside_enable, perturbed, tiny_llama

D = 32
HOOKS = ["installed transformers", "hooks inside (4.x)"]


def ids(batch=2, seq=12, seed=0):
    return torch.randint(3, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


def labelled(x, prompt=6):
    labels = x.clone()
    labels[:, :prompt] = -100
    return {"input_ids": x, "labels": labels, "prompt_lengths": torch.full((len(x),), prompt)}


def checkpointed(where):
    """A tiny Llama, its logits on ``x`` before any wrapping, and a ReftModel around it set to train with checkpointing."""
    model = tiny_llama()
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    reft = cl.ReftModel(model, {1: perturbed(cl.LoReFT(D, 4))}, positions="f3+l3")
    train_with_checkpointing(model, reft, where)
    return model, reft, x, before


def train_with_checkpointing(model, reft, where):
    reft.gradient_checkpointing_enable()
    if where == HOOKS[1]:
        hooks_inside_enable(model)
    reft.train()
    model.train()  # 5.x's forward wrapper and the 4.x-style call both checkpoint in training mode only


@pytest.mark.parametrize("where", HOOKS)
def test_the_base_model_runs_unedited_after_checkpointed_training(where):
    model, reft, x, before = checkpointed(where)
    reft(**labelled(x)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reft.parameters())
    reft.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # checkpointing still on
        with reft.disabled():
            assert torch.equal(reft(x).logits, before)
        edited = reft(x).logits
        assert not torch.allclose(edited, before, atol=1e-4)  # the edit itself is there, in a call
        reft.gradient_checkpointing_disable()
        assert torch.equal(model(x).logits, before)
        assert torch.equal(model(ids(seed=3)).logits, tiny_llama()(ids(seed=3)).logits)


@pytest.mark.parametrize("where", HOOKS)
def test_a_forward_never_followed_by_backward_leaves_nothing_behind(where):
    model, reft, x, before = checkpointed(where)
    out = reft(**labelled(x))  # the graph (and the recompute it could run) is still alive
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    del out


@pytest.mark.parametrize("where", HOOKS)
def test_two_calls_then_one_backward_recompute_each_with_its_own_call(where):
    """Two micro-batches of different lengths and positions, one backward of the sum: each recomputed layer is edited
    as its own call edited it, so the gradients equal those without checkpointing."""

    def gradients(where):
        model = tiny_llama()
        reft = cl.ReftModel(model, {1: cl.CSReFT(D, 2, 2), 3: cl.CSReFT(D, 2, 2)}, positions="f2+l2", share_positions=False)
        perturbed(reft)
        if where is not None:
            train_with_checkpointing(model, reft, where)
        a, b = labelled(ids(seq=12), 6), labelled(ids(seq=9, seed=1), 4)
        loss = reft(**a, instruction_spans=torch.tensor([[1, 5]] * 2)).loss
        loss = loss + reft(**b, instruction_spans=torch.tensor([[0, 3]] * 2)).loss
        loss.backward()
        return [p.grad.clone() for p in reft.parameters()]

    plain = gradients(None)
    for p, q in zip(plain, gradients(where)):
        assert torch.allclose(p, q, atol=1e-5)


def test_the_base_model_carries_no_hook_between_calls():
    model = tiny_llama()
    reft = cl.ReftModel(model, {1: cl.LoReFT(D, 4)}, positions="f3+l3")
    layers = cl.decoder_layers(model)
    seen = []
    layers[1].register_forward_hook(lambda *args: seen.append(len(layers[1]._forward_hooks)))
    reft(ids())
    assert seen == [2]  # during the call: ours and this one
    assert len(layers[1]._forward_hooks) == 1 and not any(layer._forward_hooks for i, layer in enumerate(layers) if i != 1)
    del reft
