"""Tiny random causal LMs built from configs: fast stand-ins for real models in unit tests."""

import torch


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 4, vocab: int = 101, init: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=init,
    )
    config._name_or_path = f"tiny-llama-{hidden}x{layers}"
    return LlamaForCausalLM(config).eval()


def tiny_model(arch: str, seed: int = 0):
    """A tiny model of another architecture (layers live under other names)."""
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = tf.GPT2Config(vocab_size=101, n_embd=32, n_layer=3, n_head=4, n_positions=128)
        return tf.GPT2LMHeadModel(config).eval()
    if arch == "gpt_neox":
        config = tf.GPTNeoXConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
        return tf.GPTNeoXForCausalLM(config).eval()
    if arch == "qwen2":
        config = tf.Qwen2Config(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
        return tf.Qwen2ForCausalLM(config).eval()
    if arch == "mistral":
        config = tf.MistralConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
        return tf.MistralForCausalLM(config).eval()
    if arch == "gemma2":  # softcaps its logits: tanh(logits / cap) · cap, with a cap small enough to bite here
        config = tf.Gemma2Config(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.05)
        return tf.Gemma2ForCausalLM(config).eval()
    if arch == "granite":  # divides its logits by logits_scaling
        config = tf.GraniteConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, logits_scaling=8.0)
        return tf.GraniteForCausalLM(config).eval()
    raise ValueError(arch)


def randomize(reft, scale: float = 0.3, seed: int = 1) -> None:
    """Move every intervention parameter away from its (identity) initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reft.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def perturbed(module, seed: int = 0):
    """``module`` with every parameter moved by 0.5 × N(0, 1) (seeded through torch's global generator)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


def checkpoint_hooks_inside(model) -> None:
    """Make ``model``'s decoder layers checkpoint their whole call, forward hooks included, as transformers 4.x does
    (``checkpoint(layer.__call__)``; 5.x checkpoints ``forward`` only, hooks outside), with the checkpoint function
    that ``gradient_checkpointing_enable`` installed. Checkpoints in training mode with gradients only, like transformers."""
    import torch.utils.checkpoint
    from torch import nn

    model.config.use_cache = False  # a KV cache would be written twice, by the forward and by the recompute
    for layer in model.model.layers:
        class HooksInside(type(layer)):
            def __call__(self, *args, **kwargs):
                if not (self.training and torch.is_grad_enabled() and self.checkpoint_calls) or self.running:
                    return nn.Module.__call__(self, *args, **kwargs)

                def run(*inputs):
                    self.running = True
                    try:
                        return nn.Module.__call__(self, *inputs, **kwargs)
                    finally:
                        self.running = False

                return self._gradient_checkpointing_func(run, *args)

        layer.__class__ = HooksInside
        layer.running = False
        layer.checkpoint_calls = True


def hooks_inside_enable(model) -> None:
    """After ``gradient_checkpointing_enable``: the layers' own (5.x) checkpointing of ``forward`` stands aside, and the
    whole call is checkpointed instead (``checkpoint_hooks_inside``). Under transformers 4.x, which does that itself and
    keeps the checkpoint function on the model rather than on each layer, the test is skipped (its real case runs)."""
    import pytest

    if not hasattr(model.model.layers[0], "_gradient_checkpointing_func"):
        pytest.skip("the installed transformers (4.x) checkpoints the layers' hooks itself")
    checkpoint_hooks_inside(model)
    for layer in model.model.layers:
        layer.gradient_checkpointing = False
