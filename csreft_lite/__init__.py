"""csreft_lite: Compositional Subspace Representation Fine-tuning, small enough to read in an hour.

    import csreft_lite as cl
    model, tok = cl.load_course_model()
    reft = cl.ReftModel(model, {9: cl.LoReFT(576, rank=4)}, positions="f5+l5")
    history = cl.train(reft, dataset, tok)     # the module csreft_lite.train, callable as its train()

Reading order of the core, following one forward pass:
    interventions.py   LoReFT, DiReFT, CSReFT: the edits, tensors in and tensors out
    routing.py         Router, what it reads (instruction_summary), the balance term, the k-means start
    hooks.py           positions (f5+l5), span masks, a model's decoder layers, editing hidden states there
    reft_model.py      ReftModel: a frozen model + interventions; forward, loss, generate, route
    data.py            templates, labels on the response only, prompt lengths and instruction spans
    train.py           the training loop (beside it, trainer.py: ReftTrainer for transformers' Trainer)
With checkpoint.py (the format on disk and its checks), compat.py (version shims), validate.py and progress.py
these ten files are what a project copies (README: "Copy the core"): they import nothing else of the package.
Around them: models.py (loading, the course-model cache), evaluate.py, tasks.py, and for the notebooks
residual.py (record, add_vector), checks.py, plots.py and judge.py.
"""

__version__ = "0.1.0"

from . import data, evaluate, hooks, routing, tasks, train  # noqa: F401
from .checkpoint import CheckpointError  # noqa: F401
from .hooks import Positions  # noqa: F401
from .interventions import CSReFT, DiReFT, LoReFT, orthonormal_rows  # noqa: F401
from .models import (  # noqa: F401
    CourseModelError,
    cache_dir,
    decoder_layers,
    load_course_model,
    load_model,
)
from .reft_model import ReftModel  # noqa: F401
from .residual import add_vector, record  # noqa: F401
from .routing import Router, balance_loss, instruction_summary, kmeans  # noqa: F401
