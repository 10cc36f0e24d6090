"""The training loop, in the open: batches → loss → backward → AdamW step, with a progress bar.

It scales out through Hugging Face Accelerate rather than a scheme of its own: the same
function runs on a CPU, on one GPU, or on several GPUs under ``accelerate launch``.
Only the interventions are trained; the base model stays frozen on its device.

``cl.train(reft, ds, tok)`` calls ``train()`` (this module is callable); ``from csreft_lite.train
import train, set_seed`` works too.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .data import collator_for
from .reft_model import WEIGHTS_FILE, CheckpointError, _check_state, _read_weights


@dataclass
class TrainHistory:
    """What a training run did: one loss per optimiser step, and how long it took."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.losses)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (a less noisy end point than the last step)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


def set_seed(seed: int) -> None:
    """Seed Python, and torch on every device, so runs repeat."""
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    reft,
    dataset,
    tokenizer=None,
    *,
    epochs: float = 1,
    batch_size: int = 8,
    lr: float = 4e-3,
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    max_steps: int | None = None,
    warmup_ratio: float = 0.0,
    schedule: str = "linear",
    seed: int = 0,
    collator=None,
    progress: bool = True,
    accelerator=None,
    checkpoint_dir: str | None = None,
    save_every: int | None = None,
    resume: bool = False,
    callback=None,
) -> TrainHistory:
    """Train the interventions of ``reft`` on a tokenized ``dataset`` (from ``data.make_dataset``).

    ``epochs`` may be fractional; ``max_steps`` caps optimiser steps. ``schedule`` is
    ``"linear"`` (decay to 0, as the LoReFT recipe) or ``"constant"``. Weight decay defaults
    to 0 as in the LoReFT recipe (our QR-based orthonormal map is immune to it anyway).
    With ``checkpoint_dir`` and ``save_every``, the interventions are saved every
    ``save_every`` steps (and at the end) so a run can be resumed with ``ReftModel.load``.
    A checkpoint also holds the optimizer's moments (``optimizer.safetensors``) and the step
    reached (``train_state.json``): ``resume=True`` continues from it, skipping the batches
    already seen, so an interrupted run ends where an uninterrupted one would.
    Under ``accelerate launch`` each process sees its shard of the data: ``epochs`` counts
    passes over the whole data set, and ``max_steps`` optimiser steps. Each process takes whole
    batches of ``batch_size`` in turn, and the gradients are averaged over processes, so n processes
    with ``grad_accum=a`` train the same interventions as one process with ``grad_accum=n·a`` (when
    the batches divide evenly between processes). Losses and token counts in the history are over
    all processes; only the main process writes checkpoints.
    Interventions a forward pass does not use (forced gates, an empty position group) are fine:
    the default accelerator lets DDP find them. A prompt shorter than the positions
    (e.g. 7 tokens for ``f5+l5``) gets fewer edited positions; ``train`` warns once per run.
    ``callback(history)`` runs after every optimiser step (e.g. to measure a held-out loss as training goes).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if len(dataset) == 0:
        raise ValueError("The training data set is empty: nothing to train on.")
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}.")
    if collator is None:
        if tokenizer is None:
            raise ValueError("Pass the tokenizer (for its pad token) or a collator.")
        collator = collator_for(tokenizer)
    set_seed(seed)
    # find_unused_parameters: under DDP, a parameter that a forward pass leaves unused (a router bypassed
    # by force_gates, the "first" copy of an untied "l2" spec) would otherwise stop training with an error.
    accelerator = accelerator or Accelerator(
        gradient_accumulation_steps=grad_accum,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.is_local_main_process:
        _warn_short_prompts(dataset, reft.positions)
    reft.model.to(accelerator.device)  # the frozen base lives outside the prepared module
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=generator)
    params = [p for p in reft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model, optimizer, loader = accelerator.prepare(reft, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / grad_accum)  # len(loader): this process's shard
    total = max(1, math.ceil(steps_per_epoch * epochs))
    if max_steps is not None:
        total = min(total, max_steps)
    warmup = int(warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    done = _restore(accelerator, model, optimizer, checkpoint_dir) if resume and checkpoint_dir else 0
    # Stepped by us once per optimiser step (not prepared: Accelerate would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=done - 1 if done else -1)
    history = TrainHistory(steps=done)
    bar = _progress(total, progress and accelerator.is_local_main_process)
    bar.update(done)
    skip = (done // steps_per_epoch) * len(loader) + (done % steps_per_epoch) * grad_accum  # micro-batches seen
    start = time.perf_counter()
    model.train()
    running = [0.0, 0, 0]  # since the last optimiser step, in this process: loss sum, micro-batches, tokens
    saved = done
    while history.steps < total:
        for batch in loader:
            if skip:  # resuming: replay the data order without computing
                skip -= 1
                continue
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                optimizer.step()  # a no-op until the last micro-batch of an accumulation
                optimizer.zero_grad()
            running = [running[0] + out.loss.item(), running[1] + 1, running[2] + out.n_tokens]
            if accelerator.sync_gradients:
                scheduler.step()
                loss_sum, micro, tokens = _sum_over_processes(accelerator, running)
                history.steps += 1
                history.losses.append(loss_sum / micro)  # the mean over the whole effective batch
                history.tokens += int(tokens)
                history.learning_rates.append(scheduler.get_last_lr()[0])
                running = [0.0, 0, 0]
                bar.update(1)
                bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
                if callback is not None:
                    callback(history)
                if checkpoint_dir and save_every and history.steps % save_every == 0:
                    _save(accelerator, model, optimizer, checkpoint_dir, history.steps)
                    saved = history.steps
                if history.steps >= total:
                    break
    bar.close()
    model.eval()
    history.seconds = time.perf_counter() - start
    if checkpoint_dir and saved != history.steps:  # not saved twice for the same step
        _save(accelerator, model, optimizer, checkpoint_dir, history.steps)
    return history


OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"


def _sum_over_processes(accelerator, values: list) -> list:
    """``values`` summed over every process (as they are with one process)."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum").tolist()


def _warn_short_prompts(dataset, positions) -> None:
    """One warning per run when prompts are shorter than the position spec asks for (they get fewer edits)."""
    if positions.all:
        return
    try:
        if hasattr(dataset, "column_names"):  # a datasets.Dataset: read one column
            lengths = list(dataset["prompt_length"]) if "prompt_length" in dataset.column_names else []
        else:
            lengths = [int(row["prompt_length"]) for row in dataset]
    except (KeyError, TypeError, IndexError):
        return  # rows without prompt lengths: the whole input is the prompt
    need = positions.first + positions.last
    short = [n for n in lengths if n < need]
    if not short:
        return
    n = min(short)
    both = positions.first and positions.last
    hint = f"f{n // 2}+l{n // 2}" if both and n >= 2 else f"l{n}" if positions.last else f"f{n}"
    how = (" The first group takes its tokens first and no token is edited twice, so the last group gets "
           "what is left, possibly nothing." if both else "")
    warnings.warn(
        f"{len(short)} of {len(lengths)} training prompts are shorter than the {need} tokens that positions "
        f"'{positions}' edits (the shortest has {n}): they get fewer edited positions.{how} If that is not what "
        f"you want, use fewer positions ('{hint}' fits every prompt) or a longer prompt template.",
        stacklevel=3,
    )


def _save(accelerator, model, optimizer, path: str, step: int) -> None:
    """Interventions (``ReftModel.save``), AdamW's moments (safetensors) and the step (JSON): no pickles.

    Only the main process writes; every process waits until the checkpoint is complete.
    """
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save(path)
        state = optimizer.state_dict()
        tensors = {
            f"{i}.{name}": torch.as_tensor(value).detach().cpu().contiguous()
            for i, slots in state["state"].items()
            for name, value in slots.items()
        }
        save_file(tensors, str(Path(path) / OPTIMIZER_FILE))
        (Path(path) / STATE_FILE).write_text(json.dumps({"step": step, "param_groups": state["param_groups"]}, indent=1))
    accelerator.wait_for_everyone()


def _restore(accelerator, model, optimizer, path: str) -> int:
    """Load a checkpoint written by ``_save`` into the prepared model and optimizer; return its step.

    A folder without a checkpoint starts a fresh run (0); an incomplete or damaged one is an error,
    never silently restarted (the next save would overwrite it).
    """
    path = Path(path)
    present = [name for name in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE) if (path / name).is_file()]
    if not present:
        return 0  # nothing to resume: a fresh run
    absent = [name for name in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE) if name not in present]
    if absent:
        raise CheckpointError(
            f"Cannot resume from {path}: it has {', '.join(present)} but not {', '.join(absent)}. A training "
            f"checkpoint (written by train(checkpoint_dir=...)) has all three; a folder written by reft.save() "
            f"alone cannot be resumed. Pass another checkpoint_dir to start afresh, or resume=False (which "
            f"overwrites this folder)."
        )
    state_file = path / STATE_FILE
    try:
        meta = json.loads(state_file.read_text())
        step, groups = int(meta["step"]), meta["param_groups"]
        if step < 0 or not isinstance(groups, list):
            raise ValueError(f"step {step}, param_groups of type {type(groups).__name__}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"Cannot resume: {state_file} is damaged ({type(error).__name__}: {error}); it should hold the step "
            f"reached and the optimizer's settings. Resume from an earlier copy of the folder, or pass resume=False "
            f"to start afresh."
        ) from error
    # Read and check everything first, then load: a failed resume leaves the interventions as they were.
    reft = accelerator.unwrap_model(model)
    weights = _read_weights(path / WEIGHTS_FILE)
    _check_state(path / WEIGHTS_FILE, weights, reft.state_dict(), fit="this run's interventions",
                 fix="Resume with the interventions, layers and positions that wrote the checkpoint.")
    moments = _read_weights(path / OPTIMIZER_FILE)
    try:
        state: dict = {}
        for key, value in moments.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"Cannot resume: the optimizer state in {path / OPTIMIZER_FILE} does not fit these interventions "
            f"({error}). Resume with the interventions that wrote the checkpoint, or pass resume=False to start afresh."
        ) from error
    reft.load_state_dict(weights)
    return step


def _progress(total: int, enabled: bool):
    """A tqdm bar that renders as a widget in notebooks and as text in terminals."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step", disable=not enabled, leave=False)


class _CallableModule(types.ModuleType):
    """Lets ``cl.train(reft, ds, tok)`` call ``train()`` while ``cl.train.set_seed`` and
    ``from csreft_lite import train; train.train(...)`` keep working: the module stays a module."""

    __call__ = staticmethod(train)


__signature__ = inspect.signature(train)  # for help() and editors (else inspect takes 'reft' for self)
sys.modules[__name__].__class__ = _CallableModule
