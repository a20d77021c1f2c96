"""Shared test set-up: an isolated model cache for the session, and the tiny tokenizer."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# Set at import time, before any test imports the package's cache helpers, so the tiny model is built once per
# session into a fresh directory and never touches (or reuses) the user's cache.
os.environ["SVDLORA_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="svdlora-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The embedded tiny model's tokenizer, loaded as a user would load it (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(TINY_MODEL))
