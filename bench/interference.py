"""The interference study: does giving each skill its own subspace, composed by a router, beat one shared edit?

    python bench/interference.py                   # the full study (3 seeds; see --help for sizes)
    python bench/interference.py --seeds 0 --n-train 16 --n-test 8 --epochs 1   # a smoke run

For every skill of the course benchmark (``csreft_lite.tasks.SKILLS``), held-out exact-match
accuracy of five conditions, all on the frozen course model (SmolLM2-135M-Instruct, fp32, CPU):

- ``untrained``: the model as it is (greedy; prompts in the chat markers without the default
  system prompt, ``csreft_lite.data.BARE_CHAT_TEMPLATE``, as in notebooks 03-04, for every condition;
  ``--template auto`` uses the model's full chat template instead, at about twice the cost).
- ``oracle``: one LoReFT (rank 4) per skill, each trained on its own skill only and evaluated on
  it: no interference by construction, the ceiling the mixture conditions aim at.
- ``LoReFT mix``: one LoReFT trained on the mixture of all skills, rank 27: the same trainable-parameter
  budget as CS-ReFT (k = 6 subspaces of rank 4 plus its d -> k router: 31,134 parameters per layer;
  a rank-27 LoReFT has 31,131).
- ``subspaces, no router``: ``CSReFT`` (k = 6, rank 4) trained and evaluated with every gate
  forced to 1 (``force_gates``). Note what this is: with mutually orthogonal subspaces and all gates
  at 1, ``Σᵢ Rᵢᵀ(Wᵢh + bᵢ − Rᵢh)`` *is* one LoReFT of rank k·r = 24 (stack the Rᵢ). So it is the
  same function class as the mixture LoReFT minus 3 directions; it isolates what the router adds.
- ``CS-ReFT``: ``CSReFT`` (k = 6, rank 4, soft sigmoid gates from the default linear router,
  no sparsity penalty), trained on the mixture, no skill labels.

One recipe for all: interventions at layers 3, 9, 18, 24, positions f5+l5 (tied), AdamW (weight
decay 0), linear decay, the same data, epochs, learning rate and batch size; mixture conditions see
the same examples the oracles see, all skills at once. Answers: greedy, up to 10 new tokens, scored
by ``tasks.score`` (exact, case-sensitive). Seeds change the training examples (``tasks`` seed), the
initialisation and the data order; the test set is fixed (seed 0). Results: mean ± std over seeds.

Writes the table to stdout (markdown), ``--out`` (default ``bench/interference.md`` is not written
unless asked), the figure to ``--figure`` (default ``bench/interference.png``) and raw numbers to
``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

LAYERS = [3, 9, 18, 24]
POSITIONS = "f5+l5"
RANK = 4
CONDITIONS = ["untrained", "oracle", "LoReFT mix", "subspaces, no router", "CS-ReFT"]


def matched_rank(d: int, k: int, rank: int) -> int:
    """The LoReFT rank whose parameter count comes closest to CSReFT(d, rank, k) with its linear router."""
    cs = 2 * k * rank * d + k * rank + d * k + k
    return min(range(1, d // 2), key=lambda r: abs(2 * r * d + r - cs))


def train_and_score(model, tok, build, train_examples, test_examples, args, seed, forced=None):
    """Build interventions, train them on ``train_examples``, return per-skill test accuracy."""
    import torch

    import csreft_lite as cl
    from csreft_lite import data, train
    from csreft_lite.evaluate import skill_accuracy

    train.set_seed(seed)  # the interventions' initialisation
    reft = cl.ReftModel(model, {layer: build() for layer in LAYERS}, positions=POSITIONS)
    try:
        records = [{"instruction": e.instruction, "output": e.output} for e in train_examples]
        dataset = data.make_dataset(records, tok, template=args.template)
        with reft.force_gates(forced) if forced is not None else contextlib.nullcontext():
            history = train.train(
                reft, dataset, tok, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, progress=False
            )
            with torch.no_grad():
                accuracy = skill_accuracy(reft, tok, test_examples, max_new_tokens=args.max_new_tokens, template=args.template)
        return accuracy, history.final_loss, reft.trainable_parameters()
    finally:
        reft.remove()


def run(args) -> dict:
    import torch

    import csreft_lite as cl
    from csreft_lite import tasks
    from csreft_lite.evaluate import skill_accuracy

    torch.set_num_threads(args.threads)
    if args.template is None:
        args.template = cl.data.BARE_CHAT_TEMPLATE
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    model, tok = cl.load_course_model()
    d = model.config.hidden_size
    skills = args.skills or list(tasks.SKILLS)
    k = len(skills)
    mix_rank = matched_rank(d, k, RANK)
    test = [e for s in skills for e in tasks.get_skill(s).generate(args.n_test, "test", 0)]
    results: dict = {c: {} for c in CONDITIONS}  # condition -> seed -> {skill: acc}
    params: dict = {}
    started = time.perf_counter()

    t0 = time.perf_counter()
    base = skill_accuracy(model, tok, test, max_new_tokens=args.max_new_tokens, template=args.template)
    results["untrained"] = {seed: base for seed in args.seeds}  # deterministic: the same for every seed
    params["untrained"] = 0
    log(f"untrained: {fmt(base, skills)} ({time.perf_counter() - t0:.0f} s)")

    for seed in args.seeds:
        mixture = tasks.make_dataset(skills, args.n_train, "train", seed)
        # oracle: one LoReFT per skill, trained and tested on that skill alone
        t0 = time.perf_counter()
        oracle = {}
        for s in skills:
            own = [e for e in mixture if e.skill == s]
            acc, loss, n = train_and_score(
                model, tok, lambda: cl.LoReFT(d, RANK), own, [e for e in test if e.skill == s], args, seed
            )
            oracle[s] = acc[s]
            params["oracle"] = n * k  # k separate LoReFTs together
            log(f"  seed {seed} oracle {s}: {acc[s]:.0%} (loss {loss:.3f})")
        results["oracle"][seed] = oracle
        log(f"seed {seed} oracle: {fmt(oracle, skills)} ({time.perf_counter() - t0:.0f} s)")

        for name, build, forced in (
            ("LoReFT mix", lambda: cl.LoReFT(d, mix_rank), None),
            ("subspaces, no router", lambda: cl.CSReFT(d, RANK, k), [1.0] * k),
            ("CS-ReFT", lambda: cl.CSReFT(d, RANK, k), None),
        ):
            t0 = time.perf_counter()
            acc, loss, n = train_and_score(model, tok, build, mixture, test, args, seed, forced)
            results[name][seed] = acc
            params[name] = n
            log(f"seed {seed} {name}: {fmt(acc, skills)} (loss {loss:.3f}, {time.perf_counter() - t0:.0f} s)")

    if "subspaces, no router" in params:  # the router exists but is never used with forced gates
        params["subspaces, no router"] -= len(LAYERS) * (d * k + k)
    return {
        "date": datetime.date.today().isoformat(),
        "skills": skills,
        "seeds": args.seeds,
        "settings": {
            "n_train_per_skill": args.n_train, "n_test_per_skill": args.n_test, "epochs": args.epochs, "lr": args.lr,
            "batch_size": args.batch_size, "layers": LAYERS, "positions": POSITIONS, "rank": RANK, "k": k,
            "mix_rank": mix_rank, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "template": args.template,
        },
        "params": params,
        "results": {c: {str(s): v for s, v in r.items()} for c, r in results.items()},
        "seconds": time.perf_counter() - started,
    }


def merge(runs: list[dict]) -> dict:
    """One result from runs of different seeds with the same settings (e.g. seeds run in parallel processes)."""
    first = runs[0]
    for other in runs[1:]:
        if other["settings"] != first["settings"] or other["skills"] != first["skills"]:
            raise ValueError("these runs used different settings or skills; only runs of the same study can be merged")
    seeds = [s for r in runs for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears in more than one run: {seeds}")
    merged = {**first, "seeds": seeds, "date": max(r["date"] for r in runs)}
    merged["results"] = {c: {s: v for r in runs for s, v in r["results"][c].items()} for c in first["results"]}
    merged["seconds"] = max(r["seconds"] for r in runs)  # the runs ran side by side
    return merged


def fmt(acc: dict, skills) -> str:
    return " ".join(f"{s} {acc[s]:.0%}" for s in skills if s in acc)


def summarize(raw: dict) -> dict:
    """condition -> skill (and "mean") -> (mean, std) over seeds, in percent."""
    out = {}
    for c in CONDITIONS:
        per_seed = list(raw["results"][c].values())
        rows = {}
        for s in [*raw["skills"], "mean"]:
            values = [100 * (statistics.mean(r[x] for x in raw["skills"]) if s == "mean" else r[s]) for r in per_seed]
            rows[s] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out[c] = rows
    return out


def table(raw: dict) -> str:
    summary = summarize(raw)
    st = raw["settings"]
    head = (
        f"Held-out exact-match accuracy (%), mean ± std over seeds {raw['seeds']}; {st['n_train_per_skill']} training and "
        f"{st['n_test_per_skill']} test examples per skill, {st['epochs']} epochs, lr {st['lr']}, batch {st['batch_size']}, "
        f"layers {st['layers']}, {st['positions']}; prompts {'in ' + repr(st['template']) if 'template' in st else 'in the chat template'}; "
        f"measured {raw['date']} ({raw['seconds'] / 60:.0f} min).\n"
    )
    lines = [
        head,
        "| skill | " + " | ".join(CONDITIONS) + " |",
        "|---|" + "---:|" * len(CONDITIONS),
    ]
    for s in [*raw["skills"], "mean"]:
        cells = []
        for c in CONDITIONS:
            m, sd = summary[c][s]
            cells.append(f"{m:.0f}" if c == "untrained" else f"{m:.0f} ± {sd:.0f}")
        name = f"**{s}**" if s == "mean" else s
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    p = raw["params"]
    lines.append("| trainable params | " + " | ".join(f"{p.get(c, 0):,}" for c in CONDITIONS) + " |")
    return "\n".join(lines)


def figure(raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(raw)
    groups = [*raw["skills"], "mean"]
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    width = 0.8 / len(CONDITIONS)
    colors = ["#bbbbbb", "#4c72b0", "#dd8452", "#937860", "#55a868"]
    for i, c in enumerate(CONDITIONS):
        xs = [g + (i - (len(CONDITIONS) - 1) / 2) * width for g in range(len(groups))]
        means = [summary[c][s][0] for s in groups]
        stds = [summary[c][s][1] for s in groups]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=c, color=colors[i % len(colors)], error_kw={"lw": 0.8})
    ax.set_xticks(range(len(groups)), [g.replace("_", " ") for g in groups])
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Interference on the course benchmark (SmolLM2-135M, {len(raw['seeds'])} seeds, mean ± std)", fontsize=10)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.grid(axis="y", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skills", nargs="+", help="default: every skill of csreft_lite.tasks")
    parser.add_argument("--n-train", type=int, default=64, help="training examples per skill")
    parser.add_argument("--n-test", type=int, default=40, help="held-out examples per skill")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--template", default=None, help="prompt template (default: csreft_lite.data.BARE_CHAT_TEMPLATE; 'auto' for the model's chat template)")
    parser.add_argument("--figure", type=Path, default=Path(__file__).with_name("interference.png"))
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="only redraw the table and figure from saved --json files (several: runs of different seeds, merged)")
    args = parser.parse_args()

    raw = merge([json.loads(p.read_text()) for p in args.from_json]) if args.from_json else run(args)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(raw, indent=1))
    text = table(raw)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.figure:
        figure(raw, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
