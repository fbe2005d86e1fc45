"""Shared fixtures: tiny random models for unit tests, the default model for integration tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    from emolens.testing import tiny_model

    return tiny_model(arch="native", n_layers=4, d_model=64, seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    from emolens.testing import tiny_model

    return tiny_model(arch="llama", n_layers=3, d_model=64, seed=1)


@pytest.fixture(scope="session")
def default_model():
    import emolens

    return emolens.load_model()
