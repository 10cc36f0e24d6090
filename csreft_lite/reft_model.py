"""``ReftModel``: a frozen causal LM plus interventions at chosen layers and prompt positions.

With CS-ReFT interventions it also owns their one ``Router``: at ``router_layer`` (at or below the
first edit) it averages the (layer-normed) hidden states of the instruction's own tokens, turns that summary into
gates once per forward pass, and hands the same gates to the ``CSReFT`` of every layer.

The base model is never modified: its weights are frozen and the interventions act through
forward hooks on its decoder layers, which ``remove()`` (or leaving a ``with`` block) takes
away again, restoring the base model bit for bit. Only the interventions are parameters of
a ``ReftModel``, so ``reft.parameters()`` is exactly what an optimiser should train, and
``reft.state_dict()`` exactly what a checkpoint holds.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .hooks import (
    PositionIndex,
    Positions,
    check_layers,
    edit_at,
    hidden_of,
    hidden_size,
    replace_hidden,
    resolve_positions,
    span_mask,
)
from .interventions import CSReFT, Router, build
from .models import decoder_layers, model_name

CONFIG_FILE = "reft_config.json"
CHECKPOINT_FORMAT = 2  # 2: one shared router (csreft_lite 0.2); 1: a router inside each CSReFT (0.1)
WEIGHTS_FILE = "interventions.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete or inconsistent. The message names the file."""


@dataclass
class ReftOutput:
    """What ``ReftModel.forward`` returns when given labels."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    penalty: torch.Tensor | None
    n_tokens: int


def _register_pytree(cls) -> None:
    """Make torch's pytree utilities see the tensors inside ``cls``. DDP routes a forward's output
    through them: without this, ``static_graph=True`` never all-reduces the first step's gradients
    (the processes drift apart silently)."""
    from torch.utils import _pytree

    register = getattr(_pytree, "register_pytree_node", None) or getattr(_pytree, "_register_pytree_node", None)
    if register is not None:
        register(cls, lambda out: ([out.loss, out.ce_loss, out.penalty, out.n_tokens], None), lambda values, _: cls(*values))


_register_pytree(ReftOutput)


def _is_checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on; the name changed in transformers 5."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def _key(layer: int, group: str | None) -> str:
    return f"layer{layer}" if group is None else f"layer{layer}_{group}"


class ReftModel(nn.Module):
    """A frozen model with interventions: ``ReftModel(model, {layer: intervention}, positions="f5+l5")``.

    ``share_positions=True`` applies one intervention per layer to all selected positions
    (tied weights); ``False`` gives the first-n and last-n groups separate copies (the LoReFT
    AlpacaEval recipe, "untied"). Interventions are moved to the model's device; their
    parameters stay float32 whatever the model's dtype.

    With ``cl.CSReFT`` interventions, ``router`` (default: ``Router(d, k)``) computes the gates of
    every CS-ReFT layer at once, from the mean of each prompt's layer-normed instruction tokens
    after decoder layer ``router_layer`` (default: the first CS-ReFT layer, read before its edit).
    Calls then need ``instruction_spans`` (``data.make_dataset`` and ``evaluate.generate_answers``
    provide them), unless the gates are forced with ``force_gates``.
    """

    def __init__(
        self,
        model: nn.Module,
        interventions: Mapping[int, nn.Module],
        positions: "str | Positions" = "f5+l5",
        share_positions: bool = True,
        router: Router | None = None,
        router_layer: int | None = None,
    ):
        super().__init__()
        if not interventions:
            raise ValueError("ReftModel needs at least one intervention, e.g. {9: LoReFT(d_model, rank=4)}.")
        object.__setattr__(self, "model", model)  # not a submodule: its weights are not ours to train or save
        self.positions = Positions.parse(positions)
        if self.positions.all and not share_positions:
            raise ValueError("positions='all' has no first/last groups; use share_positions=True.")
        self.share_positions = share_positions
        layers = check_layers(model, [int(k) for k in interventions])
        if len(set(layers)) != len(layers):
            raise ValueError(f"Two interventions were given for the same layer: {sorted(int(k) for k in interventions)}.")
        d = hidden_size(model)
        device = next(model.parameters()).device
        self.layers = layers
        self.interventions = nn.ModuleDict()
        for layer, module in zip(layers, interventions.values()):
            if getattr(module, "d_model", d) != d:
                raise ValueError(
                    f"The intervention for layer {layer} was built for hidden size {module.d_model}, but the model's "
                    f"hidden size is {d}. Build it with d_model={d}."
                )
            if share_positions:
                self.interventions[_key(layer, None)] = module
            else:
                self.interventions[_key(layer, "first")] = module
                self.interventions[_key(layer, "last")] = copy.deepcopy(module)
        self.router, self.router_layer = self._make_router(model, layers, list(interventions.values()), router, router_layer)
        self.to(device)
        model.requires_grad_(False)
        self._where: PositionIndex | None = None
        self._summary_mask: torch.Tensor | None = None  # [batch, seq]: the instruction tokens the router averages
        self._gates: torch.Tensor | None = None  # [batch, k] of the forward pass under way
        self._forced: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None  # [batch, k] of the last forward pass, detached
        self._last_summary: torch.Tensor | None = None  # [batch, d]: what the router read in the last forward pass
        self._handles: list = []
        self._enabled = True
        self.attach()

    @staticmethod
    def _make_router(model, layers, modules, router, router_layer) -> tuple[Router | None, int | None]:
        """The shared router of the CS-ReFT interventions (built when not given), and the layer it reads."""
        routed = [(layer, m) for layer, m in zip(layers, modules) if isinstance(m, CSReFT)]
        if not routed:
            if router is not None or router_layer is not None:
                raise ValueError("router and router_layer are for cl.CSReFT interventions, and none was given.")
            return None, None
        ks = sorted({m.n_subspaces for _, m in routed})
        if len(ks) > 1:
            raise ValueError(f"One router gates every CS-ReFT layer, so they need the same n_subspaces; got {ks}.")
        d = hidden_size(model)
        router = Router(d, ks[0]) if router is None else router
        if router.n_subspaces != ks[0] or router.d_model != d:
            raise ValueError(
                f"The router gives {router.n_subspaces} gates from hidden size {router.d_model}, but the CS-ReFT "
                f"interventions have {ks[0]} subspaces on hidden size {d}. Build it as cl.Router({d}, {ks[0]})."
            )
        first = min(layer for layer, _ in routed)
        router_layer = first if router_layer is None else check_layers(model, [router_layer])[0]
        if router_layer > first:
            raise ValueError(
                f"router_layer={router_layer} is above the first CS-ReFT layer ({first}): the gates must exist "
                f"before the first edit. Use a layer from 0 to {first}."
            )
        return router, router_layer

    # ------------------------------------------------------------ hooks

    def attach(self) -> None:
        """Install the hooks (done by the constructor; undone by ``remove()``)."""
        if self._handles:
            return
        blocks = decoder_layers(self.model)
        for layer in sorted({*self.layers, *([self.router_layer] if self.router is not None else [])}):
            self._handles.append(blocks[layer].register_forward_hook(self._hook(layer)))

    def remove(self) -> None:
        """Take the hooks away: the base model behaves exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._where = None

    def __enter__(self) -> "ReftModel":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _hook(self, layer: int):
        def hook(module, args, output):
            where = self._where
            hidden = hidden_of(output)
            if where is None or not self._enabled or hidden.shape[1] != where.seq_len:
                return None  # not ours (no ReftModel call active) or a cached decode step
            if layer == self.router_layer and self._summary_mask is not None:
                # Read before this layer's own edit. Routed again when transformers 4.x's checkpointing
                # re-runs this layer (and its hooks) in the backward pass: the recompute must save what the
                # forward saved, and gives the same gates.
                self._gates = self._route(hidden)
            if layer not in self.layers:
                return None
            if self.share_positions:
                new = edit_at(hidden, where, self._edit_fn(self.interventions[_key(layer, None)]))
            else:
                new = hidden
                for group in ("first", "last"):
                    new = edit_at(new, where, self._edit_fn(self.interventions[_key(layer, group)]), where.groups[group])
            return replace_hidden(output, new)

        return hook

    def _edit_fn(self, module: nn.Module):
        """``fn(h, mask)`` for ``edit_at``: CS-ReFT modules get this forward pass's gates."""
        if isinstance(module, CSReFT):
            return lambda h, mask: module(h, mask, gates=self._gates)
        return module

    def _route(self, hidden: torch.Tensor) -> torch.Tensor:
        """Gates ``[batch, k]`` from each prompt's instruction tokens: the mean of their layer-normed hidden states.

        Each token is normalised before the mean so that every token gets one vote: some tokens carry hidden
        states ten times longer than the rest (attention sinks, and massive activations such as " the" in
        "Write the ..."), and in a plain mean they would decide the summary alone.
        """
        m = self._summary_mask.unsqueeze(-1)  # [batch, seq, 1]
        tokens = F.layer_norm(hidden.float(), hidden.shape[-1:])
        summary = (tokens * m).sum(1) / m.sum(1)  # [batch, d]
        self._last_summary = summary.detach()
        gates = self.router(summary)
        self.last_gates = gates.detach()
        return gates

    @contextmanager
    def _active(self, where: PositionIndex, instruction_spans=None, prompt_lengths=None, attention_mask=None) -> Iterator[None]:
        if not self._handles:
            raise RuntimeError("This ReftModel was removed from its base model; call reft.attach() to use it again.")
        self._gates, self._summary_mask = None, None
        if self.router is not None:
            self.router.last_probs = None  # no penalty from an earlier call
            batch = attention_mask.shape[0]
            if self._forced is not None:
                if self._forced.shape[0] not in (1, batch):
                    raise ValueError(f"force_gates got gates for {self._forced.shape[0]} examples but the batch has {batch}.")
                self._gates = self._forced.to(attention_mask.device).expand(batch, -1)
                self.last_gates = self._gates
            elif instruction_spans is None and self._enabled:
                raise ValueError(
                    "This ReftModel's router reads each prompt's instruction tokens: pass instruction_spans "
                    "([batch, 2], as data.make_dataset / data.encode_prompt give them), or fix the gates with "
                    "reft.force_gates([...])."
                )
            elif instruction_spans is not None:
                self._summary_mask = span_mask(attention_mask, instruction_spans, prompt_lengths)
        self._where = where
        try:
            yield
        finally:
            # With gradient checkpointing, backward re-runs the layers (and our hooks) after
            # forward returns, so the positions must stay set until the next call.
            if not _is_checkpointing(self.model):
                self._where = None

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model without edits inside this block, e.g. for before/after comparisons."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True

    @contextmanager
    def force_gates(self, gates) -> Iterator[None]:
        """Fix the gates by hand inside this block (the router is bypassed), e.g. ``with reft.force_gates([1, 0, 0]):``
        switches the first subspace on at every layer; ``[batch, k]`` gates set them per example."""
        if self.router is None:
            raise ValueError("force_gates needs routed interventions (cl.CSReFT); these have no gates.")
        k = self.router.n_subspaces
        g = torch.as_tensor(gates, dtype=torch.float32)
        if g.dim() > 2 or g.shape[-1] != k:
            raise ValueError(f"force_gates takes one gate per subspace ({k} values, or [batch, {k}]), got shape {tuple(g.shape)}.")
        previous, self._forced = self._forced, g.reshape(-1, k)
        try:
            yield
        finally:
            self._forced = previous

    # ------------------------------------------------------------ forward and generate

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if input_ids.device != device:
            raise ValueError(
                f"input_ids are on {input_ids.device} but the model is on {device}; move the batch with "
                f".to({str(device)!r})."
            )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: "
                f"they must match (one mask value per token). Pad both with the same collator."
            )
        return attention_mask

    def where(self, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> PositionIndex:
        """The positions this model edits for a padded batch (left or right padding)."""
        return resolve_positions(self.positions, attention_mask, prompt_lengths)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        instruction_spans: torch.Tensor | None = None,
        gates: torch.Tensor | None = None,
        **kwargs,
    ):
        """Without labels: the base model's output (logits) with the edits applied.

        With labels (``-100`` where nothing is learned): a ``ReftOutput`` whose loss is the
        mean cross-entropy over supervised tokens plus any intervention penalty. Logits are
        computed only at supervised positions, which saves the vocabulary projection of
        every prompt token. ``instruction_spans`` (``[batch, 2]``): the instruction's tokens in each
        prompt, which a router reads. ``gates`` (``[batch, k]``): fix the CS-ReFT gates of this call per
        example instead (e.g. a skill label; a data set whose records carry ``gates`` provides them).
        """
        attention_mask = self._check_inputs(input_ids, attention_mask)
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}: give one label per "
                f"token (the token itself, or -100 where nothing is learned), padded like input_ids, e.g. with "
                f"csreft_lite.data.collator_for(tokenizer)."
            )
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # correct under left padding too
        where = self.where(attention_mask, prompt_lengths)
        fixed = self.force_gates(gates) if gates is not None else nullcontext()
        with fixed, self._active(where, instruction_spans, prompt_lengths, attention_mask):
            if labels is None:
                return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
            return self._loss(input_ids, attention_mask, position_ids, labels)

    def _loss(self, input_ids, attention_mask, position_ids, labels) -> ReftOutput:
        targets = labels[:, 1:]
        supervised = targets != -100  # [batch, seq-1]
        n_tokens = int(supervised.sum())
        if n_tokens == 0:
            raise ValueError("Every label in this batch is -100: there is no response token to learn from.")
        config = self.model.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            picked = logits[:, :-1][supervised]
        else:  # backbone, then the output head only where a label is supervised
            hidden = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            picked = self.model.get_output_embeddings()(hidden[:, :-1][supervised])  # [n_tokens, vocab]
        ce = F.cross_entropy(picked.float(), targets[supervised])
        modules = [*self.interventions.values(), *([self.router] if self.router is not None else [])]
        penalties = [p for m in modules if hasattr(m, "penalty") and (p := m.penalty()) is not None]
        penalty = torch.stack(penalties).sum() if penalties else None
        loss = ce if penalty is None else ce + penalty
        return ReftOutput(loss=loss, ce_loss=ce.detach(), penalty=None if penalty is None else penalty.detach(), n_tokens=n_tokens)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        instruction_spans: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``model.generate`` with the edits applied to the prompt (left-padded batches welcome).

        The edits act during the prefill; the KV cache carries them to every generated token,
        and the decode steps run the base model untouched, so generation costs what it costs
        the base model. A router needs ``instruction_spans``, as in ``forward``.
        """
        attention_mask = self._check_inputs(input_ids, attention_mask)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate() needs left padding (the last column is padding); set tokenizer.padding_side='left'.")
        kwargs.setdefault("pad_token_id", getattr(self.model.generation_config, "pad_token_id", None) or self.model.config.eos_token_id)
        where = self.where(attention_mask)
        # Decode steps see one new token, so the hook's length check (seq_len) skips them;
        # the first forward (prefill) sees the whole prompt and is edited.
        stop = self.model.register_forward_hook(lambda *args: setattr(self, "_where", None))
        try:
            with self._active(where, instruction_spans, None, attention_mask):
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            stop.remove()
            self._where = None

    @torch.no_grad()
    def router_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      instruction_spans: torch.Tensor | None = None, prompt_lengths: torch.Tensor | None = None, **ignored) -> torch.Tensor:
        """What the router reads for a batch: the mean of each prompt's layer-normed instruction tokens, ``[batch, d]``."""
        if self.router is None:
            raise ValueError("router_inputs needs a ReftModel with a router (cl.CSReFT interventions).")
        forced, self._forced = self._forced, None
        try:
            self(input_ids, attention_mask, prompt_lengths=prompt_lengths, instruction_spans=instruction_spans)
        finally:
            self._forced = forced
        return self._last_summary

    def init_router(self, dataset, tokenizer=None, batch_size: int = 32, confidence: float = 0.9, seed: int = 0, collator=None) -> torch.Tensor:
        """Start the router from the k-means clusters of what it reads on ``dataset`` (see ``Router.init_from_clusters``).

        ``dataset``: tokenized examples (``data.make_dataset``); returns each example's cluster. No labels are used.
        """
        from .data import collator_for

        collate = collator or collator_for(tokenizer)
        device = next(self.model.parameters()).device
        summaries = []
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            summaries.append(self.router_inputs(**{k: v.to(device) for k, v in batch.items() if k not in ("labels", "gates")}))
        return self.router.init_from_clusters(torch.cat(summaries), confidence=confidence, seed=seed)

    # ------------------------------------------------------------ introspection

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (the interventions only)."""
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
        rank = getattr(first, "rank", "?")
        extra = f", {first.n_subspaces} subspaces" if hasattr(first, "n_subspaces") else ""
        if self.router is not None:
            r = self.router
            net = f"{r.d_model}→{r.hidden}→{r.n_subspaces}" if r.hidden else f"{r.d_model}→{r.n_subspaces}"
            extra += f", one router {net} ({r.gating}{f'-{r.top_k}' if r.gating == 'topk' else ''}) reading layer {self.router_layer}"
        tied = "tied" if self.share_positions else "untied"
        return (
            f"{kind} (rank {rank}{extra}) on {model_name(self.model)} at layers {self.layers}, positions "
            f"{self.positions} ({tied}): {self.trainable_parameters():,} trainable parameters = "
            f"{self.parameter_share():.4f}% of {self.base_parameters():,}"
        )

    def print_trainable_parameters(self) -> None:
        print(self.summary())

    def extra_repr(self) -> str:
        return self.summary()

    # ------------------------------------------------------------ save and load

    def config(self) -> dict:
        return {
            "library": "csreft_lite",
            "version": __version__,
            "base_model": model_name(self.model),
            "hidden_size": hidden_size(self.model),
            "num_layers": len(decoder_layers(self.model)),
            "positions": str(self.positions),
            "share_positions": self.share_positions,
            "layers": self.layers,
            "interventions": {k: {"kind": type(m).__name__, "config": m.config()} for k, m in self.interventions.items()},
            "router": None if self.router is None else {"layer": self.router_layer, "config": self.router.config()},
            "format": CHECKPOINT_FORMAT,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``reft_config.json`` and ``interventions.safetensors`` (no pickles) into a folder."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        (path / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, check_model_name: bool = True) -> "ReftModel":
        """Rebuild a saved ``ReftModel`` on ``model``; refuses a checkpoint made for another model.

        Everything is read and checked before ``model`` is touched; a damaged or inconsistent
        checkpoint raises ``CheckpointError`` (a ``ValueError``) naming the file, and leaves
        ``model`` exactly as it was (no hooks attached, ``requires_grad`` flags unchanged).
        """
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"No ReftModel checkpoint in {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}.")
        config = _read_config(path / CONFIG_FILE)
        _check_model(config, model, path, check_model_name)
        _check_format(config, path / CONFIG_FILE)
        by_layer = _build_interventions(config, path / CONFIG_FILE)
        router, router_layer = _build_router(config, path / CONFIG_FILE)
        state = _read_weights(path / WEIGHTS_FILE)
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:  # the constructor checks everything (layers, sizes, the router) before it touches the model
            reft = cls(model, by_layer, positions=config["positions"], share_positions=config["share_positions"],
                       router=router, router_layer=router_layer)
        except ValueError as error:
            raise CheckpointError(f"{path / CONFIG_FILE} does not fit this model: {error}") from error
        try:
            _check_state(path / WEIGHTS_FILE, state, reft.state_dict())
            reft.load_state_dict(state)
        except BaseException:
            reft.remove()  # leave the model as we found it
            for p in trainable:
                p.requires_grad_(True)
            raise
        return reft


# ------------------------------------------------------------ reading and checking a checkpoint

_CONFIG_FIELDS = {"positions": str, "share_positions": bool, "layers": list, "interventions": dict}
_RESAVE = "If you still have the trained ReftModel, save it again with reft.save(path); otherwise load an earlier checkpoint."


def _read_config(file: Path) -> dict:
    """``reft_config.json`` as a dict, or a ``CheckpointError`` that names the file and what is wrong."""
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{file} cannot be read as JSON ({error}): the checkpoint is damaged or was not written completely. "
            f"{_RESAVE}"
        ) from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a {type(config).__name__}, not the JSON object that ReftModel.save() writes.")
    wrong = [f"'{k}' ({'missing' if k not in config else type(config[k]).__name__ + ', expected ' + t.__name__})"
             for k, t in _CONFIG_FIELDS.items() if not isinstance(config.get(k), t)]
    if wrong:
        raise CheckpointError(
            f"{file} is not a complete ReftModel config: {', '.join(wrong)}. It was edited by hand, damaged, or "
            f"written by something else. {_RESAVE}"
        )
    try:
        Positions.parse(config["positions"])
    except ValueError as error:
        raise CheckpointError(f"{file}: 'positions' {config['positions']!r} cannot be read ({error}).") from error
    if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in config["layers"]) or not config["layers"]:
        raise CheckpointError(f"{file}: 'layers' must be a non-empty list of layer numbers, got {config['layers']!r}.")
    return config


def _check_model(config: dict, model: nn.Module, path: Path, check_model_name: bool) -> None:
    """Refuse a checkpoint made for another model (hidden size, depth, and unless told otherwise, name)."""
    mismatches = []
    for field, ours in (
        ("hidden_size", hidden_size(model)),
        ("num_layers", len(decoder_layers(model))),
        ("base_model", model_name(model)),
    ):
        if field == "base_model" and not check_model_name:
            continue
        if config.get(field) != ours:
            mismatches.append(f"{field}: checkpoint {config.get(field)!r} vs model {ours!r}")
    if mismatches:
        only_name = len(mismatches) == 1 and mismatches[0].startswith("base_model")
        raise ValueError(
            f"The checkpoint in {path} was made for another model ({'; '.join(mismatches)}). Load it on the "
            f"model it was trained on{', or pass check_model_name=False if only the name differs' if only_name else ''}."
        )


def _check_format(config: dict, file: Path) -> None:
    """Refuse, with the reason, a CS-ReFT checkpoint of csreft_lite 0.1 (a router inside every layer)."""
    entries = config["interventions"].values()
    if config.get("format", 1) < CHECKPOINT_FORMAT and any(isinstance(e, dict) and e.get("kind") == "CSReFT" for e in entries):
        raise CheckpointError(
            f"{file} was written by csreft_lite {config.get('version', '0.1')}, where every CS-ReFT layer had a router "
            f"of its own reading that layer's f5+l5 positions. Since 0.2 one router reads the instruction's tokens and "
            f"gates every layer, so these weights cannot be reused: retrain, or load it with csreft_lite 0.1.0."
        )


def _build_router(config: dict, file: Path) -> tuple[Router | None, int | None]:
    """The shared router and the layer it reads, from the config's ``router`` section (None without one)."""
    routing = config.get("router")
    if routing is None:
        return None, None
    if not isinstance(routing, dict) or not isinstance(routing.get("config"), dict) or not isinstance(routing.get("layer"), int):
        raise CheckpointError(f"{file}: 'router' must be {{\"layer\": ..., \"config\": {{...}}}}, got {routing!r}. {_RESAVE}")
    try:
        return build("Router", routing["config"]), routing["layer"]
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{file}: the router cannot be built: {error}") from error


def _build_interventions(config: dict, file: Path) -> dict[int, nn.Module]:
    """``{layer: intervention}`` from the config's entries, after checking they match its ``layers``."""
    share = config["share_positions"]
    entries = config["interventions"]
    expected = [_key(layer, group) for layer in config["layers"] for group in ((None,) if share else ("first", "last"))]
    missing = [k for k in expected if k not in entries]
    unexpected = [k for k in entries if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: the 'interventions' entries do not match 'layers' {config['layers']} with "
            f"share_positions={share} (expected entries {expected}; missing {missing or 'none'}; unexpected "
            f"{unexpected or 'none'}). The file was edited by hand or damaged. {_RESAVE}"
        )
    by_layer = {}
    for layer in config["layers"]:
        key = _key(layer, None if share else "first")
        spec = entries[key]
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict) or "kind" not in spec:
            raise CheckpointError(f"{file}: entry '{key}' must be {{\"kind\": ..., \"config\": {{...}}}}, got {spec!r}.")
        try:
            by_layer[layer] = build(spec["kind"], spec["config"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{file}: entry '{key}' cannot be built: {error}") from error
    return by_layer


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a ``CheckpointError`` that names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{file} cannot be read ({error}): the file is damaged or was not written completely (a full disk, "
            f"an interrupted copy). {_RESAVE}"
        ) from error


def _check_state(
    file: Path,
    state: Mapping[str, torch.Tensor],
    ours: Mapping[str, torch.Tensor],
    fit: str = "the interventions its config describes",
    fix: str = "Config and weights must come from the same reft.save().",
) -> None:
    """Every tensor that ``ours`` holds is in ``state``, with its shape, and nothing else."""
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in ours.items() if k in state and state[k].shape != v.shape]
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if bad or missing or unexpected:
        raise CheckpointError(
            f"The weights in {file} do not fit {fit}: shape mismatches {bad or 'none'}; missing "
            f"{missing or 'none'}; unexpected {unexpected or 'none'}. {fix}"
        )
