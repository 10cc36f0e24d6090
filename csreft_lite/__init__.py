"""csreft_lite: Compositional Subspace Representation Fine-tuning, small enough to read in an hour.

    import csreft_lite as cl
    model, tok = cl.load_course_model()
    reft = cl.ReftModel(model, {9: cl.LoReFT(576, rank=4)}, positions="f5+l5")
    history = cl.train(reft, dataset, tok)     # csreft_lite.training.train

The core's reading order and the twelve files a project copies: README, "The library at a glance".
"""

__version__ = "0.1.0"

from . import data, evaluate, hooks, routing, tasks  # noqa: F401
from .checkpoint import CheckpointError  # noqa: F401
from .continual import CentroidRouter  # noqa: F401
from .hooks import Positions  # noqa: F401
from .interventions import CSReFT, DiReFT, LoReFT, orthonormal_rows  # noqa: F401
from .models import (  # noqa: F401
    CourseModelError,
    cache_dir,
    decoder_layers,
    load_course_model,
    load_model,
)
from .reft_model import ReftConfig, ReftModel  # noqa: F401
from .residual import add_vector, record  # noqa: F401
from .routing import Router, balance_loss, instruction_summary, kmeans  # noqa: F401
from .training import set_seed, train  # noqa: F401
