"""A password or token from the configuration, that no repr, str, format or log line shows.

The value comes out only through `reveal()`, called where it is handed to the system that needs
it (a database driver, the NATS client, an HTTP header), so a grep for `reveal(` lists every place
a secret leaves secd's hands.
"""

from __future__ import annotations

import hmac

__all__ = ["Secret", "reveal"]

_SHOWN = "***"


class Secret:
    """A secret value; `repr()`, `str()` and f-strings show `***`, `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds text, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: hand it straight to what needs it, never to a log or message."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_SHOWN!r})"

    def __str__(self) -> str:
        return _SHOWN

    def __format__(self, spec: str) -> str:
        return format(_SHOWN, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def reveal(secret: Secret | None) -> str | None:
    """The value of an optional secret (None stays None)."""
    return None if secret is None else secret.reveal()
