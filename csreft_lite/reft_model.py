"""``ReftModel``: a frozen causal LM plus interventions at chosen layers and prompt positions. Each call (``forward``,
``generate``, ``route``) makes one ``Call`` and hooks ``_edit`` on the base model's layers for its own duration: between
calls the base model is exactly itself. Its parameters are the interventions' and the router's (CS-ReFT: run once per
call, its gates handed to every layer)."""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from . import checkpoint
from .checkpoint import module_name
from .compat import UNDER_WAY, is_checkpointing, set_checkpointing
from .data import collator_for
from .architecture import decoder_layers, hidden_size, model_name
from .hooks import (PositionIndex, Positions, edit_at, hook_layers, position_ids, prompt_lengths_from_labels,
                    resolve_positions, span_mask)
from .interventions import CSReFT
from .routing import Router, instruction_summary
from .validate import check_batch, check_gates, check_interventions, check_layers, check_router


@dataclass
class ReftOutput(ModelOutput):
    """What ``ReftModel.forward`` returns when given labels: a ``ModelOutput`` (``out.loss`` or ``out["loss"]``, as
    transformers' ``Trainer`` reads it; torch's pytree utilities, and so DDP, see its tensors)."""

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    n_tokens: int | None = None


@dataclass
class Call:
    """One ``forward``, ``generate`` or ``route`` call: made by that method, handed to its hooks, gone when it returns
    (a layer that transformers 4.x recomputes in the backward pass gets a ``replay()`` of it, ``compat.recompute_context``)."""

    where: PositionIndex  # the prompt positions to edit
    gates: torch.Tensor | None = None  # [batch, k]: given, forced, or the router's (at the router's layer)
    summary_mask: torch.Tensor | None = None  # [batch, seq]: the instruction tokens the router averages
    probs: torch.Tensor | None = None  # [batch, k], for the router's penalty
    router_input: torch.Tensor | None = None  # [batch, d]: what the router read (routing.instruction_summary)
    stop_after_routing: bool = False  # ``route``: no layer after the router's runs
    edited: set = field(default_factory=set)  # the layers edited so far: each once, on the prompt's pass

    def replay(self) -> "Call":
        """This call for a layer recomputed in the backward pass: the same positions and gates, that layer not yet edited."""
        return replace(self, edited=set())


class _Routed(Exception):
    """Raised by the router's layer when a ``route`` call has what it needs."""


def _supervised_only(supervised: torch.Tensor, fired: list, head: nn.Module, args: tuple) -> tuple:
    """A pre-hook for the output layer: its input ``[batch, seq, d]`` becomes the supervised positions' ``[1, n_tokens, d]``
    (what follows the head, scaling or softcapping, is elementwise, so the model's own code runs on them unchanged)."""
    fired.append(True)
    return (args[0][:, :-1][supervised].unsqueeze(0), *args[1:])


class ReftModel(nn.Module):
    """A frozen model with interventions: ``ReftModel(model, {layer: intervention}, positions="f5+l5")``.

    ``share_positions=False`` gives the first and last positions separate copies ("untied", the LoReFT AlpacaEval
    recipe). With ``cl.CSReFT`` interventions, ``router`` (default ``Router(d, k)``) reads ``router_layer`` (default:
    the first CS-ReFT layer, before its edit), and calls need ``instruction_spans`` (``data.make_dataset`` and
    ``evaluate.generate_answers`` provide them) unless gates are given. Interventions stay float32. The base model
    carries no hook between calls: each call hooks its layers for its own duration (``_hooked``).
    """

    accepts_loss_kwargs = False  # Trainer: the loss is a mean over this batch's tokens; pass no num_items_in_batch

    def __init__(self, model: nn.Module, interventions: Mapping[int, nn.Module], positions: "str | Positions" = "f5+l5",
                 share_positions: bool = True, router: Router | None = None, router_layer: int | None = None):
        super().__init__()
        if not interventions:
            raise ValueError("ReftModel needs at least one intervention, e.g. {9: LoReFT(d_model, rank=4)}.")
        object.__setattr__(self, "model", model)  # not a submodule: its weights are not ours to train or save
        self.positions = Positions.parse(positions)
        if self.positions.all and not share_positions:
            raise ValueError("positions='all' has no first/last groups; use share_positions=True.")
        self.share_positions = share_positions
        self.copies = (None,) if share_positions else ("first", "last")  # the position groups with weights of their own
        d = hidden_size(model)
        self.layers = check_interventions(len(decoder_layers(model)), interventions, d)
        self.interventions = nn.ModuleDict()
        for layer, module in zip(self.layers, interventions.values()):
            for group in self.copies:  # untied: the "last" group gets a copy
                self.interventions[module_name(layer, group)] = module if group in (None, "first") else copy.deepcopy(module)
        routed = {layer: m for layer, m in zip(self.layers, interventions.values()) if isinstance(m, CSReFT)}
        if router_layer is not None:
            router_layer = check_layers(len(decoder_layers(model)), [router_layer])[0]
        self.router_layer = check_router(routed, d, router, router_layer)  # None without CS-ReFT
        self.router = (router or Router(d, next(iter(routed.values())).n_subspaces)) if routed else None
        self.to(next(model.parameters()).device)
        model.requires_grad_(False)
        self._forced: torch.Tensor | None = None  # force_gates' setting, for the calls inside its block
        self._enabled = True  # False inside disabled()
        self._attached = True  # False after remove()
        self.last_gates = self.last_probs = self.last_router_input = None  # the last call's, detached: for notebooks to read

    # ------------------------------------------------------------ one call: its hooks and its edit

    def _new_call(self, attention_mask: torch.Tensor, prompt_lengths=None, instruction_spans=None, gates=None,
                  enabled: bool | None = None) -> Call | None:
        """What this call edits, and with which gates; None runs the base model (inside ``disabled()``)."""
        if not self._attached:
            raise RuntimeError("This ReftModel was removed from its base model; call reft.attach() to use it again.")
        where = resolve_positions(self.positions, attention_mask, prompt_lengths)  # left or right padding
        if not (self._enabled if enabled is None else enabled):
            return None
        call = Call(where=where)
        if self.router is None:
            if gates is not None:
                raise ValueError("gates are for routed interventions (cl.CSReFT); these have none.")
            return call
        gates = self._forced if gates is None else check_gates(gates, self.router.n_subspaces)  # [1 or batch, k]
        if gates is not None:
            if gates.shape[0] not in (1, attention_mask.shape[0]):
                raise ValueError(f"Gates for {gates.shape[0]} examples were given but the batch has {attention_mask.shape[0]}.")
            call.gates = gates.to(attention_mask.device).expand(attention_mask.shape[0], -1)
        elif instruction_spans is not None:
            call.summary_mask = span_mask(attention_mask, instruction_spans, prompt_lengths)
        else:
            raise ValueError("This ReftModel's router reads each prompt's instruction tokens: pass instruction_spans "
                             "([batch, 2], as data.make_dataset / data.encode_prompt give them), or give the gates "
                             "(gates=[...] or reft.force_gates([...])).")
        return call

    @contextmanager
    def _hooked(self, call: Call | None) -> Iterator[Call | None]:
        """``_edit`` hooked on the layers for this call, and taken off when it returns (``None``: no hooks)."""
        layers = sorted({*self.layers, *([self.router_layer] if self.router is not None else [])})
        handles = [] if call is None else hook_layers(self.model, {layer: partial(self._edit, call, layer) for layer in layers}, first=True)
        token = UNDER_WAY.set(None if call is None else (lambda: self._hooked(call.replay())))  # for a 4.x recompute
        try:
            yield call
            if call is not None:  # what this call produced, kept for a notebook to look at
                self.last_gates, self.last_probs, self.last_router_input = (
                    None if t is None else t.detach() for t in (call.gates, call.probs, call.router_input))
        finally:
            UNDER_WAY.reset(token)
            for handle in handles:
                handle.remove()

    def _edit(self, call: Call, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s output ``hidden [batch, seq, d]`` with this call's edit: where every edit is applied."""
        if layer in call.edited:
            return hidden  # a later pass of the same call: generate's decode steps (the KV cache carries the edit)
        call.edited.add(layer)
        if layer == self.router_layer and call.summary_mask is not None:  # read before this layer's own edit
            call.router_input = instruction_summary(hidden, call.summary_mask)  # [batch, d]
            call.gates, call.probs = self.router(call.router_input, with_probs=True)  # [batch, k] each
            if call.stop_after_routing:
                raise _Routed
        for group in self.copies if layer in self.layers else ():
            module = self.interventions[module_name(layer, group)]
            fn = partial(module, gates=call.gates) if isinstance(module, CSReFT) else module  # CS-ReFT: this call's gates
            hidden = edit_at(hidden, call.where, fn, None if group is None else call.where.groups[group])
        return hidden

    def attach(self) -> None:
        """Use this ReftModel again after ``remove()``."""
        self._attached = True

    def remove(self) -> None:
        """Retire this ReftModel: later calls raise. (The base model carries no hook between calls in any case.)"""
        self._attached = False

    def __enter__(self) -> "ReftModel":
        return self

    def __exit__(self, *exc) -> None:  # leaving a ``with`` block retires it
        self.remove()

    @contextmanager
    def _swapped(self, name: str, value) -> Iterator[None]:
        """Attribute ``name`` set to ``value`` inside the block, and back to what it was after."""
        previous = getattr(self, name)
        setattr(self, name, value)
        try:
            yield
        finally:
            setattr(self, name, previous)

    def disabled(self) -> AbstractContextManager[None]:
        """Run the base model without edits inside this block, e.g. for before/after comparisons."""
        return self._swapped("_enabled", False)

    def force_gates(self, gates) -> AbstractContextManager[None]:
        """Fix the gates inside this block (the router is bypassed): ``[1, 0, 0]`` opens the first subspace at every
        layer for every example; ``[batch, k]`` sets them per example."""
        if self.router is None:
            raise ValueError("force_gates needs routed interventions (cl.CSReFT); these have no gates.")
        return self._swapped("_forced", check_gates(gates, self.router.n_subspaces))  # [1 or batch, k]

    # ------------------------------------------------------------ forward and generate

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                prompt_lengths: torch.Tensor | None = None, instruction_spans: torch.Tensor | None = None,
                gates: torch.Tensor | None = None, **kwargs):
        """The base model's output with the edits applied; with ``labels`` (-100 where nothing is learned) a ``ReftOutput``
        whose loss is the mean cross-entropy over supervised tokens plus the router's penalty. ``prompt_lengths``
        ``[batch]`` (default: with labels, the tokens before each row's first label; else every token); ``instruction_spans``
        ``[batch, 2]``: what the router reads; ``gates`` ``[batch, k]``: this call's gates instead (e.g. a skill label)."""
        attention_mask = check_batch(self.model, input_ids, attention_mask, labels)
        if labels is not None and kwargs:
            raise TypeError(f"ReftModel.forward with labels takes input_ids, attention_mask, labels, prompt_lengths, "
                            f"instruction_spans and gates; it got {sorted(kwargs)} as well. Drop them (with transformers' "
                            f"Trainer: collate with data.collator_for(tokenizer)).")
        if labels is not None and prompt_lengths is None:
            prompt_lengths = prompt_lengths_from_labels(labels, attention_mask)
        call = self._new_call(attention_mask, prompt_lengths, instruction_spans, gates)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids(attention_mask)}
        with self._hooked(call):  # each hooked layer's output goes through self._edit(call, layer, ·)
            if labels is None:  # any other keyword goes to the base model, which checks it
                return self.model(**inputs, **kwargs)
            return self._loss(inputs, labels, call)

    def _loss(self, inputs: dict, labels: torch.Tensor, call: Call | None) -> ReftOutput:
        """Cross-entropy of the model's own logits (its head, logit scaling and softcapping included) at the supervised
        positions only: the head is handed just those positions' hidden states, so no prompt token reaches the vocabulary."""
        targets = labels[:, 1:]
        supervised = targets != -100  # [batch, seq-1]
        if not bool(supervised.any()):
            raise ValueError("Every label in this batch is -100: there is no response token to learn from.")
        head, fired = self.model.get_output_embeddings(), []
        handle = None if head is None else head.register_forward_pre_hook(partial(_supervised_only, supervised, fired))
        try:
            logits = self.model(**inputs, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        picked = logits[0] if fired else logits[:, :-1][supervised]  # [n_tokens, vocab]; a model may bypass its head module
        ce = F.cross_entropy(picked.float(), targets[supervised])
        probs = None if call is None else call.probs
        penalty = self.router.penalty(probs) if probs is not None else None
        loss = ce if penalty is None else ce + penalty
        return ReftOutput(loss=loss, ce_loss=ce.detach(), penalty=None if penalty is None else penalty.detach(),
                          n_tokens=int(supervised.sum()))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 instruction_spans: torch.Tensor | None = None, gates: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``model.generate`` with the edits applied to the (left-padded) prompts. The edits act on the prompt's pass; the
        KV cache carries them to every generated token, and decode steps run the base model: no slower than it."""
        attention_mask = check_batch(self.model, input_ids, attention_mask)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate() needs left padding (the last column is padding); set tokenizer.padding_side='left'.")
        kwargs.setdefault("pad_token_id", getattr(self.model.generation_config, "pad_token_id", None) or self.model.config.eos_token_id)
        with self._hooked(self._new_call(attention_mask, None, instruction_spans, gates)):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------ the router's start

    @torch.no_grad()
    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              instruction_spans: torch.Tensor | None = None, prompt_lengths: torch.Tensor | None = None):
        """This batch's gates, the router's probabilities and what it read, ``([batch, k], [batch, k], [batch, d])``, as a
        forward pass would route it; the base model runs up to the router's layer only. Forced gates: ``(gates, None, None)``."""
        if self.router is None:
            raise ValueError("route needs a ReftModel with a router (cl.CSReFT interventions).")
        attention_mask = check_batch(self.model, input_ids, attention_mask)
        call = self._new_call(attention_mask, prompt_lengths, instruction_spans, enabled=True)
        if call.summary_mask is not None:
            call.stop_after_routing = True
            with self._hooked(call):
                try:
                    self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
                except _Routed:
                    pass
        return tuple(None if t is None else t.detach() for t in (call.gates, call.probs, call.router_input))

    def router_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      instruction_spans: torch.Tensor | None = None, prompt_lengths: torch.Tensor | None = None, **ignored) -> torch.Tensor:
        """What the router reads for a batch (``routing.instruction_summary``), ``[batch, d]``, forced gates or not."""
        with self._swapped("_forced", None):
            return self.route(input_ids, attention_mask, instruction_spans, prompt_lengths)[2]

    def init_router(self, dataset, tokenizer=None, batch_size: int = 32, confidence: float = 0.9, seed: int = 0,
                    collator=None) -> torch.Tensor:
        """Start the router from the k-means clusters of what it reads on ``dataset`` (``data.make_dataset`` rows, no
        labels used); returns each example's cluster (``Router.init_from_clusters``)."""
        summaries = self.dataset_router_inputs(dataset, tokenizer, batch_size, collator)
        return self.router.init_from_clusters(summaries, confidence=confidence, seed=seed)

    @torch.no_grad()
    def dataset_router_inputs(self, dataset, tokenizer=None, batch_size: int = 32, collator=None) -> torch.Tensor:
        """What the router reads on each row of ``dataset`` (``data.make_dataset`` rows), ``[n, d]``, in batches. It
        does not depend on the interventions: the router reads below the first edit."""
        collate = collator or collator_for(tokenizer)
        device = next(self.model.parameters()).device
        summaries = []
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            summaries.append(self.router_inputs(**{k: v.to(device) for k, v in batch.items() if k not in ("labels", "gates")}))
        return torch.cat(summaries)

    # ------------------------------------------------------------ counts and summary

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (the interventions and the router)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def base_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def parameter_share(self) -> float:
        """Trainable parameters as a percentage of the base model's, e.g. 0.0039 for 0.0039%."""
        return 100.0 * self.trainable_parameters() / self.base_parameters()

    def summary(self) -> str:
        """One line: what is attached where, and how many parameters it trains."""
        first = next(iter(self.interventions.values()))
        kind = "+".join(dict.fromkeys(type(m).__name__ for m in self.interventions.values()))
        extra = f", {first.n_subspaces} subspaces" if isinstance(first, CSReFT) else ""
        if isinstance(first, CSReFT) and first.frozen:
            extra += f" ({', '.join(map(str, first.frozen))} frozen)"
        if self.router is not None:
            r = self.router
            net = f"{r.d_model}→{r.hidden}→{r.n_subspaces}" if r.hidden else f"{r.d_model}→{r.n_subspaces}"
            gating = f"topk-{r.top_k}" if r.gating == "topk" else r.gating
            extra += f", one router {net} ({gating}) reading layer {self.router_layer}"
        return (f"{kind} (rank {getattr(first, 'rank', '?')}{extra}) on {model_name(self.model)} at layers {self.layers}, "
                f"positions {self.positions} ({'tied' if self.share_positions else 'untied'}): {self.trainable_parameters():,} "
                f"trainable parameters = {self.parameter_share():.4f}% of {self.base_parameters():,}")

    def print_trainable_parameters(self) -> None:
        print(self.summary())

    extra_repr = summary

    # ------------------------------------------------------------ save and load (format and checks: checkpoint.py)

    @property
    def config(self):
        """The base model's config, as every model in the ecosystem has one (``Trainer`` reads it)."""
        return self.model.config

    def save(self, path: str | Path) -> Path:
        """Write ``reft_config.json`` and ``interventions.safetensors`` (no pickles) into the folder ``path``."""
        return checkpoint.save(checkpoint.config_of(self), self.state_dict(), path)

    save_pretrained = save  # PEFT's name

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path, check_model_name: bool = True) -> "ReftModel":
        """Rebuild a saved ``ReftModel`` on ``model`` (PEFT's name and order: the model first). A checkpoint made for another
        model, damaged or inconsistent raises ``CheckpointError`` naming the file, and leaves ``model`` as it was."""
        return checkpoint.load(cls, path, model, check_model_name)

    def gradient_checkpointing_enable(self, **ignored) -> None:
        """Activation checkpointing in the base model (``Trainer``'s ``gradient_checkpointing=True`` calls this); always
        non-reentrant, so gradients reach edits whose inputs need none. Call ``train()`` too (``compat.set_checkpointing``)."""
        set_checkpointing(self.model, True)

    def gradient_checkpointing_disable(self) -> None:
        set_checkpointing(self.model, False)

    activation_checkpointing_enable = gradient_checkpointing_enable  # the names 5.x's Trainer calls
    activation_checkpointing_disable = gradient_checkpointing_disable

    def train(self, mode: bool = True) -> "ReftModel":
        """Training mode for the interventions; for the frozen base too while checkpointing is on (transformers recomputes
        layers only in training mode), else it stays as it is (no dropout in a model that does not learn)."""
        if is_checkpointing(self.model):
            self.model.train(mode)
        return super().train(mode)

    # The first release's name and order, kept for code written against it (DESIGN's stable API).
    load = classmethod(lambda cls, path, model, check_model_name=True: cls.from_pretrained(model, path, check_model_name))

    # ------------------------------------------------------------ skills added one at a time

    def add_skill(self, dataset, tokenizer=None, *, collator=None, **train_kwargs):
        """Learn one more skill and keep the earlier ones: a new CS-ReFT subspace at every layer (the earlier ones frozen,
        bit for bit) trained on ``dataset`` (``data.make_dataset`` rows of this skill only) with its gate forced open, and
        a centroid of what the router reads on those prompts added to the ``routing.CentroidRouter``, which opens the
        nearest skill's subspace at test, without a label. Returns ``train``'s history; ``train_kwargs`` go to ``train``.

        Start from ``ReftModel(model, {layer: CSReFT(d, rank, n_subspaces=1)}, router=CentroidRouter(d))``: the first
        call trains subspace 0, each later one adds a subspace (``interventions.new_skill_subspace``).
        """
        from . import train
        from .interventions import new_skill_subspace
        from .routing import CentroidRouter

        if not isinstance(self.router, CentroidRouter):
            raise ValueError(f"add_skill routes with a CentroidRouter (one centroid per skill, nothing forgotten); this "
                             f"model's router is {type(self.router).__name__ if self.router is not None else 'None'}. Build "
                             f"it as ReftModel(model, {{layer: cl.CSReFT(d, rank, n_subspaces=1)}}, router=CentroidRouter(d)).")
        if dataset is None or len(dataset) == 0:
            raise ValueError("add_skill got an empty dataset: pass the new skill's examples (data.make_dataset rows).")
        if "gates" in dataset[0]:
            raise ValueError("add_skill opens the new skill's subspace itself: make the dataset without 'gates'.")
        if "instruction_span" not in dataset[0]:
            raise ValueError("add_skill's router reads each prompt's instruction: make the dataset with "
                             "data.make_dataset, whose rows carry 'instruction_span'.")
        new = new_skill_subspace(list(self.interventions.values()))
        self.router.learn(new, self.dataset_router_inputs(dataset, tokenizer, collator=collator))
        with self.force_gates([1.0 if i == new else 0.0 for i in range(new + 1)]):
            history = train(self, dataset, tokenizer, collator=collator, **train_kwargs)
        for module in self.interventions.values():
            module.freeze_subspaces(new)
        return history
