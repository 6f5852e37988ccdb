"""Argument values the subcommands share the parsing of."""

from __future__ import annotations


def comma_floats(text: str, what: str) -> list[float]:
    """``"1,0.5,2"`` -> ``[1.0, 0.5, 2.0]`` (empty pieces skipped); ``what`` names the argument in the error."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected numbers separated by commas") from None
    if not values:
        raise ValueError(f"{what}: no values")
    return values
