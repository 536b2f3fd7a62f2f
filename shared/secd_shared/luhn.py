"""The Luhn checksum Swedish personal identity numbers (personnummer) carry in their last digit:
one definition for the airlock, which recognises them, and the canary rows, which make them."""

from __future__ import annotations

__all__ = ["luhn_digit", "luhn_ok"]


def _weighted_sum(digits: str) -> int:
    """Every other digit from the first doubled (its digits summed), the rest as they are."""
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return total


def luhn_digit(nine: str) -> str:
    """The check digit that completes the nine digits YYMMDDNNN of a personnummer."""
    return str((10 - _weighted_sum(nine) % 10) % 10)


def luhn_ok(digits: str) -> bool:
    """Whether the ten digits YYMMDDNNNC of a personnummer carry a valid check digit."""
    return _weighted_sum(digits) % 10 == 0
