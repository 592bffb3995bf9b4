"""Redaction of secrets from anything the gateway writes down about a request.

Two rules, applied to every string and every mapping of an audit record:
- a value whose key is named like a credential (password, secret, token, api key, private key,
  authorization, cookie, credential, or just "key") is replaced whole;
- inside any string, shapes that are secrets wherever they appear are replaced: bearer/basic
  credentials, JWTs, well-known API-key formats, `name=value` pairs whose name is a credential,
  URL user-info, long hexadecimal runs and long base64 runs that mix letter cases and digits.
The replacement keeps the surrounding text, so a line still reads; what was removed cannot be
recovered from it. This is a last line of defence: the gateway never logs a token on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

MASK: Final = "[REDACTED]"
# Nesting deeper than this is cut (a record is for reading, and the bound keeps the walk cheap).
MAX_DEPTH: Final = 12

_SECRET_KEY: Final = re.compile(
    r"(^|[-_.])pass$|pass(word|wd|phrase)|secret|token(?!s)|credential|authorization|cookie"
    r"|(^|[-_.]|api|private|access|signing)key$",
    re.IGNORECASE,
)

_SECRET_SHAPES: Final = [
    # Credentials of an Authorization header, wherever they were pasted.
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), rf"\1 {MASK}"),
    # The `Token` scheme some APIs use; its value must look like one (plain "token matches" is prose).
    (re.compile(r"\b(Token)\s+[A-Za-z0-9\-._~+/]{16,}=*"), rf"\1 {MASK}"),
    # JSON Web Tokens (header.payload[.signature]; the header always starts with `{"`).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(\.[A-Za-z0-9_-]*)?"), MASK),
    # Vendor key formats: OpenAI/Anthropic, GitHub, GitLab, Slack, AWS access keys, Google API keys, Stripe.
    (
        re.compile(
            r"\b(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|A[KS]IA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|[rsp]k_(live|test)_[A-Za-z0-9]{16,})"
        ),
        MASK,
    ),
    # `password=…`, `api_key: …`, `?token=…` inside free text or URLs.
    (
        re.compile(
            r"\b([A-Za-z0-9]*[_-]?(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|auth)"
            r"(?:[_-][A-Za-z0-9_-]*)?)(\"?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;\"']+)",
            re.IGNORECASE,
        ),
        rf"\1\2{MASK}",
    ),
    # user:password@ in URLs.
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@"), f"{MASK}@"),
]
# Hexadecimal runs this long, mixing digits and letters, are keys, session secrets or digests of
# secrets (a long number is not).
_LONG_HEX: Final = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_HEX_LETTER: Final = re.compile(r"[a-fA-F]")
# Base64 and base64url runs this long are secrets when they mix lower case, upper case and digits
# (a word, a path or a number does not).
_LONG_BASE64: Final = re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
_LOWER: Final = re.compile(r"[a-z]")
_UPPER: Final = re.compile(r"[A-Z]")
_DIGIT: Final = re.compile(r"[0-9]")


def _mask_base64(match: re.Match[str]) -> str:
    text = match.group(0)
    if _LOWER.search(text) and _UPPER.search(text) and _DIGIT.search(text):
        return MASK
    return text


def _mask_hex(match: re.Match[str]) -> str:
    text = match.group(0)
    return MASK if _HEX_LETTER.search(text) and _DIGIT.search(text) else text


# Every secret shape above needs one of these; text without any is returned as it is, cheaply.
_MAYBE_SECRET: Final = re.compile(r"[\s=:]|eyJ|[A-Za-z0-9+/_-]{16}")


def redact_text(text: str) -> str:
    """`text` with every secret-shaped part replaced."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SECRET_SHAPES:
        text = pattern.sub(replacement, text)
    text = _LONG_HEX.sub(_mask_hex, text)
    return _LONG_BASE64.sub(_mask_base64, text)


def is_secret_key(name: str) -> bool:
    return _SECRET_KEY.search(name) is not None


def redact(value: object, *, by_key: bool = True, depth: int = 0) -> object:
    """A copy of a JSON-like value with secrets replaced (`by_key=False` skips the key rule,
    for data whose secrets are already masked and whose key names are the gateway's own)."""
    if isinstance(value, str):
        return redact_text(value)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(key): MASK
            if by_key and is_secret_key(str(key)) and _holds_secret(item)
            else redact(item, by_key=by_key, depth=depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, by_key=by_key, depth=depth + 1) for item in value]
    return value


def _holds_secret(item: object) -> bool:
    """Whether a value under a secret-named key can hide anything: text or structure can,
    numbers, booleans and null cannot (`max_tokens: 512` stays readable)."""
    return bool(item) and isinstance(item, str | Mapping | list | tuple)
