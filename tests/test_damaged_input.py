"""Damaged checkpoints and malformed input: one clear ValueError (``CheckpointError`` for files) that names
the file or argument, says what is wrong and what to do; and the user's model is left as it was."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import csreft_lite as cl
from csreft_lite import data
from csreft_lite.checkpoint import OPTIMIZER_FILE, STATE_FILE
from csreft_lite.reft_model import build

from .tiny import randomize, tiny_llama

D = 32


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def saved(model, tmp_path):
    """A checkpoint of untied interventions (entries layer1_first, layer1_last, ...), the reft removed again."""
    reft = cl.ReftModel(model, {1: cl.LoReFT(D, 2), 2: cl.CSReFT(D, 2, 2)}, positions="f2+l2", share_positions=False)
    randomize(reft)
    path = reft.save(tmp_path / "ckpt")
    reft.remove()
    return path


def ids():
    return torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(0))


def assert_untouched(model, expected_logits):
    """No hook left on any layer, the base model's outputs, every weight still frozen as before."""
    assert all(not layer._forward_hooks for layer in cl.decoder_layers(model))
    assert torch.equal(model(ids()).logits, expected_logits)


def edit_config(path, change):
    file = path / "reft_config.json"
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config))


# ------------------------------------------------------------------ ReftModel.load


def test_truncated_weights_file_names_the_file(model, saved):
    base = model(ids()).logits
    file = saved / "interventions.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(cl.CheckpointError, match=r"interventions\.safetensors cannot be read .*damaged or was not written completely.*save it again .*earlier checkpoint"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)


def test_unreadable_config_names_the_file(model, saved):
    base = model(ids()).logits
    file = saved / "reft_config.json"
    file.write_text(file.read_text()[:50])
    with pytest.raises(cl.CheckpointError, match=r"reft_config\.json cannot be read as JSON .*damaged"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)


def test_config_without_required_fields_lists_them(model, saved):
    edit_config(saved, lambda c: (c.pop("layers"), c.update(share_positions="yes")))
    with pytest.raises(cl.CheckpointError, match=r"reft_config\.json is not a complete ReftModel config: 'share_positions' \(str, expected bool\), 'layers' \(missing\)"):
        cl.ReftModel.load(saved, model)


def test_unknown_config_key_lists_the_accepted_keys(model, saved):
    base = model(ids()).logits
    edit_config(saved, lambda c: c["interventions"]["layer2_first"]["config"].update(temperature=2.0))
    with pytest.raises(cl.CheckpointError, match=r"reft_config\.json cannot be used: entry 'layer2_first' cannot be built: The CSReFT config has unknown keys \['temperature'\]; CSReFT accepts \['d_model', 'rank', 'n_subspaces'"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)


def test_missing_config_key_is_named(model, saved):
    edit_config(saved, lambda c: c["interventions"]["layer1_first"]["config"].pop("d_model"))
    with pytest.raises(cl.CheckpointError, match=r"entry 'layer1_first' cannot be built: The LoReFT config has missing keys \['d_model'\]; LoReFT accepts \['d_model', 'rank'\]"):
        cl.ReftModel.load(saved, model)


def test_layers_that_do_not_match_the_entries_are_named(model, saved):
    base = model(ids()).logits
    edit_config(saved, lambda c: c.update(layers=[1, 3]))
    with pytest.raises(cl.CheckpointError, match=r"entries do not match 'layers' \[1, 3\] with share_positions=False .*missing \['layer3_first', 'layer3_last'\]; unexpected \['layer2_first', 'layer2_last'\]"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)


def test_layers_the_model_does_not_have_are_named_with_the_file(model, saved):
    def move_layer_2_to_9(config):
        config["layers"] = [1, 9]
        for group in ("first", "last"):
            config["interventions"][f"layer9_{group}"] = config["interventions"].pop(f"layer2_{group}")

    base = model(ids()).logits
    edit_config(saved, move_layer_2_to_9)
    with pytest.raises(cl.CheckpointError, match=r"reft_config\.json cannot be used: Layer 9 does not exist: this model has 4 decoder layers"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)


def test_weights_that_do_not_fit_leave_no_hook_and_no_frozen_weight_behind(model, saved):
    """The failure comes after the ReftModel is built (its hooks attached, the model frozen): both are undone."""
    file = saved / "interventions.safetensors"
    state = load_file(str(file))
    state.pop("interventions.layer2_last.b_1")
    save_file(state, str(file))
    model.requires_grad_(True)  # a model the user is fine-tuning: load must not freeze it and then fail
    base = model(ids()).logits
    with pytest.raises(cl.CheckpointError, match=r"weights in .*interventions\.safetensors do not fit .*missing \['interventions\.layer2_last\.b_1'\]"):
        cl.ReftModel.load(saved, model)
    assert_untouched(model, base)
    assert all(p.requires_grad for p in model.parameters())


def test_build_names_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"The DiReFT config has unknown keys \['alpha'\] and missing keys \['d_model'\]; DiReFT accepts \['d_model', 'rank'\]"):
        build("DiReFT", {"rank": 2, "alpha": 1})
    assert build("DiReFT", {"d_model": 8}).rank == 4  # keys with defaults may be left out


# ------------------------------------------------------------------ forward


def test_labels_of_another_shape_name_the_argument(model):
    reft = cl.ReftModel(model, {1: cl.LoReFT(D, 2)}, positions="l2")
    x = ids()
    with pytest.raises(ValueError, match=r"labels have shape \(2, 8\) but input_ids \(2, 9\).*-100.*collator_for"):
        reft(x, labels=x[:, :8])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 8\) but input_ids \(2, 9\)"):
        reft(x, attention_mask=torch.ones(2, 8, dtype=torch.long))


# ------------------------------------------------------------------ resuming training


def _rows(n=8):
    return [{"input_ids": [3 + i % 5, 10, 11, 12, 20 + i % 3, 1], "labels": [-100] * 4 + [20 + i % 3, 1], "prompt_length": 4} for i in range(n)]


def _train(path, **kwargs):
    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(D, 2)}, positions="f2+l2")
    return cl.train(reft, _rows(), collator=data.Collator(0), batch_size=4, epochs=2, progress=False,
                    checkpoint_dir=str(path), **kwargs)


@pytest.fixture
def checkpoint(tmp_path):
    _train(tmp_path / "run")
    return tmp_path / "run"


def _resume_fails(path, match):
    reft = cl.ReftModel(tiny_llama(), {1: cl.LoReFT(D, 2)}, positions="f2+l2")
    before = {k: v.clone() for k, v in reft.state_dict().items()}
    with pytest.raises(cl.CheckpointError, match=match):
        cl.train(reft, _rows(), collator=data.Collator(0), batch_size=4, epochs=2, progress=False, checkpoint_dir=str(path), resume=True)
    assert all(torch.equal(v, before[k]) for k, v in reft.state_dict().items())  # the interventions were not half-loaded


def test_resume_without_the_optimizer_file_is_refused(checkpoint):
    (checkpoint / OPTIMIZER_FILE).unlink()
    _resume_fails(checkpoint, r"Cannot resume from .*run: it has interventions\.safetensors, train_state\.json but not optimizer\.safetensors.*resume=False")


def test_resume_from_a_folder_written_by_save_alone_is_refused(checkpoint):
    (checkpoint / OPTIMIZER_FILE).unlink()
    (checkpoint / STATE_FILE).unlink()
    _resume_fails(checkpoint, r"but not optimizer\.safetensors, train_state\.json.*written by reft\.save\(\)\s+alone cannot be resumed")


def test_resume_with_a_damaged_train_state_is_refused(checkpoint):
    (checkpoint / STATE_FILE).write_text('{"step": 4, "param_gro')
    _resume_fails(checkpoint, r"Cannot resume: .*train_state\.json is damaged \(JSONDecodeError")


def test_resume_with_a_damaged_optimizer_file_is_refused(checkpoint):
    (checkpoint / OPTIMIZER_FILE).write_bytes(b"\x00" * 7)
    _resume_fails(checkpoint, r"optimizer\.safetensors cannot be read .*damaged")


def test_resume_with_an_optimizer_file_of_other_parameters_is_refused(checkpoint):
    save_file({"moments.exp_avg": torch.zeros(3)}, str(checkpoint / OPTIMIZER_FILE))
    _resume_fails(checkpoint, r"the optimizer state in .*optimizer\.safetensors does not fit these interventions")


def test_resume_with_other_interventions_is_refused(checkpoint):
    reft = cl.ReftModel(tiny_llama(), {2: cl.LoReFT(D, 2)}, positions="f2+l2")
    with pytest.raises(cl.CheckpointError, match=r"weights in .*interventions\.safetensors do not fit this run's interventions: .*missing \['interventions\.layer2\.R_raw'"):
        cl.train(reft, _rows(), collator=data.Collator(0), batch_size=4, progress=False, checkpoint_dir=str(checkpoint), resume=True)


def test_resume_in_an_empty_folder_starts_afresh(tmp_path):
    history = _train(tmp_path / "new", resume=True)
    assert history.steps == 4 and len(history.losses) == 4
    assert json.loads((tmp_path / "new" / STATE_FILE).read_text())["step"] == 4
