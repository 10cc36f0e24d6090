"""Evaluation: batched generation (the same code for a plain model and a ``ReftModel``, so "before" and "after" are
measured alike), per-skill accuracy, routing, and AlpacaEval 1.0 and 2.0 through alpaca_eval's own evaluator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .data import pad_token_id, prompt_batch
from .progress import Progress
from .reft_model import ReftModel


def generate_answers(model, tokenizer, instructions: Sequence, *, max_new_tokens: int = 32, batch_size: int = 16,
                     template: str = "auto", progress: bool = False, **generate_kwargs) -> list[str]:
    """Greedy answers (by default) to each instruction, without the prompt: prompts encoded as in training
    (``data.prompt_batch``), left-padded in batches; ``generate_kwargs`` go to ``generate``."""
    _check_list(instructions, "generate_answers")
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


def _check_list(instructions, name: str) -> None:
    """A list of prompts, not one string (whose characters would each become a prompt)."""
    if isinstance(instructions, (str, dict)):
        raise TypeError(f"{name} takes a list of instructions and got one {type(instructions).__name__}: pass [{instructions!r:.40}].")


def skill_accuracy(model, tokenizer, examples: Sequence, *, max_new_tokens: int = 16, batch_size: int = 32, **kwargs) -> dict[str, float]:
    """Held-out accuracy per skill (and the mean) of a list of ``tasks.Example``, by greedy generation."""
    from .tasks import score

    predictions = generate_answers(
        model, tokenizer, [e.instruction for e in examples], max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs
    )
    return score(predictions, examples)


# ---------------------------------------------------------------- routing


@torch.no_grad()
def route_prompts(reft, tokenizer, instructions: Sequence, *, template: str = "auto", batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The gates and the router's probabilities each prompt gets, ``([n, k], [n, k])``, exactly as at generation (the
    model runs up to the router's layer: ``ReftModel.route``). Under ``force_gates`` the probabilities are the gates."""
    _check_list(instructions, "route_prompts")
    if getattr(reft, "router", None) is None:
        raise ValueError("route_prompts() needs a ReftModel with a router (cl.CSReFT interventions).")
    device = next(reft.model.parameters()).device
    gates, probs = [], []
    for start in range(0, len(instructions), batch_size):
        batch = prompt_batch(tokenizer, instructions[start:start + batch_size], template)
        g, p, _ = reft.route(**{k: v.to(device) for k, v in batch.items()})
        gates.append(g.cpu())
        probs.append(g.cpu() if p is None else p.cpu())
    return torch.cat(gates), torch.cat(probs)


def routing_nmi(skills: Sequence, choices: Sequence) -> float:
    """Normalised mutual information between each example's skill and its subspace, ``I / ((H(skill) + H(choice)) / 2)``
    (scikit-learn's default): 1 when every skill has a subspace of its own, 0 when the choice says nothing of the skill
    (router collapse). Two skills sharing one subspace and a third with its own give about 0.73."""
    import math
    from collections import Counter

    if len(skills) != len(choices) or not skills:
        raise ValueError(f"routing_nmi needs one choice per example; got {len(skills)} skills and {len(choices)} choices.")
    n = len(skills)
    joint, by_skill, by_choice = Counter(zip(skills, choices)), Counter(skills), Counter(choices)
    mutual = sum(c / n * math.log(c * n / (by_skill[s] * by_choice[x])) for (s, x), c in joint.items())

    def count_entropy(counts: Counter) -> float:  # of the empirical distribution (routing.entropy: of probabilities)
        return -sum(c / n * math.log(c / n) for c in counts.values())

    h_skill, h_choice = count_entropy(by_skill), count_entropy(by_choice)
    return 0.0 if h_skill == 0 or h_choice == 0 else mutual / ((h_skill + h_choice) / 2)


# ---------------------------------------------------------------- AlpacaEval


def write_alpaca_eval_outputs(path: str | Path, instructions: Sequence[str], outputs: Sequence[str], generator: str,
                              datasets: Sequence[str] | None = None) -> Path:
    """Write answers in alpaca_eval's ``model_outputs`` format: a JSON list of
    ``{"instruction", "output", "generator", "dataset"}`` records."""
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs; they must pair up.")
    if not instructions:
        raise ValueError("No outputs to write.")
    datasets = list(datasets) if datasets is not None else ["helpful_base"] * len(outputs)
    records = [{"instruction": i, "output": o, "generator": generator, "dataset": d}
               for i, o, d in zip(instructions, outputs, datasets)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    return path


def _drop_client_config_warning(record) -> bool:
    """False for alpaca_eval's warning, on every judge request, that the OpenAI client comes from the environment."""
    return "We are using environment variables to construct the client configs" not in record.getMessage()


def _quiet_alpaca_eval_import() -> None:
    """Import alpaca_eval without its side effects on the program: its pkg_resources deprecation warning (alpaca-eval
    0.6 still uses it), the INFO level it sets on the root logger, and a warning per request about
    ``OPENAI_API_KEY``/``OPENAI_BASE_URL``, which are the standard way (and ours) to choose the judge's server."""
    import logging
    import warnings

    root, level = logging.getLogger(), logging.getLogger().level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import alpaca_eval.main  # noqa: F401
        import alpaca_eval.utils  # noqa: F401
    root.setLevel(level)
    if _drop_client_config_warning not in root.filters:
        root.addFilter(_drop_client_config_warning)


def read_alpaca_eval_outputs(path: str | Path):
    """A ``model_outputs`` file read by alpaca_eval's own loader (the DataFrame it would annotate), checked for what its
    evaluator needs: one row per instruction, string outputs, a single ``generator``."""
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
    """Win rate (in %) of ``output_2`` over ``output_1`` by alpaca_eval's ``metrics.get_winrate``; ``annotations`` have a
    ``preference`` (1 = output_1 better, 2 = output_2 better, 1.5 or 0 = tie; values in between allowed)."""
    _quiet_alpaca_eval_import()
    from alpaca_eval import metrics

    return {k: float(v) for k, v in metrics.get_winrate(annotations).items()}


ALPACA_EVAL_REPO = "tatsu-lab/alpaca_eval"  # a dataset repo of JSON/CSV files (its loading script no longer runs: datasets >= 4)
# The two AlpacaEval versions: alpaca_eval's annotator config, its judge model, the reference file and its generator,
# and the metric. A score is comparable with the public leaderboard only with this judge, these references, 805 prompts.
ALPACA_EVAL_JUDGES = {
    "alpaca_eval_1": {"annotator": "alpaca_eval_gpt4", "model": "gpt-4", "reference": "alpaca_eval.json",
                      "generator": "text_davinci_003", "metric": "get_winrate", "version": "AlpacaEval 1.0 win rate"},
    "alpaca_eval_2": {"annotator": "weighted_alpaca_eval_gpt4_turbo", "model": "gpt-4-1106-preview",
                      "reference": "alpaca_eval_gpt4_baseline.json", "generator": "gpt4_turbo",
                      "metric": "get_length_controlled_winrate", "version": "AlpacaEval 2.0 length-controlled win rate"},
}


def alpaca_eval_file(filename: str, hint: str = "") -> Path:
    """A file of the ``tatsu-lab/alpaca_eval`` dataset repo, downloaded once into the Hugging Face cache.

    Offline (or without the hub) only a cached copy works; without one, a ``FileNotFoundError`` says how to get it.
    """
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ALPACA_EVAL_REPO, filename, repo_type="dataset"))
    except OSError as e:  # offline, unreachable, or gone from the repo
        raise FileNotFoundError(
            f"AlpacaEval's {filename} is not in the Hugging Face cache and the hub did not provide it "
            f"({type(e).__name__}). On a machine with internet run `hf download {ALPACA_EVAL_REPO} {filename} "
            f"--repo-type dataset` (it fills ~/.cache/huggingface/hub; copy that over){hint}."
        ) from e


def _annotator_config(annotator: str, judge_model: str | None, directory: Path) -> str:
    """The annotator config to use: alpaca_eval's own, or a copy in ``directory`` asking ``judge_model`` instead."""
    if judge_model is None:
        return annotator
    import yaml
    from alpaca_eval import constants, utils

    configs = utils.load_configs(constants.EVALUATORS_CONFIG_DIR / annotator)
    for config in configs.values():  # the same prompt, parser and decoding; another model, always as a chat
        config["prompt_template"] = str(constants.EVALUATORS_CONFIG_DIR / config["prompt_template"])
        config["completions_kwargs"].update(model_name=judge_model, requires_chatml=True)
    (directory / "configs.yaml").write_text(yaml.safe_dump(configs))
    return str(directory / "configs.yaml")


def alpaca_eval_references(judge: str, reference_outputs: str | Path | None = None) -> Path:
    """The reference file ``judge`` compares with, once what it needs is checked: a key, the hub files (or local ones).

    Cheap: a long run calls it before training, so that a missing key or file shows up then, not hours later.
    """
    import os

    if judge not in ALPACA_EVAL_JUDGES:
        raise ValueError(f"judge must be one of {sorted(ALPACA_EVAL_JUDGES)} (AlpacaEval 1.0, 2.0), got {judge!r}.")
    spec = ALPACA_EVAL_JUDGES[judge]
    if not os.environ.get("OPENAI_API_KEY"):
        raise RuntimeError(f"judge {judge!r} calls an OpenAI-compatible server and needs OPENAI_API_KEY (any value "
                           "for a server without keys, with OPENAI_BASE_URL); without one use judge='local'.")
    if reference_outputs is not None and not Path(reference_outputs).is_file():
        raise FileNotFoundError(f"No reference outputs at {reference_outputs}: a JSON list of instruction/output/generator "
                                f"records, e.g. AlpacaEval's {spec['reference']}.")
    hint = ", or pass a local copy as reference_outputs (--reference-outputs)"
    reference = Path(reference_outputs) if reference_outputs else alpaca_eval_file(spec["reference"], hint)
    if spec["metric"] == "get_length_controlled_winrate":  # the LC regression reads instruction difficulties from it
        alpaca_eval_file("df_gamed.csv", "; alpaca_eval's length-controlled win rate needs it")
    return reference


def alpaca_eval(model_outputs: str | Path, output_dir: str | Path, judge: str = "alpaca_eval_1",
                reference_outputs: str | Path | None = None, judge_model: str | None = None) -> dict:
    """Score a ``model_outputs`` file with alpaca_eval's own evaluator and judge prompt; returns what the number is.

    ``judge``: a key of ``ALPACA_EVAL_JUDGES`` (1.0, the papers' raw win rate; 2.0, the field's length-controlled one
    since 2024). ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` choose the judge's server; ``judge_model`` asks it for
    another model (an open one behind vLLM, say), which makes the number incomparable. ``reference_outputs``: a local
    file instead of the official references. Verdicts are cached in ``output_dir``: scoring again costs no request.
    """
    import os
    import warnings

    spec, reference = ALPACA_EVAL_JUDGES[judge], alpaca_eval_references(judge, reference_outputs)
    _quiet_alpaca_eval_import()
    from alpaca_eval import main, utils

    references = utils.load_or_convert_to_dataframe(reference)
    unmatched = set(read_alpaca_eval_outputs(model_outputs)["instruction"]) - set(references["instruction"])
    if unmatched:  # alpaca_eval would silently judge only the others
        raise ValueError(f"{len(unmatched)} instructions of {model_outputs} are not in the references {reference}, "
                         f"e.g. {sorted(unmatched)[0][:60]!r}: give references to the same instructions (reference_outputs).")

    directory = Path(output_dir) / (spec["annotator"] + (f"@{judge_model.replace('/', '--')}" if judge_model else ""))
    directory.mkdir(parents=True, exist_ok=True)  # verdicts cached here (never in site-packages), config, results
    config = _annotator_config(spec["annotator"], judge_model, directory)
    with warnings.catch_warnings():  # the LC regression's scikit-learn deprecations are alpaca_eval's to fix
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        leaderboard, _ = main.evaluate(
            model_outputs=str(model_outputs), reference_outputs=str(reference), annotators_config=config,
            output_path=str(directory.parent if config == spec["annotator"] else directory),  # it appends a config name
            precomputed_leaderboard=None, is_cache_leaderboard=False, is_return_instead_of_print=True,
            fn_metric=spec["metric"], metric_kwargs={"save_weights_dir": None} if "length" in spec["metric"] else None,
            sort_by="win_rate", Annotator=_alpaca_eval_annotator(), caching_path=str(directory / "annotations_cache.json"),
        )
    row = leaderboard.iloc[0]  # win_rate, standard_error, n_total, avg_length (+ length_controlled_winrate, lc_standard_error)
    result = {k: v.item() if hasattr(v, "item") else v for k, v in row.items() if k != "mode"}
    model = judge_model or spec["model"]
    reference_generator = str(references["generator"].iloc[0])
    result.update(
        judge=judge, annotator=spec["annotator"], judge_model=model, reference_generator=reference_generator,
        reference_outputs=str(reference), judge_endpoint=os.environ.get("OPENAI_BASE_URL", "OpenAI"),
        comparable=(model, reference_generator, result["n_total"]) == (spec["model"], spec["generator"], 805),
        label=f"{spec['version']} ({spec['annotator']}: {model} vs {reference_generator})",
    )
    return result


def _alpaca_eval_annotator():
    """alpaca_eval's ``PairwiseAnnotator``, reading its verdict cache back with float preferences. pandas 3 reads a
    cache of whole preferences (1.0, 2.0) as int64, where alpaca_eval 0.6.6 then fails to set a tie (1.5): "Invalid
    value '1.5' for dtype 'int64'" on every re-score (goes when alpaca_eval casts the column itself)."""
    from alpaca_eval.annotators import PairwiseAnnotator

    class Annotator(PairwiseAnnotator):
        def load_(self, path=None):
            super().load_(path)
            if self.df_annotations is not None:
                self.df_annotations[self.annotation_key] = self.df_annotations[self.annotation_key].astype(float)

    return Annotator
