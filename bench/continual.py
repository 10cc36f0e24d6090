"""Skills added one at a time: what CS-ReFT's router buys, against the baseline a practitioner would use (issue 26).

    python bench/continual.py                            # every condition, seeds 0-4 (see --help); resumable
    python bench/continual.py --conditions routed --seeds 0
    python bench/continual.py --table                    # tables and paired intervals from the saved runs

Each (condition, seed) is one JSON file in ``--runs`` (default ``bench/continual_runs/``) holding every answer to every
held-out prompt: a run that exists is skipped, so the study resumes after an interruption. Processes started at once
share the work: each claims a (condition, seed) with a lock file (a lock whose process is gone is taken over).

Stream (five of ``tasks``' skills, one after another; the conflicting pair far apart): lowercase, first_letter,
sentiment, plural, uppercase. Course model (SmolLM2-135M-Instruct, fp32, CPU, 1 thread); notebook 03's settings: layers
4 and 10, f5+l5, rank 4 per skill, 32 training examples per skill (a seed draws them, the initialisation and the data
order), lr 1e-2 (AdamW, linear decay); ``STEPS`` = 8 optimiser steps per skill of batch 8 by default (two epochs; the
prototype of /work/shared/COMPOSITION.md used 24 steps of batch 4: on the shared 2-core machine a step cost about 2.5 s
at batch 2 or 4 alike, so 8 conditions x 5 seeds fit in an hour only with a third of the steps, each on a larger batch).
``--steps 24 --batch 4`` runs the prototype's budget (in ``bench/continual_runs_24x4/``: a folder holds one budget). Test: every
held-out word of each word skill (55), and for sentiment every held-out subject x adjective in the first review
template (64); greedy, exact match (``tasks.score``).

Conditions (46,120 trained parameters each: two layers x five rank-4 subspaces, or one rank-20 LoReFT, unless said):
- ``shared``: one LoReFT of rank 20 trained on each skill in turn (no stored example);
- ``replay2`` / ``replay4`` / ``replay8``: the same, each phase also training on 2 / 4 / 8 stored training examples of
  every earlier skill (mixed into the phase's data; same number of steps);
- ``routed``: ``ReftModel.add_skill``: a new CS-ReFT subspace per skill, the earlier ones frozen, and a nearest-centroid
  router (``continual.CentroidRouter``: one centroid per skill, no label at test). Also scored, from the same trained
  model, with the skill label as gate (``label``, the upper bound: no retraining; a prompt the router sends to its own
  skill's subspace gets exactly the label-gated computation, so only misrouted prompts are generated again);
- ``separate``: ``routed`` with ``controls.SeparateBases`` (each basis orthonormal on its own; also label-scored);
- ``overlap``: ``routed`` with ``controls.SharedBasis``, the forced-overlap control: every subspace uses the first
  skill's basis (frozen with it), each skill its own W and b (27,688 parameters: the bases are shared; label-scored);
- ``joint``: one LoReFT of rank 20 trained on all five skills at once, 5 x ``STEPS`` steps (the ceiling).

Measured per run: final accuracy per skill (every held-out prompt, each answer stored); accuracy of each skill right
after its own phase (shared and replay: on the first ``OWN`` = 20 held-out prompts, to save time; the CS-ReFT family:
its label-gated final answers, the same computation since its subspace is frozen after its phase, up to float
rounding); forgetting = own-phase accuracy minus final accuracy on the same prompts; routing accuracy (the share of
held-out prompts whose gate is their skill's subspace); trained parameters; stored examples; seconds.

DECISION RULE (written before the runs): routed CS-ReFT "buys" something over replay only where its final mean accuracy
(mean over the five skills) beats the best replay condition (the one of replay2/4/8 with the highest final mean over
seeds) by >= 10 points, with the 95% paired bootstrap interval (seeds x prompts resampled together) excluding 0. The
issue's goal in full: routed final mean >= 80%, no skill below 50%, routing >= 95%, and that margin on every seed.
Where the rule is not met, RESULTS.md says so and gives each condition's numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interference import Bench, study_parser  # noqa: E402

from csreft_lite.controls import SeparateBases, SharedBasis  # noqa: E402

STREAM = ["lowercase", "first_letter", "sentiment", "plural", "uppercase"]
LAYERS, RANK, POSITIONS = [4, 10], 4, "f5+l5"
N_TRAIN, BATCH, LR, STEPS, OWN, MAX_NEW = 32, 8, 1e-2, 8, 20, 8
SHARED = ["shared", "replay2", "replay4", "replay8"]
ROUTED = ["routed", "separate", "overlap"]
CONDITIONS = SHARED + ROUTED + ["joint"]
MAKE = {"routed": "CSReFT", "separate": SeparateBases, "overlap": SharedBasis}
RUNS = Path(__file__).with_name("continual_runs")
log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def test_set(tasks, skill: str) -> list:
    """Every held-out item of a word skill; for sentiment, every held-out subject x adjective of the first template."""
    s = tasks.get_skill(skill)
    if skill == "sentiment":
        items = [x for x in s.inputs("test") if x[0].startswith("The ")]
        return [tasks.Example(*s.render(x), skill=skill, input=x[0]) for x in items]
    return s.generate(len(s.inputs("test")), "test", 0)


def answers(b: Bench, reft, examples, gates=None) -> list[str]:
    with reft.force_gates(gates) if gates is not None else contextlib.nullcontext():
        return b.cl.evaluate.generate_answers(reft, b.tok, [e.instruction for e in examples], max_new_tokens=MAX_NEW,
                                              template=b.template, batch_size=64)


def scored(b: Bench, replies: list[str], examples) -> dict:
    """Answers and a 0/1 string of exact matches, prompt by prompt."""
    skill = b.cl.tasks.get_skill(examples[0].skill)
    return {"answers": replies, "correct": "".join("1" if skill.score(r, e) else "0" for r, e in zip(replies, examples))}


def fit(b: Bench, reft, examples, seed: int, steps: int = STEPS) -> float:
    t = time.perf_counter()
    b.cl.train(reft, b.dataset(examples), b.tok, epochs=1000, max_steps=steps, batch_size=BATCH, lr=LR, seed=seed,
               progress=False)
    return time.perf_counter() - t


def shared_run(b: Bench, condition: str, seed: int, train: dict, test: dict) -> dict:
    """One LoReFT of rank 20, skill after skill (with replay of stored examples), or on all at once (``joint``)."""
    cl = b.cl
    cl.set_seed(seed)
    reft = cl.ReftModel(b.model, {layer: cl.LoReFT(b.d, RANK * len(STREAM)) for layer in LAYERS}, positions=POSITIONS)
    out: dict = {"own": {}, "final": {}, "train_seconds": 0.0}
    if condition == "joint":
        mixed = [e for s in STREAM for e in train[s]]
        random.Random(f"joint/{seed}").shuffle(mixed)
        out["train_seconds"] += fit(b, reft, mixed, seed, STEPS * len(STREAM))
        out["stored"] = 0
    else:
        m = int(condition[len("replay"):]) if condition.startswith("replay") else 0
        for p, skill in enumerate(STREAM):
            data = train[skill] + [e for s in STREAM[:p] for e in train[s][:m]]
            random.Random(f"{condition}/{seed}/{p}").shuffle(data)
            out["train_seconds"] += fit(b, reft, data, seed)
            out["own"][skill] = scored(b, answers(b, reft, test[skill][:OWN]), test[skill][:OWN])
        out["stored"] = m * (len(STREAM) - 1)
    for skill in STREAM:
        out["final"][skill] = scored(b, answers(b, reft, test[skill]), test[skill])
    out["params"] = reft.trainable_parameters()
    reft.remove()
    return out


def routed_run(b: Bench, condition: str, seed: int, train: dict, test: dict) -> dict:
    """``ReftModel.add_skill`` for each skill in turn; routed (no label) and label-gated answers from the same model."""
    cl = b.cl
    make = cl.CSReFT if MAKE[condition] == "CSReFT" else MAKE[condition]
    cl.set_seed(seed)
    reft = cl.ReftModel(b.model, {layer: make(b.d, RANK, 1) for layer in LAYERS}, positions=POSITIONS,
                        router=cl.CentroidRouter(b.d))
    out: dict = {"own": {}, "final": {}, "label": {}, "routed_to": {}, "train_seconds": 0.0, "stored": 0}
    for skill in STREAM:
        t = time.perf_counter()
        reft.add_skill(b.dataset(train[skill]), b.tok, epochs=1000, max_steps=STEPS, batch_size=BATCH, lr=LR, seed=seed,
                       progress=False)
        out["train_seconds"] += time.perf_counter() - t
    out["params"] = trained_parameters(reft)
    k = len(STREAM)
    for i, skill in enumerate(STREAM):
        replies = answers(b, reft, test[skill])  # one batch of <= 64 prompts: last_gates holds all of its gates
        gates = reft.last_gates if reft.last_gates.shape[0] == len(test[skill]) else \
            cl.evaluate.route_prompts(reft, b.tok, [e.instruction for e in test[skill]], template=b.template)[0]
        chosen = gates.argmax(-1).tolist()
        wrong = [j for j, c in enumerate(chosen) if c != i]
        label = list(replies)
        if wrong:
            onehot = [1.0 if j == i else 0.0 for j in range(k)]
            for j, reply in zip(wrong, answers(b, reft, [test[skill][j] for j in wrong], onehot)):
                label[j] = reply
        out["final"][skill] = scored(b, replies, test[skill])
        out["label"][skill] = scored(b, label, test[skill])
        out["routed_to"][skill] = chosen
    out["stored_numbers"] = int(reft.router.centroids.numel())
    reft.remove()
    return out


def trained_parameters(reft) -> int:
    """Parameters that some phase trained: every intervention parameter except ``SharedBasis``'s unused raw bases."""
    n = 0
    for module in reft.interventions.values():
        for i in range(module.n_subspaces):
            R_raw, W, b = module.subspace(i)
            n += W.numel() + b.numel() + (0 if isinstance(module, SharedBasis) and i > 0 else R_raw.numel())
    return n


# ---------------------------------------------------------------- running (resumable, shared between processes)


def claim(path: Path) -> bool:
    """Take the lock for a run; a lock left by a process that is gone is taken over."""
    lock = path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False  # its process is alive
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return claim(path)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run(args) -> None:
    b = Bench(args.threads)
    tasks = b.cl.tasks
    args.runs.mkdir(parents=True, exist_ok=True)
    test = {s: test_set(tasks, s) for s in STREAM}
    for seed in args.seeds:
        train = {s: tasks.get_skill(s).generate(N_TRAIN, "train", seed) for s in STREAM}
        for condition in args.conditions:
            path = args.runs / f"{condition}_s{seed}.json"
            if path.exists() or not claim(path):
                continue
            t0 = time.perf_counter()
            result = (routed_run if condition in ROUTED else shared_run)(b, condition, seed, train, test)
            record = {"condition": condition, "seed": seed, "stream": STREAM, "steps": STEPS, "batch": BATCH,
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                      "seconds": round(time.perf_counter() - t0), "threads": args.threads, "result": result}
            path.write_text(json.dumps(record, separators=(",", ":")))
            path.with_suffix(".lock").unlink(missing_ok=True)
            final = {s: round(100 * np.mean([c == "1" for c in result["final"][s]["correct"]])) for s in STREAM}
            log(f"{condition} seed {seed}: {record['seconds']} s  final {final}")


# ---------------------------------------------------------------- tables and paired bootstrap intervals


def budgets_of(runs: Path) -> list[dict]:
    """Each run's training budget (runs before ``--batch`` existed used batch 8)."""
    return [{k: v for k, v in json.loads(path.read_text()).items() if k in ("steps", "batch")} for path in sorted(runs.glob("*.json"))]


def load(runs: Path) -> dict:
    out: dict = {}
    for path in sorted(runs.glob("*.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["condition"], {})[r["seed"]] = r["result"]
    if "routed" in out:  # the label-gated scores of the routed runs, as a condition of their own
        for name in ROUTED:
            for seed, r in out.get(name, {}).items():
                out.setdefault(f"{name}, label", {})[seed] = {**r, "final": r["label"], "routed_to": None}
    return out


def bits(result: dict, key: str = "final") -> list[np.ndarray]:
    """Per skill, the 0/1 correctness of every held-out prompt."""
    return [np.array([c == "1" for c in result[key][s]["correct"]], dtype=float) for s in STREAM]


def final_mean(result: dict) -> float:
    return float(np.mean([x.mean() for x in bits(result)]))


def bootstrap(a: dict, b: dict | None = None, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean final accuracy of ``a`` (minus ``b``'s, paired), in points, with a 95% interval: seeds resampled, and within
    each the prompts of each skill, the same draws for both conditions. Seeds: those both have."""
    seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
    rng = np.random.default_rng(seed)
    A = [bits(a[s]) for s in seeds]
    B = [bits(b[s]) for s in seeds] if b is not None else None
    point = np.mean([np.mean([x.mean() for x in A[i]]) - (np.mean([x.mean() for x in B[i]]) if B else 0)
                     for i in range(len(seeds))])
    draws = []
    for _ in range(reps):
        total = 0.0
        for i in rng.integers(len(seeds), size=len(seeds)):
            for k in range(len(STREAM)):
                idx = rng.integers(len(A[i][k]), size=len(A[i][k]))
                total += A[i][k][idx].mean() - (B[i][k][idx].mean() if B else 0.0)
        draws.append(total / (len(seeds) * len(STREAM)))
    low, high = np.percentile(draws, [2.5, 97.5])
    return 100 * point, 100 * low, 100 * high


def summary_row(name: str, rs: dict) -> str:
    seeds = sorted(rs)
    mean, low, high = bootstrap(rs)
    per_skill = " | ".join(f"{100 * np.mean([bits(rs[s])[k].mean() for s in seeds]):.0f}" for k in range(len(STREAM)))
    forget = []
    for s in seeds:
        own_key = "label" if rs[s].get("label") or name.endswith("label") else "own"
        if own_key == "own" and not rs[s]["own"]:
            continue
        for k, skill in enumerate(STREAM[:-1]):
            own = bits(rs[s], own_key)[k]
            forget.append(own.mean() - bits(rs[s])[k][:len(own)].mean())
    forgetting = f"{100 * np.mean(forget):.0f}" if forget else "–"
    routed = [rs[s]["routed_to"] for s in seeds if rs[s].get("routed_to")]
    routing = (f"{100 * np.mean([c == k for r in routed for k, skill in enumerate(STREAM) for c in r[skill]]):.1f}"
               if routed else "–")
    r0 = rs[seeds[0]]
    stored = f"{r0['stored']} examples" + (f" + {r0['stored_numbers']:,} numbers" if r0.get("stored_numbers") else "")
    per_seed = ", ".join(f"{100 * final_mean(rs[s]):.0f}" for s in seeds)
    secs = np.mean([rs[s]["train_seconds"] for s in seeds])
    return (f"| {name} | {len(seeds)} | {mean:.1f} [{low:.1f}, {high:.1f}] ({per_seed}) | {per_skill} | {forgetting} | "
            f"{routing} | {r0['params']:,} | {stored} | {secs:.0f} |")


def tables(runs: dict) -> str:
    names = [n for c in CONDITIONS for n in ([c, f"{c}, label"] if c in ROUTED else [c]) if n in runs]
    lines = ["| condition | seeds | final mean, 95% CI (per seed) | " + " | ".join(STREAM) +
             " | forgetting | routing % | trained params | stored | train s |",
             "|---|---|---|" + "---:|" * len(STREAM) + "---:|---:|---:|---|---:|"]
    lines += [summary_row(n, runs[n]) for n in names]
    replays = [c for c in ("replay2", "replay4", "replay8") if c in runs]
    if "routed" in runs and replays:
        best = max(replays, key=lambda c: np.mean([final_mean(r) for r in runs[c].values()]))
        lines += ["", f"Paired differences, routed minus each condition (points, 95% CI over seeds x prompts); best replay: {best}", ""]
        for n in names:
            if n != "routed":
                d, low, high = bootstrap(runs["routed"], runs[n])
                seeds = sorted(set(runs["routed"]) & set(runs[n]))
                per = ", ".join(f"{100 * (final_mean(runs['routed'][s]) - final_mean(runs[n][s])):+.0f}" for s in seeds)
                lines.append(f"- routed - {n}: {d:+.1f} [{low:+.1f}, {high:+.1f}] (per seed {per})")
        d, low, high = bootstrap(runs["routed"], runs[best])
        verdict = "MET" if d >= 10 and low > 0 else "NOT met"
        lines += ["", f"Decision rule (routed beats the best replay, {best}, by >= 10 points, interval excluding 0): {verdict} "
                      f"({d:+.1f} [{low:+.1f}, {high:+.1f}])."]
    return "\n".join(lines)


def main() -> None:
    global STEPS, BATCH
    parser = study_parser(__doc__, "conditions", CONDITIONS, RUNS, "only print the tables from --runs")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimiser steps per skill (joint: 5x)")
    parser.add_argument("--batch", type=int, default=BATCH, help="examples per optimiser step")
    args = parser.parse_args()
    if (args.steps, args.batch) != (STEPS, BATCH) and args.runs == RUNS:  # each budget its own folder
        args.runs = RUNS.with_name(f"{RUNS.name}_{args.steps}x{args.batch}")
    STEPS, BATCH = args.steps, args.batch
    if not args.table:
        run(args)
    runs = load(args.runs)
    budgets = {(r.get("steps"), r.get("batch", 8)) for r in budgets_of(args.runs)}
    if len(budgets) > 1:
        raise SystemExit(f"{args.runs} mixes runs of different training budgets (steps, batch): {sorted(budgets)}")
    print(f"{args.runs}: {', '.join(f'{s} steps of batch {b} per skill' for s, b in budgets)}\n")
    print(tables(runs))


if __name__ == "__main__":
    main()
