"""Evaluation: batched generation, per-skill accuracy, and AlpacaEval output files.

``generate_answers`` works for a plain Hugging Face model and for a ``ReftModel`` alike, so
"before" and "after" are measured by the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .data import pad_token_id, prompt_batch
from .progress import Progress
from .reft_model import ReftModel


def generate_answers(
    model,
    tokenizer,
    instructions: Sequence,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    template: str = "auto",
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers (by default) to each instruction, decoded without the prompt.

    Prompts are encoded by ``data.prompt_batch`` (the same ids and instruction spans as in training) and
    left-padded in batches; ``generate_kwargs`` go to ``generate`` (e.g. ``repetition_penalty=1.1,
    no_repeat_ngram_size=5`` as in the LoReFT AlpacaEval recipe).
    """
    instructions = list(instructions)
    if not instructions:
        raise ValueError("No instructions to answer.")
    generate_kwargs.setdefault("do_sample", False)
    is_reft = isinstance(model, ReftModel)
    device = next((model.model if is_reft else model).parameters()).device
    answers: list[str] = []
    bar = Progress(len(instructions), "generating", unit="answer", enabled=progress)
    for start in range(0, len(instructions), batch_size):
        batch = prompt_batch(tokenizer, instructions[start:start + batch_size], template)
        spans = {"instruction_spans": batch["instruction_spans"].to(device)} if is_reft else {}
        with torch.no_grad():
            out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer), **spans, **generate_kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        bar.update(len(new_tokens))
    bar.close()
    return answers


def skill_accuracy(model, tokenizer, examples: Sequence, *, max_new_tokens: int = 16, batch_size: int = 32, **kwargs) -> dict[str, float]:
    """Held-out accuracy per skill (and the mean) of ``tasks.Example``s, by greedy generation."""
    from .tasks import score

    predictions = generate_answers(
        model, tokenizer, [e.instruction for e in examples], max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs
    )
    return score(predictions, examples)


# ---------------------------------------------------------------- routing


@torch.no_grad()
def route(reft, tokenizer, instructions: Sequence, *, template: str = "auto", batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The gates and the router's probabilities each prompt gets, ``([n, k], [n, k])``, exactly as at generation.

    The prompts are encoded like ``generate_answers`` does (same ids, same instruction spans) and run
    once through the model; no answer is generated. Under ``force_gates`` the probabilities are the gates.
    """
    if getattr(reft, "router", None) is None:
        raise ValueError("route() needs a ReftModel with a router (cl.CSReFT interventions).")
    device = next(reft.model.parameters()).device
    gates, probs = [], []
    for start in range(0, len(instructions), batch_size):
        batch = prompt_batch(tokenizer, instructions[start:start + batch_size], template)
        reft(**{k: v.to(device) for k, v in batch.items()})
        gates.append(reft.last_gates.detach().cpu())
        probs.append(reft.last_probs.cpu() if reft.last_probs is not None else gates[-1])
    return torch.cat(gates), torch.cat(probs)


def routing_nmi(skills: Sequence, choices: Sequence) -> float:
    """Normalised mutual information between each example's skill and the subspace it was routed to.

    ``I(skill; choice) / ((H(skill) + H(choice)) / 2)`` in [0, 1] (the arithmetic-mean normalisation, as
    scikit-learn's default): 1 when every skill has a subspace of its own and uses it on every prompt,
    0 when the choice says nothing about the skill (router collapse: one subspace for everything).
    Two skills sharing one subspace and a third with its own give about 0.73.
    """
    import math
    from collections import Counter

    if len(skills) != len(choices) or not skills:
        raise ValueError(f"routing_nmi needs one choice per example; got {len(skills)} skills and {len(choices)} choices.")
    n = len(skills)
    joint, by_skill, by_choice = Counter(zip(skills, choices)), Counter(skills), Counter(choices)
    mutual = sum(c / n * math.log(c * n / (by_skill[s] * by_choice[x])) for (s, x), c in joint.items())

    def entropy(counts: Counter) -> float:
        return -sum(c / n * math.log(c / n) for c in counts.values())

    h_skill, h_choice = entropy(by_skill), entropy(by_choice)
    return 0.0 if h_skill == 0 or h_choice == 0 else mutual / ((h_skill + h_choice) / 2)


# ---------------------------------------------------------------- AlpacaEval


def write_alpaca_eval_outputs(
    path: str | Path,
    instructions: Sequence[str],
    outputs: Sequence[str],
    generator: str,
    datasets: Sequence[str] | None = None,
) -> Path:
    """Write answers in alpaca_eval's ``model_outputs`` format: a JSON list of
    ``{"instruction", "output", "generator", "dataset"}`` records."""
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs; they must pair up.")
    if not instructions:
        raise ValueError("No outputs to write.")
    datasets = list(datasets) if datasets is not None else ["helpful_base"] * len(outputs)
    records = [
        {"instruction": i, "output": o, "generator": generator, "dataset": d}
        for i, o, d in zip(instructions, outputs, datasets)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    return path


def _quiet_alpaca_eval_import() -> None:
    """Import alpaca_eval once without its pkg_resources deprecation warning (alpaca-eval 0.6 still uses it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import alpaca_eval.main  # noqa: F401
        import alpaca_eval.utils  # noqa: F401


def read_alpaca_eval_outputs(path: str | Path):
    """Load a ``model_outputs`` file with alpaca_eval's own loader and check what its evaluator needs.

    Returns the pandas DataFrame alpaca_eval would annotate: one row per instruction, with
    ``instruction`` and ``output`` (strings) and a single ``generator`` name.
    """
    _quiet_alpaca_eval_import()
    from alpaca_eval import utils

    df = utils.load_or_convert_to_dataframe(Path(path))
    missing = {"instruction", "output", "generator"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: alpaca_eval needs the columns {sorted(missing)}; found {sorted(df.columns)}.")
    if df["instruction"].duplicated().any():
        raise ValueError(f"{path}: an instruction appears twice; alpaca_eval merges outputs on the instruction.")
    if not all(isinstance(o, str) for o in df["output"]):
        raise ValueError(f"{path}: every output must be a string.")
    if df["generator"].nunique() != 1:
        raise ValueError(f"{path}: one file, one generator; found {sorted(df['generator'].unique())}.")
    return df


def win_rate(annotations) -> dict[str, float]:
    """Win rate (in %) of ``output_2`` over ``output_1`` by alpaca_eval's own metric (``metrics.get_winrate``).

    ``annotations``: records or a DataFrame with a ``preference`` column in alpaca_eval's
    convention (1 = output_1 better, 2 = output_2 better, 1.5 or 0 = tie; values in between allowed).
    """
    _quiet_alpaca_eval_import()
    from alpaca_eval import metrics

    return {k: float(v) for k, v in metrics.get_winrate(annotations).items()}


ALPACA_EVAL_1_ANNOTATOR = "alpaca_eval_gpt4"  # AlpacaEval 1.0: GPT-4 judge, reference text-davinci-003


def alpaca_eval_1(model_outputs: str | Path, output_dir: str | Path, name: str | None = None) -> dict[str, float]:
    """The AlpacaEval 1.0 win rate, as in the ReFT and CS-ReFT papers: GPT-4 judges against text-davinci-003.

    Needs ``OPENAI_API_KEY`` (it calls GPT-4, ~805 requests) and the hub (the reference outputs).
    Returns alpaca_eval's leaderboard row for this model (``win_rate``, ``standard_error``, ...).
    """
    import os

    if not os.environ.get("OPENAI_API_KEY"):
        raise RuntimeError("AlpacaEval's GPT-4 annotator needs OPENAI_API_KEY; without it use csreft_lite.judge (an approximation).")
    _quiet_alpaca_eval_import()
    from alpaca_eval import constants, main

    leaderboard, _ = main.evaluate(
        model_outputs=str(model_outputs),
        reference_outputs=constants.ALPACAEVAL_REFERENCE_OUTPUTS_1,
        annotators_config=ALPACA_EVAL_1_ANNOTATOR,
        name=name,
        output_path=str(output_dir),
        fn_metric="get_winrate",
        sort_by="win_rate",
        is_cache_leaderboard=False,  # never write our row into the package's shipped leaderboard
        is_return_instead_of_print=True,
    )
    row = leaderboard.loc[name or read_alpaca_eval_outputs(model_outputs)["generator"].iloc[0]]
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in row.items()}
