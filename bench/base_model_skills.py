"""How the untrained course model does on each skill of ``csreft_lite.tasks`` (figures for bench/RESULTS.md).

    python bench/base_model_skills.py            # 50 held-out examples per skill, greedy, 12 new tokens

"exact" is the benchmark's score; "contains" counts replies where the answer appears as a whole
word (case-sensitive), a hint of what the model knows but does not say on its own.
"""

from __future__ import annotations

import argparse
import re
import time

import torch

import csreft_lite as cl
from csreft_lite import tasks
from csreft_lite.evaluate import generate_answers


def contains(reply: str, answer: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", reply) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="held-out examples per skill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--show", type=int, default=2, help="replies to print per skill")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = cl.load_course_model()
    start = time.perf_counter()
    print(f"{'skill':<24} exact   contains")
    for name in [*tasks.SKILLS, *("+".join(pair) for pair in tasks.COMPOSE)]:
        examples = tasks.get_skill(name).generate(args.n, "test", args.seed) if name in tasks.SKILLS \
            else tasks.compose(*name.split("+"), n=args.n, seed=args.seed)
        replies = generate_answers(model, tok, [e.instruction for e in examples], max_new_tokens=args.max_new_tokens)
        exact = tasks.score(replies, examples)[name]
        hint = sum(contains(r, e.output) for r, e in zip(replies, examples)) / len(examples)
        print(f"{name:<24} {exact:5.0%}   {hint:5.0%}")
        for e, r in list(zip(examples, replies))[: args.show]:
            print(f"    {e.instruction!r} -> {r!r}  (want {e.output!r})")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
