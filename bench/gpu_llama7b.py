"""Training-step cost on a Llama-2-7B-shaped model: CS-ReFT (the AlpacaEval recipe) vs peft LoRA (rank 8 on q,v).

The model is built from Llama-2-7B's config with random weights, in bf16 on the GPU: no download, no licence,
the same shapes and so the same time and memory as the real model. For each method and micro-batch size it
times a full optimiser step (forward, backward, AdamW) at a fixed sequence length and reports seconds per step,
tokens per second and peak GPU memory; an out-of-memory batch size is reported as OOM.

    python bench/gpu_llama7b.py                               # the table in docs/benchmarks.md (needs a CUDA GPU)
    python bench/gpu_llama7b.py --gradient-checkpointing      # the same with activation checkpointing
    python bench/gpu_llama7b.py --tiny                        # a tiny model on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import csreft_lite as cl  # noqa: E402
from csreft_lite.recipes import alpacaeval as ae  # noqa: E402

LLAMA2_7B_CONFIG = dict(  # meta-llama/Llama-2-7b-hf's config.json
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
)
TINY_CONFIG = dict(  # enough layers for 3;9;18;24, small enough for a CPU
    vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=26, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=512,
)


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(TINY_CONFIG if tiny else LLAMA2_7B_CONFIG))
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in 16-bit: 13.5 GB, not 27 GB in fp32 first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    model.config._name_or_path = "llama-2-7b-shaped (random)" if not tiny else "tiny-llama (random)"
    return model.eval()


def batch_for(size: int, seq_len: int, vocab: int, device: torch.device, seed: int = 0) -> dict:
    """Random tokens; the first half of each sequence is the prompt (labels -100), the second the response."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (size, seq_len), generator=g)
    prompt = seq_len // 2
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {
        "input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
        "prompt_lengths": torch.full((size,), prompt, dtype=torch.long).to(device),
        "instruction_spans": torch.tensor([[5, prompt - 5]] * size).to(device),  # what CS-ReFT's router averages
    }


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(name: str, make_step, sizes, seq_len, vocab, device, steps, warmup) -> list[dict]:
    rows = []
    for size in sizes:
        row = {"method": name, "micro_batch": size, "seq_len": seq_len}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            step = make_step(batch_for(size, seq_len, vocab, device))
            seconds = time_steps(step, steps, warmup, device)
            row.update(s_per_step=round(seconds, 4), tokens_per_s=round(size * seq_len / seconds, 1))
            if device.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.OutOfMemoryError:
            row.update(s_per_step="OOM", tokens_per_s="OOM", peak_gib="OOM")
        gc.collect()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama on the CPU (a smoke test of this script)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--seq-len", type=int, default=768)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--methods", default="csreft,lora")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        sizes, seq_len = [1, 2], min(args.seq_len, 64)
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (or --tiny for a CPU check)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        sizes, seq_len = [int(x) for x in args.batch_sizes.split(",")], args.seq_len
    tag = "[TINY CPU CHECK, not a benchmark]" if args.tiny else f"[GPU: {torch.cuda.get_device_name(0)}]"
    print(tag, f"torch {torch.__version__}, seq_len {seq_len}, checkpointing {args.gradient_checkpointing}", flush=True)
    model = build_model(args.tiny, device, dtype)
    if args.gradient_checkpointing:
        cl.models.set_checkpointing(model, True)
        model.config.use_cache = False
        model.train()  # transformers checkpoints only in training mode; Llama has no dropout
    vocab = model.config.vocab_size
    rows = []
    methods = args.methods.split(",")

    if "csreft" in methods:
        config = ae.make_config(smoke=False)
        reft = ae.build_reft(model, config)
        print(tag, reft.summary(), flush=True)
        optimizer = torch.optim.AdamW(reft.parameters(), lr=config.lr, weight_decay=0.0)

        def csreft_step(batch):
            def step():
                reft(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return step

        reft.train()
        rows += measure("CS-ReFT (k=4, r=4, linear router, 3;9;18;24 f5+l5 untied)", csreft_step, sizes, seq_len, vocab, device, args.steps, args.warmup)
        reft.remove()
        del reft, optimizer

    if "lora" in methods:
        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        print(tag, f"peft LoRA r=8 on q,v: {trainable:,} trainable parameters", flush=True)
        optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

        def lora_step(batch):
            inputs = {k: v for k, v in batch.items() if k not in ("prompt_lengths", "instruction_spans")}

            def step():
                lora(**inputs).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return step

        rows += measure("peft LoRA (r=8, q,v)", lora_step, sizes, seq_len, vocab, device, args.steps, args.warmup)

    if args.json:
        Path(args.json).write_text(json.dumps({"device": tag, "gradient_checkpointing": args.gradient_checkpointing, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
