"""transformers' Trainer trains a ReftModel as it trains a PEFT model, and what it saves loads with ReftModel.load."""

import pytest
import torch
from transformers import TrainingArguments

import csreft_lite as cl
from csreft_lite import data, evaluate
from csreft_lite.compat import is_checkpointing
from csreft_lite.trainer import ReftTrainer

pytestmark = pytest.mark.slow

WORDS = ["cat", "dog", "sun", "tree", "blue", "rain", "fish", "moon"]
RECORDS = [{"instruction": f"Write the word {w} in capitals.", "output": w.upper()} for w in WORDS]
PROMPTS = ["Write the word cat in capitals.", "Write the word moon in capitals."]


def checkpointing_argument() -> dict:
    """5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name warns)."""
    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": True}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainer_trains_a_routed_reft_model_and_its_save_loads(course_model, tmp_path, checkpointing):
    model, tok = course_model
    d, use_cache = model.config.hidden_size, model.config.use_cache
    torch.manual_seed(0)
    reft = cl.ReftModel(model, {2: cl.LoReFT(d, 2), 4: cl.CSReFT(d, 2, 2)}, positions="f3+l3")
    assert reft.config is model.config  # what Trainer's constructor reads
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             remove_unused_columns=False, **(checkpointing_argument() if checkpointing else {}))
    before = {k: v.clone() for k, v in reft.state_dict().items()}
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = ReftTrainer(model=reft, args=args, train_dataset=data.make_dataset(RECORDS, tok),
                          data_collator=data.collator_for(tok))
    try:
        result = trainer.train()
        assert is_checkpointing(model) == checkpointing and model.training == checkpointing  # the base follows while on
        assert torch.isfinite(torch.tensor(result.training_loss))
        changed = {k.rsplit(".", 1)[0] for k, v in reft.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {k.rsplit(".", 1)[0] for k in before}  # every intervention and the router learned
        assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())  # the base did not
        trainer.save_model(str(tmp_path / "saved"))
    finally:
        reft.gradient_checkpointing_disable()
        model.eval()
        model.config.use_cache = use_cache  # Trainer sets it on the (shared) base model's config
    reft.eval()
    expected = evaluate.generate_answers(reft, tok, PROMPTS, max_new_tokens=4)
    reft.remove()
    loaded = cl.ReftModel.from_pretrained(model, tmp_path / "saved")
    try:
        assert evaluate.generate_answers(loaded, tok, PROMPTS, max_new_tokens=4) == expected
        assert all(torch.equal(v, reft.state_dict()[k]) for k, v in loaded.state_dict().items())
    finally:
        loaded.remove()


def test_a_labelled_forward_is_a_model_output_and_refuses_unknown_arguments(course_model):
    from transformers.utils import ModelOutput

    model, tok = course_model
    reft = cl.ReftModel(model, {2: cl.LoReFT(model.config.hidden_size, 2)})
    try:
        batch = data.collator_for(tok)(list(data.make_dataset(RECORDS[:2], tok)))
        out = reft(**batch)
        assert isinstance(out, ModelOutput) and out["loss"] is out.loss and out[0] is out.loss
        with pytest.raises(TypeError, match=r"\['bogus_kw'\]"):
            reft(**batch, bogus_kw=123)
    finally:
        reft.remove()
