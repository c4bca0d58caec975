"""Fixtures of the text tests: the shipped text model, loaded once."""

import pytest


@pytest.fixture(scope="session")
def text_model():
    import lit.text

    return lit.text.load_text_model()
