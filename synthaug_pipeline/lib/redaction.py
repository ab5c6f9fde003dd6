"""Credentials never reach reports, lineage, Dagster metadata or logs.

    redact_url("s3://KEY:SECRET@bucket/x")            # "s3://***@bucket/x"
    redact_settings({"storage_options": {"secret": "s"}})  # {"storage_options": {"secret": "***"}}
    seal_overrides(["data.path=https://u:pw@host/d"])  # ["data.path=<sealed:…>"], value kept in this process

Redaction is for what is recorded; the code that reads data keeps the real value.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

MASK = "***"

# userinfo of a URL (RFC 3986: no '/', '?', '#', '@' inside); quotes end it in JSON/Markdown text
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@'\"`<>]+)@")

# setting names whose values are secrets wherever they sit (storage_options, client_kwargs, ...)
_SECRET_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "credentials",
        "access_key",
        "access_key_id",
        "secret_key",
        "secret_access_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "session_token",
        "security_token",
        "api_key",
        "client_secret",
        "private_key",
        "account_key",
        "sas_token",
        "connection_string",
        "authorization",
    }
)
_SECRET_SUFFIXES = ("_secret", "_token", "_password", "_api_key", "_private_key")

# environment variables whose values are secrets; their values are masked in any recorded text
_SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD)|^AWS_ACCESS_KEY_ID$")
_MIN_ENV_SECRET = 6  # shorter values would mask ordinary words and numbers

_SEALED_PREFIX = "<sealed:"
_sealed: dict[str, str] = {}


def is_secret_name(name: str) -> bool:
    """Whether a setting or mapping key names a secret (``secret``, ``aws_secret_access_key``, ``api_token``...)."""
    normal = str(name).strip().lower().replace("-", "_")
    return normal in _SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES)


def _env_secrets() -> list[str]:
    return sorted(
        (value for name, value in os.environ.items() if _SECRET_ENV.search(name.upper()) and len(value) >= _MIN_ENV_SECRET),
        key=len,
        reverse=True,  # a secret that contains another is masked whole
    )


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it (``scheme://user:password@``) and secret env values masked."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    for secret in _env_secrets():
        text = text.replace(secret, MASK)
    return text


def redact_urls(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with :func:`redact_url` applied to every string."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {redact_urls(k) if isinstance(k, str) else k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_urls(v) for v in value)
    return value


def redact_settings(value: Any) -> Any:
    """A copy of settings (a profile dump, storage options) with secret-named values masked and URLs redacted."""
    if isinstance(value, dict):
        return {
            redact_urls(k): (MASK if is_secret_name(k) and v not in (None, "") else redact_settings(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_settings(v) for v in value)
    if isinstance(value, str):
        return redact_override(value) if "=" in value else redact_url(value)
    return value


def redact_override(item: str) -> str:
    """A ``key=value`` override as it may be recorded: the value masked when the key names a secret."""
    key, sep, value = item.partition("=")
    if sep and any(is_secret_name(part) for part in key.strip().split(".")):
        return f"{redact_url(key)}={MASK}"
    return redact_url(item)


def seal_overrides(overrides: list[str]) -> list[str]:
    """Overrides with every secret-bearing item replaced by a stable placeholder; :func:`unseal_override` restores it.

    Dagster stores a resource's configuration in its run records (and shows it in the UI); the placeholder
    goes there instead of the secret. The real item stays in this process only; a process that rebuilds the
    definitions from the same overrides (``dagster dev`` workers) gets the same placeholder.
    """
    sealed = []
    for item in overrides:
        if redact_override(item) == item:
            sealed.append(item)
            continue
        key = item.partition("=")[0].strip()
        digest = hashlib.sha256(item.encode()).hexdigest()[:16]
        placeholder = f"{redact_url(key)}={_SEALED_PREFIX}{digest}>"
        _sealed[placeholder] = item
        sealed.append(placeholder)
    return sealed


def unseal_override(item: str) -> str:
    """The original of a sealed override (or ``item`` itself); KeyError when this process never sealed it."""
    if _SEALED_PREFIX not in item:
        return item
    return _sealed[item]
