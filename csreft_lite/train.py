"""The training loop, in the open: batches → loss → backward → AdamW step, with a progress bar.

It scales out through Hugging Face Accelerate rather than a scheme of its own: the same
function runs on a CPU, on one GPU, or on several GPUs under ``accelerate launch``.
Only the interventions are trained; the base model stays frozen on its device.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from .data import collator_for


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
) -> TrainHistory:
    """Train the interventions of ``reft`` on a tokenized ``dataset`` (from ``data.make_dataset``).

    ``epochs`` may be fractional; ``max_steps`` caps optimiser steps. ``schedule`` is
    ``"linear"`` (decay to 0, as the LoReFT recipe) or ``"constant"``. Weight decay defaults
    to 0 as in the LoReFT recipe (our QR-based orthonormal map is immune to it anyway).
    With ``checkpoint_dir`` and ``save_every``, the interventions are saved every
    ``save_every`` steps (and at the end) so a run can be resumed with ``ReftModel.load``.
    """
    from accelerate import Accelerator

    if len(dataset) == 0:
        raise ValueError("The training data set is empty: nothing to train on.")
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}.")
    if collator is None:
        if tokenizer is None:
            raise ValueError("Pass the tokenizer (for its pad token) or a collator.")
        collator = collator_for(tokenizer)
    set_seed(seed)
    accelerator = accelerator or Accelerator(gradient_accumulation_steps=grad_accum, cpu=not torch.cuda.is_available())
    reft.model.to(accelerator.device)  # the frozen base lives outside the prepared module
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=generator)
    steps_per_epoch = math.ceil(len(loader) / grad_accum)
    total = max(1, math.ceil(steps_per_epoch * epochs))
    if max_steps is not None:
        total = min(total, max_steps)
    params = [p for p in reft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = int(warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model, optimizer, loader, scheduler = accelerator.prepare(reft, optimizer, loader, scheduler)
    history = TrainHistory()
    bar = _progress(total, progress and accelerator.is_local_main_process)
    start = time.perf_counter()
    model.train()
    running, micro = 0.0, 0
    while history.steps < total:
        for batch in loader:
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += out.loss.item()
            micro += 1
            history.tokens += out.n_tokens
            if accelerator.sync_gradients:
                history.steps += 1
                history.losses.append(running / micro)
                history.learning_rates.append(scheduler.get_last_lr()[0])
                running, micro = 0.0, 0
                bar.update(1)
                bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
                if checkpoint_dir and save_every and history.steps % save_every == 0:
                    _save(accelerator, model, checkpoint_dir)
                if history.steps >= total:
                    break
    bar.close()
    model.eval()
    history.seconds = time.perf_counter() - start
    if checkpoint_dir:
        _save(accelerator, model, checkpoint_dir)
    return history


def _save(accelerator, model, path: str) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save(path)


def _progress(total: int, enabled: bool):
    """A tqdm bar that renders as a widget in notebooks and as text in terminals."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step", disable=not enabled, leave=False)
