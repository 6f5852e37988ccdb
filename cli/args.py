"""Argument values the subcommands share the parsing of."""

from __future__ import annotations

import json


def comma_floats(text: str, what: str) -> list[float]:
    """``"1,0.5,2"`` -> ``[1.0, 0.5, 2.0]`` (empty pieces skipped); ``what`` names the argument in the error."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected numbers separated by commas") from None
    if not values:
        raise ValueError(f"{what}: no values")
    return values


def score_args(items: list[str]) -> dict:
    """``["speed_against=either", "patch=12"]`` -> ``{"speed_against": "either", "patch": 12}``: a value is
    read as JSON where it is JSON (numbers, true/false), else kept as text."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--score-arg {item!r}: expected NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out
