"""The AlpacaEval recipe's own functions, end to end, on a Llama-2-7B-shaped model in bf16 on one GPU.

`bench/gpu_llama7b.py` times bare training steps; this script checks that the *recipe* path works on a GPU
at full size: loading a local model folder in bf16, CS-ReFT at layers 3;9;18;24, Accelerate's training loop
with gradient accumulation and activation checkpointing, a checkpoint written mid-run and a second run that
resumes from it, generation for the eval prompts, the `model_outputs.json` file, and the local pairwise judge.

No download and no licence: the model has Llama-2-7B's config and random weights, and the tokenizer is a
small byte-level BPE trained here on the shipped smoke data. With random weights the answers are noise and
the win rate means nothing (and the loss barely moves: a random network's output is close to uniform
whatever its residual stream holds). What this script checks is that every step runs and resumes correctly,
with finite losses; what it reports is the time per optimiser step and peak GPU memory.

    python bench/gpu_recipe_check.py                 # one CUDA GPU, ~16 GB of GPU memory, a few minutes
    python bench/gpu_recipe_check.py --tiny          # the same on a tiny random model on the CPU (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from csreft_lite import judge as cl_judge  # noqa: E402
from csreft_lite.recipes import alpacaeval as ae  # noqa: E402
from gpu_llama7b import build_model  # noqa: E402


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with Llama-2's special tokens, trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def save_model_folder(folder: Path, tiny: bool) -> None:
    """A local model folder (config, bf16 safetensors, tokenizer), as a user's downloaded Llama-2 would be."""
    rows = json.loads((ae.DATA_DIR / "smoke_train.json").read_text())
    texts = [r["instruction"] + "\n" + r["output"] for r in rows]
    device = torch.device("cpu") if tiny else torch.device("cuda")
    model = build_model(tiny, device, torch.float32 if tiny else torch.bfloat16)
    tok = train_tokenizer(texts, vocab_size=min(model.config.vocab_size, 2000))
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 2
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if not tiny:
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama on the CPU (checks this script)")
    parser.add_argument("--workdir", type=Path, help="where the model folder and run go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --tiny for a CPU check)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="csreft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, run_dir = work / "llama-2-7b-shaped-random", work / "run"

    start = time.perf_counter()
    save_model_folder(model_dir, args.tiny)
    print(f"model folder written in {time.perf_counter() - start:.0f} s: {model_dir}", flush=True)

    common = dict(
        base_model=str(model_dir), dtype="float32" if args.tiny else "bfloat16",
        train_dataset=str(ae.DATA_DIR / "smoke_train.json"), eval_dataset=str(ae.DATA_DIR / "smoke_eval.json"),
        max_train_examples=32, max_length=256, lr=4e-3, batch_size=4, effective_batch=8, gradient_checkpointing=True,
        output_dir=str(run_dir), save_every=2, eval_batch_size=6, max_new_tokens=32, judge="local", judge_model="base",
        judge_max_answer_tokens=48, generator_name="csreft-llama-2-7b-shaped-random",
    )
    summary: dict = {"device": "cpu (tiny)" if args.tiny else torch.cuda.get_device_name(0), "torch": torch.__version__}

    # Run 1: two epochs of 4 optimiser steps each, a checkpoint every 2 steps; stopped after epoch 1
    # (epochs=1 here), as a preempted job would be. Run 2 asks for 2 epochs and must resume at step 4.
    for run, epochs in (("first", 1.0), ("resumed", 2.0)):
        config = ae.make_config(smoke=False, epochs=epochs, resume=True, **common)
        model, tok = ae.load_base(config)
        reft = ae.build_reft(model, config)
        history = ae.train_reft(reft, tok, ae.load_train_records(config), config)
        summary[run] = {
            "steps_total": history.steps, "steps_this_run": len(history.losses),
            "losses": [round(x, 4) for x in history.losses],
            "s_per_step": round(history.seconds / max(1, len(history.losses)), 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        }
        print(run, json.dumps(summary[run]), flush=True)
        if run == "first":
            reft.remove()
            del reft, model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    reft.eval()
    eval_records = ae.load_eval_records(config)
    start = time.perf_counter()
    outputs, path = ae.generate_outputs(reft, tok, eval_records, config)
    summary["generation"] = {"answers": len(outputs), "seconds": round(time.perf_counter() - start, 1),
                             "file_rows": len(json.loads(path.read_text()))}
    start = time.perf_counter()
    annotations = cl_judge.judge_annotations(
        model, tok, [r["instruction"] for r in eval_records], [r["output"] for r in eval_records], outputs,
        reference_name=eval_records[0]["generator"], model_name=config.generator_name, judge_name="the base model",
        batch_size=config.judge_batch_size, max_answer_tokens=config.judge_max_answer_tokens,
    )
    summary["judge"] = {"annotations": len(annotations), "seconds": round(time.perf_counter() - start, 1),
                        "preferences": [round(a["preference"], 3) for a in annotations]}
    first, resumed = summary["first"], summary["resumed"]
    checks = {
        "first run trained 4 steps": first["steps_this_run"] == 4,
        "resumed run continued at step 4 and trained 4 more": resumed["steps_this_run"] == 4 and resumed["steps_total"] == 8,
        "every loss is finite (no bf16 overflow)": all(math.isfinite(x) for x in first["losses"] + resumed["losses"]),
        "one answer per eval prompt": summary["generation"]["answers"] == len(eval_records) == summary["generation"]["file_rows"],
        "one annotation per eval prompt": summary["judge"]["annotations"] == len(eval_records),
    }
    summary["checks"] = checks
    print(json.dumps(summary, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    failed = [name for name, ok in checks.items() if not ok]
    print("ALL CHECKS PASSED" if not failed else f"FAILED: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
