"""The labelled loss goes through the model's own head, logit softcapping (Gemma2) and scaling (Granite) included: it
equals the cross-entropy of ``reft(...).logits`` on five architectures, while the head sees only the positions from
the batch's first supervised token on."""

import pytest
import torch
import torch.nn.functional as F

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
    if cl.compat.logits_to_keep(model, 1):  # every model here but GPT-2 under 4.x takes it
        assert rows[0] == 12 - 4  # the first supervised target is token 5 (row 2), predicted at position 4


def test_a_model_whose_forward_takes_no_logits_to_keep_gets_every_logit():
    class Remote(torch.nn.Module):  # a remote-code model: forward(**kwargs) only
        def __init__(self):
            super().__init__()
            self.inner = tiny_model("granite")
            self.config = self.inner.config

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    assert cl.compat.logits_to_keep(Remote(), 3) == {}
    assert list(cl.compat.logits_to_keep(tiny_llama(), 3).values()) == [3]
