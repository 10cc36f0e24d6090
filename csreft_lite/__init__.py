"""csreft_lite: Compositional Subspace Representation Fine-tuning, small enough to read in an hour."""

__version__ = "0.1.0"

from .models import (  # noqa: F401
    CourseModelError,
    cache_dir,
    decoder_layers,
    load_course_model,
    load_model,
)
