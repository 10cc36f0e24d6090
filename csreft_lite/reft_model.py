"""``ReftModel``: a frozen causal LM plus interventions at chosen layers and prompt positions. Each call (``forward``,
``generate``, ``route``) makes one ``Call`` and hooks ``_edit`` on the base model's layers for its own duration: between
calls the base model is exactly itself. Its parameters are the interventions' and the router's (CS-ReFT: run once per
call, its gates handed to every layer)."""

from __future__ import annotations

import copy
import inspect
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from . import checkpoint
from .checkpoint import CheckpointError
from .compat import UNDER_WAY, is_checkpointing, set_checkpointing
from .architecture import decoder_layers, hidden_size, model_name
from .hooks import (PositionIndex, Positions, edit_at, hook_layers, position_ids, prompt_lengths_from_labels,
                    resolve_positions, span_mask)
from .interventions import CSReFT, DiReFT, LoReFT
from .continual import CentroidRouter, add_skill
from .routing import Router, instruction_summary
from .training import dataset_router_inputs, init_router
from .validate import check_batch, check_gates, check_interventions, check_router


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


# ---------------------------------------------------------------- settings: what a ReftModel is, apart from its weights

KINDS = {"LoReFT": LoReFT, "DiReFT": DiReFT, "CSReFT": CSReFT, "Router": Router, "CentroidRouter": CentroidRouter}


def module_name(layer: int, group: str | None) -> str:
    """An intervention's name in ``ReftModel.interventions``, the weights and ``ReftConfig``: ``layer9``, ``layer9_first``
    (one name everywhere, so that the ``state_dict`` is the file)."""
    return f"layer{layer}" if group is None else f"layer{layer}_{group}"


def settings(module: nn.Module) -> dict:
    """A module's constructor arguments, read back from its attributes of the same names (scikit-learn's ``get_params``
    convention): what ``ReftConfig`` stores for it, and ``build`` passes to rebuild it."""
    names = list(inspect.signature(type(module)).parameters)
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{type(module).__name__}'s settings cannot be read: its constructor arguments {missing} are not "
                        f"attributes of the same name. Store each one in __init__ (self.{missing[0]} = {missing[0]}).")
    values = {name: getattr(module, name) for name in names}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}  # as JSON holds them


def build(kind: str, config: dict) -> nn.Module:
    """An intervention or router from its class name and ``settings``; names unknown and missing keys."""
    if kind not in KINDS:
        raise ValueError(f"Unknown intervention kind {kind!r}; known kinds: {', '.join(KINDS)} (a class of your own: add "
                         f"it to csreft_lite.reft_model.KINDS before loading).")
    params = inspect.signature(KINDS[kind]).parameters  # the constructor's arguments are the config's keys
    unknown = sorted(set(config) - set(params))
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in config]
    if unknown or missing:
        problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        raise ValueError(f"The {kind} config has {' and '.join(problems)}; {kind} accepts {list(params)}. Was the checkpoint "
                         f"written by another version of csreft_lite (its 'version' field) or edited by hand? Load it with "
                         f"the version that wrote it, or correct the keys.")
    return KINDS[kind](**config)


def _built(what: str, spec) -> nn.Module:
    """``build`` from a ``{"kind": ..., "config": {...}}`` entry of a ``ReftConfig``; errors name the entry."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict) or "kind" not in spec:
        raise ValueError(f"{what} must be {{\"kind\": ..., \"config\": {{...}}}}, got {spec!r}.")
    try:
        return build(spec["kind"], spec["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} cannot be built: {error}") from error


@dataclass
class ReftConfig:
    """What a ``ReftModel`` is apart from its weights (as PEFT's ``LoraConfig``): ``reft.reft_config`` gives it,
    ``ReftModel.from_config(model, config)`` builds a fresh model from it, and checkpoint.py writes and reads it as
    ``reft_config.json``. Each intervention's ``config`` holds its sizes (rank, subspaces) and frozen subspaces."""

    positions: str
    share_positions: bool
    layers: list[int]
    interventions: dict[str, dict]  # module_name(layer, group) -> {"kind": class name, "config": constructor arguments}
    router: dict | None = None  # {"kind": ..., "layer": the layer it reads, "config": {...}}; None without CS-ReFT

    def modules(self) -> tuple[dict[int, nn.Module], nn.Module | None, int | None]:
        """Fresh ``({layer: intervention}, router, router_layer)``, after checking the entries match ``layers``."""
        groups = (None,) if self.share_positions else ("first", "last")
        expected = [module_name(layer, group) for layer in self.layers for group in groups]
        missing = [k for k in expected if k not in self.interventions]
        unexpected = [k for k in self.interventions if k not in expected]
        if missing or unexpected:
            raise ValueError(f"the 'interventions' entries do not match 'layers' {self.layers} with share_positions="
                             f"{self.share_positions} (expected entries {expected}; missing {missing or 'none'}; unexpected "
                             f"{unexpected or 'none'}).")
        names = {layer: module_name(layer, groups[0]) for layer in self.layers}  # untied: "last" is built from "first"
        by_layer = {layer: _built(f"entry '{name}'", self.interventions[name]) for layer, name in names.items()}
        if self.router is None:
            return by_layer, None, None
        if not isinstance(self.router, dict) or not isinstance(self.router.get("layer"), int):
            raise ValueError(f"'router' must be {{\"kind\": ..., \"layer\": ..., \"config\": {{...}}}}, got {self.router!r}.")
        # checkpoints of the first release name no kind: a Router
        return by_layer, _built("the router", {"kind": "Router", **self.router}), self.router["layer"]


class _Routed(Exception):
    """Raised by the router's layer when a ``route`` call has what it needs."""


def _supervised_only(supervised: torch.Tensor, fired: list, head: nn.Module, args: tuple) -> tuple:
    """A pre-hook for the output layer: its input ``[batch, seq, d]`` becomes the supervised positions' ``[1, n_tokens, d]``
    (what follows the head, scaling or softcapping, is elementwise, so the model's own code runs on them unchanged)."""
    fired.append(True)
    return (args[0][:, :-1][supervised].unsqueeze(0), *args[1:])


@contextmanager
def _swapped(obj, name: str, value) -> Iterator[None]:
    """``obj.name`` set to ``value`` inside the block, and back to what it was after."""
    previous = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, previous)


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
        self.router_layer = check_router(routed, d, len(decoder_layers(model)), router, router_layer)  # None without CS-ReFT
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
        gates = self._forced if gates is None else gates
        if gates is not None:  # [batch, k]
            call.gates = check_gates(gates, self.router.n_subspaces, len(attention_mask)).to(attention_mask.device)
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

    def disabled(self) -> AbstractContextManager[None]:
        """Run the base model without edits inside this block, e.g. for before/after comparisons."""
        return _swapped(self, "_enabled", False)

    def force_gates(self, gates) -> AbstractContextManager[None]:
        """Fix the gates inside this block (the router is bypassed): ``[1, 0, 0]`` opens the first subspace at every
        layer for every example; ``[batch, k]`` sets them per example."""
        if self.router is None:
            raise ValueError("force_gates needs routed interventions (cl.CSReFT); these have no gates.")
        return _swapped(self, "_forced", check_gates(gates, self.router.n_subspaces))  # [1 or batch, k]

    # ------------------------------------------------------------ forward and generate

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                prompt_lengths: torch.Tensor | None = None, instruction_spans: torch.Tensor | None = None,
                gates: torch.Tensor | None = None, **kwargs):
        """The base model's output with the edits applied; with ``labels`` (-100 where nothing is learned) a ``ReftOutput``
        whose loss is the mean cross-entropy over supervised tokens plus the router's penalty. ``prompt_lengths``
        ``[batch]`` (default: with labels, the tokens before each row's first label; else every token); ``instruction_spans``
        ``[batch, 2]``: what the router reads; ``gates`` ``[batch, k]``: this call's gates instead (e.g. a skill label)."""
        attention_mask = check_batch(self.model, input_ids, attention_mask, labels, kwargs)
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
        with _swapped(self, "_forced", None):
            return self.route(input_ids, attention_mask, instruction_spans, prompt_lengths)[2]

    # What it does with a whole data set: training.py.
    init_router, dataset_router_inputs, add_skill = init_router, dataset_router_inputs, add_skill

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
        kind = "+".join(dict.fromkeys(type(m).__name__ for m in self.interventions.values()))
        extra = next(iter(self.interventions.values())).extra_repr()  # e.g. "rank 4, 3 subspaces"
        if self.router is not None:
            extra += f", one router {self.router.extra_repr()} reading layer {self.router_layer}"
        return (f"{kind} ({extra}) on {model_name(self.model)} at layers {self.layers}, "
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

    @property
    def reft_config(self) -> ReftConfig:
        """This model's settings: positions, layers, each intervention's kind and sizes, the router."""
        r = self.router
        router = None if r is None else {"kind": type(r).__name__, "layer": self.router_layer, "config": settings(r)}
        return ReftConfig(str(self.positions), self.share_positions, self.layers, router=router, interventions={
            name: {"kind": type(m).__name__, "config": settings(m)} for name, m in self.interventions.items()})

    @classmethod
    def from_config(cls, model: nn.Module, config: ReftConfig) -> "ReftModel":
        """A ``ReftModel`` on ``model`` as ``config`` describes it, with fresh weights."""
        interventions, router, router_layer = config.modules()
        return cls(model, interventions, config.positions, config.share_positions, router, router_layer)

    def save(self, path: str | Path) -> Path:
        """Write ``reft_config.json`` and ``interventions.safetensors`` (no pickles) into the folder ``path``."""
        return checkpoint.save({**checkpoint.header(self.model), **asdict(self.reft_config)}, self.state_dict(), path)

    save_pretrained = save  # PEFT's name

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path, check_model_name: bool = True) -> "ReftModel":
        """Rebuild a saved ``ReftModel`` on ``model`` (PEFT's name and order). A checkpoint made for another model, damaged
        or inconsistent raises ``CheckpointError`` naming the file; everything is checked first, and ``model`` is left
        as it was."""
        raw, state = checkpoint.read(path, checkpoint.identity(model), check_model_name)
        file, trainable = Path(path) / checkpoint.CONFIG_FILE, [p for p in model.parameters() if p.requires_grad]
        try:  # the constructor checks layers, sizes and the router before it touches the model
            reft = cls.from_config(model, ReftConfig(**{f.name: raw.get(f.name) for f in fields(ReftConfig)}))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{file} cannot be used: {error} {checkpoint.RESAVE}") from error
        try:
            checkpoint.check_state(Path(path) / checkpoint.WEIGHTS_FILE, state, reft.state_dict())
            reft.load_state_dict(state)
        except BaseException:
            reft.remove()
            for p in trainable:  # the frozen flags as they were
                p.requires_grad_(True)
            raise
        return reft

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
