"""The AlpacaEval recipe (notebook 05): its config, data formatting, parameter arithmetic, outputs file,
win rates through the alpaca-eval package's own code, judges by configuration, the local judge, and resumable training.

Nothing here needs the network, a GPU or an OpenAI key: hub data sets are stood in for by in-memory
records shaped like them. AlpacaEval's own judges, through a judge server on 127.0.0.1: test_alpaca_eval_real.py.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch

import csreft_lite as cl
from csreft_lite import checkpoint, data, evaluate, judge
from csreft_lite import training as train
from csreft_lite.recipes import alpacaeval as ae

from .tiny import hooks_inside_enable, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ae.DATA_DIR / "alpaca_eval_annotations_fixture.json"
SMOKE_EVAL = ae.DATA_DIR / "smoke_eval.json"

pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")


# ---- configuration --------------------------------------------------------------------------


def test_default_config_is_the_papers_as_far_as_stated_and_loreft_for_the_rest():
    c = ae.make_config(smoke=False)
    assert c.base_model == "meta-llama/Llama-2-7b-hf" and c.dtype == "bfloat16"
    assert (c.n_subspaces, c.gating) == (4, "hard")  # CS-ReFT paper: k = 4, 0.5 threshold
    assert c.layers == (3, 9, 18, 24) and c.rank == 4 and c.positions == "f5+l5" and not c.share_positions
    assert (c.lr, c.weight_decay, c.schedule, c.epochs, c.effective_batch, c.max_length) == (9e-4, 0.0, "linear", 9, 128, 768)
    assert (c.repetition_penalty, c.no_repeat_ngram_size) == (1.1, 5)
    assert ae.generation_kwargs(c)["do_sample"] is False
    assert c.tag == "[FULL]"


def test_smoke_mode_is_automatic_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c = ae.make_config()
    assert c.smoke and c.tag == "[SMOKE]" and c.base_model == "course"
    assert Path(c.train_dataset).is_file() and Path(c.eval_dataset).is_file()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not ae.make_config().smoke


def test_config_file_then_smoke_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rank: 8\nlayers: '3;9'\nrouter: paper\n")
    c = ae.make_config(path, smoke=False, lr=1e-3)
    assert (c.rank, c.layers, c.router, c.lr) == (8, (3, 9), "paper", 1e-3)
    assert ae.make_config(path, smoke=True).base_model == "course"
    path.write_text("rnak: 8\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        ae.make_config(path, smoke=False)
    with pytest.raises(ValueError, match="router"):
        ae.RecipeConfig(router="mlp")


def test_command_line_flags_reach_the_config():
    args = vars(ae._parser().parse_args(["--full", "--layers", "3;9", "--epochs", "0.5", "--gradient-checkpointing", "true"]))
    path, smoke = args.pop("config"), args.pop("smoke")
    c = ae.make_config(path, smoke=smoke, **args)
    assert (c.smoke, c.layers, c.epochs, c.gradient_checkpointing) == (False, (3, 9), 0.5, True)


def test_shipped_config_file_is_the_default_config():
    c = ae.make_config(ROOT / "configs" / "alpacaeval_llama2_7b.yaml", smoke=False)
    assert c == ae.make_config(smoke=False)


# ---- parameter budget -----------------------------------------------------------------------


def test_budget_arithmetic_on_llama2_7b():
    rows = {r["method"].split(" (")[0]: r for r in ae.budget_rows(ae.make_config(smoke=False))}
    loreft = rows["LoReFT r=4"]
    assert loreft["parameters"] == 8 * (2 * 4 * 4096 + 4)  # R and W (4 × 4096 each) and b, 8 untied interventions
    assert round(loreft["share_%"], 4) == 0.0039  # the ReFT paper's figure: our counting agrees with theirs
    linear = rows["CS-ReFT k=4 r=4, linear router"]
    assert linear["parameters"] == 8 * 4 * (2 * 4 * 4096 + 4) + (4096 * 4 + 4)  # 8 × 4 subspaces, one shared router
    paper_router = 4096 * 2048 + 2048 + 2048 * 4 + 4  # d → d/2 → 4
    assert rows["CS-ReFT k=4 r=4, paper router"]["parameters"] - linear["parameters"] == paper_router - (4096 * 4 + 4)
    assert round(100 * paper_router / ae.LLAMA2_7B["n_params"], 3) == 0.125  # one paper router: 13× the claimed total
    claimed = next(r for r in ae.budget_rows(ae.make_config(smoke=False)) if r["method"] == "CS-ReFT (paper)")
    assert claimed["placement"] == "as reported" and round(paper_router / claimed["parameters"]) == 13  # DESIGN's 13×


def test_memory_estimate_starts_from_the_bf16_weights():
    weights_gb = 2 * ae.LLAMA2_7B["n_params"] / 1e9
    assert 13.4 < weights_gb < 13.6
    assert ae.memory_estimate_gib(1, checkpointing=True) < ae.memory_estimate_gib(1) < ae.memory_estimate_gib(2)
    rows = ae.guidance_rows()
    assert {r["gpu"] for r in rows} == set(ae.GPUS) and all(r["tokens_per_s"] > 0 for r in rows)


# ---- data formatting (records shaped like the hub data sets) -------------------------------


def test_ultrafeedback_rows_become_their_best_rated_completion():
    openbmb = {
        "source": "evol_instruct",
        "instruction": "Name a colour.",
        "models": ["a", "b", "c"],
        "completions": [
            {"model": "a", "response": "Blue.", "overall_score": 6.5, "fine-grained_score": 4.0},
            {"model": "b", "response": "Red, the colour of fire.", "overall_score": 8.0, "fine-grained_score": 4.5},
            {"model": "c", "response": "  ", "overall_score": 9.5, "fine-grained_score": 5.0},  # empty: skipped
        ],
        "correct_answers": [],
        "incorrect_answers": [],
    }
    binarized = {
        "prompt": "Say hi.",
        "prompt_id": "x",
        "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }
    plain = {"instruction": "Add 2 and 2.", "input": "", "output": "4"}
    empty = {"instruction": "x", "completions": []}
    records = ae.ultrafeedback_records([openbmb, binarized, plain, empty])
    assert records == [
        {"instruction": "Name a colour.", "output": "Red, the colour of fire."},
        {"instruction": "Say hi.", "output": "Hi!"},
        {"instruction": "Add 2 and 2.", "output": "4"},
    ]
    with pytest.raises(ValueError, match="Unrecognised"):
        ae.ultrafeedback_records([{"text": "x"}])


def test_alpaca_eval_rows_keep_instruction_reference_and_dataset():
    row = {"instruction": "What is 2+2?", "output": "4", "generator": "text_davinci_003", "dataset": "helpful_base"}
    assert ae.alpaca_eval_records([row]) == [row]
    with pytest.raises(ValueError, match="instruction"):
        ae.alpaca_eval_records([{"prompt": "x"}])


def test_shipped_smoke_data_loads_through_datasets_and_formats_with_the_alpaca_template():
    c = ae.make_config(smoke=True)
    records = ae.ultrafeedback_records(ae._load_rows(str(ae.DATA_DIR / "smoke_train.json"), "train"))
    assert 30 <= len(records) <= 60 and all(r["output"].strip() for r in records)
    evals = ae.load_eval_records(c)
    assert 4 <= len(evals) <= 10 and {"instruction", "output", "generator", "dataset"} <= set(evals[0])

    class Tok:  # a tokenizer without a chat template, as Llama-2-7b-hf's: "auto" means Alpaca
        chat_template = None

    prompt = data.format_prompt(Tok(), records[0]["instruction"], c.template)
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")


# ---- the outputs file and win rates, through alpaca_eval's own code -------------------------


def _write_outputs(tmp_path, answers=None):
    evals = json.loads(SMOKE_EVAL.read_text())
    instructions = [e["instruction"] for e in evals]
    answers = answers or [f"answer {i}" for i in range(len(evals))]
    path = evaluate.write_alpaca_eval_outputs(tmp_path / "model_outputs.json", instructions, answers, "my-csreft", [e["dataset"] for e in evals])
    return path, evals


def test_outputs_file_loads_with_alpaca_evals_own_loader(tmp_path):
    import pandas as pd
    from alpaca_eval import utils

    path, evals = _write_outputs(tmp_path)
    df = utils.load_or_convert_to_dataframe(path)  # what alpaca_eval.evaluate does with model_outputs
    assert {"instruction", "output", "generator", "dataset"} <= set(df.columns) and len(df) == len(evals)
    assert utils.get_generator_name(None, df) == "my-csreft"
    reference = utils.load_or_convert_to_dataframe(SMOKE_EVAL)
    merged = pd.merge(reference, df, on=["instruction"], suffixes=("_1", "_2"))  # as PairwiseAnnotator.annotate_head2head
    assert len(merged) == len(reference) == len(df)
    assert evaluate.read_alpaca_eval_outputs(path).equals(df)


def test_outputs_file_problems_are_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "x"}]))
    with pytest.raises(ValueError, match="generator"):
        evaluate.read_alpaca_eval_outputs(path)
    path.write_text(json.dumps([{"instruction": "a", "output": "x", "generator": "g"}] * 2))
    with pytest.raises(ValueError, match="twice"):
        evaluate.read_alpaca_eval_outputs(path)


def test_win_rate_of_the_fixture_by_alpaca_evals_metrics():
    from alpaca_eval import metrics

    annotations = json.loads(FIXTURE.read_text())
    prefs = [a["preference"] for a in annotations]
    expected = 100 * sum(p - 1 for p in prefs) / len(prefs)  # 5 wins, 4 losses, 1 tie of 10 → 55%
    assert expected == pytest.approx(55.0)
    ours = evaluate.win_rate(annotations)
    assert ours["win_rate"] == pytest.approx(expected)
    assert (ours["n_wins"], ours["n_wins_base"], ours["n_draws"], ours["n_total"]) == (5, 4, 1, 10)
    assert metrics.pairwise_to_winrate(prefs)["win_rate"] == pytest.approx(expected)


def test_judges_by_configuration(monkeypatch):
    """``auto`` is AlpacaEval 1.0 (the papers') with a key outside smoke mode, else the local judge; explicit judges stay."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    full, smoke = ae.make_config(smoke=False), ae.make_config(smoke=True)
    assert (ae.resolve_judge(full), ae.resolve_judge(smoke)) == ("local", "local")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert (ae.resolve_judge(full), ae.resolve_judge(smoke)) == ("alpaca_eval_1", "local")
    assert ae.resolve_judge(ae.make_config(smoke=True, judge="alpaca_eval_2")) == "alpaca_eval_2"
    assert ae.RecipeConfig(judge="alpaca_eval").judge == "alpaca_eval_1"  # the name from before AlpacaEval 2.0
    with pytest.raises(ValueError, match="alpaca_eval_2"):
        ae.RecipeConfig(judge="gpt4")
    args = vars(ae._parser().parse_args(["--judge", "alpaca_eval_2", "--judge-model", "Qwen/Qwen2.5-72B-Instruct"]))
    assert (args["judge"], args["judge_model"]) == ("alpaca_eval_2", "Qwen/Qwen2.5-72B-Instruct")


def test_alpaca_eval_judges_need_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for judge_name in ("alpaca_eval_1", "alpaca_eval_2"):
        with pytest.raises(RuntimeError, match="OPENAI_API_KEY.*OPENAI_BASE_URL.*local"):
            evaluate.alpaca_eval(tmp_path / "x.json", tmp_path, judge_name)
    with pytest.raises(ValueError, match="alpaca_eval_1.*alpaca_eval_2.*'alpaca_eval_3'"):
        evaluate.alpaca_eval_references("alpaca_eval_3")


# ---- the local judge ------------------------------------------------------------------------


class _LetterJudge(torch.nn.Module):
    """A fake judge model: its next-token logits favour "A" or "B" by a rule on the decoded prompt."""

    def __init__(self, tok, rule):
        super().__init__()
        self.tok, self.rule, self.dummy = tok, rule, torch.nn.Parameter(torch.zeros(1))
        self.a, self.b = judge._letter_ids(tok, "A"), judge._letter_ids(tok, "B")

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, ids in enumerate(input_ids):
            favour = self.a if self.rule(self.tok.decode(ids[attention_mask[row].bool()])) == "A" else self.b
            logits[row, -1, favour] = 5.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.slow
def test_local_judge_cancels_position_bias_and_follows_content(course_model):
    _, tok = course_model
    instructions, ones, twos = ["Capital of France?", "Capital of Italy?"], ["Paris.", "Milan."], ["Lyon.", "Rome."]
    always_a = _LetterJudge(tok, lambda text: "A")
    assert judge.judge_preferences(always_a, tok, instructions, ones, twos) == pytest.approx([1.5, 1.5])

    def knows_capitals(text):
        answer_a = text.split("### Answer A:")[1].split("### Answer B:")[0]
        return "A" if ("Paris" in answer_a or "Rome" in answer_a) else "B"

    prefs = judge.judge_preferences(_LetterJudge(tok, knows_capitals), tok, instructions, ones, twos, batch_size=1)
    assert prefs[0] < 1.01 and prefs[1] > 1.99  # output_1 right in the first pair, output_2 in the second
    rows = judge.judge_annotations(_LetterJudge(tok, knows_capitals), tok, instructions, ones, twos,
                                   reference_name="ref", model_name="me", judge_name="fake")
    assert evaluate.win_rate(rows)["win_rate"] == pytest.approx(50.0, abs=1)
    assert rows[0]["annotator"] == "local_judge:fake"


# ---- training: resumable checkpoints and gradient checkpointing -----------------------------


def _rows(n=10):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 6 + i % 5
        ids = torch.randint(3, 100, (length + 4,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * length + ids[length:], "prompt_length": length,
                     "instruction_span": [1, length - 1]})
    return rows


def _train(ckpt, collator, **kwargs):
    reft = cl.ReftModel(tiny_llama(), {1: cl.CSReFT(32, 2, 2), 2: cl.CSReFT(32, 2, 2)}, positions="f2+l2", share_positions=False)
    history = train.train(reft, _rows(), collator=collator, epochs=3, batch_size=2, grad_accum=2, lr=1e-2,
                          progress=False, checkpoint_dir=str(ckpt), **kwargs)
    return reft, history


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    class Crash(data.Collator):  # dies while collating the 10th micro-batch, after the step-4 checkpoint
        calls = 0

        def __call__(self, examples):
            Crash.calls += 1
            if Crash.calls > 9:
                raise KeyboardInterrupt
            return super().__call__(examples)

    full, history = _train(tmp_path / "a", data.Collator(0))
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", Crash(0), save_every=2)
    assert json.loads((tmp_path / "b" / checkpoint.STATE_FILE).read_text())["step"] == 4
    resumed, rest = _train(tmp_path / "b", data.Collator(0), resume=True)
    assert rest.steps == history.steps == 9 and rest.losses == history.losses[4:]
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert not any(f.suffix in (".pt", ".bin", ".pkl") for f in (tmp_path / "b").iterdir())  # safetensors + JSON only


def _gradients(checkpointing):
    """Gradients of a two-layer CS-ReFT (router included) and how often layer 2's MLP ran, for one backward."""
    model = tiny_llama()
    reft = cl.ReftModel(model, {1: cl.CSReFT(32, 2, 2), 3: cl.CSReFT(32, 2, 2)}, positions="f2+l2", share_positions=False)
    if checkpointing:
        reft.gradient_checkpointing_enable()
        model.train()  # transformers checkpoints only in training mode (Llama has no dropout to switch on)
    if checkpointing == "hooks inside":  # the whole call checkpointed, our hooks included, as transformers 4.x does
        hooks_inside_enable(model)
    counter = [0]  # runs of an MLP inside layer 2, between the two intervened layers
    mlp = cl.decoder_layers(model)[2].mlp
    mlp.forward = lambda *args, _run=mlp.forward, **kw: (counter.__setitem__(0, counter[0] + 1), _run(*args, **kw))[1]
    torch.manual_seed(0)
    for p in reft.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    reft.train()
    batch = data.Collator(0)(_rows(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reft(**batch).loss.backward()
    return [p.grad.clone() for p in reft.parameters()], counter[0]


@pytest.mark.parametrize("checkpointing", ["transformers", "hooks inside"])
def test_gradient_checkpointing_gives_the_same_gradients(checkpointing):
    """The installed transformers' checkpointing, and the 4.x way (hooks re-run in the backward pass: the router
    must then be recomputed too, or the recompute saves fewer tensors than the forward and torch refuses)."""
    plain, plain_calls = _gradients(None)
    checkpointed, calls = _gradients(checkpointing)
    assert (plain_calls, calls) == (1, 2)  # with checkpointing the layer is recomputed during backward
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-5)


def test_printed_paths_carry_no_machines_own_folders():
    """Notebook 05's rendered page prints the config: the shipped data as csreft_lite/..., a temporary folder as <tmp>/."""
    import tempfile

    assert ae.shown(str(ae.DATA_DIR / "smoke_train.json")) == "csreft_lite/recipes/smoke_data/smoke_train.json"
    folder = tempfile.mkdtemp(prefix="csreft-test-")
    assert ae.shown(folder) == "<tmp>/" + Path(folder).name
    assert ae.shown("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf" and ae.shown((3, 9)) == "(3, 9)"
