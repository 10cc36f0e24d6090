"""CS-ReFT on Llama-2-7B, trained on UltraFeedback and scored on AlpacaEval: the recipe behind notebook 05.

    python -m csreft_lite.recipes.alpacaeval                       # the paper's config on a GPU; smoke run without one
    python -m csreft_lite.recipes.alpacaeval --smoke               # CPU smoke run: course model, shipped data, minutes
    python -m csreft_lite.recipes.alpacaeval --judge alpaca_eval_2 # score with AlpacaEval 2.0's LC win rate instead
    python -m csreft_lite.recipes.alpacaeval --config configs/alpacaeval_llama2_7b.yaml --epochs 3
    accelerate launch -m csreft_lite.recipes.alpacaeval --config configs/alpacaeval_llama2_7b.yaml   # several GPUs

The CS-ReFT paper (arXiv 2503.10617) states k = 4 subspaces and one router ρ = Router(x), d → d/2 (ReLU) → 4
(sigmoid, 0.5 threshold for hard gating); what it leaves open (layers, positions, rank, data, optimiser, decoding,
judge) comes from the LoReFT AlpacaEval recipe (ReFT paper §4.4, App. D). Its released code does not run its
interventions, so this recipe implements the paper's equations (``csreft_lite.CSReFT``) with nothing to match.

Smoke mode (automatic without CUDA, or ``--smoke``) runs the same functions on the course model, with the ~40
training examples and 6 eval prompts shipped in ``recipes/smoke_data/`` and the course model as a local judge;
every printed line and plot title starts with ``[SMOKE]`` (the real run: ``[FULL]``). Judges: ``RecipeConfig.judge``;
the AlpacaEval ones go through the OpenAI client (``OPENAI_BASE_URL`` picks any compatible server).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

import csreft_lite as cl

from .. import data as cl_data
from .. import evaluate as cl_eval
from .. import training as cl_train

# The shipped smoke files: package data next to this module, so editable and wheel installs both have them.
DATA_DIR = Path(__file__).resolve().parent / "smoke_data"

# Llama-2-7B's shape, for parameter arithmetic without downloading it.
LLAMA2_7B = {"d_model": 4096, "n_layers": 32, "n_params": 6_738_415_616, "vocab": 32_000, "d_ffn": 11_008}
PAPER_SHARE = {"CS-ReFT (paper)": 0.0098, "LoReFT (ReFT paper)": 0.0039}  # % of Llama-2-7B's parameters
PAPER_WIN_RATE = {"CS-ReFT (paper)": 93.94, "LoReFT (ReFT paper)": 85.60, "GPT-3.5 Turbo": 86.30}


# ---------------------------------------------------------------- configuration


@dataclass
class RecipeConfig:
    """Every knob of the recipe. Defaults: the CS-ReFT paper's Llama-2-7B AlpacaEval run, as far as it is stated."""

    # model
    base_model: str = "meta-llama/Llama-2-7b-hf"  # hub id, local folder, or "course" (the offline course model)
    dtype: str = "bfloat16"  # "float16" on GPUs without bf16 (T4)
    # interventions: k and the router from the CS-ReFT paper, placement from the LoReFT recipe
    layers: tuple = (3, 9, 18, 24)
    positions: str = "f5+l5"
    share_positions: bool = False  # untied: first-5 and last-5 positions get separate interventions
    rank: int = 4  # per subspace
    n_subspaces: int = 4
    router: str = "linear"  # one router for all layers: "linear" (d → k, fits the paper's budget) or "paper" (d → d/2 → k, 8.4M)
    gating: str = "hard"  # the paper's sigmoid with a 0.5 threshold (straight-through while training); or "soft", "topk"
    sparsity: float = 0.0  # λ of the gate penalty; not stated in the paper
    balance: float = 0.0  # weight of the balance term (csreft_lite.balance_loss); ours, not in the paper
    router_layer: int | None = None  # the layer whose instruction tokens the router reads; None: the first edited layer
    # data
    train_dataset: str = "openbmb/UltraFeedback"  # or "HuggingFaceH4/ultrafeedback_binarized" (split train_sft), or a .json file
    train_split: str = "train"
    max_train_examples: int | None = None  # e.g. 1000 for the LoReFT paper's 1K ablation
    template: str = "auto"  # the model's own: Alpaca no-input for Llama-2-7b-hf (no chat template), chat template otherwise
    max_length: int = 768
    # optimisation: the LoReFT recipe
    lr: float = 9e-4
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    epochs: float = 9.0
    batch_size: int = 4  # per device; LoReFT used 4 × 32 accumulation steps
    effective_batch: int = 128  # batch_size × grad_accum × number of GPUs
    gradient_checkpointing: bool = False
    seed: int = 42
    # checkpoints and outputs
    output_dir: str = "runs/alpacaeval_llama2_7b"
    save_every: int = 50  # optimiser steps between checkpoints
    resume: bool = True  # continue from output_dir/checkpoint when it holds one
    # AlpacaEval: the LoReFT recipe's decoding, AlpacaEval 1.0 (GPT-4 vs text-davinci-003) by default
    eval_dataset: str = "tatsu-lab/alpaca_eval"  # 805 instructions (AlpacaEval 1.0's "eval" split), or a .json file
    max_eval_examples: int | None = None
    eval_batch_size: int = 16
    max_new_tokens: int = 1024  # not stated in either paper; long enough for AlpacaEval's answers
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 5
    generator_name: str = "csreft-llama-2-7b"
    judge: str = "auto"  # "alpaca_eval_1", "alpaca_eval_2" (both need OPENAI_API_KEY), "local", or "auto" (see score)
    judge_model: str | None = None  # AlpacaEval judges: the model asked of OPENAI_BASE_URL (None: GPT-4 / GPT-4-Turbo);
    # local judge: a hub id or folder (None: Qwen/Qwen2.5-7B-Instruct, the base model in smoke mode), or "base"
    reference_outputs: str | None = None  # a local reference file; None: the judge's official one (or eval_dataset's own)
    judge_batch_size: int = 4
    judge_max_answer_tokens: int = 512
    smoke: bool = False

    def __post_init__(self):
        self.layers = tuple(int(x) for x in (self.layers.split(";") if isinstance(self.layers, str) else self.layers))
        if self.router not in ("linear", "paper"):
            raise ValueError(f"router must be 'linear' (d → k) or 'paper' (d → d/2 → k), got {self.router!r}.")
        self.judge = "alpaca_eval_1" if self.judge == "alpaca_eval" else self.judge  # the name before AlpacaEval 2.0
        if self.judge not in ("auto", "alpaca_eval_1", "alpaca_eval_2", "local"):
            raise ValueError(f"judge must be 'auto', 'alpaca_eval_1', 'alpaca_eval_2' or 'local', got {self.judge!r}.")
        if self.effective_batch % self.batch_size:
            raise ValueError(f"effective_batch={self.effective_batch} is not a multiple of batch_size={self.batch_size}.")

    @property
    def tag(self) -> str:
        """``[SMOKE]`` or ``[FULL]``: the first word of every line the recipe prints."""
        return "[SMOKE]" if self.smoke else "[FULL]"


# What smoke mode changes: small enough for 2 CPU cores in about a minute, every code path still taken.
SMOKE_OVERRIDES: dict[str, Any] = {
    "base_model": "course",
    "dtype": "float32",
    "train_dataset": str(DATA_DIR / "smoke_train.json"),
    "eval_dataset": str(DATA_DIR / "smoke_eval.json"),
    "max_train_examples": 16,  # of the 40 shipped: 8 optimiser steps
    "max_length": 128,
    "epochs": 1.0,
    "lr": 4e-3,  # few steps: a larger step size so the loss visibly moves
    "batch_size": 2,
    "effective_batch": 2,
    "output_dir": "runs/alpacaeval_smoke",
    "save_every": 4,
    "resume": False,  # a smoke run always starts fresh
    "eval_batch_size": 6,
    "max_new_tokens": 32,
    "generator_name": "csreft-smollm2-135m-smoke",
    "judge_batch_size": 6,
    "judge_max_answer_tokens": 48,
    "smoke": True,
}


def make_config(path: str | os.PathLike | None = None, smoke: bool | str = "auto", **overrides) -> RecipeConfig:
    """Defaults ← a YAML/JSON file ← smoke sizes (when smoke) ← ``overrides``.

    ``smoke="auto"`` means smoke exactly when torch sees no CUDA GPU.
    """
    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        unknown = set(values) - {f.name for f in dataclasses.fields(RecipeConfig)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}.")
    if smoke == "auto":
        smoke = bool(values.get("smoke", False)) or not torch.cuda.is_available()
    if smoke:
        values.update(SMOKE_OVERRIDES)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RecipeConfig(**values)


def shown(value: Any) -> str:
    """A config value as printed: a path inside the installed package as ``csreft_lite/…`` and one in the temporary
    folder as ``<tmp>/…``, so printed lines (and the course's rendered pages) carry no machine's own paths."""
    if isinstance(value, (str, Path)) and Path(value).is_absolute():
        for root, label in ((Path(cl.__file__).resolve().parents[1], ""), (Path(tempfile.gettempdir()).resolve(), "<tmp>/")):
            if Path(value).resolve().is_relative_to(root):
                return label + Path(value).resolve().relative_to(root).as_posix()
    return str(value)


def say(config: RecipeConfig, *parts) -> None:
    """Print one line, prefixed with ``[SMOKE]`` or ``[FULL]``."""
    print(config.tag, *parts, flush=True)


# ---------------------------------------------------------------- the parameter budget


def make_intervention(config: RecipeConfig, d_model: int) -> cl.CSReFT:
    """One CS-ReFT intervention (the k subspaces of one layer and position group) as configured."""
    return cl.CSReFT(d_model, rank=config.rank, n_subspaces=config.n_subspaces)


def make_router(config: RecipeConfig, d_model: int, router: str | None = None) -> cl.Router:
    """The one router that gates every CS-ReFT layer (``router`` overrides ``config.router``)."""
    router = router or config.router
    return cl.Router(d_model, config.n_subspaces, hidden=None if router == "linear" else d_model // 2,
                     gating=config.gating, sparsity=config.sparsity, balance=config.balance)


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: RecipeConfig, d_model: int, router: str | None = None, kind: str = "CSReFT", shared: bool | None = None) -> int:
    """Trainable parameters of the configured placement, by building the modules and counting:
    one intervention per layer and position group, plus (CS-ReFT) one router for all of them."""
    shared = config.share_positions if shared is None else shared
    groups = 1 if shared else 2
    if kind == "LoReFT":
        return _numel(cl.LoReFT(d_model, config.rank)) * len(config.layers) * groups
    return _numel(make_intervention(config, d_model)) * len(config.layers) * groups + _numel(make_router(config, d_model, router))


def budget_rows(config: RecipeConfig, d_model: int = LLAMA2_7B["d_model"], n_params: int = LLAMA2_7B["n_params"]) -> list[dict]:
    """Parameter shares of the configured CS-ReFT with both routers (and the other weight tying), LoReFT, and the papers' figures."""

    def placement(shared: bool) -> str:
        return f"layers {';'.join(map(str, config.layers))}, {config.positions} {'tied' if shared else 'untied'}"

    def row(method: str, shared: bool, n: int) -> dict:
        return {"method": method, "placement": placement(shared), "parameters": n, "share_%": 100 * n / n_params}

    k, r, shared = config.n_subspaces, config.rank, config.share_positions
    rows = [
        row(f"CS-ReFT k={k} r={r}, {router} router{' (this config)' if router == config.router else ''}", shared,
            count_parameters(config, d_model, router))
        for router in ("linear", "paper")
    ]
    rows.append(row(f"CS-ReFT k={k} r={r}, linear router, {'untied' if shared else 'tied'}", not shared,
                    count_parameters(config, d_model, "linear", shared=not shared)))
    rows.append(row(f"LoReFT r={r}", shared, count_parameters(config, d_model, kind="LoReFT")))
    for name, share in PAPER_SHARE.items():
        rows.append({"method": name, "placement": "as reported", "parameters": round(share / 100 * n_params), "share_%": share})
    return rows


def print_budget(config: RecipeConfig, reft: cl.ReftModel | None = None) -> None:
    """The parameter arithmetic on Llama-2-7B (always), and the measured share of the model in hand."""
    say(config, "Trainable parameters on Llama-2-7B (d=4096, 6.74B parameters), by arithmetic:")
    for row in budget_rows(config):
        say(config, f"  {row['method']:<52} {row['parameters']:>12,}  {row['share_%']:.4f}%")
    if reft is not None:
        say(config, f"Measured on the model in hand: {reft.summary()}")


# ---------------------------------------------------------------- data


def _load_rows(source: str, split: str) -> list[dict]:
    """Rows of a hub data set or of a local JSON file, through ``datasets.load_dataset``."""
    from datasets import load_dataset

    if Path(source).suffix == ".json":
        if not Path(source).is_file():
            hint = ""
            if Path(source).parent == DATA_DIR:
                hint = (" The smoke files ship inside the package (csreft_lite/recipes/smoke_data/, declared as "
                        "package data in pyproject.toml): this install of csreft_lite lacks them, so reinstall it.")
            raise FileNotFoundError(f"No data file at {source}.{hint}")
        return list(load_dataset("json", data_files=str(source), split="train"))
    return list(load_dataset(source, split=split))


def ultrafeedback_records(rows: Sequence[dict]) -> list[dict]:
    """Instruction/response pairs for supervised training (one response per prompt, as the LoReFT recipe): from
    ``openbmb/UltraFeedback`` the completion with the highest GPT-4 ``overall_score``; from
    ``HuggingFaceH4/ultrafeedback_binarized`` (``train_sft``) the ``chosen`` reply, the same one; ``{"instruction",
    "output"}`` rows as they are. Rows without a usable response are skipped."""
    records = []
    for row in rows:
        if "completions" in row:
            scored = [c for c in row["completions"] if (c.get("response") or "").strip()]
            if not scored:
                continue
            best = max(scored, key=lambda c: float(c.get("overall_score") or c.get("fine-grained_score") or -math.inf))
            records.append({"instruction": row["instruction"], "output": best["response"].strip()})
        elif "chosen" in row:
            reply = row["chosen"][-1]
            if reply.get("role") == "assistant" and reply.get("content", "").strip():
                records.append({"instruction": row["prompt"], "output": reply["content"].strip()})
        elif "instruction" in row and "output" in row:
            if str(row["output"]).strip():
                records.append({"instruction": row["instruction"], "output": row["output"], **({"input": row["input"]} if row.get("input") else {})})
        else:
            raise ValueError(f"Unrecognised training row with keys {sorted(row)}: expected UltraFeedback or instruction/output.")
    return records


def alpaca_eval_records(rows: Sequence[dict]) -> list[dict]:
    """AlpacaEval rows ``{"instruction", "output", "generator", "dataset"}``; ``output`` is the reference answer."""
    out = []
    for row in rows:
        if "instruction" not in row:
            raise ValueError(f"An AlpacaEval row needs 'instruction'; got keys {sorted(row)}.")
        out.append({"instruction": row["instruction"], "output": row.get("output", ""),
                    "generator": row.get("generator", "reference"), "dataset": row.get("dataset", "unknown")})
    return out


def _subsample(records: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(records):
        return records
    import random

    return random.Random(seed).sample(records, n)


def load_train_records(config: RecipeConfig) -> list[dict]:
    """Training pairs: UltraFeedback from the hub (full run) or ``smoke_data/smoke_train.json`` (smoke)."""
    records = ultrafeedback_records(_load_rows(config.train_dataset, config.train_split))
    records = _subsample(records, config.max_train_examples, config.seed)
    say(config, f"training data: {len(records):,} instruction/response pairs from {shown(config.train_dataset)}")
    return records


def load_eval_records(config: RecipeConfig) -> list[dict]:
    """AlpacaEval's 805 instructions with text-davinci-003's answers (full run), or the 6 shipped prompts (smoke)."""
    source = config.eval_dataset
    if source == cl_eval.ALPACA_EVAL_REPO:  # the JSON file itself: datasets >= 4 no longer runs the repo's loading script
        source = str(cl_eval.alpaca_eval_file("alpaca_eval.json", ", or pass a local copy as eval_dataset (--eval-dataset)"))
    records = alpaca_eval_records(_load_rows(source, "eval"))
    records = records[: config.max_eval_examples] if config.max_eval_examples else records
    say(config, f"eval prompts: {len(records)} from {shown(config.eval_dataset)}")
    return records


# ---------------------------------------------------------------- model, training, generation


def load_base(config: RecipeConfig):
    """The frozen base model and its tokenizer, on this process's device (one GPU per process under accelerate)."""
    from accelerate import PartialState

    if config.base_model == "course":
        model, tok = cl.load_course_model(dtype=config.dtype)
    else:
        device = PartialState().device if torch.cuda.is_available() else "cpu"
        model, tok = cl.load_model(config.base_model, dtype=config.dtype, device=device)
    say(config, f"base model: {config.base_model} ({sum(p.numel() for p in model.parameters()):,} parameters, {config.dtype}, {next(model.parameters()).device})")
    return model, tok


def build_reft(model, config: RecipeConfig) -> cl.ReftModel:
    """CS-ReFT interventions at the configured layers and positions, started from ``config.seed``: a run repeats
    exactly, so a re-run gives the same answers and AlpacaEval's cached verdicts cover them."""
    cl_train.set_seed(config.seed)
    d = model.config.hidden_size
    interventions = {layer: make_intervention(config, d) for layer in config.layers}
    return cl.ReftModel(model, interventions, positions=config.positions, share_positions=config.share_positions,
                        router=make_router(config, d), router_layer=config.router_layer)


def grad_accum_steps(config: RecipeConfig) -> int:
    """Accumulation steps that make ``effective_batch`` = batch_size × grad_accum × number of processes."""
    from accelerate import PartialState

    world = PartialState().num_processes
    per_step = config.batch_size * world
    if config.effective_batch % per_step:
        raise ValueError(f"effective_batch={config.effective_batch} is not a multiple of batch_size × GPUs = {per_step}.")
    return config.effective_batch // per_step


def train_reft(reft: cl.ReftModel, tok, records: list[dict], config: RecipeConfig) -> cl_train.TrainHistory:
    """Tokenize with the model's template and train the interventions (checkpoints in ``output_dir/checkpoint``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short smoke prompts have fewer than f5+l5 positions; that is fine
        dataset = cl_data.make_dataset(records, tok, template=config.template, max_length=config.max_length)
    if config.gradient_checkpointing:  # recompute each layer in the backward pass instead of keeping its activations
        reft.gradient_checkpointing_enable()  # train() switches the base to training mode with it, and back
        reft.model.config.use_cache = False
    accum = grad_accum_steps(config)
    say(config, f"training {len(dataset):,} examples: {config.epochs} epochs, batch {config.batch_size} × accumulation {accum} "
        f"(effective {config.effective_batch}), lr {config.lr}, max length {config.max_length}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    history = cl_train.train(
        reft, dataset, tok,
        epochs=config.epochs, batch_size=config.batch_size, grad_accum=accum, lr=config.lr,
        weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio, schedule=config.schedule, seed=config.seed,
        checkpoint_dir=str(Path(config.output_dir) / "checkpoint"), save_every=config.save_every, resume=config.resume,
        progress=not config.smoke,
    )
    if config.gradient_checkpointing:
        reft.gradient_checkpointing_disable()
        reft.model.config.use_cache = True
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""
    if not history.losses:
        say(config, f"nothing left to train: the checkpoint in {shown(config.output_dir)}/checkpoint is at step {history.steps}")
        return history
    rate = history.tokens / history.seconds if history.seconds else float("nan")
    say(config, f"trained {len(history.losses)} steps in {history.seconds:.0f} s: loss {history.losses[0]:.3f} → {history.final_loss:.3f}, "
        f"{rate:,.0f} supervised tokens/s{peak}")
    return history


def plot_losses(history: cl_train.TrainHistory, config: RecipeConfig, ax=None):
    """Training loss per optimiser step (``plots.loss_curve``); the title says SMOKE or FULL."""
    from .. import plots

    return plots.loss_curve(history.losses, ax=ax, title=f"{config.tag} CS-ReFT training loss",
                            ylabel="cross-entropy (response tokens)")


def generation_kwargs(config: RecipeConfig) -> dict:
    """The LoReFT recipe's decoding: greedy, no_repeat_ngram_size 5, repetition penalty 1.1."""
    return {"do_sample": False, "max_new_tokens": config.max_new_tokens, "repetition_penalty": config.repetition_penalty,
            "no_repeat_ngram_size": config.no_repeat_ngram_size}


def generate_outputs(reft, tok, eval_records: list[dict], config: RecipeConfig) -> tuple[list[str], Path]:
    """Answers to every eval instruction, written as alpaca_eval ``model_outputs`` (``output_dir/model_outputs.json``)."""
    instructions = [r["instruction"] for r in eval_records]
    start = time.perf_counter()
    outputs = cl_eval.generate_answers(
        reft, tok, instructions, batch_size=config.eval_batch_size, template=config.template, progress=not config.smoke,
        **generation_kwargs(config),
    )
    seconds = time.perf_counter() - start
    path = cl_eval.write_alpaca_eval_outputs(
        Path(config.output_dir) / "model_outputs.json", instructions, outputs, config.generator_name, [r["dataset"] for r in eval_records]
    )
    say(config, f"generated {len(outputs)} answers in {seconds:.0f} s → {shown(path)}")
    return outputs, path


# ---------------------------------------------------------------- scoring


LOCAL_JUDGE = "Qwen/Qwen2.5-7B-Instruct"  # the local judge of a full run without an OpenAI key


def resolve_judge(config: RecipeConfig) -> str:
    """``alpaca_eval_1``, ``alpaca_eval_2`` or ``local``: ``auto`` is AlpacaEval 1.0 (the papers') with a key, outside smoke mode."""
    if config.judge != "auto":
        return config.judge
    return "alpaca_eval_1" if os.environ.get("OPENAI_API_KEY") and not config.smoke else "local"


def describe(result: dict) -> str:
    """One line that says what a score is: the number(s), the judge and reference, the prompts, the answers' length."""
    lc = result.get("length_controlled_winrate")
    number = (f"LC {lc:.1f}% ± {result['lc_standard_error']:.1f} (raw {result['win_rate']:.1f}% ± {result['standard_error']:.1f})"
              if lc is not None else f"{result['win_rate']:.1f}% ± {result['standard_error']:.1f}")
    where = "comparable with" if result["comparable"] else "NOT comparable with"
    return (f"{result['label']}: {number} over {result['n_total']:.0f} prompts, mean answer {result['avg_length']:.0f} "
            f"characters; {where} the public leaderboard")


def local_judge_score(config: RecipeConfig, eval_records: list[dict], outputs: list[str], base=None, base_tok=None) -> dict:
    """The local judge's win rate (an approximation, labelled so); ``base``: the judge when ``judge_model`` is "base"."""
    from .. import judge as cl_judge

    name = config.judge_model or ("base" if config.smoke else LOCAL_JUDGE)
    if name == "base":
        judge, judge_tok, name = base, base_tok, cl.models.model_name(base)
    else:
        judge, judge_tok = cl.load_model(name, dtype=config.dtype)
    reference = eval_records[0]["generator"]
    annotations = cl_judge.judge_annotations(
        judge, judge_tok, [r["instruction"] for r in eval_records], [r["output"] for r in eval_records], outputs,
        reference_name=reference, model_name=config.generator_name, judge_name=name,
        batch_size=config.judge_batch_size, max_answer_tokens=config.judge_max_answer_tokens,
    )
    (Path(config.output_dir) / "local_judge_annotations.json").write_text(json.dumps(annotations, indent=1, ensure_ascii=False))
    result = cl_eval.win_rate(annotations)
    result.update(judge="local", annotator=annotations[0]["annotator"], judge_model=name, reference_generator=reference,
                  avg_length=sum(map(len, outputs)) / len(outputs), comparable=False,
                  label=f"local-judge approximation ({name} vs {reference}), not AlpacaEval")
    return result


def references(config: RecipeConfig) -> str | None:
    """The AlpacaEval judges' references: ``reference_outputs``, else the judge's official ones when ``eval_dataset``
    is AlpacaEval itself (None), else the ``output`` fields of ``eval_dataset`` (smoke: the shipped references)."""
    return config.reference_outputs or (None if config.eval_dataset == cl_eval.ALPACA_EVAL_REPO else config.eval_dataset)


def score(config: RecipeConfig, outputs_path: Path, eval_records: list[dict], outputs: list[str], base=None, base_tok=None) -> dict:
    """Score the answers with the configured judge (``resolve_judge``) against ``references`` and print what the number is."""
    judge = resolve_judge(config)
    if judge == "local":
        result = local_judge_score(config, eval_records, outputs, base, base_tok)
    else:
        result = cl_eval.alpaca_eval(outputs_path, Path(config.output_dir) / "alpaca_eval", judge,
                                     reference_outputs=references(config), judge_model=config.judge_model)
    say(config, describe(result))
    return result


# ---------------------------------------------------------------- memory and time guidance (arithmetic, not measurements)

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) and memory (GiB usable); MFU is an assumption.
GPUS = {
    "T4 (16 GB)": {"memory_gib": 15.0, "peak_tflops": 65, "mfu": 0.30, "dtype": "float16 (no bf16)"},
    "A100 40 GB": {"memory_gib": 39.4, "peak_tflops": 312, "mfu": 0.40, "dtype": "bfloat16"},
    "H100 80 GB": {"memory_gib": 79.1, "peak_tflops": 989, "mfu": 0.40, "dtype": "bfloat16"},
}
CUDA_OVERHEAD_GIB = 1.5  # CUDA context, allocator slack, intervention weights and AdamW state (~20 MB)


def memory_estimate_gib(micro_batch: int, seq_len: int = 768, checkpointing: bool = False, first_layer: int = 3,
                        shape: dict = LLAMA2_7B, supervised_share: float = 0.5) -> float:
    """Peak GPU memory of a training step on Llama-2-7B in 16-bit, by arithmetic (GiB).

    Weights: 2 bytes × 6.74B = 13.5 GB. Activations kept for the backward pass exist only from the
    first intervened layer up (nothing below it needs a gradient): about 34·d bytes per token and
    layer (Korthikanti et al., 2022, with fused attention; frozen weights keep a little less).
    With gradient checkpointing a layer keeps only its input (2·d bytes) and one layer is recomputed
    at a time. Logits exist only at supervised tokens: ~10 bytes per vocabulary entry (bf16, fp32 copy, grad).
    """
    d, layers = shape["d_model"], shape["n_layers"] - first_layer
    tokens = micro_batch * seq_len
    weights = 2 * shape["n_params"]
    per_layer = 34 * d
    acts = tokens * (layers * 2 * d + per_layer) if checkpointing else tokens * layers * per_layer
    logits = tokens * supervised_share * 10 * shape["vocab"]
    return (weights + acts + logits) / 2**30 + CUDA_OVERHEAD_GIB


def tokens_per_second_estimate(gpu: str, checkpointing: bool = False, first_layer: int = 3, shape: dict = LLAMA2_7B) -> float:
    """Training throughput by arithmetic: FLOPs per token ≈ 2N forward + 2N·(share of layers above the first
    intervention) backward (input gradients only: the weights are frozen), + another forward of those layers
    with checkpointing; divided into peak × an assumed utilisation (MFU)."""
    spec = GPUS[gpu]
    n = shape["n_params"]
    upper = (shape["n_layers"] - first_layer) / shape["n_layers"]
    flops = 2 * n + 2 * n * upper + (2 * n * upper if checkpointing else 0)
    return spec["mfu"] * spec["peak_tflops"] * 1e12 / flops


def guidance_rows(seq_len: int = 768, epoch_tokens: float = 64_000 * 500) -> list[dict]:
    """For each GPU: the largest micro-batch that fits (with and without checkpointing), tokens/s, hours per epoch.

    ``epoch_tokens``: UltraFeedback has ~64K prompts; ~500 tokens per example is an assumption.
    """
    rows = []
    for gpu, spec in GPUS.items():
        for ckpt in (False, True):
            fits = [b for b in (1, 2, 4, 8, 16, 32, 64) if memory_estimate_gib(b, seq_len, ckpt) <= spec["memory_gib"]]
            best = max(fits) if fits else 0
            rate = tokens_per_second_estimate(gpu, ckpt)
            rows.append({
                "gpu": gpu, "dtype": spec["dtype"], "checkpointing": ckpt, "max_micro_batch": best,
                "memory_gib": round(memory_estimate_gib(best or 1, seq_len, ckpt), 1),
                "tokens_per_s": round(rate), "hours_per_epoch": round(epoch_tokens / rate / 3600, 1),
            })
    return rows


# ---------------------------------------------------------------- the whole run


def run(config: RecipeConfig) -> dict:
    """Train, generate, write the outputs file, score; returns (and writes ``results.json``) a summary."""
    from accelerate import PartialState

    say(config, f"CS-ReFT AlpacaEval recipe: {'smoke run on CPU with the course model' if config.smoke else 'full run'}; "
        f"config: {json.dumps(dataclasses.asdict(config))}")
    print_budget(config)
    if resolve_judge(config) != "local":  # a missing key or reference file shows up now, not after hours of training
        cl_eval.alpaca_eval_references(resolve_judge(config), references(config))
    model, tok = load_base(config)
    reft = build_reft(model, config)
    say(config, reft.summary())
    history = train_reft(reft, tok, load_train_records(config), config)
    state = PartialState()
    if not state.is_main_process:  # other GPUs only helped to train
        return {}
    eval_records = load_eval_records(config)
    outputs, path = generate_outputs(reft, tok, eval_records, config)
    result = score(config, path, eval_records, outputs, base=model, base_tok=tok)
    summary = {
        "mode": "smoke" if config.smoke else "full",
        "config": dataclasses.asdict(config),
        "parameter_share_%": reft.parameter_share(),
        "train": {"steps": history.steps, "seconds": history.seconds, "losses": history.losses},
        "outputs": str(path),
        "score": result,
    }
    (Path(config.output_dir) / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    say(config, f"done: results in {shown(Path(config.output_dir) / 'results.json')}")
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m csreft_lite.recipes.alpacaeval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a YAML or JSON file of RecipeConfig fields")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="smoke", action="store_const", const=True, help="force the CPU smoke run")
    mode.add_argument("--full", dest="smoke", action="store_const", const=False, help="force the full run")
    for f in dataclasses.fields(RecipeConfig):
        if f.name == "smoke":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",) or isinstance(f.default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL")
        elif f.name == "layers":
            parser.add_argument(flag, help="e.g. '3;9;18;24'")
        else:
            kind = type(f.default) if f.default is not None else (str if "str" in str(f.type) else int)
            parser.add_argument(flag, type=kind)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    path, smoke = args.pop("config"), args.pop("smoke")
    config = make_config(path, smoke="auto" if smoke is None else smoke, **args)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
