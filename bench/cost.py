"""What a representation edit costs on the course model (CPU, fp32): training step, generation, peak memory.

    python bench/cost.py                          # the whole benchmark (about 25 min on 2 cores)
    python bench/cost.py --steps 3 --no-memory --no-pyreft    # a quick look (3 min)

Everything runs on SmolLM2-135M-Instruct (30 layers, d = 576), fp32, ``torch.set_num_threads(2)``.

Training batch: 8 examples x 128 tokens, no padding; each example is a 96-token prompt followed by
a 32-token response, and only the 32 response tokens carry labels (-100 elsewhere). Token ids are
drawn at random from the vocabulary with a fixed seed: cost does not depend on what the tokens say.
A training step is forward + backward + AdamW step + ``zero_grad`` (``set_to_none``).

Configurations (interventions at layers 3, 9, 18, 24 -- the LoReFT recipe's indices -- positions
f5+l5 with tied weights):

- ``forward``: the frozen model's forward under ``no_grad`` (reference only, not a training step).
- ``floor``: the cheapest correct training step any representation edit can have: one zero bias
  vector (576 numbers) added to layer 3's output at the f5+l5 positions. Autograd must still carry
  the loss's gradient back through layers 29..4 to reach it. Its loss is computed like ours: the
  backbone, then the output head only at the 256 supervised positions (not all 1024).
- ``LoReFT`` / ``CS-ReFT``: ``csreft_lite`` (rank 4; CS-ReFT with 4 subspaces of rank 4 and the
  default linear router), ``ReftModel.forward(..., labels=...)``.
- ``LoRA``: peft, rank 8 (alpha 16, no dropout) on q_proj and v_proj, with the same loss as ours
  (supervised logits only); ``LoRA, HF loss`` is the same adapter with ``model(labels=...)``, the
  loss a peft user usually gets (logits at all 1024 positions).
- ``full FT``: every weight of the model trained (AdamW), same loss as ours.
- ``pyreft LoReFT``: pyreft's ``LoreftIntervention`` (rank 4, same layers, ``block_output``,
  f5+l5 tied via ``get_intervention_locations``), its forward with ``labels`` (full logits, as its
  ``ReftTrainer`` does). pyreft pins an older transformers, so it runs in its own virtual
  environment (built on first use under ``~/.cache/csreft_lite/bench-pyreft-venv``) as a worker
  process that this script drives step by step; while it computes, this process waits, so the
  two never compete for the cores. If it cannot be installed or run, the table shows the error.

Timing: ``--warmup`` rounds, then ``--steps`` timed rounds; in each round every configuration runs
one step, in an order that rotates from round to round, so a noisy neighbour slows all alike.
We report the median time and the median over rounds of the paired ratio (config / floor in the
same round), which is robust to a slow round. Each step is timed twice: wall clock
(``time.perf_counter``) and the CPU time of all the process's threads (``time.process_time``).
On a quiet machine the two tell the same story; on a shared, oversubscribed one the CPU time is the
steadier measure of the work a configuration needs (wall time then mostly measures the neighbours).

Generation: 64 new tokens, greedy (``min_new_tokens=64`` so every run makes exactly 64), from a
32-token prompt, batch 1 and batch 8, KV cache on; base model vs ``ReftModel.generate`` (LoReFT,
CS-ReFT: edits in the prefill only) vs peft LoRA unmerged. Interleaved the same way.

Peak memory: one fresh subprocess per configuration (the same script, ``--memory-of NAME``).
After loading the model, building the configuration and touching every weight (transformers may
map the safetensors file lazily), it calls ``malloc_trim``, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs 1 step (or generation), and reads
``VmHWM`` (peak resident set). We report the peak minus the resident size before the steps:
the memory the steps themselves need (activations kept for backward, gradients, optimizer state,
KV cache). Without ``clear_refs`` (non-Linux) it falls back to ``ru_maxrss``, which then also
counts the loading transient. ``tracemalloc`` does not see torch's allocations, so it is not used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

LAYERS = [3, 9, 18, 24]
RANK = 4
N_SUBSPACES = 4
POSITIONS = "f5+l5"
BATCH, SEQ, PROMPT = 8, 128, 96
LORA_RANK = 8
GEN_PROMPT, GEN_NEW = 32, 64
THREADS = 2
MEMORY_STEPS = 1  # the first step allocates everything a step needs (activations, gradients, AdamW state)
TRAIN_CONFIGS = ["forward", "floor", "LoReFT", "CS-ReFT", "LoRA", "LoRA, HF loss", "full FT", "pyreft LoReFT"]
GEN_CONFIGS = ["base", "LoReFT", "CS-ReFT", "LoRA"]
PYREFT_RESOLVE_S = 600  # how long pip may try to resolve pyreft's full dependency set
PYREFT_RUNTIME = ["transformers==4.45.1", "accelerate", "datasets", "networkx", "matplotlib"]  # what pyreft/pyvene import
PYREFT_VENV = Path(os.environ.get("CSREFT_PYREFT_VENV", Path.home() / ".cache" / "csreft_lite" / "bench-pyreft-venv"))


# ---------------------------------------------------------------- memory


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_start() -> dict:
    """Trim the heap, reset the peak-RSS counter, and remember where we start."""
    import gc
    import resource

    gc.collect()
    _malloc_trim()
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    rss = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_kib": rss, "reset": reset}


def memory_end(start: dict) -> dict:
    import resource

    peak = _status_kib("VmHWM") if start["reset"] else None
    method = "VmHWM after clear_refs"
    if peak is None:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    return {"before_mib": start["rss_kib"] / 1024, "peak_mib": peak / 1024, "delta_mib": (peak - start["rss_kib"]) / 1024, "method": method}


# ---------------------------------------------------------------- batches


def training_batch(vocab: int, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (BATCH, SEQ), generator=g)  # skip the special tokens at the start
    labels = ids.clone()
    labels[:, :PROMPT] = -100  # the response (last 32 tokens) is supervised, the prompt is not
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "prompt_lengths": torch.full((BATCH,), PROMPT),
        "instruction_spans": torch.tensor([[5, PROMPT - 5]] * BATCH),  # what CS-ReFT's router averages
    }


def generation_prompt(vocab: int, batch: int, seed: int = 1) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (batch, GEN_PROMPT), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "instruction_spans": torch.tensor([[5, GEN_PROMPT - 5]] * batch)}


def fmt_mib(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


# ---------------------------------------------------------------- our configurations


def supervised_loss(causal_lm, batch):
    """Cross-entropy over supervised tokens, computing logits only there (as ``ReftModel`` does)."""
    import torch.nn.functional as F

    hidden = causal_lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    supervised = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][supervised])  # [n_supervised, vocab]
    return F.cross_entropy(logits, targets[supervised])


class Step:
    """One configuration: ``run()`` does one training step (or one generation); ``attached()`` wraps it."""

    def __init__(self, name, run, params=0, attach=None, detach=None):
        self.name, self.run, self.params = name, run, params
        self._attach, self._detach = attach, detach

    def __call__(self):
        if self._attach:
            self._attach()
        try:
            return self.run()
        finally:
            if self._detach:
                self._detach()


def _adamw(params, lr=1e-3):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _train_step(loss_fn, opt):
    def run():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run


def build_reft(model, kind: str):
    import csreft_lite as cl

    d = model.config.hidden_size
    make = (lambda: cl.LoReFT(d, RANK)) if kind == "LoReFT" else (lambda: cl.CSReFT(d, RANK, N_SUBSPACES))
    reft = cl.ReftModel(model, {layer: make() for layer in LAYERS}, positions=POSITIONS)
    reft.remove()  # attached only while its own step runs
    return reft


def build_lora(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.eval()  # no dropout anywhere, like the other configurations
    return peft_model


def build_training(name: str, model, batch, own_copy: bool):
    """A ``Step`` for a training configuration. ``own_copy``: configurations that change the model get a copy."""
    import torch

    from csreft_lite.hooks import hidden_of, replace_hidden, resolve_positions
    from csreft_lite.models import decoder_layers

    if name == "forward":
        def run():
            with torch.no_grad():
                return float(supervised_loss(model, batch))

        return Step(name, run)
    if name == "floor":
        bias = torch.nn.Parameter(torch.zeros(model.config.hidden_size))
        where = resolve_positions(POSITIONS, batch["attention_mask"], batch["prompt_lengths"])
        at = torch.zeros(BATCH, SEQ, 1)
        at[torch.arange(BATCH)[:, None], where.index] = where.mask[..., None].float()  # 1 at the f5+l5 positions
        layer = decoder_layers(model)[LAYERS[0]]
        handle = []

        def hook(module, args, output):
            return replace_hidden(output, hidden_of(output) + at * bias)

        return Step(
            name,
            _train_step(lambda: supervised_loss(model, batch), _adamw([bias])),
            params=bias.numel(),
            attach=lambda: handle.append(layer.register_forward_hook(hook)),
            detach=lambda: handle.pop().remove(),
        )
    if name in ("LoReFT", "CS-ReFT"):
        reft = build_reft(model, name)
        return Step(
            name,
            _train_step(lambda: reft(**batch).loss, _adamw(reft.parameters())),
            params=reft.trainable_parameters(),
            attach=reft.attach,
            detach=reft.remove,
        )
    if name in ("LoRA", "LoRA, HF loss"):
        peft_model = build_lora(copy.deepcopy(model) if own_copy else model)
        inner = peft_model.get_base_model()  # the causal LM with LoRA layers injected
        params = [p for p in peft_model.parameters() if p.requires_grad]
        if name == "LoRA":
            loss_fn = lambda: supervised_loss(inner, batch)  # noqa: E731
        else:
            loss_fn = lambda: peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss  # noqa: E731
        return Step(name, _train_step(loss_fn, _adamw(params)), params=sum(p.numel() for p in params))
    if name == "full FT":
        full = copy.deepcopy(model) if own_copy else model
        full.requires_grad_(True)
        params = list(full.parameters())
        return Step(name, _train_step(lambda: supervised_loss(full, batch), _adamw(params, lr=1e-5)), params=sum(p.numel() for p in params))
    raise ValueError(f"unknown training configuration {name!r}")


def build_generation(name: str, model, prompt: dict, own_copy: bool, pad_token_id: int):
    import torch

    kwargs = dict(max_new_tokens=GEN_NEW, min_new_tokens=GEN_NEW, do_sample=False, pad_token_id=pad_token_id)

    def check(out):
        assert out.shape[1] == GEN_PROMPT + GEN_NEW, out.shape
        return out

    if name == "base":
        plain = {k: v for k, v in prompt.items() if k != "instruction_spans"}
        return Step(name, lambda: check(model.generate(**plain, **kwargs)))
    if name in ("LoReFT", "CS-ReFT"):
        reft = build_reft(model, name)
        with torch.no_grad():  # a non-zero edit, so generation differs from the base model's
            for p in reft.parameters():
                p.add_(0.01 * torch.randn_like(p))
        return Step(name, lambda: check(reft.generate(**prompt, **kwargs)), params=reft.trainable_parameters(), attach=reft.attach, detach=reft.remove)
    if name == "LoRA":
        peft_model = build_lora(copy.deepcopy(model) if own_copy else model)
        with torch.no_grad():  # B starts at zero; make the adapter do something
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.01 * torch.randn_like(p))
        params = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        plain = {k: v for k, v in prompt.items() if k != "instruction_spans"}
        return Step(name, lambda: check(peft_model.generate(**plain, **kwargs)), params=params)
    raise ValueError(f"unknown generation configuration {name!r}")


# ---------------------------------------------------------------- pyreft, in its own environment


def pyreft_python(log=print) -> Path:
    """The pyreft environment's interpreter, creating the environment on first use."""
    python = PYREFT_VENV / "bin" / "python"
    stamp = PYREFT_VENV / ".csreft-bench-ready"
    if stamp.exists():
        return python
    import torch

    log(f"[pyreft] building its environment in {PYREFT_VENV} (first run only, a few minutes) ...")
    torch_version = torch.__version__  # e.g. 2.13.0+cpu: the exact build, so pip cannot swap in a CUDA one
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(PYREFT_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    # CPU torch of the same version as ours: a local wheel if pip's find-links has one, else PyTorch's CPU index.
    # pyreft's own pins must not drag in another torch (with CUDA), so torch is constrained throughout.
    constraints = PYREFT_VENV / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")
    if subprocess.run(pip + [f"torch=={torch_version}"]).returncode != 0:
        index = "https://download.pytorch.org/whl/" + (torch_version.split("+")[1] if "+" in torch_version else "cpu")
        subprocess.run(pip + [f"torch=={torch_version}", "--index-url", index], check=True)
    # First as pyreft asks (pip resolves all its pins). Its loose extras (jupyter, wandb, gcsfs,
    # ydata-profiling) can keep pip's resolver backtracking for a very long time; then fall back to
    # pyreft and pyvene without dependencies plus what they import at run time, with pyreft's pin
    # of transformers.
    how = "pip install pyreft"
    try:
        result = subprocess.run(pip + ["pyreft", "-c", str(constraints)], capture_output=True, text=True, timeout=PYREFT_RESOLVE_S)
        failed = result.returncode != 0 and _tail(result.stderr + result.stdout)
    except subprocess.TimeoutExpired:
        failed = f"pip's resolver had not settled pyreft's dependencies after {PYREFT_RESOLVE_S} s"
    if failed:
        log(f"[pyreft] {how} failed ({failed.splitlines()[-1]}); installing pyreft --no-deps plus its run-time imports")
        how = f"pyreft --no-deps + {' '.join(PYREFT_RUNTIME)} (full install: {failed.splitlines()[-1]})"
        for extra in (["--no-deps", "pyreft", "pyvene"], PYREFT_RUNTIME):
            result = subprocess.run(pip + extra + ["-c", str(constraints)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(extra)} failed:\n" + _tail(result.stderr + result.stdout))
    (PYREFT_VENV / ".csreft-bench-install").write_text(how + "\n")
    stamp.write_text("ok\n")
    return python


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(kept[-lines:])


class PyreftWorker:
    """Drives ``cost.py --pyreft-worker`` in pyreft's environment: one JSON line per request."""

    def __init__(self, model_dir: Path, mode: str = "time"):
        python = pyreft_python()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [str(python), __file__, "--pyreft-worker", str(model_dir), "--worker-mode", mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(_tail(err) or "the pyreft worker exited without a word")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()


def pyreft_worker(model_dir: str, mode: str) -> None:
    """Runs inside pyreft's environment (its transformers, not ours); never imports csreft_lite."""
    import warnings

    warnings.filterwarnings("ignore")
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the JSON channel

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        import torch
        import transformers

        torch.set_num_threads(THREADS)
        import pyreft

        config = json.loads((Path(model_dir) / "config.json").read_text())
        overrides = {}
        if "rope_theta" not in config and "rope_parameters" in config:  # written by transformers 5
            overrides["rope_theta"] = config["rope_parameters"]["rope_theta"]
        # The cache's safetensors file has no {"format": "pt"} metadata, which transformers 4.x refuses,
        # so build the model from its config and load the same tensors by hand.
        from safetensors.torch import load_file

        hf_config = transformers.AutoConfig.from_pretrained(model_dir, **overrides)
        model = transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        if hf_config.tie_word_embeddings:  # the file holds one of the two tied names
            shared = state.get("model.embed_tokens.weight", state.get("lm_head.weight"))
            state.update({"model.embed_tokens.weight": shared, "lm_head.weight": shared})
        missing, unexpected = model.load_state_dict(state, strict=False)
        model.tie_weights()
        if unexpected or missing:
            raise RuntimeError(f"course model weights do not fit: missing {missing}, unexpected {unexpected}")
        model.eval()
        model.requires_grad_(False)
        d = model.config.hidden_size
        reft_config = pyreft.ReftConfig(representations=[
            {"layer": layer, "component": "block_output", "low_rank_dimension": RANK,
             "intervention": pyreft.LoreftIntervention(embed_dim=d, low_rank_dimension=RANK, dtype=torch.float32)}
            for layer in LAYERS
        ])
        reft_model = pyreft.get_reft_model(model, reft_config)
        reft_model.set_device("cpu")
        params = sum(p.numel() for p in reft_model.parameters() if p.requires_grad)
        batch = training_batch(model.config.vocab_size)
        # f5+l5 tied: the same 10 positions for each of the 4 interventions; [n_interventions, batch, positions]
        locations = pyreft.get_intervention_locations(
            last_position=PROMPT, first_n=5, last_n=5, pad_mode="last", num_interventions=len(LAYERS), share_weights=True
        )
        unit_locations = {"sources->base": (None, [[loc] * BATCH for loc in locations])}
        opt = torch.optim.AdamW([p for p in reft_model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)

        def step():
            _, cf = reft_model(
                {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                unit_locations=unit_locations,
                labels=batch["labels"],
            )
            cf.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(cf.loss)

        versions = {"pyreft": _version("pyreft"), "pyvene": _version("pyvene"), "transformers": transformers.__version__, "torch": torch.__version__}
        if mode == "memory":
            with torch.no_grad():  # as in memory_child: weights resident before measuring
                for t in [*reft_model.parameters(), *model.parameters(), *model.buffers()]:
                    t.sum()
            start = memory_start()
            for _ in range(MEMORY_STEPS):
                step()
            reply({"ready": True, "params": params, "versions": versions, "memory": memory_end(start)})
            return
        reply({"ready": True, "params": params, "versions": versions})
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step()
            reply({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "loss": loss})
    except Exception as err:  # the exact error goes into the table
        reply({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]})


def _version(package: str) -> str:
    from importlib.metadata import version

    with contextlib.suppress(Exception):
        return version(package)
    return "?"


# ---------------------------------------------------------------- measuring


def interleaved(steps: dict, warmup: int, rounds: int, log=print) -> tuple[dict, dict]:
    """Run every step ``warmup + rounds`` times, round-robin with a rotating start.

    Returns the timed rounds' wall-clock seconds and CPU seconds, ``{name: [seconds, ...]}`` each.
    """
    names = list(steps)
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        line = []
        for name in order:
            w, c = steps[name]()
            if r >= warmup:
                wall[name].append(w)
                cpu[name].append(c)
            line.append(f"{name} {w:.2f}s ({c:.2f} CPU s)")
        log(f"  round {r + 1}/{warmup + rounds} ({'warm-up' if r < warmup else 'timed'}): " + ", ".join(line))
    return wall, cpu


def timed(step):
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    def run():
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def paired_ratio(times: dict, name: str, ref: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[ref]))


def measure_memory(name: str, kind: str, python: str = sys.executable) -> dict:
    """Peak memory of one configuration, in a fresh process."""
    cmd = [python, __file__, "--memory-of", name, "--memory-kind", kind]
    result = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": _tail(result.stderr, 3)}
    return json.loads(lines[-1])


def resident(model) -> None:
    """Touch every weight so it is in memory before we measure: transformers may map the
    safetensors file lazily, and the first step would otherwise count the weights themselves."""
    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()


def memory_child(name: str, kind: str) -> None:
    import torch

    import csreft_lite as cl

    torch.set_num_threads(THREADS)
    model, tok = cl.load_course_model()
    if kind == "train":
        step = build_training(name, model, training_batch(model.config.vocab_size), own_copy=False)
    else:
        step = build_generation(name, model, generation_prompt(model.config.vocab_size, 1), own_copy=False, pad_token_id=tok.pad_token_id)
    resident(model)
    start = memory_start()
    for _ in range(MEMORY_STEPS):
        step()
    print(json.dumps(memory_end(start)))


# ---------------------------------------------------------------- main


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}){mem}, {THREADS} torch threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--steps", type=int, default=7, help="timed rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--gen-runs", type=int, default=7, help="timed generation rounds")
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8], help="generation batch sizes")
    parser.add_argument("--no-pyreft", action="store_true", help="skip pyreft (and building its environment)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    parser.add_argument("--json", type=Path, help="also write raw timings to this JSON file")
    parser.add_argument("--pyreft-worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--memory-kind", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.pyreft_worker:
        return pyreft_worker(args.pyreft_worker, args.worker_mode)
    if args.memory_of:
        return memory_child(args.memory_of, args.memory_kind)

    import torch

    import csreft_lite as cl
    from csreft_lite.models import course_model_cache

    torch.set_num_threads(THREADS)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    model, tok = cl.load_course_model()
    vocab = model.config.vocab_size
    batch = training_batch(vocab)
    raw: dict = {"machine": machine(), "date": datetime.date.today().isoformat()}
    tables = [f"Measured {raw['date']} on {raw['machine']}.\n"]

    # ---- training steps
    names = [n for n in TRAIN_CONFIGS if n != "pyreft LoReFT"]
    steps = {}
    params = {}
    for name in names:
        step = build_training(name, model, batch, own_copy=True)
        steps[name], params[name] = timed(step), step.params
    pyreft_error = None
    worker = None
    if not args.no_pyreft:
        try:
            worker = PyreftWorker(course_model_cache())
            params["pyreft LoReFT"] = worker.info["params"]
            raw["pyreft_versions"] = worker.info["versions"]
            with contextlib.suppress(OSError):
                raw["pyreft_install"] = (PYREFT_VENV / ".csreft-bench-install").read_text().strip()
            steps["pyreft LoReFT"] = lambda: (lambda r: (r["seconds"], r["cpu"]))(worker.ask("step"))
        except Exception as err:  # noqa: BLE001 - recorded in the table
            pyreft_error = str(err)
            log(f"[pyreft] failed: {pyreft_error}")
    log(f"training steps: {args.warmup} warm-up + {args.steps} timed rounds over {len(steps)} configurations")
    times, cpu = interleaved(steps, args.warmup, args.steps, log)
    if worker:
        worker.close()
    raw["train_seconds"], raw["train_cpu_seconds"] = times, cpu

    memory = {}
    if not args.no_memory:
        for name in TRAIN_CONFIGS:
            if name == "pyreft LoReFT":
                if pyreft_error or args.no_pyreft:
                    continue
                try:
                    memory[name] = PyreftWorker(course_model_cache(), mode="memory").info["memory"]
                except Exception as err:  # noqa: BLE001
                    memory[name] = {"error": str(err)}
            else:
                memory[name] = measure_memory(name, "train")
            log(f"  memory {name}: {memory[name]}")
    raw["train_memory"] = memory

    floor, lora = "floor", "LoRA"
    rows = [
        f"Training step: batch {BATCH} x {SEQ} tokens ({PROMPT} prompt + {SEQ - PROMPT} supervised), fp32, forward + backward + AdamW; "
        f"median of {args.steps} interleaved rounds after {args.warmup} warm-up rounds. Ratios: median over rounds of the paired ratio.\n",
        "| configuration | trainable params | median s/step | median CPU s/step | × floor (wall / CPU) | × LoRA (wall / CPU) | peak extra memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TRAIN_CONFIGS:
        if name not in times:
            if name == "pyreft LoReFT":
                why = "skipped (--no-pyreft)" if args.no_pyreft else f"**failed**: `{pyreft_error.splitlines()[-1][:300] if pyreft_error else '?'}`"
                rows.append(f"| {name} | | {why} | | | | |")
            continue
        mem = memory.get(name, {})
        rows.append(
            f"| {name} | {params.get(name, 0):,} | {statistics.median(times[name]):.2f} | {statistics.median(cpu[name]):.2f} | "
            f"{paired_ratio(times, name, floor):.3f} / {paired_ratio(cpu, name, floor):.3f} | "
            f"{paired_ratio(times, name, lora):.3f} / {paired_ratio(cpu, name, lora):.3f} | {fmt_mib(mem.get('delta_mib')) or mem.get('error', '')} |"
        )
    tables.append("\n".join(rows))
    if pyreft_error:
        tables.append(f"pyreft's error, exactly:\n\n```\n{pyreft_error}\n```")
    elif "pyreft_versions" in raw:
        tables.append(
            "pyreft environment: " + ", ".join(f"{k} {v}" for k, v in raw["pyreft_versions"].items())
            + (f"; installed as: {raw['pyreft_install']}" if raw.get("pyreft_install") else "")
        )
    print("\n\n".join(tables), flush=True)

    # ---- generation
    if not args.no_generation:
        raw["generate_seconds"], raw["generate_cpu_seconds"], raw["generate_memory"] = {}, {}, {}
        gen_rows = [
            f"\nGeneration: {GEN_NEW} new tokens, greedy, from a {GEN_PROMPT}-token prompt, KV cache; median of {args.gen_runs} "
            f"interleaved rounds after {args.warmup} warm-up rounds; LoRA unmerged.\n",
            "| batch | configuration | median s | median CPU s | tokens/s | × base (wall / CPU) | peak extra memory (MiB, batch 1) |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        gen_mem = {}
        if not args.no_memory:
            for name in GEN_CONFIGS:
                gen_mem[name] = measure_memory(name, "generate")
                log(f"  memory generate {name}: {gen_mem[name]}")
        raw["generate_memory"] = gen_mem
        for b in args.gen_batches:
            prompt = generation_prompt(vocab, b)
            gsteps = None  # free the previous batch size's copies first
            gsteps = {name: timed(build_generation(name, model, prompt, own_copy=True, pad_token_id=tok.pad_token_id)) for name in GEN_CONFIGS}
            log(f"generation, batch {b}: {args.warmup} warm-up + {args.gen_runs} timed rounds")
            gt, gc = interleaved(gsteps, args.warmup, args.gen_runs, log)
            raw["generate_seconds"][b], raw["generate_cpu_seconds"][b] = gt, gc
            for name in GEN_CONFIGS:
                med = statistics.median(gt[name])
                mem = gen_mem.get(name, {})
                gen_rows.append(
                    f"| {b} | {name} | {med:.2f} | {statistics.median(gc[name]):.2f} | {b * GEN_NEW / med:.0f} | "
                    f"{paired_ratio(gt, name, 'base'):.3f} / {paired_ratio(gc, name, 'base'):.3f} | "
                    f"{(fmt_mib(mem.get('delta_mib')) or mem.get('error', '')) if b == args.gen_batches[0] else ''} |"
                )
        tables.append("\n".join(gen_rows))
        print("\n".join(gen_rows), flush=True)

    method = next((m.get("method") for m in list(memory.values()) + list(raw.get("generate_memory", {}).values()) if m.get("method")), None)
    if method:
        tables.append(f"\nPeak extra memory: {method}, in a fresh process per configuration, minus the resident size after loading and building ({MEMORY_STEPS} step).")
    tables.append(f"\n(total {time.perf_counter() - started:.0f} s)")
    print("\n".join(tables[-2:]), flush=True)
    if args.out:
        args.out.write_text("\n\n".join(tables) + "\n")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
