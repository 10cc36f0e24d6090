"""What CS-ReFT's subspaces buy: controls for orthogonality, freezing and gating, and regimes for composition.

    python bench/composition.py                                    # every condition, seeds 0-4 (see --help)
    python bench/composition.py --regimes labels shared --seeds 0  # some conditions, one seed
    python bench/composition.py --table                            # tables and figure from the saved runs

Each (condition, seed) is one JSON file in ``--runs`` (default ``bench/composition_runs/``): a run that exists is
skipped, so the study resumes after an interruption and splits over processes (give each its own seeds).
Course model (SmolLM2-135M-Instruct, fp32, CPU); settings as notebooks 03/04 (``interference.SMALL``: layers 4 and
10, rank 4 per skill, f5+l5, 32 training and 20 held-out examples per skill, batch 4, lr 1e-2); greedy, exact match.

``sequential`` conditions (notebook 03: lowercase = A for 24 optimiser steps, then uppercase = B for 24; same words,
opposite answers). A and B are tested with their own gate only, and with both gates open:
- ``seq_shared4`` / ``seq_shared8``: one LoReFT of rank 4 (half the parameters) / rank 8 (the same count);
- ``seq_orth_frozen`` / ``seq_orth_free``: ``CSReFT`` (all rows orthonormal together), subspace A frozen or not during B;
- ``seq_indep``: ``csreft_lite.controls.SeparateBases``, two LoReFT edits each orthonormalised on its own (their subspaces may overlap),
  same parameter count, nothing frozen (no gradient of B reaches A's parameters: the run checks it).
Also recorded: how far A's parameters moved while B trained.

``compose`` conditions (notebook 04: lowercase, first_letter, plural trained together, 3 epochs). Each skill is
tested with its own gate and with every gate open; each composable pair (lowercase+plural, lowercase+first_letter,
held-out words) with the pair's two gates at 1, both at 0.5, and at the scales that did best on 10 composed prompts
of *training* words (a 3×3 grid over 0.5, 0.75, 1.0; ``/work/shared/COMPOSITION.md``'s calibration used 5×5 over 0.3-1.0):
- ``labels``: one CS-ReFT subspace per skill, the skill label as gate in training (today's course);
- ``indep``: the same with ``SeparateBases`` (no orthogonality between subspaces): the control for orthogonality;
- ``coact``: ``labels``, each example also opening one random other subspace (co-activation);
- ``pair1``: ``labels`` plus 32 composed prompts of lowercase+plural (training words) with both gates open:
  lowercase+plural is a seen pair on new words, lowercase+first_letter a held-out pair;
- ``pair2``: ``labels`` plus 32 composed prompts of each of the two pairs (both seen pairs, tested on new words);
- ``open_pair2``: ``pair2``, every other subspace also open with probability 0.5 on each example (drawn once per
  example): open gates that the prompt does not ask for must not change the answer;
- ``open_pair2_e2``: ``open_pair2`` trained for 2 epochs instead of 3 (80 optimiser steps instead of 120);
- ``open_pair1``: ``pair1`` with ``open_pair2``'s extra open gates: one pair shown composed, the other held out
  (notebook 04, section 7);
- ``shared``, ``shared_pair1``, ``shared_pair2``: one LoReFT of the same parameter count (rank 12) on the same data
  as ``labels`` / ``pair1`` / ``pair2``, no gates: what reading the prompt does without subspaces.
"""

from __future__ import annotations

import datetime
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interference import RANK, SMALL, Bench, one_hot, study_parser  # noqa: E402

from csreft_lite.controls import SeparateBases  # noqa: E402

SEQ = ["lowercase", "uppercase"]
SEQ_STEPS = 24
SKILLS = ["lowercase", "first_letter", "plural"]
PAIRS = [("lowercase", "plural"), ("lowercase", "first_letter")]
GRID = [0.5, 0.75, 1.0]
SEQUENTIAL = ["seq_shared4", "seq_shared8", "seq_orth_frozen", "seq_orth_free", "seq_indep"]
COMPOSE = ["labels", "indep", "coact", "pair1", "pair2", "open_pair2", "open_pair2_e2", "open_pair1", "shared", "shared_pair1", "shared_pair2"]
REGIMES = SEQUENTIAL + COMPOSE
MAX_NEW = 8
RUNS = Path(__file__).with_name("composition_runs")
log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def counted(reft) -> int:
    """Trainable parameters that the condition uses: a gated model's router exists but never runs (gates are given)."""
    n = sum(p.numel() for p in reft.interventions.parameters())
    return n


def subspace_params(reft, i: int) -> torch.Tensor:
    """Subspace i's R, W and b at every layer, flattened (to measure how far they moved)."""
    out = []
    for m in reft.interventions.values():
        out += [m.R[i].flatten(), m.W[i].flatten(), m.b[i].flatten()]
    return torch.cat(out).detach().clone()


# ---------------------------------------------------------------- sequential controls


def sequential(b: Bench, regime: str, seed: int) -> dict:
    cl, tasks, st = b.cl, b.cl.tasks, SMALL
    train = {s: tasks.get_skill(s).generate(st["n_train"], "train", seed) for s in SEQ}
    test = {s: tasks.get_skill(s).generate(st["n_test"], "test", 0) for s in SEQ}
    epochs = SEQ_STEPS * st["batch_size"] / st["n_train"]
    a, bb = SEQ
    out: dict = {}
    if regime.startswith("seq_shared"):
        reft = b.reft(lambda: cl.LoReFT(b.d, int(regime[-1])), st, seed)
        b.fit(reft, train[a], st, seed, epochs=epochs)
        out["A after A"] = b.accuracy(reft, test[a])[a]
        b.fit(reft, train[bb], st, seed, epochs=epochs)
        out["A after B"] = out["A after B, both on"] = b.accuracy(reft, test[a])[a]
        out["B after B"] = out["B after B, both on"] = b.accuracy(reft, test[bb])[bb]
        out["params"] = counted(reft)
        reft.remove()
        return out
    make = (lambda: SeparateBases(b.d, RANK, 2)) if regime == "seq_indep" else (lambda: cl.CSReFT(b.d, RANK, 2))
    reft = b.reft(make, st, seed)
    A, B, both = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]
    b.fit(reft, train[a], st, seed, epochs=epochs, gates=lambda e: A)
    out["A after A"] = b.accuracy(reft, test[a], A)[a]
    before = subspace_params(reft, 0)
    if regime == "seq_orth_frozen":
        for m in reft.interventions.values():
            m.freeze_subspaces(0)
    b.fit(reft, train[bb], st, seed, epochs=epochs, gates=lambda e: B)
    out["A moved"] = float((subspace_params(reft, 0) - before).abs().max())
    out["A after B"] = b.accuracy(reft, test[a], A)[a]
    out["A after B, both on"] = b.accuracy(reft, test[a], both)[a]
    out["B after B"] = b.accuracy(reft, test[bb], B)[bb]
    out["B after B, both on"] = b.accuracy(reft, test[bb], both)[bb]
    out["params"] = counted(reft)
    reft.remove()
    return out


# ---------------------------------------------------------------- composition regimes


def training_records(regime: str, seed: int, tasks) -> list[tuple]:
    """(example, gates) for every training example of the regime; gates None for the shared LoReFT."""
    k, st = len(SKILLS), SMALL
    regime = regime.removesuffix("_e2")  # the same examples and gates, fewer epochs
    rng = random.Random(f"gates/{regime}/{seed}")
    data = tasks.make_examples(SKILLS, st["n_train"], "train", seed)
    n_pairs = int(regime[-1]) if regime[-5:-1] == "pair" else 0  # pair1: lowercase+plural; pair2: both pairs
    if n_pairs:
        data = data + [e for p in PAIRS[:n_pairs] for e in tasks.compose(*p, n=st["n_train"], seed=seed, split="train")]
        random.Random(f"pair{n_pairs}/{seed}").shuffle(data)
    records = []
    for e in data:
        parts = e.skill.split("+")
        if regime.startswith("shared"):
            records.append((e, None))
            continue
        g = [1.0 if s in parts else 0.0 for s in SKILLS]
        if regime == "coact":
            other = rng.choice([i for i in range(k) if SKILLS[i] not in parts])
            g[other] = 1.0
        elif regime.startswith("open_"):
            g = [1.0 if s in parts or rng.random() < 0.5 else 0.0 for s in SKILLS]
        records.append((e, g))
    return records


def compose(b: Bench, regime: str, seed: int) -> dict:
    cl, tasks, st, k = b.cl, b.cl.tasks, SMALL, len(SKILLS)
    records = training_records(regime, seed, tasks)
    test = {s: tasks.get_skill(s).generate(st["n_test"], "test", 0) for s in SKILLS}
    composed = {"+".join(p): tasks.compose(*p, n=st["n_test"], seed=0) for p in PAIRS}
    calib = {"+".join(p): tasks.compose(*p, n=10, seed=seed, split="train") for p in PAIRS}
    out: dict = {"single": {}, "all open": {}, "composed": {}}
    if regime.startswith("shared"):
        reft = b.reft(lambda: cl.LoReFT(b.d, RANK * k), st, seed)
        b.fit(reft, [e for e, _ in records], st, seed)
        for s in SKILLS:
            out["single"][s] = out["all open"][s] = b.accuracy(reft, test[s])[s]
        for name, ex in composed.items():
            parts = tasks.composed_parts(answers(b, reft, ex), ex)
            out["composed"][name] = {"1,1": parts["both"], "0.5,0.5": None, "calibrated": None, "parts": parts}
        out["params"] = counted(reft)
        reft.remove()
        return out
    make = (lambda: SeparateBases(b.d, RANK, k)) if regime == "indep" else (lambda: cl.CSReFT(b.d, RANK, k))
    reft = b.reft(make, st, seed)
    gates = {e.instruction: g for e, g in records}
    b.fit(reft, [e for e, _ in records], st, seed, gates=lambda e: gates[e.instruction],
          epochs=2 if regime.endswith("_e2") else None)
    for i, s in enumerate(SKILLS):
        out["single"][s] = b.accuracy(reft, test[s], one_hot(i, k))[s]
        out["all open"][s] = b.accuracy(reft, test[s], [1.0] * k)[s]
    for name, ex in composed.items():
        pair = name.split("+")

        def g(x, y):
            return [x if s == pair[0] else y if s == pair[1] else 0.0 for s in SKILLS]

        parts = tasks.composed_parts(answers(b, reft, ex, g(1.0, 1.0)), ex)
        grid = {(x, y): tasks.composed_parts(answers(b, reft, calib[name], g(x, y)), calib[name])["both"] for x in GRID for y in GRID}
        best = max(grid, key=lambda xy: (grid[xy], -abs(xy[0] - 1) - abs(xy[1] - 1)))  # ties: nearest to (1, 1)
        out["composed"][name] = {"1,1": parts["both"], "parts": parts,
                                 "0.5,0.5": tasks.composed_parts(answers(b, reft, ex, g(0.5, 0.5)), ex)["both"],
                                 "calibrated": tasks.composed_parts(answers(b, reft, ex, g(*best)), ex)["both"],
                                 "scales": list(best), "calibration both": grid[best]}
    out["params"] = counted(reft)
    reft.remove()
    return out


def answers(b: Bench, reft, examples, gates=None) -> list[str]:
    import contextlib

    with reft.force_gates(gates) if gates is not None else contextlib.nullcontext():
        return b.cl.evaluate.generate_answers(reft, b.tok, [e.instruction for e in examples], max_new_tokens=MAX_NEW,
                                              template=b.template, batch_size=32)


# ---------------------------------------------------------------- running, tables, figure


def run(args) -> None:
    b = Bench(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for regime in args.regimes:
            path = args.runs / f"{regime}_s{seed}.json"
            if path.exists():
                continue
            t0 = time.perf_counter()
            result = (sequential if regime in SEQUENTIAL else compose)(b, regime, seed)
            record = {"regime": regime, "seed": seed, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                      "seconds": round(time.perf_counter() - t0), "threads": args.threads, "result": result}
            path.write_text(json.dumps(record, indent=1))
            log(f"{regime} seed {seed}: {time.perf_counter() - t0:.0f} s  {json.dumps(result)[:300]}")


def load(runs: Path) -> dict:
    out: dict = {}
    for path in sorted(runs.glob("*.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["regime"], {})[r["seed"]] = r
    return out


def fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.0f} ± {sd:.0f} ({', '.join(f'{p:.0f}' for p in pct)})"


def tables(runs: dict) -> str:
    lines = []
    seq = [r for r in SEQUENTIAL if r in runs]
    if seq:
        keys = ["A after A", "A after B", "A after B, both on", "B after B", "B after B, both on"]
        lines += ["### Sequential: lowercase (A), then uppercase (B)", "",
                  "| condition | params | seeds | " + " | ".join(keys) + " | A's parameters moved (max abs) |",
                  "|---|---:|---|" + "---:|" * (len(keys) + 1)]
        for reg in seq:
            rs = [runs[reg][s]["result"] for s in sorted(runs[reg])]
            moved = [r.get("A moved") for r in rs]
            mv = "–" if moved[0] is None else f"{max(moved):.1e}"
            lines.append(f"| {reg} | {rs[0]['params']:,} | {len(rs)} | " + " | ".join(fmt([r[k] for r in rs]) for k in keys) + f" | {mv} |")
        lines.append("")
    comp = [r for r in COMPOSE if r in runs]
    if comp:
        lines += ["### Composition: lowercase, first_letter, plural", "",
                  "Single skills: mean over the three skills. Composed: share of the 20 held-out prompts answered with both skills.", "",
                  "| condition | params | seeds | own gate | all gates open | " +
                  " | ".join(f"{p} at {how}" for p in ["lowercase+plural", "lowercase+first_letter"] for how in ("1,1", "0.5,0.5", "calibrated")) + " |",
                  "|---|---:|---|" + "---:|" * 8]
        for reg in comp:
            rs = [runs[reg][s]["result"] for s in sorted(runs[reg])]
            own = fmt([statistics.mean(r["single"].values()) for r in rs])
            allo = fmt([statistics.mean(r["all open"].values()) for r in rs])
            cells = [fmt([r["composed"][p][how] for r in rs]) for p in ["lowercase+plural", "lowercase+first_letter"]
                     for how in ("1,1", "0.5,0.5", "calibrated")]
            lines.append(f"| {reg} | {rs[0]['params']:,} | {len(rs)} | {own} | {allo} | " + " | ".join(cells) + " |")
        lines += ["", "Per skill, own gate / all gates open (mean over seeds):", ""]
        for reg in comp:
            rs = [runs[reg][s]["result"] for s in sorted(runs[reg])]
            per = ", ".join(f"{s} {100 * statistics.mean(r['single'][s] for r in rs):.0f} / {100 * statistics.mean(r['all open'][s] for r in rs):.0f}"
                            for s in SKILLS)
            parts = rs[0]["composed"]["lowercase+plural"]["parts"]
            wrong = ", ".join(f"{k} {100 * statistics.mean(r['composed']['lowercase+plural']['parts'][k] for r in rs):.0f}" for k in parts)
            lines.append(f"- {reg}: {per}; lowercase+plural at (1, 1): {wrong}")
    return "\n".join(lines)


def figure(runs: dict, path: Path) -> None:
    """Per composable pair, each regime's isolation (single skills with every gate open; a shared LoReFT has no gates:
    its plain accuracy) against composition ("both" with the pair's gates at 1, and at calibrated scales), mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = [r for r in COMPOSE if r in runs]
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(11, 5.0), dpi=100, sharey=True)
    for ax, pair in zip(axes, ["+".join(p) for p in PAIRS]):
        for i, reg in enumerate(comp):
            rs = [runs[reg][s]["result"] for s in sorted(runs[reg])]
            xs = [100 * statistics.mean(r["all open"].values()) for r in rs]
            x, xe = statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0
            for how, m in (("1,1", "o"), ("calibrated", "^")):
                ys = [r["composed"][pair][how] for r in rs]
                if any(y is None for y in ys):
                    continue
                ys = [100 * y for y in ys]
                ax.errorbar(x, statistics.mean(ys), xerr=xe, yerr=statistics.stdev(ys) if len(ys) > 1 else 0, fmt=m,
                            color=plt.cm.tab20(i % 20), capsize=2, ms=7, alpha=1 if how == "1,1" else 0.5,
                            label=f"{reg} ({len(rs)} seeds)" if how == "1,1" else None)
        ax.set_xlabel("isolation: single skills with every gate open (%)")
        ax.set_title(f"{pair} (o: gates 1,1; ^: calibrated scales)", fontsize=9)
        ax.set_xlim(-3, 103)
        ax.set_ylim(-3, 103)
        ax.grid(lw=0.3)
    axes[0].set_ylabel("composition: held-out prompts answered with both skills (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=6, frameon=False)
    fig.suptitle("Course model (SmolLM2-135M), mean ± std over seeds; a shared LoReFT has no gates (x: its accuracy)", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the legend below the panels
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = study_parser(__doc__, "regimes", REGIMES, RUNS, "only print the tables and draw the figure from --runs")
    parser.add_argument("--figure", type=Path, default=Path(__file__).with_name("composition.png"))
    args = parser.parse_args()
    if not args.table:
        run(args)
    runs = load(args.runs)
    print(tables(runs))
    if any(r in runs for r in COMPOSE):
        figure(runs, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
