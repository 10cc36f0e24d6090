"""Training, in the open: batches → loss → backward → AdamW step. Only the interventions train. ``train`` runs on a
CPU, one GPU, or several under ``accelerate launch`` (Accelerate, no engine of our own); transformers' ``Trainer``:
``trainer.py``. What a ReftModel does with a whole data set lives here too (``ReftModel`` has them as methods):
``init_router`` starts the router from what it reads on it (``add_skill``, one more skill: continual.py)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .data import collator_for
from .progress import Progress
from .validate import check_training, warn_short_prompts


@dataclass
class TrainHistory:
    """What a run did, one entry per optimiser step: the loss, its two terms (the answers' cross-entropy and the router's
    penalty, 0 without one), and the learning rate the schedule reached after the step."""

    losses: list[float] = field(default_factory=list)
    ce_losses: list[float] = field(default_factory=list)
    penalties: list[float] = field(default_factory=list)
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


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate of optimiser step ``step`` (from 0) as a share of the peak: linear warm-up, then constant or linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 1.0 if schedule == "constant" else max(0.0, (total - step) / max(1, total - warmup))


def train(reft, dataset, tokenizer=None, *, epochs: float = 1, batch_size: int = 8, lr: float = 4e-3,
          weight_decay: float = 0.0, grad_accum: int = 1, max_steps: int | None = None, warmup_ratio: float = 0.0,
          schedule: str = "linear", seed: int = 0, collator=None, progress: bool = True, accelerator=None,
          checkpoint_dir: str | None = None, save_every: int | None = None, resume: bool = False,
          callback=None) -> TrainHistory:
    """Train the interventions of ``reft`` on a tokenized ``dataset`` (``data.make_dataset``).

    ``epochs`` may be fractional; ``max_steps`` caps optimiser steps; ``schedule``: ``"linear"`` (decay to 0, as the
    LoReFT recipe) or ``"constant"``. With ``checkpoint_dir``, interventions, AdamW's moments and the step are saved
    every ``save_every`` steps and at the end; ``resume=True`` continues there and ends where an uninterrupted run
    would. Under ``accelerate launch`` n processes with ``grad_accum=a`` train like one with ``grad_accum=n·a``;
    losses and token counts cover all processes. ``callback(history)`` runs after every optimiser step.
    """
    if len(dataset) == 0:
        raise ValueError("The training data set is empty: nothing to train on.")
    check_training(epochs, batch_size, grad_accum, max_steps, warmup_ratio, schedule)
    set_seed(seed)
    accelerator = accelerator or _default_accelerator(grad_accum)
    if accelerator.is_local_main_process:
        warn_short_prompts(_row_prompt_lengths(dataset), reft.positions)
    reft.model.to(accelerator.device)  # the frozen base lives outside the prepared module
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator or collator_for(tokenizer),
                        generator=torch.Generator().manual_seed(seed))
    optimizer = _optimizer(reft, lr, weight_decay)
    model, optimizer, loader = accelerator.prepare(reft, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / grad_accum)  # len(loader): this process's shard
    total = min(max(1, math.ceil(steps_per_epoch * epochs)), max_steps if max_steps is not None else math.inf)
    warmup = int(warmup_ratio * total)
    resumable = resume and checkpoint_dir
    done = checkpoint.restore_training(accelerator.unwrap_model(model), optimizer, checkpoint_dir) if resumable else 0
    history = TrainHistory(steps=done)
    bar = Progress(total, "training", enabled=progress and accelerator.is_local_main_process)
    bar.update(done)
    batches = _batches(loader, skip=(done // steps_per_epoch) * len(loader) + (done % steps_per_epoch) * grad_accum)
    start, saved = time.perf_counter(), done
    tally = [0.0] * 5  # since the last optimiser step, in this process: loss, CE, penalty, micro-batches, tokens
    model.train()
    while history.steps < total:
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(history.steps, total, warmup, schedule)
        out = _micro_step(accelerator, model, optimizer, next(batches))
        tally = _add(tally, out)
        if not accelerator.sync_gradients:
            continue
        _record(history, accelerator, tally, lr * lr_factor(history.steps + 1, total, warmup, schedule))
        tally = [0.0] * 5
        bar.update(1, loss=f"{history.losses[-1]:.3f}")
        if callback is not None:
            callback(history)
        if checkpoint_dir and save_every and history.steps % save_every == 0:
            saved = _save(accelerator, model, optimizer, checkpoint_dir, history.steps)
    bar.close()
    model.eval()
    history.seconds = time.perf_counter() - start
    if checkpoint_dir and saved != history.steps:  # not saved twice for the same step
        _save(accelerator, model, optimizer, checkpoint_dir, history.steps)
    return history


def _optimizer(reft, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters that train (a frozen subspace's do not)."""
    trainable = [p for p in reft.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("Nothing to train: every parameter of the interventions (and of the router, if any) is frozen. "
                         "Build fresh interventions, or leave a subspace unfrozen.")
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)


def _batches(loader, skip: int):
    """The loader's batches, epoch after epoch (a new shuffle each), after the ``skip`` that a resumed run has seen."""
    while True:
        for batch in loader:
            if skip:  # resuming: replay the data order without computing
                skip -= 1
                continue
            yield batch


def _row_prompt_lengths(dataset) -> list[int]:
    """The ``prompt_length`` of every row (read by column from a ``datasets.Dataset``); [] when rows have none."""
    if hasattr(dataset, "column_names"):
        return list(dataset["prompt_length"]) if "prompt_length" in dataset.column_names else []
    return [int(row["prompt_length"]) for row in dataset if "prompt_length" in row]


def _default_accelerator(grad_accum: int):
    """CPU or GPU as available. ``find_unused_parameters``: under DDP, an intervention a forward pass leaves
    unused (a router bypassed by forced gates, the empty "first" group of ``l2``) would otherwise stop training."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(gradient_accumulation_steps=grad_accum, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _micro_step(accelerator, model, optimizer, batch):
    """Forward and backward on one micro-batch; the optimiser steps on the last one of an accumulation."""
    with accelerator.accumulate(model):
        out = model(**batch)
        if not out.loss.requires_grad:
            raise ValueError("The loss depends on no trainable parameter: the subspaces these gates open are all frozen "
                             "(freeze_subspaces), and gates from the records or force_gates leave the router unused. "
                             "Open a subspace that is not frozen, or let the router choose the gates.")
        accelerator.backward(out.loss)
        optimizer.step()  # a no-op until the last micro-batch of an accumulation
        optimizer.zero_grad()
    return out


def _add(tally: list, out) -> list:
    """The running sums plus one micro-batch's loss, cross-entropy, penalty (0 without a router), count and tokens."""
    penalty = 0.0 if out.penalty is None else out.penalty.item()
    return [a + b for a, b in zip(tally, (out.loss.item(), out.ce_loss.item(), penalty, 1, out.n_tokens))]


def _record(history: TrainHistory, accelerator, tally: list, next_lr: float) -> None:
    """One optimiser step done: its losses are the means of its micro-batches' losses (each a mean over that micro-batch's
    tokens), all processes included; ``tokens`` counts every supervised token."""
    if accelerator.num_processes > 1:
        tally = accelerator.reduce(torch.tensor(tally, dtype=torch.float64, device=accelerator.device), reduction="sum").tolist()
    loss, ce, penalty, micro, tokens = tally
    history.steps += 1
    history.losses.append(loss / micro)
    history.ce_losses.append(ce / micro)
    history.penalties.append(penalty / micro)
    history.tokens += int(tokens)
    history.learning_rates.append(next_lr)


def _save(accelerator, model, optimizer, path: str, step: int) -> int:
    """The main process writes the training checkpoint; every process waits until it is complete."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoint.save_training(accelerator.unwrap_model(model), optimizer, path, step)
    accelerator.wait_for_everyone()
    return step


# ---------------------------------------------------------------- whole data sets: what the router reads, its start


@torch.no_grad()
def dataset_router_inputs(reft, dataset, tokenizer=None, batch_size: int = 32, collator=None) -> torch.Tensor:
    """What the router reads on each row of ``dataset`` (``data.make_dataset`` rows), ``[n, d]``, in batches. It does not
    depend on the interventions: the router reads below the first edit."""
    collate = collator or collator_for(tokenizer)
    device = next(reft.model.parameters()).device
    summaries = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        summaries.append(reft.router_inputs(**{k: v.to(device) for k, v in batch.items() if k not in ("labels", "gates")}))
    return torch.cat(summaries)


def init_router(reft, dataset, tokenizer=None, batch_size: int = 32, confidence: float = 0.9, seed: int = 0,
                collator=None) -> torch.Tensor:
    """Start the router from the k-means clusters of what it reads on ``dataset`` (``data.make_dataset`` rows, no labels
    used); returns each example's cluster (``Router.init_from_clusters``)."""
    summaries = dataset_router_inputs(reft, dataset, tokenizer, batch_size, collator)
    return reft.router.init_from_clusters(summaries, confidence=confidence, seed=seed)
