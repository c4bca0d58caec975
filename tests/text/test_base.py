"""What every text model shares (lit.text.base): query cleaning."""


import pytest

from lit.text import clean_queries


def test_empty_and_whitespace_queries_raise():
    for bad in ([""], ["   \t\n"], []):
        with pytest.raises(ValueError, match="empty|no text query"):
            clean_queries(bad)
    assert clean_queries(["  a   church \n at night "]) == (["a church at night"], [])
