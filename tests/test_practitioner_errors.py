"""What a practitioner types first, and what it gets: a clear error naming the fix, or the documented behaviour."""

import json
import math

import pytest
import torch

import csreft_lite as cl
from csreft_lite import checkpoint, data, evaluate

from .tiny import perturbed, tiny_llama

D = 32


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from csreft_lite.models import course_model_cache

    if not course_model_cache().exists():
        cl.load_course_model()
    tokenizer = AutoTokenizer.from_pretrained(course_model_cache())
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def rows(n=8, prompt_length=True):
    """Token rows as data.make_dataset writes them (prompt labels -100), with or without their prompt_length."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = 6 + i % 3
        ids = torch.randint(3, 100, (length + 4,), generator=g).tolist()
        row = {"input_ids": ids, "labels": [-100] * length + ids[length:], "instruction_span": [1, length - 1]}
        out.append({**row, "prompt_length": length} if prompt_length else row)
    return out


def reft_on_tiny(kind="LoReFT"):
    module = cl.LoReFT(D, 4) if kind == "LoReFT" else cl.CSReFT(D, 2, 2)
    return cl.ReftModel(tiny_llama(), {1: perturbed(module)}, positions="f2+l2")


def trainer(reft, dataset, tmp_path, **args):
    from datasets import Dataset
    from transformers import TrainingArguments

    from csreft_lite.trainer import ReftTrainer

    arguments = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                                  use_cpu=True, save_strategy="no", **args)
    return ReftTrainer(model=reft, args=arguments, train_dataset=Dataset.from_list(dataset), data_collator=data.Collator(0))


def spy_prompt_lengths(reft):
    seen = []
    reft.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("prompt_lengths")), with_kwargs=True)
    return seen


def test_trainer_with_default_arguments_keeps_the_columns_it_needs(tmp_path):
    """remove_unused_columns=True (transformers' default) used to drop prompt_length: KeyError in the collator."""
    reft = reft_on_tiny()
    seen = spy_prompt_lengths(reft)
    trainer(reft, rows(), tmp_path).train()
    assert seen and seen[0] is not None and set(seen[0].tolist()) <= {6, 7, 8}


def test_rows_without_prompt_length_take_it_from_their_labels(tmp_path):
    """Rows from another pipeline: the prompt is what precedes the first label, the same positions as with prompt_length."""
    reft = reft_on_tiny()
    batch_with, batch_without = data.Collator(0)(rows()[:4]), data.Collator(0)(rows(prompt_length=False)[:4])
    assert "prompt_lengths" not in batch_without
    with torch.no_grad():
        assert torch.equal(reft(**batch_with).loss, reft(**batch_without).loss)
    trainer(reft, rows(prompt_length=False), tmp_path).train()  # and trains


def test_plain_language_model_rows_are_refused_with_the_fix(tmp_path):
    """labels = input_ids (no token marked as prompt): no prompt positions to edit, so an error, not a silent guess."""
    plain = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows(prompt_length=False)]
    with pytest.raises(ValueError, match="labels -100"):
        trainer(reft_on_tiny(), plain, tmp_path).train()


@pytest.mark.parametrize("settings", [{"epochs": 0}, {"epochs": -1}, {"epochs": math.nan}, {"grad_accum": 0},
                                      {"max_steps": 0}, {"warmup_ratio": 2}, {"warmup_ratio": -0.1}, {"batch_size": 0},
                                      {"schedule": "cosine"}])
def test_train_settings_that_would_train_wrongly_or_crash_are_refused(settings):
    name = next(iter(settings))
    with pytest.raises(ValueError, match=f"train: {name}"):
        cl.train(reft_on_tiny(), rows(), collator=data.Collator(0), progress=False, **settings)


def test_one_string_where_a_list_of_prompts_goes_is_refused():
    reft = reft_on_tiny()
    with pytest.raises(TypeError, match=r"list of instructions.*\['one prompt'\]"):
        evaluate.generate_answers(reft, None, "one prompt")
    with pytest.raises(TypeError, match="list of instructions"):
        evaluate.route_prompts(reft_on_tiny("CSReFT"), None, "one prompt")


@pytest.mark.parametrize("record, problem", [
    ({"instruction": None, "output": "x"}, "'instruction' must be text, got NoneType"),
    ({"instruction": "Say x.", "output": 3}, "'output' must be text, got int"),
    ({"instruction": "Say x.", "output": "x", "gates": [float("nan"), 1.0]}, r"Gates lie in \[0, 1\]"),
    ({"instruction": "Say x.", "output": "x", "gates": [2.0, 0.0]}, r"Gates lie in \[0, 1\]"),
])
def test_a_bad_record_is_named_with_its_problem(tok, record, problem):
    good = {"instruction": "Say y.", "output": "y"}
    with pytest.raises(ValueError, match=rf"Record 1 .*{problem}"):
        data.make_dataset([good, record], tok)


def test_a_string_where_an_intervention_goes_is_refused():
    with pytest.raises(TypeError, match=r"layer 1 is a str.*cl.LoReFT\(32, rank=4\)"):
        cl.ReftModel(tiny_llama(), {1: "LoReFT"})


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path):
    reft = reft_on_tiny()
    reft.save(tmp_path)
    config = json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())
    config["format"] = 99
    (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(cl.CheckpointError, match="newer csreft_lite.*format 99.*Upgrade"):
        cl.ReftModel.load(tmp_path, reft.model)
