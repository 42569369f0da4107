from __future__ import annotations

import pytest

from tiny_bert import tiny_batch, tiny_model


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def batch():
    return tiny_batch()
