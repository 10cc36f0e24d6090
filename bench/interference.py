"""The interference and routing study: what one shared edit loses, and what separate subspaces and a router buy back.

    python bench/interference.py                                   # all four studies, seeds 0 1 2 (see --help)
    python bench/interference.py --studies routing --seeds 0       # one study, one seed
    python bench/interference.py --from-json s0.json s1.json s2.json   # tables and figures from saved runs, seeds merged

Four studies on the frozen course model (SmolLM2-135M-Instruct, fp32, CPU), each repeated per seed; a seed
changes the training examples (``tasks`` seed), the initialisation and the data order; test sets are fixed.
Prompts use the chat markers without the default system prompt (``tasks.BARE_CHAT_TEMPLATE``); answers are greedy
and scored exactly (``tasks.score``). Every training run: AdamW (weight decay 0), linear decay, f5+l5, rank 4.

``mixture`` (six skills trained together; layers 3, 9, 18, 24; 64 training and 40 test examples per skill):
- ``untrained``; ``oracle``: one LoReFT per skill, trained and tested on its skill alone;
- ``LoReFT mix``: one LoReFT of matched parameter count (rank 27) on the mixture;
- ``subspaces, labels``: one CS-ReFT subspace per skill, the skill label as gate in training and test (no router);
- ``CS-ReFT``: subspaces and router trained together on the mixture, no labels (``routed_csreft``), plus its routing NMI.

``routed_csreft``: top-1 gates, balance term (weight 1), router reading layer 2, started from the k-means clusters
of what it reads on the training prompts (``ReftModel.init_router``; ``--router-start random`` keeps its random
initialisation instead, the ablation), then router and subspaces trained together.

``sequential`` (notebook 03's setting: layers 4, 10; 32 training and 20 test examples; 24 steps per skill):
``lowercase`` (A), then ``uppercase`` (B). One shared LoReFT trained on A then B, against a CS-ReFT with two
subspaces, A's trained with gates [1, 0] and frozen, then B's with [0, 1]. Accuracy on A after A, on A after B,
on B after B.

``routing`` (notebook 04's setting: lowercase, first_letter, plural; layers 4, 10; router at layer 2; 32 training
and 20 test examples per skill; 3 epochs): CS-ReFT trained together without labels (``routed_csreft``), and the
same subspaces trained with the label as gate. Routing NMI (skill vs the subspace the router picks), routed and
label-gated accuracy, and composition on prompts that ask for two skills ("the plural in small letters"): the
router's top-1 and top-2 choices, and the two skills' subspaces forced on.

``two_stage`` (the routing study's setting): the other way to train CS-ReFT. First the subspaces, each skill's
examples gated to their own subspace by the label; then every subspace frozen and the router trained alone (same
start, gates, balance term and steps as ``routed_csreft``), without labels. Routing NMI, whether each skill goes to
the subspace trained on it, routed accuracy against the same subspaces with label gates.

Writes markdown tables to stdout (and ``--out``), figures next to this file, raw numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

STUDIES = ("mixture", "sequential", "routing", "two_stage")
MIXTURE = {"layers": [3, 9, 18, 24], "router_layer": 2, "n_train": 64, "n_test": 40, "epochs": 2.0, "lr": 4e-3, "batch_size": 8}
SMALL = {"layers": [4, 10], "router_layer": 2, "n_train": 32, "n_test": 20, "epochs": 3.0, "lr": 1e-2, "batch_size": 4}
ROUTING_SKILLS = ["lowercase", "first_letter", "plural"]
SEQUENCE = ["lowercase", "uppercase"]
COMPOSE = [("lowercase", "plural"), ("lowercase", "first_letter")]  # the composable pairs of the routing skills
RANK, POSITIONS, BALANCE, MAX_NEW_TOKENS = 4, "f5+l5", 1.0, 10
SEQUENTIAL_STEPS = 24  # optimiser steps per skill in the sequential study, as in notebook 03
MIXTURE_CONDITIONS = ["untrained", "oracle", "LoReFT mix", "subspaces, labels", "CS-ReFT"]

log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def matched_rank(d: int, k: int, rank: int) -> int:
    """The LoReFT rank whose parameter count comes closest to k CS-ReFT subspaces of ``rank`` and a d -> k router."""
    cs = 2 * k * rank * d + k * rank + d * k + k
    return min(range(1, d // 2), key=lambda r: abs(2 * r * d + r - cs))


class Bench:
    """The course model, its tokenizer and the helpers every study shares."""

    def __init__(self, threads: int, router_start: str = "clusters"):
        import torch

        import csreft_lite as cl
        import csreft_lite.tasks  # noqa: F401  (cl.tasks below)

        torch.set_num_threads(threads)
        self.cl = cl
        self.model, self.tok = cl.load_course_model()
        self.d = self.model.config.hidden_size
        self.template = cl.tasks.BARE_CHAT_TEMPLATE
        self.router_start = router_start

    def dataset(self, examples, gates=None):
        """Tokenized examples; ``gates(example)`` gives each record its fixed CS-ReFT gates (e.g. its skill label)."""
        records = [{"instruction": e.instruction, "output": e.output, **({"gates": gates(e)} if gates else {})} for e in examples]
        return self.cl.data.make_dataset(records, self.tok, template=self.template)

    def fit(self, reft, examples, settings, seed, gates=None, epochs=None):
        return self.cl.train(reft, self.dataset(examples, gates), self.tok, epochs=epochs or settings["epochs"],
                             batch_size=settings["batch_size"], lr=settings["lr"], seed=seed, progress=False)

    def accuracy(self, reft, examples, gates=None) -> dict:
        import contextlib

        with reft.force_gates(gates) if gates is not None else contextlib.nullcontext():
            return self.cl.evaluate.skill_accuracy(reft, self.tok, examples, max_new_tokens=MAX_NEW_TOKENS, template=self.template)

    def reft(self, make, settings, seed, **kwargs):
        self.cl.set_seed(seed)  # the interventions' initialisation
        return self.cl.ReftModel(self.model, {layer: make() for layer in settings["layers"]}, positions=POSITIONS, **kwargs)

    def csreft(self, k, settings, seed):
        """k CS-ReFT subspaces per layer and the course's router: top-1 gates, balance term, at settings' router_layer."""
        router = self.cl.Router(self.d, k, gating="topk", top_k=1, balance=BALANCE)
        return self.reft(lambda: self.cl.CSReFT(self.d, RANK, k), settings, seed, router=router, router_layer=settings["router_layer"])

    def train_unlabelled(self, reft, train_examples, settings, seed):
        """Train without labels, the router started from the clusters of the training instructions (or at random)."""
        data = self.dataset(train_examples)
        if self.router_start == "clusters":  # else the router keeps its random initialisation (an ablation)
            reft.init_router(data, self.tok)
        self.cl.train(reft, data, self.tok, epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
                      seed=seed, progress=False)

    def routed_csreft(self, skills, train_examples, settings, seed):
        """CS-ReFT as the course trains it without labels: subspaces and router trained together."""
        reft = self.csreft(len(skills), settings, seed)
        self.train_unlabelled(reft, train_examples, settings, seed)
        return reft

    def routing(self, reft, skills, test_examples) -> tuple[float, dict]:
        """Routing NMI on the test prompts, and each skill's most frequent subspace."""
        gates, _ = self.cl.evaluate.route_prompts(reft, self.tok, [e.instruction for e in test_examples], template=self.template)
        chosen = gates.argmax(-1).tolist()
        owner = {s: statistics.mode([c for c, e in zip(chosen, test_examples) if e.skill == s]) for s in skills}
        return self.cl.evaluate.routing_nmi([e.skill for e in test_examples], chosen), owner


def one_hot(i: int, k: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(k)]


# ---------------------------------------------------------------- the three studies


def mixture_study(b: Bench, seed: int, skills: list[str]) -> dict:
    cl, tasks, st, k = b.cl, b.cl.tasks, MIXTURE, len(skills)
    test = [e for s in skills for e in tasks.get_skill(s).generate(st["n_test"], "test", 0)]
    train = tasks.make_examples(skills, st["n_train"], "train", seed)
    out, params = {}, {}
    out["untrained"] = b.accuracy(b.model, test)
    params["untrained"] = 0
    oracle = {}
    for s in skills:
        reft = b.reft(lambda: cl.LoReFT(b.d, RANK), st, seed)
        b.fit(reft, [e for e in train if e.skill == s], st, seed)
        oracle[s] = b.accuracy(reft, [e for e in test if e.skill == s])[s]
        params["oracle"] = reft.trainable_parameters() * k
        reft.remove()
    out["oracle"] = oracle
    mix_rank = matched_rank(b.d, k, RANK)
    reft = b.reft(lambda: cl.LoReFT(b.d, mix_rank), st, seed)
    b.fit(reft, train, st, seed)
    out["LoReFT mix"], params["LoReFT mix"] = b.accuracy(reft, test), reft.trainable_parameters()
    reft.remove()
    reft = b.reft(lambda: cl.CSReFT(b.d, RANK, k), st, seed)
    b.fit(reft, train, st, seed, gates=lambda e: one_hot(skills.index(e.skill), k))
    out["subspaces, labels"] = {s: b.accuracy(reft, [e for e in test if e.skill == s], one_hot(i, k))[s] for i, s in enumerate(skills)}
    params["subspaces, labels"] = reft.trainable_parameters() - (b.d * k + k)  # the router exists but never runs
    reft.remove()
    reft = b.routed_csreft(skills, train, st, seed)
    out["CS-ReFT"], params["CS-ReFT"] = b.accuracy(reft, test), reft.trainable_parameters()
    nmi, _ = b.routing(reft, skills, test)
    reft.remove()
    log(f"seed {seed} mixture: " + "; ".join(f"{c} {statistics.mean(r[s] for s in skills):.0%}" for c, r in out.items()) + f"; NMI {nmi:.2f}")
    return {"accuracy": out, "nmi": nmi, "params": params, "mix_rank": mix_rank}


def sequential_study(b: Bench, seed: int) -> dict:
    cl, tasks, st = b.cl, b.cl.tasks, SMALL
    first, second = SEQUENCE
    train = {s: tasks.get_skill(s).generate(st["n_train"], "train", seed) for s in SEQUENCE}
    test = {s: tasks.get_skill(s).generate(st["n_test"], "test", 0) for s in SEQUENCE}
    epochs = SEQUENTIAL_STEPS * st["batch_size"] / st["n_train"]
    out = {}
    shared = b.reft(lambda: cl.LoReFT(b.d, RANK), st, seed)
    b.fit(shared, train[first], st, seed, epochs=epochs)
    a_after_a = b.accuracy(shared, test[first])[first]
    b.fit(shared, train[second], st, seed, epochs=epochs)
    out["1 shared LoReFT"] = {"A after A": a_after_a, "A after B": b.accuracy(shared, test[first])[first],
                              "B after B": b.accuracy(shared, test[second])[second]}
    shared.remove()
    separate = b.reft(lambda: cl.CSReFT(b.d, RANK, 2), st, seed)
    A, B = [1.0, 0.0], [0.0, 1.0]
    with separate.force_gates(A):
        b.fit(separate, train[first], st, seed, epochs=epochs)
    a_after_a = b.accuracy(separate, test[first], A)[first]
    for cs in separate.interventions.values():
        cs.freeze_subspaces(0)
    with separate.force_gates(B):
        b.fit(separate, train[second], st, seed, epochs=epochs)
    out["separate subspaces"] = {"A after A": a_after_a, "A after B": b.accuracy(separate, test[first], A)[first],
                                 "B after B": b.accuracy(separate, test[second], B)[second]}
    separate.remove()
    log(f"seed {seed} sequential: " + "; ".join(f"{c} " + ", ".join(f"{k} {v:.0%}" for k, v in r.items()) for c, r in out.items()))
    return out


def composition(b: Bench, reft, pair_gates: list[float], composed) -> dict:
    """Accuracy on prompts that ask for two skills: the router's top-1, its top-2, and the pair's subspaces forced on."""
    import torch

    out = {"router": b.accuracy(reft, composed)["mean"]} if reft.router is not None and pair_gates is not None else {}
    if "router" in out:
        _, probs = b.cl.evaluate.route_prompts(reft, b.tok, [e.instruction for e in composed], template=b.template)
        top2 = torch.zeros_like(probs).scatter(1, probs.topk(2, dim=-1).indices, 1.0)  # [n, k] per prompt
        out["router top-2"] = b.accuracy(reft, composed, top2)["mean"]
    out["pair forced"] = b.accuracy(reft, composed, pair_gates)["mean"]
    return out


def routing_study(b: Bench, seed: int) -> dict:
    cl, tasks, st, skills = b.cl, b.cl.tasks, SMALL, ROUTING_SKILLS
    k = len(skills)
    train = tasks.make_examples(skills, st["n_train"], "train", seed)
    test = [e for s in skills for e in tasks.get_skill(s).generate(st["n_test"], "test", 0)]
    composed = {"+".join(pair): tasks.compose(*pair, n=st["n_test"], seed=0) for pair in COMPOSE}
    reft = b.routed_csreft(skills, train, st, seed)
    nmi, owner = b.routing(reft, skills, test)
    routed = {"nmi": nmi, "owner": owner, "accuracy": b.accuracy(reft, test), "composition": {}}
    for pair, examples in zip(COMPOSE, composed.values()):
        gates = [1.0 if i in {owner[s] for s in pair} else 0.0 for i in range(k)]
        routed["composition"]["+".join(pair)] = composition(b, reft, gates, examples)
    reft.remove()
    reft = b.reft(lambda: cl.CSReFT(b.d, RANK, k), st, seed)
    b.fit(reft, train, st, seed, gates=lambda e: one_hot(skills.index(e.skill), k))
    labels = {"accuracy": {s: b.accuracy(reft, [e for e in test if e.skill == s], one_hot(i, k))[s] for i, s in enumerate(skills)},
              "composition": {}}
    for pair, examples in zip(COMPOSE, composed.values()):
        gates = [1.0 if skills[i] in pair else 0.0 for i in range(k)]
        labels["composition"]["+".join(pair)] = {"pair forced": b.accuracy(reft, examples, gates)["mean"]}
    reft.remove()
    log(f"seed {seed} routing: NMI {nmi:.2f}, owners {owner}, routed {statistics.mean(routed['accuracy'][s] for s in skills):.0%}, "
        f"labels {statistics.mean(labels['accuracy'].values()):.0%}; composition routed {routed['composition']}, "
        f"labels {labels['composition']}")
    return {"routed": routed, "labels": labels}


def two_stage_study(b: Bench, seed: int) -> dict:
    tasks, st, skills = b.cl.tasks, SMALL, ROUTING_SKILLS
    k = len(skills)
    train = tasks.make_examples(skills, st["n_train"], "train", seed)
    test = [e for s in skills for e in tasks.get_skill(s).generate(st["n_test"], "test", 0)]
    reft = b.csreft(k, st, seed)
    b.fit(reft, train, st, seed, gates=lambda e: one_hot(skills.index(e.skill), k))  # stage 1: the label is the gate
    labels = {s: b.accuracy(reft, [e for e in test if e.skill == s], one_hot(i, k))[s] for i, s in enumerate(skills)}
    for cs in reft.interventions.values():
        cs.freeze_subspaces(*range(k))  # stage 2: nothing but the router learns
    b.train_unlabelled(reft, train, st, seed)
    nmi, owner = b.routing(reft, skills, test)
    routed = b.accuracy(reft, test)
    reft.remove()
    own = sum(owner[s] == i for i, s in enumerate(skills))
    log(f"seed {seed} two-stage: NMI {nmi:.2f}, owners {owner} ({own} of {k} skills in their own subspace), "
        f"routed {statistics.mean(routed[s] for s in skills):.0%}, labels {statistics.mean(labels.values()):.0%}")
    return {"nmi": nmi, "owner": owner, "own_subspace": own, "routed": routed, "labels": labels}


def run(args) -> dict:
    b = Bench(args.threads, args.router_start)
    skills = args.skills or list(b.cl.tasks.SKILLS)
    started = time.perf_counter()
    results: dict = {study: {} for study in args.studies}
    for seed in args.seeds:
        for study in args.studies:
            t0 = time.perf_counter()
            if study == "mixture":
                results[study][str(seed)] = mixture_study(b, seed, skills)
            elif study == "sequential":
                results[study][str(seed)] = sequential_study(b, seed)
            elif study == "routing":
                results[study][str(seed)] = routing_study(b, seed)
            else:
                results[study][str(seed)] = two_stage_study(b, seed)
            log(f"  ({study}, seed {seed}: {time.perf_counter() - t0:.0f} s)")
    return {
        "date": datetime.date.today().isoformat(),
        "seeds": args.seeds,
        "settings": {"mixture": {**MIXTURE, "skills": skills}, "small": SMALL, "routing_skills": ROUTING_SKILLS,
                     "sequence": SEQUENCE, "compose": [list(p) for p in COMPOSE], "rank": RANK, "positions": POSITIONS, "balance": BALANCE,
                     "max_new_tokens": MAX_NEW_TOKENS, "sequential_steps": SEQUENTIAL_STEPS, "threads": args.threads,
                     "router_start": args.router_start},
        "results": results,
        "seconds": time.perf_counter() - started,
    }


def load_runs(paths: list[Path]) -> list[dict]:
    """The runs saved in these --json files; a file may also hold a list of runs (as the committed results do)."""
    runs = []
    for path in paths:
        saved = json.loads(path.read_text())
        runs.extend(saved if isinstance(saved, list) else [saved])
    return runs


def merge(runs: list[dict]) -> dict:
    """One result from runs with the same settings: other seeds (e.g. run in parallel processes) or other studies."""
    first = runs[0]

    def same(settings):  # the thread count changes the speed, not what is measured
        return {k: v for k, v in settings.items() if k != "threads"}

    for other in runs[1:]:
        if same(other["settings"]) != same(first["settings"]):
            raise ValueError("these runs used different settings; only runs of the same study can be merged")
    studies = [study for study in STUDIES if any(study in r["results"] for r in runs)]
    for study in studies:
        seeds = [s for r in runs for s in r["results"].get(study, {})]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"the {study} study has seed(s) in more than one run: {seeds}")
    results = {study: {s: v for r in runs for s, v in r["results"].get(study, {}).items()} for study in studies}
    seeds = sorted({int(s) for r in runs for s in r["seeds"]})
    return {**first, "seeds": seeds, "date": max(r["date"] for r in runs), "results": results,
            "seconds": sum(r["seconds"] for r in runs)}  # processing time, summed over the runs


# ---------------------------------------------------------------- tables and figures


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [100 * v for v in values]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.0f} ± {s:.0f}"


def mixture_table(raw: dict) -> str:
    per_seed, skills = raw["results"]["mixture"], raw["settings"]["mixture"]["skills"]
    lines = ["| skill | " + " | ".join(MIXTURE_CONDITIONS) + " |", "|---|" + "---:|" * len(MIXTURE_CONDITIONS)]
    for s in [*skills, "mean"]:
        row = []
        for c in MIXTURE_CONDITIONS:
            values = [statistics.mean(r["accuracy"][c][x] for x in skills) if s == "mean" else r["accuracy"][c][s] for r in per_seed.values()]
            row.append(f"{100 * values[0]:.0f}" if c == "untrained" else cell(values))
        lines.append(f"| {'**mean**' if s == 'mean' else s} | " + " | ".join(row) + " |")
    params = next(iter(per_seed.values()))["params"]
    lines.append("| trainable params | " + " | ".join(f"{params[c]:,}" for c in MIXTURE_CONDITIONS) + " |")
    nmis = ", ".join(f"{r['nmi']:.2f}" for r in per_seed.values())
    return "\n".join(lines) + f"\n\nCS-ReFT routing NMI on the six skills, per seed: {nmis}."


def sequential_table(raw: dict) -> str:
    per_seed = raw["results"]["sequential"]
    names = list(next(iter(per_seed.values())))
    a, b = raw["settings"]["sequence"]
    lines = [f"| model | A ({a}) after A | A after B ({b}) | B after B | A lost, per seed |", "|---|---:|---:|---:|---|"]
    for name in names:
        rows = [r[name] for r in per_seed.values()]
        lost = ", ".join(f"{100 * (r['A after A'] - r['A after B']):.0f}" for r in rows)
        lines.append(f"| {name} | {cell([r['A after A'] for r in rows])} | {cell([r['A after B'] for r in rows])} | "
                     f"{cell([r['B after B'] for r in rows])} | {lost} |")
    return "\n".join(lines)


def routing_table(raw: dict) -> str:
    per_seed, skills = raw["results"]["routing"], raw["settings"]["routing_skills"]
    rows = list(per_seed.values())
    lines = ["| seed | routing NMI | subspace per skill | routed accuracy | label-gated accuracy |", "|---|---:|---|---:|---:|"]
    for seed, r in per_seed.items():
        owners = ", ".join(f"{s} → {r['routed']['owner'][s]}" for s in skills)
        lines.append(f"| {seed} | {r['routed']['nmi']:.2f} | {owners} | {100 * statistics.mean(r['routed']['accuracy'][s] for s in skills):.0f} | "
                     f"{100 * statistics.mean(r['labels']['accuracy'].values()):.0f} |")
    lines.append(f"| **mean ± std** | {statistics.mean(r['routed']['nmi'] for r in rows):.2f} | | "
                 f"{cell([statistics.mean(r['routed']['accuracy'][s] for s in skills) for r in rows])} | "
                 f"{cell([statistics.mean(r['labels']['accuracy'].values()) for r in rows])} |")
    per_skill = " · ".join(f"{s}: routed {cell([r['routed']['accuracy'][s] for r in rows])}, labels "
                           f"{cell([r['labels']['accuracy'][s] for r in rows])}" for s in skills)
    pairs = list(rows[0]["routed"]["composition"])
    comp = ["| composed pair | router (top-1) | router top-2 | pair forced on (CS-ReFT) | pair forced on (label-gated) |",
            "|---|---:|---:|---:|---:|"]
    for pair in pairs:
        routed = [r["routed"]["composition"][pair] for r in rows]
        labels = [r["labels"]["composition"][pair]["pair forced"] for r in rows]
        per = lambda values: f"{cell(values)} ({', '.join(f'{100 * v:.0f}' for v in values)})"  # noqa: E731
        comp.append(f"| {pair} | {per([c['router'] for c in routed])} | {per([c['router top-2'] for c in routed])} | "
                    f"{per([c['pair forced'] for c in routed])} | {per(labels)} |")
    return ("\n".join(lines) + f"\n\nPer skill (mean ± std over seeds): {per_skill}.\n\nComposition, exact-match accuracy "
            f"on {raw['settings']['small']['n_test']} held-out prompts per pair, mean ± std (per seed):\n\n" + "\n".join(comp))


def two_stage_table(raw: dict) -> str:
    per_seed, skills = raw["results"]["two_stage"], raw["settings"]["routing_skills"]
    rows = list(per_seed.values())
    lines = ["| seed | routing NMI | skills sent to their own subspace | routed accuracy | label-gated accuracy |",
             "|---|---:|---:|---:|---:|"]
    for seed, r in per_seed.items():
        lines.append(f"| {seed} | {r['nmi']:.2f} | {r['own_subspace']} of {len(skills)} | "
                     f"{100 * statistics.mean(r['routed'][s] for s in skills):.0f} | {100 * statistics.mean(r['labels'].values()):.0f} |")
    lines.append(f"| **mean ± std** | {statistics.mean(r['nmi'] for r in rows):.2f} | | "
                 f"{cell([statistics.mean(r['routed'][s] for s in skills) for r in rows])} | "
                 f"{cell([statistics.mean(r['labels'].values()) for r in rows])} |")
    return "\n".join(lines)


def tables(raw: dict) -> str:
    start = raw["settings"].get("router_start", "clusters")
    head = (f"Measured {raw['date']}, seeds {raw['seeds']} ({raw['seconds'] / 60:.0f} min of processing); accuracy in %, mean ± std over seeds; "
            f"CS-ReFT's router started {'from the clusters of its inputs' if start == 'clusters' else 'at random (ablation)'}.")
    parts = [head]
    for study, title, make in (("mixture", "Mixture", mixture_table), ("sequential", "Sequential", sequential_table),
                               ("routing", "Routing", routing_table),
                               ("two_stage", "Subspaces first, then the router alone", two_stage_table)):
        if raw["results"].get(study):
            parts.append(f"### {title}\n\n{make(raw)}")
    return "\n\n".join(parts)


def figure(raw: dict, path: Path) -> bool:
    """Mixture accuracy by condition and skill (left) and the sequential study (right), mean ± std over seeds.

    Returns whether there was anything to draw (the other studies are tables only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = [s for s in ("mixture", "sequential") if raw["results"].get(s)]
    if not studies:
        return False
    fig, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 3.6), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1][: len(studies)]})
    colors = ["#bbbbbb", "#4c72b0", "#dd8452", "#937860", "#55a868"]
    for ax, study in zip(axes[0], studies):
        per_seed = list(raw["results"][study].values())
        if study == "mixture":
            skills = raw["settings"]["mixture"]["skills"]
            groups, width = [*skills, "mean"], 0.8 / len(MIXTURE_CONDITIONS)
            for i, c in enumerate(MIXTURE_CONDITIONS):
                stats = [mean_std([statistics.mean(r["accuracy"][c][x] for x in skills) if g == "mean" else r["accuracy"][c][g]
                                   for r in per_seed]) for g in groups]
                xs = [j + (i - (len(MIXTURE_CONDITIONS) - 1) / 2) * width for j in range(len(groups))]
                ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=2, label=c, color=colors[i],
                       error_kw={"lw": 0.8})
            ax.set_xticks(range(len(groups)), [g.replace("_", " ") for g in groups], fontsize=8)
            ax.set_title("Six skills trained together", fontsize=10)
            ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
        else:
            a, b = raw["settings"]["sequence"]
            labels = [f"{a}\nafter {a}", f"{a}\nafter {b}", f"{b}\nafter {b}"]
            keys = ["A after A", "A after B", "B after B"]
            names = list(per_seed[0])
            for i, name in enumerate(names):
                stats = [mean_std([r[name][key] for r in per_seed]) for key in keys]
                xs = [j + (i - 0.5) * 0.38 for j in range(3)]
                ax.bar(xs, [m for m, _ in stats], 0.38, yerr=[s for _, s in stats], capsize=2, label=name,
                       color=colors[[2, 4][i % 2]], error_kw={"lw": 0.8})
            ax.set_xticks(range(3), labels, fontsize=8)
            ax.set_title(f"{a}, then {b}", fontsize=10)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", lw=0.3)
    fig.suptitle(f"Course model (SmolLM2-135M), {len(raw['seeds'])} seeds, mean ± std", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def study_parser(doc: str, arms: str, choices: list[str], runs: Path, table_help: str) -> argparse.ArgumentParser:
    """The command line of a resumable study (composition.py, continual.py): which arms and seeds, one JSON per run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n", 2)[2])
    parser.add_argument(f"--{arms}", nargs="+", choices=choices, default=choices)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=runs, help="one JSON per (condition, seed); existing ones are skipped")
    parser.add_argument("--table", action="store_true", help=table_help)
    return parser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skills", nargs="+", help="the mixture study's skills (default: every skill of csreft_lite.tasks)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--router-start", choices=("clusters", "random"), default="clusters",
                        help="CS-ReFT's router: started from the k-means clusters of its inputs (default), or random (ablation)")
    parser.add_argument("--figure", type=Path, default=Path(__file__).with_name("interference.png"))
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="only redraw tables and figure from saved --json files (several, or a list of runs in one: merged)")
    args = parser.parse_args()

    raw = merge(load_runs(args.from_json)) if args.from_json else run(args)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(raw, indent=1))
    text = tables(raw)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.figure and figure(raw, args.figure):
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
