"""Argument checks shared by the reference functions and the fast paths (one input
contract: :mod:`kernels` calls the same checks as :mod:`unimmad.scoring` and
:mod:`unimmad.losses`, so both accept and refuse the same inputs with the same messages).

Python scalars: booleans are never numbers here, NaN and infinities are refused, and the
message names the argument and the accepted range.
"""
from __future__ import annotations

import collections.abc as abc
import math
import numbers
import os
import typing
from typing import Any, Optional

import torch

__all__ = ["check_real", "check_int", "check_type", "describe_type"]


def check_real(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if ``value`` is a finite real number (not a bool) within the bounds,
    else a ``TypeError`` (not a number) or ``ValueError`` (NaN, infinite, out of range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_int(name: str, value, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool, not a float; a 0-d integer
    tensor counts, as shapes are under tracing) within ``[low, high]``, else a
    ``TypeError`` or ``ValueError`` naming the argument."""
    if (isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype in
            (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        rng = f">= {low}" if high is None else (f"<= {high}" if low is None else
                                                f"in [{low}, {high}]")
        raise ValueError(f"{name} must be an int {rng}, got {v}")
    return v


# ----------------------------------------------------------------------------- typed fields
_NoneType = type(None)


def _args(hint):
    return typing.get_args(hint)


def describe_type(hint) -> str:
    """Plain words for a type hint (``Optional[int]`` → ``an int or null``)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return "any value"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an int"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is _NoneType:
        return "null"
    if origin is typing.Union:
        parts = [describe_type(a) for a in _args(hint) if a is not _NoneType]
        text = " or ".join(dict.fromkeys(parts))
        return text + " or null" if _NoneType in _args(hint) else text
    if origin is tuple:
        args = _args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe_type(a) for a in args)})"
    if origin in (list, typing.List, abc.Sequence):
        args = _args(hint)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, abc.Mapping):
        args = _args(hint)
        return (f"a mapping of {_plural(args[0])} to {_plural(args[1])}" if args
                else "a mapping")
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return "a path (string)"
    return getattr(hint, "__name__", str(hint))


def _plural(hint) -> str:
    words = {bool: "true/false values", int: "ints", float: "numbers", str: "strings"}
    return words.get(hint, describe_type(hint))


def _fits(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is _NoneType:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(float(value)))
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Union:
        return any(_fits(value, a) for a in _args(hint))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        args = _args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin in (list, abc.Sequence):
        args = _args(hint)
        return isinstance(value, (list, tuple)) and (
            not args or all(_fits(v, args[0]) for v in value))
    if origin in (dict, abc.Mapping):
        args = _args(hint)
        return isinstance(value, dict) and (not args or all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()))
    if isinstance(hint, type):
        if issubclass(hint, os.PathLike):
            return isinstance(value, (str, os.PathLike))
        return isinstance(value, hint)
    return True  # a hint this checker does not know: the receiver checks the value


def check_type(where: str, value, hint):
    """``value`` if it fits the type hint ``hint``, else a ``TypeError`` naming ``where``
    and saying what was expected.  The rules of a run file: booleans are not numbers,
    numbers are finite (NaN and infinities refused), an int is a number but a number is
    not an int, a list stands for a tuple, strings are not lists."""
    if not _fits(value, hint):
        raise TypeError(f"{where}: expected {describe_type(hint)}, got "
                        f"{type(value).__name__} {value!r}")
    return value
