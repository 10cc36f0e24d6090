"""Skills that arrive one at a time (``ReftModel.add_skill``): each trains a new CS-ReFT subspace while the earlier ones
stay frozen bit for bit, and a ``CentroidRouter`` opens the nearest skill's subspace at test, without a label. Here in
one room: the router, the choice of the subspace a new skill trains, and the step that adds a skill."""

from __future__ import annotations

import torch
from torch import nn

from .interventions import CSReFT
from .routing import unit_features
from .training import TrainHistory, dataset_router_inputs, train
from .validate import check_sizes


class CentroidRouter(nn.Module):
    """Top-1 gates from the nearest of k centroids, one per skill: the mean of ``Router.features`` over the skill's
    training prompts, set by ``learn`` when the skill arrives (``ReftModel.add_skill``). Nothing is trained by gradient.

    Why nearest centroid for skills that arrive one at a time: adding a skill appends a centroid and never moves the
    earlier ones, so a prompt of an earlier skill keeps its route unless the new skill's centroid is nearer to it than
    its own; no earlier example is stored (the nearest-mean rule of class-incremental learning, e.g. iCaRL). A learned
    ``Router`` would need every earlier skill's prompts again at each new skill, or forget how it routed them.
    Probabilities: softmax of ``−distance² / temperature`` (only reported; the gate is the nearest centroid's).
    """

    def __init__(self, d_model: int, n_subspaces: int = 1, temperature: float = 0.05):
        super().__init__()
        check_sizes("CentroidRouter", n_subspaces, d_model=d_model)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"CentroidRouter: temperature must be a number > 0, got {temperature!r}.")
        self.d_model, self.n_subspaces, self.temperature = d_model, n_subspaces, float(temperature)
        self.register_buffer("centroids", torch.zeros(n_subspaces, d_model))  # [k, d]; saved with the interventions

    def features(self, summary: torch.Tensor) -> torch.Tensor:
        """The same unit-length features as ``Router.features`` (``routing.unit_features``)."""
        return unit_features(summary, self.d_model, "CentroidRouter")

    def probabilities(self, summary: torch.Tensor) -> torch.Tensor:
        """``[batch, k]``: softmax of minus the squared distances to the centroids over the temperature."""
        distance = torch.cdist(self.features(summary), self.centroids).pow(2)
        return (-distance / self.temperature).softmax(-1)

    def forward(self, summary: torch.Tensor, with_probs: bool = False):
        """Gates ``[batch, k]``, 1 for the nearest centroid (and the probabilities, when ``with_probs``)."""
        p = self.probabilities(summary)
        gates = torch.zeros_like(p).scatter(-1, p.argmax(-1, keepdim=True), 1.0)
        return (gates, p) if with_probs else gates

    def penalty(self, probs: torch.Tensor) -> None:
        """No penalty: nothing is learned by gradient."""
        return None

    @torch.no_grad()
    def learn(self, index: int, summaries: torch.Tensor) -> None:
        """Set centroid ``index`` to the mean features of ``summaries`` ``[n, d]`` (a skill's training prompts);
        ``index == n_subspaces`` appends one. The other centroids stay bit for bit."""
        if not isinstance(index, int) or not 0 <= index <= self.n_subspaces:
            raise ValueError(f"CentroidRouter has centroids 0 to {self.n_subspaces - 1}; set one of them or append "
                             f"{self.n_subspaces}, not {index!r}.")
        if summaries.dim() != 2 or len(summaries) == 0:
            raise ValueError(f"A centroid is the mean of a skill's prompts' summaries [n, {self.d_model}] with n >= 1; "
                             f"got shape {tuple(summaries.shape)}.")
        centroid = self.features(summaries).mean(0).to(self.centroids.device)
        if index == self.n_subspaces:
            self.centroids = torch.cat([self.centroids, centroid[None]])
            self.n_subspaces += 1
        else:
            self.centroids[index] = centroid

    def extra_repr(self) -> str:
        return f"{self.d_model}→{self.n_subspaces} (topk-1)"


def new_skill_subspace(modules: "list[CSReFT]") -> int:
    """The subspace a new skill trains in each of these CS-ReFTs (one model's, grown together): the last one when it is
    the only one not frozen yet (a fresh model, or a skill whose training was interrupted), else a new one added to each.

    Any other state (several subspaces not frozen, or the CS-ReFTs in different states) is an error: skills added one at
    a time leave every earlier subspace frozen.
    """
    if not modules or not all(isinstance(m, CSReFT) for m in modules):
        raise ValueError("Skills are added to CS-ReFT interventions only: build the model with cl.CSReFT(d, rank, "
                         "n_subspaces=1) at every layer.")
    states = {(m.n_subspaces, tuple(m.frozen)) for m in modules}
    if len(states) > 1:
        raise ValueError(f"The CS-ReFT layers have different subspaces or frozen sets ({sorted(states)}); skills are added "
                         f"to all of them at once. Build them alike and add skills only with reft.add_skill.")
    k, frozen = states.pop()
    if frozen == tuple(range(k - 1)):
        return k - 1
    if frozen != tuple(range(k)):
        raise ValueError(f"This CS-ReFT has {k} subspaces, of which only {list(frozen)} are frozen: adding a skill trains "
                         f"one new subspace after the frozen ones. Start from cl.CSReFT(d, rank, n_subspaces=1), or freeze "
                         f"the trained subspaces with freeze_subspaces.")
    return min(m.add_subspace() for m in modules)


def add_skill(reft, dataset, tokenizer=None, *, collator=None, **train_kwargs) -> TrainHistory:
    """Learn one more skill and keep the earlier ones: a new CS-ReFT subspace at every layer (the earlier ones frozen,
    bit for bit) trained on ``dataset`` (``data.make_dataset`` rows of this skill only) with its gate forced open, and a
    centroid of what the router reads on those prompts added to the ``CentroidRouter``, which opens the nearest
    skill's subspace at test, without a label. Returns ``train``'s history; ``train_kwargs`` go to ``train``.

    Start from ``ReftModel(model, {layer: CSReFT(d, rank, n_subspaces=1)}, router=CentroidRouter(d))``: the first call
    trains subspace 0, each later one adds a subspace (``new_skill_subspace``).
    """
    if not isinstance(reft.router, CentroidRouter):
        raise ValueError(f"add_skill routes with a CentroidRouter (one centroid per skill, nothing forgotten); this "
                         f"model's router is {type(reft.router).__name__ if reft.router is not None else 'None'}. Build "
                         f"it as ReftModel(model, {{layer: cl.CSReFT(d, rank, n_subspaces=1)}}, router=CentroidRouter(d)).")
    if dataset is None or len(dataset) == 0:
        raise ValueError("add_skill got an empty dataset: pass the new skill's examples (data.make_dataset rows).")
    if "gates" in dataset[0]:
        raise ValueError("add_skill opens the new skill's subspace itself: make the dataset without 'gates'.")
    if "instruction_span" not in dataset[0]:
        raise ValueError("add_skill's router reads each prompt's instruction: make the dataset with "
                         "data.make_dataset, whose rows carry 'instruction_span'.")
    new = new_skill_subspace(list(reft.interventions.values()))
    reft.router.learn(new, dataset_router_inputs(reft, dataset, tokenizer, collator=collator))
    with reft.force_gates([1.0 if i == new else 0.0 for i in range(new + 1)]):
        history = train(reft, dataset, tokenizer, collator=collator, **train_kwargs)
    for module in reft.interventions.values():
        module.freeze_subspaces(new)
    return history
