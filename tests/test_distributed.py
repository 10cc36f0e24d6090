"""``train`` in two CPU processes (gloo) against one process: same interventions, one writer, resume.

One launch of ``torch.distributed.run`` (tests/ddp_worker.py, a free port via ``--standalone``)
trains several tiny runs; the tests compare its files with runs in this process. Accelerate gives
each process whole batches in turn and DDP averages the gradients, so 2 processes x batch 2 x
accumulation 1 should equal 1 process x batch 2 x accumulation 2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from . import ddp_worker as worker

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # float32 sums in another order (DDP's all-reduce vs accumulation)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run tests/ddp_worker.py in 2 processes once; return its output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.ddp_worker", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the 2-process run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


def states(out: Path, name: str) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(out / f"{name}-rank{rank}.safetensors")) for rank in (0, 1)]


def histories(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}-rank{rank}.json").read_text()) for rank in (0, 1)]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def one_process(build, grad_accum: int, **kwargs):
    reft = build()
    history = worker.run(reft, grad_accum=grad_accum, **kwargs)
    return {k: v.detach().clone() for k, v in reft.state_dict().items()}, history


@pytest.fixture(scope="module")
def reference():
    """One process, batch 2, accumulation 2: the same effective batch as 2 processes x batch 2."""
    return one_process(worker.build_main, grad_accum=2)


def test_two_processes_train_the_same_interventions_as_one_with_accumulation(two_processes, reference):
    ranks = states(two_processes, "full")
    assert max_difference(ranks[0], ranks[1]) == 0  # DDP keeps the processes identical
    ref_state, ref_history = reference
    initial = worker.build_main().state_dict()
    assert max_difference(ref_state, initial) > 0.02  # the run moved (lr 1e-2, 8 steps)
    difference = max_difference(ranks[0], ref_state)
    print(f"max |2 processes - 1 process| = {difference:.2e}")
    assert difference < TOLERANCE
    # Not a tolerance that anything passes: one process *without* accumulation (half the batch) differs.
    other, _ = one_process(worker.build_main, grad_accum=1, max_steps=ref_history.steps)
    assert max_difference(other, ref_state) > 100 * TOLERANCE
    # The history counts every process: the loss of the whole effective batch, all tokens.
    history = histories(two_processes, "full")[0]
    assert history["steps"] == ref_history.steps == 8
    assert history["tokens"] == ref_history.tokens == worker.EPOCHS * 16 * 2
    assert torch.allclose(torch.tensor(history["losses"]), torch.tensor(ref_history.losses), atol=1e-5)


def test_only_the_main_process_writes_checkpoints_once_per_save(two_processes):
    writes = [(two_processes / f"writes-rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert writes[1] == []
    files = ["interventions.safetensors", "reft_config.json", "optimizer.safetensors", "train_state.json"]
    saves = 3  # steps 3 and 6 (save_every=3) and 8, the end; never twice for one step
    for name in files:
        assert writes[0].count(f"ckpt-full/{name}") == saves, (name, writes[0])
    assert json.loads((two_processes / "ckpt-full" / "train_state.json").read_text())["step"] == 8


def test_an_interrupted_two_process_run_resumes_to_the_same_interventions(two_processes):
    resumed = states(two_processes, "resumed")
    full = states(two_processes, "full")
    assert max_difference(resumed[0], resumed[1]) == 0
    assert max_difference(resumed[0], full[0]) < TOLERANCE
    # The interrupted run checkpointed at step 3 only (the crash came before step 6); the resumed run did 4..8.
    writes = (two_processes / "writes-rank0.txt").read_text().split()
    assert writes.count("ckpt-resume/train_state.json") == 1 + 2  # step 3, then 6 and 8 after resuming
    resumed_history, full_history = histories(two_processes, "resumed")[0], histories(two_processes, "full")[0]
    assert resumed_history["steps"] == 8 and len(resumed_history["losses"]) == 5
    assert torch.allclose(torch.tensor(resumed_history["losses"]), torch.tensor(full_history["losses"][3:]), atol=1e-5)


def test_parameters_unused_by_every_forward_pass_do_not_stop_ddp(two_processes):
    """Forced gates bypass the router and close subspace 1, untied 'l2' never calls the 'first' copies: DDP needs
    find_unused_parameters."""
    ranks = states(two_processes, "unused")
    assert max_difference(ranks[0], ranks[1]) == 0
    initial = worker.build_unused().state_dict()
    idle = [k for k in initial if "_first." in k or k.startswith("router.") or k.endswith("_1")]
    used = [k for k in initial if k not in idle]
    assert idle and used
    assert all(torch.equal(ranks[0][k], initial[k]) for k in idle)
    assert all(not torch.equal(ranks[0][k], initial[k]) for k in used)
    reft = worker.build_unused()
    with reft.force_gates([1.0, 0.0]):
        worker.run(reft, grad_accum=2)
    assert max_difference(ranks[0], reft.state_dict()) < TOLERANCE


def test_activation_checkpointing_under_ddp_trains_the_same_interventions(two_processes):
    ranks = states(two_processes, "checkpointing")
    assert max_difference(ranks[0], ranks[1]) == 0
    assert max_difference(ranks[0], states(two_processes, "full")[0]) < TOLERANCE


def test_a_static_graph_accelerator_keeps_the_processes_in_step(two_processes):
    """DDP(static_graph=True) reads the forward's output through torch's pytree: ReftOutput is registered there."""
    ranks = states(two_processes, "static_graph")
    assert max_difference(ranks[0], ranks[1]) == 0
    assert max_difference(ranks[0], states(two_processes, "full")[0]) < TOLERANCE
