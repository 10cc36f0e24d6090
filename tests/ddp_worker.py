"""The two-process side of tests/test_distributed.py (run by ``torch.distributed.run``, not by pytest).

Each process trains tiny models with ``csreft_lite.training.train`` and writes, into the folder given
as the first argument, its final interventions (``<run>-rank<r>.safetensors``), its history
(``<run>-rank<r>.json``) and a log of every checkpoint file it wrote (``writes-rank<r>.txt``).
The builders below are shared with the test, which runs the one-process references.
"""

import json
import os
import pathlib
import sys

import torch

import csreft_lite as cl
from csreft_lite import data

from .tiny import tiny_llama

BATCH = 2
EPOCHS = 2
SAVE_EVERY = 3


def rows(n: int = 16) -> list[dict]:
    """16 tiny examples of 4 prompt and 2 response tokens: 8 batches of 2, 4 per process."""
    out = []
    for i in range(n):
        prompt = [3 + (i % 5), 10 + (i % 3), 11, 12]
        response = [20 + (i % 7), 1]
        out.append({"input_ids": prompt + response, "labels": [-100] * 4 + response, "prompt_length": 4,
                    "instruction_span": [1, 3]})  # the tokens the shared router reads
    return out


def build_main(init_seed: int = 0) -> cl.ReftModel:
    """A LoReFT and a CS-ReFT (its router with sparsity and balance terms included), every parameter in use."""
    torch.manual_seed(init_seed)
    interventions = {1: cl.LoReFT(32, 4), 3: cl.CSReFT(32, 2, 2)}
    router = cl.Router(32, 2, gating="soft", sparsity=0.01, balance=0.1)
    return cl.ReftModel(tiny_llama(init=0.3), interventions, positions="f2+l2", router=router, router_layer=2)


def build_unused() -> cl.ReftModel:
    """Parameters no forward pass uses: untied 'l2' leaves every 'first' copy idle, forced gates the router."""
    torch.manual_seed(0)
    interventions = {1: cl.LoReFT(32, 4), 3: cl.CSReFT(32, 2, 2)}
    return cl.ReftModel(tiny_llama(init=0.3), interventions, positions="l2", share_positions=False)


def run(reft: cl.ReftModel, **kwargs):
    return cl.train(reft, rows(), collator=kwargs.pop("collator", data.Collator(0)), batch_size=BATCH, epochs=EPOCHS,
                    lr=1e-2, progress=False, **kwargs)


class Interrupted(Exception):
    pass


class CrashingCollator(data.Collator):
    """Fails on its 6th batch: the loader collates one batch ahead, so 4 steps are done (checkpoint at 3)."""

    calls = 0

    def __call__(self, examples):
        CrashingCollator.calls += 1
        if CrashingCollator.calls >= 6:
            raise Interrupted
        return super().__call__(examples)


def main(out: pathlib.Path) -> None:
    from safetensors.torch import save_file

    import safetensors.torch

    rank = int(os.environ["RANK"])
    log = out / f"writes-rank{rank}.txt"
    log.touch()

    # Log every file this process writes into a checkpoint folder (safetensors and JSON alike).
    real_save_file, real_write_text = safetensors.torch.save_file, pathlib.Path.write_text

    def record(path) -> None:
        path = pathlib.Path(path)
        if path.parent.name.startswith("ckpt-"):
            with open(log, "a") as f:
                f.write(f"{path.parent.name}/{path.name}\n")

    def logged_save_file(tensors, filename, *args, **kwargs):
        record(filename)
        return real_save_file(tensors, filename, *args, **kwargs)

    def logged_write_text(self, *args, **kwargs):
        record(self)
        return real_write_text(self, *args, **kwargs)

    safetensors.torch.save_file = logged_save_file
    pathlib.Path.write_text = logged_write_text

    def finish(name: str, reft: cl.ReftModel, history) -> None:
        save_file({k: v.detach().contiguous() for k, v in reft.state_dict().items()}, str(out / f"{name}-rank{rank}.safetensors"))
        summary = {"steps": history.steps, "losses": history.losses, "tokens": history.tokens}
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(summary))

    # 1. An uninterrupted run: 2 processes x batch 2 x accumulation 1, checkpoints at steps 3, 6 and 8 (the end).
    reft = build_main()
    finish("full", reft, run(reft, checkpoint_dir=str(out / "ckpt-full"), save_every=SAVE_EVERY))

    # 2. The same run, interrupted after step 4 (last checkpoint: step 3), then resumed by fresh objects
    #    whose own initialisation differs, so only the checkpoint can make them end where run 1 ended.
    try:
        run(build_main(), checkpoint_dir=str(out / "ckpt-resume"), save_every=SAVE_EVERY, collator=CrashingCollator(0))
        raise AssertionError("the crashing collator did not interrupt the run")
    except Interrupted:
        pass
    reft = build_main(init_seed=123)
    finish("resumed", reft, run(reft, checkpoint_dir=str(out / "ckpt-resume"), save_every=SAVE_EVERY, resume=True))

    # 3. Parameters unused in every forward pass: DDP must neither crash nor move them.
    reft = build_unused()
    with reft.force_gates([1.0, 0.0]):
        finish("unused", reft, run(reft))

    # 4. Activation checkpointing (non-reentrant, as models.set_checkpointing sets it) under DDP.
    reft = build_main()
    cl.models.set_checkpointing(reft.model, True)
    reft.model.train()
    finish("checkpointing", reft, run(reft))

    # 5. The user's own accelerator with DDP's static_graph=True (the usual advice for reentrant checkpointing):
    #    DDP must find the loss inside ReftOutput, or the first step's gradients are never averaged.
    from accelerate import Accelerator, DistributedDataParallelKwargs

    reft = build_main()
    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(static_graph=True)])
    finish("static_graph", reft, run(reft, grad_accum=1, accelerator=accelerator))
    # An orderly end: a process group left to the interpreter's exit can abort in gloo's teardown ("terminate called
    # without an active exception", SIGABRT), which failed a CI run after every result was written.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
