"""Hypothesis strategies shared by the property tests: text of every kind, JSON-like documents."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

any_text = st.text(st.characters(codec=None, categories=None), max_size=20)
"""Every character, lone surrogates and NUL included."""


def json_documents(keys_and_text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON-like documents (NaN, infinities and integers past 64 bits included) whose strings
    and keys come from ``keys_and_text``."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        keys_and_text,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(keys_and_text, children, max_size=4)
        ),
        max_leaves=12,
    )
