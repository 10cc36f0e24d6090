"""``ReftTrainer``: transformers' ``Trainer`` for a ``ReftModel``, saving the folder ``ReftModel.load`` reads.

A plain ``Trainer`` trains a ``ReftModel`` too (``reft.config``, a ``ModelOutput`` with ``loss``), but saves only
its own and PEFT's models with ``save_pretrained``, any other module as a bare state dict. Not part of the core
(the course's own loop is ``train.py``): importing it imports transformers' ``Trainer``, which takes seconds.
"""

from __future__ import annotations

from transformers import Trainer


class ReftTrainer(Trainer):
    """``transformers.Trainer`` whose ``save_model`` and checkpoints also write the interventions (``reft.save``)."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)  # model.safetensors (Trainer's resume reads it), tokenizer, arguments
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save(output_dir or self.args.output_dir)
