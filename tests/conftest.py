"""Shared test set-up: no Hugging Face hub for the whole session, and the course model loaded once."""

import os

# Before anything imports huggingface_hub or transformers (they read these at import time).
# Notebook kernels started by nbval inherit them, so notebooks are tested offline too.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def course_model():
    """``(model, tokenizer)`` of the course model, shared by every test that needs it.

    Uses the user's cache (``csreft_lite.cache_dir()``), so the dequantized weights are
    built at most once on a machine and the notebooks run by nbval reuse them.
    """
    import csreft_lite as cl

    return cl.load_course_model()
