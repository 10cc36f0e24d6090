"""Fixed-seed fingerprint of the library's behaviour on the course model: losses, gates, answers.

A refactor that claims "behaviour unchanged" runs this before and after and compares:

    python scripts/check_behaviour.py --write before.json --save-checkpoints /tmp/ckpt   # on the old code
    python scripts/check_behaviour.py --compare before.json --load-checkpoints /tmp/ckpt # on the new code

Three short trainings cover the paths a refactor can move: a tied LoReFT (f5+l5), an untied DiReFT with
gradient accumulation, warm-up and a linear schedule, and a routed CS-ReFT (k-means start, top-1 gates,
balance term). Each records its per-step losses and learning rates, the gates of held-out prompts and
their greedy answers. ``--load-checkpoints`` also reloads checkpoints the old code wrote and checks that
they answer exactly as they did. Runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import csreft_lite as cl
from csreft_lite import evaluate, tasks
from csreft_lite.training import set_seed
from csreft_lite.data import make_dataset
from csreft_lite.tasks import BARE_CHAT_TEMPLATE

SKILLS = ["lowercase", "first_letter", "plural"]


def records(examples):
    return [{"instruction": e.instruction, "output": e.output} for e in examples]


def run_one(name, model, tok, build, train_kwargs, train_set, probes, save_dir):
    set_seed(0)
    reft = build()
    data = make_dataset(records(train_set), tok, template=BARE_CHAT_TEMPLATE)
    result = {}
    if reft.router is not None:
        result["clusters"] = reft.init_router(data, tok).tolist()
    history = cl.train(reft, data, tok, seed=0, progress=False, **train_kwargs)
    result["losses"] = history.losses
    result["learning_rates"] = history.learning_rates
    instructions = [e.instruction for e in probes]
    if reft.router is not None:
        gates, probs = evaluate.route_prompts(reft, tok, instructions, template=BARE_CHAT_TEMPLATE)
        result["gates"], result["probs"] = gates.tolist(), probs.tolist()
    result["answers"] = evaluate.generate_answers(reft, tok, instructions, max_new_tokens=8, template=BARE_CHAT_TEMPLATE)
    if save_dir:
        reft.save(Path(save_dir) / name)
    reft.remove()
    return result


def fingerprint(save_dir=None):
    model, tok = cl.load_course_model()
    d = model.config.hidden_size
    train_set = tasks.make_examples(SKILLS, 8, "train", 0)
    probes = [e for s in SKILLS for e in tasks.get_skill(s).generate(3, "test", 0)]
    runs = {
        "loreft_tied": (lambda: cl.ReftModel(model, {4: cl.LoReFT(d, 4)}, positions="f5+l5"),
                        {"epochs": 1, "batch_size": 4, "lr": 1e-2}),
        "direft_untied": (lambda: cl.ReftModel(model, {3: cl.DiReFT(d, 2), 8: cl.DiReFT(d, 2)}, positions="f3+l3",
                                               share_positions=False),
                          {"epochs": 2, "batch_size": 2, "grad_accum": 2, "lr": 5e-3, "warmup_ratio": 0.25}),
        "csreft_routed": (lambda: cl.ReftModel(model, {4: cl.CSReFT(d, 4, 3), 10: cl.CSReFT(d, 4, 3)}, positions="f5+l5",
                                               router=cl.Router(d, 3, gating="topk", top_k=1, balance=1.0), router_layer=2),
                          {"epochs": 1, "batch_size": 4, "lr": 1e-2}),
    }
    return {name: run_one(name, model, tok, build, kw, train_set, probes, save_dir) for name, (build, kw) in runs.items()}


def reload_answers(load_dir, expected):
    """Answers and gates of checkpoints written earlier, reloaded with this code."""
    model, tok = cl.load_course_model()
    probes = [e.instruction for s in SKILLS for e in tasks.get_skill(s).generate(3, "test", 0)]
    problems = []
    for name, want in expected.items():
        reft = cl.ReftModel.from_pretrained(model, Path(load_dir) / name)
        answers = evaluate.generate_answers(reft, tok, probes, max_new_tokens=8, template=BARE_CHAT_TEMPLATE)
        if answers != want["answers"]:
            problems.append(f"{name}: reloaded checkpoint answers {answers} vs {want['answers']}")
        if reft.router is not None:
            gates, _ = evaluate.route_prompts(reft, tok, probes, template=BARE_CHAT_TEMPLATE)
            if gates.tolist() != want["gates"]:
                problems.append(f"{name}: reloaded checkpoint gates differ")
        reft.remove()
        print(f"{name}: checkpoint from {load_dir} loads, {len(probes)} answers {'match' if not problems else 'DIFFER'}")
    return problems


def compare(new, old, tol=1e-5):
    problems = []
    for name in old:
        for key, want in old[name].items():
            got = new[name].get(key)
            if isinstance(want, list) and want and isinstance(want[0], float):
                worst = max(abs(a - b) for a, b in zip(got, want)) if len(got) == len(want) else math.inf
                ok = worst <= tol
                detail = f"max difference {worst:.2e} over {len(want)} values"
            elif isinstance(want, list) and want and isinstance(want[0], list) and isinstance(want[0][0], float):
                worst = max(abs(a - b) for ra, rb in zip(got, want) for a, b in zip(ra, rb))
                ok, detail = worst <= tol, f"max difference {worst:.2e}"
            else:
                ok, detail = got == want, "identical" if got == want else f"{got} vs {want}"
            print(f"{name:<14} {key:<15} {'same' if ok else 'DIFFERENT'}: {detail}")
            if not ok:
                problems.append(f"{name}.{key}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", help="write the fingerprint to this JSON file")
    parser.add_argument("--compare", help="compare with a fingerprint written earlier")
    parser.add_argument("--save-checkpoints", help="save each trained ReftModel under this folder")
    parser.add_argument("--load-checkpoints", help="reload checkpoints saved earlier (with --compare)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    result = fingerprint(args.save_checkpoints)
    if args.write:
        Path(args.write).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.write}")
    problems = []
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        problems = compare(result, old)
        if args.load_checkpoints:
            problems += reload_answers(args.load_checkpoints, old)
        print("behaviour unchanged" if not problems else f"behaviour CHANGED: {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
