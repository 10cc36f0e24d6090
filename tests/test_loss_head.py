"""The labelled loss goes through the model's own head, logit softcapping (Gemma2) and scaling (Granite) included: it
equals the cross-entropy of ``reft(...).logits`` on five architectures, while the head sees only the supervised
positions; a model whose forward bypasses its head module gets the same loss from all its logits."""

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutput

import csreft_lite as cl

from .tiny import perturbed, tiny_llama, tiny_model

ARCHS = ["llama", "gpt2", "qwen2", "gemma2", "granite"]


def build(arch):
    return tiny_llama() if arch == "llama" else tiny_model(arch)


def batch():
    """Right-padded rows of 12, 10 and 9 tokens whose prompts are 7, 5 and 6 tokens long."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 101, (3, 12), generator=g)
    mask = torch.ones_like(x)
    labels = x.clone()
    for row, (length, prompt) in enumerate([(12, 7), (10, 5), (9, 6)]):
        mask[row, length:] = 0
        labels[row, length:] = -100
        labels[row, :prompt] = -100
    return {"input_ids": x, "attention_mask": mask, "labels": labels, "prompt_lengths": torch.tensor([7, 5, 6])}


@pytest.mark.parametrize("arch", ARCHS)
def test_the_loss_is_the_cross_entropy_of_the_models_own_logits(arch):
    model = build(arch)
    reft = cl.ReftModel(model, {1: perturbed(cl.LoReFT(model.config.hidden_size, 4))}, positions="f2+l2")
    b = batch()
    rows = []
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    with torch.no_grad():
        loss = reft(**b).loss
        logits = reft(b["input_ids"], b["attention_mask"], prompt_lengths=b["prompt_lengths"]).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(loss, expected, atol=1e-5), (arch, loss.item(), expected.item())
    assert rows == [int((b["labels"][:, 1:] != -100).sum()), 12]  # the loss call: its 5 + 5 + 3 supervised targets only


def test_a_model_that_bypasses_its_head_module_gets_the_loss_from_all_its_logits():
    class Remote(torch.nn.Module):  # a remote-code model: logits from the embedding matrix, its head module never called
        def __init__(self):
            super().__init__()
            self.inner = tiny_llama()
            self.config = self.inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids, **kwargs):
            hidden = self.inner.model(input_ids, **kwargs).last_hidden_state
            return CausalLMOutput(logits=hidden @ self.inner.lm_head.weight.T)

    remote = Remote()
    reft = cl.ReftModel(remote, {1: perturbed(cl.LoReFT(remote.config.hidden_size, 4))}, positions="f2+l2")
    plain = cl.ReftModel(remote.inner, {1: reft.interventions["layer1"]}, positions="f2+l2")
    b = batch()
    with torch.no_grad():
        assert torch.allclose(reft(**b).loss, plain(**b).loss, atol=1e-5)
