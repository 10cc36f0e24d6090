"""csreft_lite: Compositional Subspace Representation Fine-tuning, small enough to read in an hour.

    import csreft_lite as cl
    model, tok = cl.load_course_model()
    reft = cl.ReftModel(model, {9: cl.LoReFT(576, rank=4)}, positions="f5+l5")
    history = cl.train(reft, dataset, tok)     # the module csreft_lite.train, callable as its train()
"""

__version__ = "0.1.0"

from . import data, evaluate, hooks, tasks, train  # noqa: F401
from .hooks import Positions, add_vector, record  # noqa: F401
from .interventions import CSReFT, DiReFT, LoReFT, Router, balance_loss, kmeans, orthonormal_rows  # noqa: F401
from .models import (  # noqa: F401
    CourseModelError,
    cache_dir,
    decoder_layers,
    load_course_model,
    load_model,
)
from .reft_model import CheckpointError, ReftModel  # noqa: F401
