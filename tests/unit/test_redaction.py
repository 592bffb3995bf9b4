"""Redaction of each secret shape, inside free text and under secret-named keys, and of nothing else."""

from __future__ import annotations

import pytest

from gateway.observe.audit import argument_digest
from gateway.observe.redaction import MASK, redact, redact_text

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_x~+/==", f"Authorization: Bearer {MASK}"),
        ("basic dXNlcjpwYXNz", f"basic {MASK}"),
        ("Authorization: Token 0123456789abcdefXYZ", f"Authorization: Token {MASK}"),
        (f"token={JWT}", f"token={MASK}"),
        (f"jwt {JWT} end", f"jwt {MASK} end"),
        ("key sk-ant-api03-AbCdEfGhIjKlMnOpQr", f"key {MASK}"),
        ("ghp_" + "a" * 36, MASK),
        ("github_pat_" + "A1_" * 10, MASK),
        ("glpat-" + "x" * 20, MASK),
        ("xoxb-123456789012-abcdefghij", MASK),
        ("AKIAIOSFODNN7EXAMPLE", MASK),
        ("AIza" + "B" * 35, MASK),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", MASK),
        ("https://h/cb?code=1&access_token=s3cret&state=2", f"https://h/cb?code=1&access_token={MASK}&state=2"),
        ('{"password": "hunter2"}', f'{{"password": {MASK}}}'),
        ("client_secret: 'abc def'", f"client_secret: {MASK}"),
        ("postgres://user:pa55@db:5432/x", f"postgres://{MASK}@db:5432/x"),
        ("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", f"sha {MASK}"),
        ("id 0123456789ABCDEF0123456789ABCDEF", f"id {MASK}"),
        ("blob QWxhZGRpbjpvcGVuIHNlc2FtZQ5kJ3hHx2Yz==", f"blob {MASK}"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_each_secret_shape_is_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "author=Alice",
        "no static token matches",
        "tokens=5",
        "/usr/local/lib/python3.11/site-packages/gateway",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "deadbeef" * 3,
        "the_quick_brown_fox_jumps_over_the_lazy_dog",  # long, but one letter case
        "file:///home/user/notes.md",
        "12345678901234567890123456789012345",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_values_under_secret_named_keys_are_masked_at_any_depth() -> None:
    value = {
        "password": "x",
        "apiKey": "y",
        "private_key": "z",
        "key": "v",
        "Authorization": "anything",
        "session_token": "t",
        "nested": [{"client_secret": "s", "cookie": "c", "user": "bob"}],
        "max_tokens": 512,
        "monkey": "banana",
        "passage": "text",
        "token": None,
    }
    assert redact(value) == {
        "password": MASK,
        "apiKey": MASK,
        "private_key": MASK,
        "key": MASK,
        "Authorization": MASK,
        "session_token": MASK,
        "nested": [{"client_secret": MASK, "cookie": MASK, "user": "bob"}],
        "max_tokens": 512,
        "monkey": "banana",
        "passage": "text",
        "token": None,
    }


def test_the_key_rule_can_be_skipped_but_shapes_still_apply() -> None:
    value = {"token_issuer": "https://issuer.example", "startup_token": "Bearer abcdef"}
    assert redact(value, by_key=False) == {"token_issuer": "https://issuer.example", "startup_token": f"Bearer {MASK}"}


def test_deep_nesting_is_cut() -> None:
    value: object = "leaf"
    for _ in range(20):
        value = [value]
    flattened = str(redact(value))
    assert "leaf" not in flattened
    assert "…" in flattened


def test_argument_digests_identify_without_revealing() -> None:
    first = argument_digest({"b": 1, "a": "secret"})
    assert first == argument_digest({"a": "secret", "b": 1})
    assert first != argument_digest({"a": "other", "b": 1})
    assert first.startswith("sha256:")
    assert "secret" not in first
    assert redact_text(first) == first  # short enough never to be mistaken for a secret
