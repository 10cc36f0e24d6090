"""AlpacaEval for real: alpaca_eval's own evaluator, judge prompts, parsers and annotation cache, through the real
OpenAI client, against an OpenAI-compatible judge on 127.0.0.1 (``tests/fake_openai_judge.py``).

The judge's rule is known (the longer answer wins; the weighted judge gives it probability 0.9), so every win rate
here is computed independently from the answers' lengths. Hub files come from a Hugging Face cache built in a
temporary folder, read by the real ``hf_hub_download`` offline (conftest sets HF_HUB_OFFLINE=1):
``tests/fixtures/alpaca_eval_hub/df_gamed.csv`` stands in for the dataset repo's ``df_gamed.csv`` (the instruction
difficulties and "gamed" baseline annotations alpaca_eval's length-controlled regression reads; ours has 6
instructions and two made-up gamed baselines, one verbose, one concise, in the columns alpaca_eval 0.6.6 reads).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from csreft_lite import evaluate
from csreft_lite.recipes import alpacaeval as ae

from .fake_openai_judge import P_LONGER, FakeJudge

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alpaca_eval_hub"
SMOKE_EVAL = ae.DATA_DIR / "smoke_eval.json"
REFERENCES = json.loads(SMOKE_EVAL.read_text())
# Model answers: longer than the reference on prompts 1 and 5 only, never of equal length (no tie to break).
ANSWERS = ["Memory.", "Canberra, which was chosen as a compromise between Sydney and Melbourne in 1908.", "Be gentle.",
           "Scattering.", "Nuts.", "Eight legs, like every other arachnid in the world."]

# alpaca_eval binds these at import and would send these tests' requests elsewhere: only 127.0.0.1 here.
for _var in ("OPENAI_API_BASE", "OPENAI_CLIENT_CONFIG_PATH"):
    os.environ.pop(_var, None)

pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")


@pytest.fixture
def judge(monkeypatch):
    """The fake judge, and the OpenAI client's standard variables pointing at it."""
    with FakeJudge() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache; ``hub(name, source)`` puts a file of ``tatsu-lab/alpaca_eval`` into it."""
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    repo, commit = cache / "datasets--tatsu-lab--alpaca_eval", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return lambda name, source: shutil.copy(source, repo / "snapshots" / commit / name)


def _package_files() -> dict:
    """Every file of the installed alpaca_eval (bytecode aside) with its size and mtime: nothing may be written there."""
    import alpaca_eval

    root = Path(alpaca_eval.__file__).parent
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _outputs(tmp_path) -> Path:
    return evaluate.write_alpaca_eval_outputs(tmp_path / "model_outputs.json", [r["instruction"] for r in REFERENCES],
                                              ANSWERS, "my-csreft")


def _longer() -> list[bool]:
    return [len(a) > len(r["output"]) for a, r in zip(ANSWERS, REFERENCES)]


def test_alpaca_eval_1_scores_through_the_server_and_rescoring_is_free(tmp_path, judge):
    before = _package_files()
    path = _outputs(tmp_path)
    first = evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=SMOKE_EVAL)
    assert len(judge.requests) == 6 and {r["model"] for r in judge.requests} == {"gpt-4"}
    assert first["win_rate"] == pytest.approx(100 * sum(_longer()) / 6)  # 2 of 6: the judge's rule, by hand
    assert (first["n_wins"], first["n_wins_base"], first["n_total"]) == (2, 4, 6)
    assert first["avg_length"] == int(sum(map(len, ANSWERS)) / 6) and first["standard_error"] > 0
    assert (first["annotator"], first["judge_model"], first["reference_generator"]) == (
        "alpaca_eval_gpt4", "gpt-4", "handwritten_reference")
    assert not first["comparable"] and "AlpacaEval 1.0" in first["label"]
    assert "length_controlled_winrate" not in first  # AlpacaEval 1.0 defines none
    # Again on the same outputs (a re-score, a resumed run): the cache answers, the number is the same.
    # (Its preferences are all whole numbers: pandas 3 then reads them back as int64, where alpaca_eval 0.6.6 alone fails.)
    again = evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=SMOKE_EVAL)
    assert len(judge.requests) == 6 and again == first
    assert (tmp_path / "scores" / "alpaca_eval_gpt4" / "annotations_cache.json").is_file()
    assert _package_files() == before


def test_alpaca_eval_2_reads_logprobs_and_reports_the_length_controlled_win_rate(tmp_path, judge, hub):
    hub("df_gamed.csv", FIXTURES / "df_gamed.csv")
    before = _package_files()
    path = _outputs(tmp_path)
    first = evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_2", reference_outputs=SMOKE_EVAL)
    assert len(judge.requests) == 6
    assert {(r["model"], r["logprobs"]) for r in judge.requests} == {("gpt-4-1106-preview", True)}
    expected = 100 * sum(P_LONGER if longer else 1 - P_LONGER for longer in _longer()) / 6  # P(model better), averaged
    assert first["win_rate"] == pytest.approx(expected)
    assert first["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and "AlpacaEval 2.0 length-controlled" in first["label"]
    # This judge looks at length only, so at equal length it has no preference: LC near 50%, the raw rate far from it.
    assert abs(first["length_controlled_winrate"] - 50) < 5 < abs(first["win_rate"] - 50)
    assert first["lc_standard_error"] >= 0
    again = evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_2", reference_outputs=SMOKE_EVAL)
    assert len(judge.requests) == 6 and again == first
    assert _package_files() == before  # nor the LC regression's weights


def test_judge_model_asks_the_server_for_another_model_and_keeps_its_own_cache(tmp_path, judge):
    path = _outputs(tmp_path)
    evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=SMOKE_EVAL)
    open_judge = evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=SMOKE_EVAL,
                                      judge_model="meta-llama/Llama-3.1-70B-Instruct")
    assert [r["model"] for r in judge.requests[6:]] == ["meta-llama/Llama-3.1-70B-Instruct"] * 6  # GPT-4's verdicts not reused
    assert open_judge["judge_model"] == "meta-llama/Llama-3.1-70B-Instruct" and not open_judge["comparable"]
    assert open_judge["win_rate"] == pytest.approx(100 * 2 / 6)  # the same prompt and parser, another model


def test_official_references_come_from_the_datasets_json_file(tmp_path, judge, hub):
    """Offline, from a cached ``alpaca_eval.json`` (here 6 rows shaped like its 805): instructions and references alike."""
    official = [dict(r, generator="text_davinci_003", dataset="helpful_base") for r in REFERENCES]
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(official))
    hub("alpaca_eval.json", tmp_path / "alpaca_eval.json")
    config = ae.make_config(smoke=False, output_dir=str(tmp_path / "run"))
    assert [r["instruction"] for r in ae.load_eval_records(config)] == [r["instruction"] for r in REFERENCES]
    result = ae.score(config, _outputs(tmp_path), ae.load_eval_records(config), ANSWERS)  # auto + a key: AlpacaEval 1.0
    assert (result["judge"], result["reference_generator"], result["n_total"]) == ("alpaca_eval_1", "text_davinci_003", 6)
    assert not result["comparable"]  # 6 prompts, not 805


def test_answers_to_other_instructions_than_the_references_are_refused(tmp_path, judge):
    path = evaluate.write_alpaca_eval_outputs(tmp_path / "model_outputs.json", ["What is 2 + 2?"], ["Four."], "my-csreft")
    with pytest.raises(ValueError, match=r"1 instructions of .*model_outputs\.json are not in the references .*'What is 2 \+ 2\?'"):
        evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=SMOKE_EVAL)
    assert judge.requests == []


def test_offline_without_a_hub_file_the_error_names_it_and_the_way_to_get_it(tmp_path, judge, hub):
    path = _outputs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"alpaca_eval_gpt4_baseline\.json.*hf download tatsu-lab/alpaca_eval.*--reference-outputs"):
        evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_2")
    with pytest.raises(FileNotFoundError, match=r"df_gamed\.csv.*length-controlled"):
        evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_2", reference_outputs=SMOKE_EVAL)
    with pytest.raises(FileNotFoundError, match=r"alpaca_eval\.json.*--eval-dataset"):
        ae.load_eval_records(ae.make_config(smoke=False))
    with pytest.raises(FileNotFoundError, match=r"No reference outputs at .*nowhere\.json"):
        evaluate.alpaca_eval(path, tmp_path / "scores", "alpaca_eval_1", reference_outputs=tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match=r"df_gamed\.csv"):  # the recipe checks before training, not hours after
        ae.main(["--smoke", "--judge", "alpaca_eval_2", "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert judge.requests == []  # it stops before the first paid request


@pytest.mark.slow
def test_the_recipe_command_scores_its_smoke_answers_with_alpaca_eval_1(tmp_path, judge, capsys):
    before = _package_files()
    run_dir = tmp_path / "run"
    assert ae.main(["--smoke", "--judge", "alpaca_eval_1", "--output-dir", str(run_dir)]) == 0
    score = json.loads((run_dir / "results.json").read_text())["score"]
    assert (score["annotator"], score["reference_generator"], score["n_total"]) == ("alpaca_eval_gpt4", "handwritten_reference", 6)
    assert 0 < len(judge.requests) <= 6 and not score["comparable"]  # an answer equal to its reference needs no judge
    assert "[SMOKE] AlpacaEval 1.0 win rate (alpaca_eval_gpt4: gpt-4 vs handwritten_reference)" in capsys.readouterr().out
    # Scoring the run's answers again, as a second run does after regenerating them: no request, the same number.
    config = ae.make_config(smoke=True, judge="alpaca_eval_1", output_dir=str(run_dir))
    outputs = json.loads((run_dir / "model_outputs.json").read_text())
    n = len(judge.requests)
    again = ae.score(config, run_dir / "model_outputs.json", ae.load_eval_records(config), [o["output"] for o in outputs])
    assert len(judge.requests) == n and again["win_rate"] == score["win_rate"]
    assert _package_files() == before
