"""Checkpoints: a folder with ``reft_config.json`` (a ``ReftModel``'s ``ReftConfig`` and the base model it was made
for) and ``interventions.safetensors`` (the weights), no pickles. This module only writes and reads them, and checks
what it reads before anything touches the model: a damaged checkpoint raises ``CheckpointError`` naming the file and
the fix. ``train(checkpoint_dir=...)`` adds the optimizer's moments and the step reached, for resuming."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .architecture import decoder_layers, hidden_size, model_name
from .hooks import Positions

CONFIG_FILE = "reft_config.json"
WEIGHTS_FILE = "interventions.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
# 2: one router for all CS-ReFT layers (the first release's format). 3: a CS-ReFT's subspaces stored one by one.
FORMAT = 3
RESAVE = "If you still have the trained ReftModel, save it again with reft.save(path); otherwise load an earlier checkpoint."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete or inconsistent. The message names the file."""


def identity(model: nn.Module) -> dict:
    """What a checkpoint records of its base model, and checks on loading: hidden size, depth and name."""
    return {"base_model": model_name(model), "hidden_size": hidden_size(model), "num_layers": len(decoder_layers(model))}


def header(model: nn.Module) -> dict:
    """The fields every ``reft_config.json`` opens with: who wrote it, in which format, for which base model."""
    version = getattr(sys.modules[__package__], "__version__", None)  # None in a copy of the core with an empty __init__
    return {"library": "csreft_lite", "version": version, "format": FORMAT, **identity(model)}


def save(config: dict, state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a config and weights into the folder ``path`` (created when missing)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; a checkpoint is a folder. Pass the path of a folder (new or existing).")
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return path


def read(path: str | Path, model_identity: dict, check_model_name: bool = True) -> tuple[dict, dict]:
    """Read and check a checkpoint for a model: ``(config, weights)``; ``ReftModel.from_pretrained`` builds from them."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"No ReftModel checkpoint in {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}.")
    config = _read_config(path / CONFIG_FILE)
    _check_model(config, model_identity, path, check_model_name)
    return config, _unstacked(config, read_weights(path / WEIGHTS_FILE))


def _unstacked(config: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as format 3 names them. Format 2 stored a CS-ReFT's k subspaces stacked (``R_raw [k·r, d]``, ``W [k, r,
    d]``, ``b [k, r]``); format 3 stores each one's own ``R_raw_i``, ``W_i``, ``b_i``, as the module holds them."""
    if config.get("format", 2) >= 3:
        return state
    for name, entry in config["interventions"].items():
        spec = entry.get("config") if isinstance(entry, dict) and entry.get("kind") == "CSReFT" else None
        k = spec.get("n_subspaces") if isinstance(spec, dict) else None
        for part in ("R_raw", "W", "b") if isinstance(k, int) and k > 0 else ():
            stacked = state.get(f"interventions.{name}.{part}")
            if stacked is not None and stacked.shape[0] % k == 0:  # else the shape check names it
                pieces = stacked.reshape(k, stacked.shape[0] // k, *stacked.shape[1:]) if part == "R_raw" else stacked
                state.update({f"interventions.{name}.{part}_{i}": piece for i, piece in enumerate(pieces)})
                del state[f"interventions.{name}.{part}"]
    return state


_CONFIG_FIELDS = {"positions": str, "share_positions": bool, "layers": list, "interventions": dict}


def _read_config(file: Path) -> dict:
    """``reft_config.json`` as a dict, or a ``CheckpointError`` that names the file and what is wrong."""
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{file} cannot be read as JSON ({error}): the checkpoint is damaged or was not written completely. {RESAVE}"
        ) from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a {type(config).__name__}, not the JSON object that ReftModel.save() writes.")
    if isinstance(config.get("format"), int) and config["format"] > FORMAT:
        raise CheckpointError(f"{file} was written by a newer csreft_lite (version {config.get('version')}, checkpoint "
                              f"format {config['format']}); this version reads formats up to {FORMAT}. Upgrade csreft_lite.")
    wrong = [f"'{k}' ({'missing' if k not in config else type(config[k]).__name__ + ', expected ' + t.__name__})"
             for k, t in _CONFIG_FIELDS.items() if not isinstance(config.get(k), t)]
    if wrong:
        raise CheckpointError(
            f"{file} is not a complete ReftModel config: {', '.join(wrong)}. It was edited by hand, damaged, or "
            f"written by something else. {RESAVE}"
        )
    try:
        Positions.parse(config["positions"])
    except ValueError as error:
        raise CheckpointError(f"{file}: 'positions' {config['positions']!r} cannot be read ({error}).") from error
    if not config["layers"] or not all(isinstance(x, int) and not isinstance(x, bool) for x in config["layers"]):
        raise CheckpointError(f"{file}: 'layers' must be a non-empty list of layer numbers, got {config['layers']!r}.")
    return config


def _check_model(config: dict, identity: dict, path: Path, check_model_name: bool) -> None:
    """Refuse a checkpoint made for another model (hidden size, depth, and unless told otherwise, name)."""
    fields = [f for f in ("hidden_size", "num_layers", "base_model") if f != "base_model" or check_model_name]
    mismatches = [f"{f}: checkpoint {config.get(f)!r} vs model {identity[f]!r}" for f in fields if config.get(f) != identity[f]]
    if mismatches:
        only_name = len(mismatches) == 1 and mismatches[0].startswith("base_model")
        raise ValueError(
            f"The checkpoint in {path} was made for another model ({'; '.join(mismatches)}). Load it on the "
            f"model it was trained on{', or pass check_model_name=False if only the name differs' if only_name else ''}."
        )


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a ``CheckpointError`` that names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{file} cannot be read ({error}): the file is damaged or was not written completely (a full disk, "
            f"an interrupted copy). {RESAVE}"
        ) from error


def check_state(file: Path, state: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor],
                fit: str = "the interventions its config describes",
                fix: str = "Config and weights must come from the same reft.save().") -> None:
    """Every tensor that ``ours`` holds is in ``state``, with its shape, and nothing else."""
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in ours.items() if k in state and state[k].shape != v.shape]
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if bad or missing or unexpected:
        raise CheckpointError(f"The weights in {file} do not fit {fit}: shape mismatches {bad or 'none'}; missing "
                              f"{missing or 'none'}; unexpected {unexpected or 'none'}. {fix}")


# ---------------------------------------------------------------- training state (train(checkpoint_dir=...))


def save_training(reft, optimizer, path: str | Path, step: int) -> None:
    """Interventions (``reft.save``), AdamW's moments (safetensors) and the step reached (JSON)."""
    from safetensors.torch import save_file

    reft.save(path)
    state = optimizer.state_dict()
    moments = {f"{i}.{name}": torch.as_tensor(value).detach().cpu().contiguous()
               for i, slots in state["state"].items() for name, value in slots.items()}
    save_file(moments, str(Path(path) / OPTIMIZER_FILE))
    (Path(path) / STATE_FILE).write_text(json.dumps({"step": step, "param_groups": state["param_groups"]}, indent=1))


def restore_training(reft, optimizer, path: str | Path) -> int:
    """Load what ``save_training`` wrote into ``reft`` and ``optimizer``; return the step (0: nothing to resume).

    An incomplete or damaged checkpoint is an error, never silently restarted (the next save would
    overwrite it). Everything is read and checked first, so a failed resume leaves ``reft`` as it was.
    """
    path = Path(path)
    names = (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)
    present = [name for name in names if (path / name).is_file()]
    if not present:
        return 0
    if len(present) < len(names):
        raise CheckpointError(
            f"Cannot resume from {path}: it has {', '.join(present)} but not {', '.join(n for n in names if n not in present)}. "
            f"A training checkpoint (written by train(checkpoint_dir=...)) has all three; a folder written by reft.save() "
            f"alone cannot be resumed. Pass another checkpoint_dir to start afresh, or resume=False (which overwrites this folder)."
        )
    step, groups = _read_train_state(path / STATE_FILE)
    weights = _unstacked(_read_config(path / CONFIG_FILE), read_weights(path / WEIGHTS_FILE))
    check_state(path / WEIGHTS_FILE, weights, reft.state_dict(), fit="this run's interventions",
                fix="Resume with the interventions, layers and positions that wrote the checkpoint.")
    moments = read_weights(path / OPTIMIZER_FILE)
    try:
        state: dict = {}
        for name, value in moments.items():
            i, slot = name.split(".", 1)
            state.setdefault(int(i), {})[slot] = value
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"Cannot resume: the optimizer state in {path / OPTIMIZER_FILE} does not fit these interventions "
            f"({error}). Resume with the interventions that wrote the checkpoint, or pass resume=False to start afresh."
        ) from error
    reft.load_state_dict(weights)
    return step


def _read_train_state(file: Path) -> tuple[int, list]:
    try:
        meta = json.loads(file.read_text())
        step, groups = int(meta["step"]), meta["param_groups"]
        if step < 0 or not isinstance(groups, list):
            raise ValueError(f"step {step}, param_groups of type {type(groups).__name__}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"Cannot resume: {file} is damaged ({type(error).__name__}: {error}); it should hold the step reached and "
            f"the optimizer's settings. Resume from an earlier copy of the folder, or pass resume=False to start afresh."
        ) from error
    return step, groups
