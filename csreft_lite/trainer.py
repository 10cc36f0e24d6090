"""``ReftTrainer``: transformers' ``Trainer`` for a ``ReftModel``, saving the folder ``ReftModel.load`` reads. A plain
``Trainer`` trains a ``ReftModel`` too, but saves any model other than its own and PEFT's as a bare state dict.
Not in the core: importing transformers' ``Trainer`` takes seconds (the course's own loop is ``training.py``)."""

from __future__ import annotations

from transformers import Trainer


class ReftTrainer(Trainer):
    """``transformers.Trainer`` whose ``save_model`` and checkpoints also write the interventions (``reft.save``), and
    which keeps the columns ``data.make_dataset`` writes under ``remove_unused_columns=True`` (the default)."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # the forward's arguments: prompt_lengths, not the rows' prompt_length
        self._signature_columns = [*self._signature_columns, "prompt_length", "instruction_span", "gates"]

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)  # model.safetensors (Trainer's resume reads it), tokenizer, arguments
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save(output_dir or self.args.output_dir)
