"""Argument checks shared by every module of the Python API.

Each check takes the value first, then the argument's name as the caller
knows it (``"max_batch_size"``, ``"prompt_tokens[3]"``), then its
constraints as keywords; it returns the value normalised (a plain ``int``, a
``list``) and raises ``ValueError`` naming the argument otherwise:

>>> integer(3, "steps", minimum=0)
3
>>> positive(0, "max_num_seqs")
Traceback (most recent call last):
    ...
ValueError: max_num_seqs must be a positive integer, got 0

Integers are Python ints, numpy integers and anything else with
``__index__`` (a 0-d integer torch tensor); ``bool`` is never an integer.

Settings read from a config (``SamplingConfig``, ``Qwen3Config``, the
inference config file) report errors as the core does, ``invalid config
field `name`: ...``; :func:`config_error` builds those and
:func:`config_error_field` reads the field back (the server names it as
the request's ``param``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import numpy as np

TOKEN_ID_MAX = 2**32 - 1  # token ids are u32 in the core
INTEGER_MAX = 2**64 - 1  # the core's sizes and counts are 64-bit

_CONFIG_ERROR = "invalid config field `"


def integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, within ``minimum..maximum`` where given."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {_integer_kind(minimum, maximum)}, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {_integer_kind(minimum, maximum)}, got {value!r}")
    if number > INTEGER_MAX:
        raise ValueError(f"{name} is too large: {number} (at most 2**64 - 1)")
    return number


def positive(value: Any, name: str) -> int:
    """An integer >= 1."""
    return integer(value, name, minimum=1)


def non_negative(value: Any, name: str) -> int:
    """An integer >= 0."""
    return integer(value, name, minimum=0)


def integers(values: Iterable[Any], name: str, *, minimum: int | None = None,
             maximum: int | None = None) -> list[int]:
    """Each of ``values`` as by :func:`integer`, named ``name[i]``; a string is refused whole."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of integers, not a string")
    return [integer(v, f"{name}[{i}]", minimum=minimum, maximum=maximum) for i, v in enumerate(values)]


def at_least(value: Any, name: str, minimum: Any) -> Any:
    """``value`` unchanged if it is not below ``minimum`` (its type is left to the core)."""
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return value


def of_type(value: Any, name: str, kind: type | tuple[type, ...], description: str) -> Any:
    """``value`` unchanged if it is a ``kind``; ``description`` says what was
    expected (``"a SamplingConfig"``, ``"a string"``)."""
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be {description}, got {type(value).__name__}")
    return value


def config_number(value: Any, name: str, kind: type = float, *, minimum: int | None = None) -> Any:
    """A config field's number as ``kind`` (``int`` takes whole floats such as
    ``2.0``), not below ``minimum``; errors in the config-field form."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and isinstance(value, float) and not value.is_integer()):
        raise config_error(name, f"expected a number, got {value!r}")
    value = kind(value)
    if minimum is not None and value < minimum:
        raise config_error(name, f"must be >= {minimum}, got {value!r}")
    return value


def config_error(field: str, problem: str) -> ValueError:
    """``invalid config field `field`: problem``, the form the core's config errors take."""
    return ValueError(f"{_CONFIG_ERROR}{field}`: {problem}")


def config_error_field(message: str) -> str | None:
    """The field a :func:`config_error` message (or the core's) names, else None."""
    if message.startswith(_CONFIG_ERROR):
        return message[len(_CONFIG_ERROR):].split("`")[0]
    return None


def _integer_kind(minimum: int | None, maximum: int | None) -> str:
    if maximum is not None:
        return f"an integer <= {maximum}" if minimum is None else f"an integer from {minimum} to {maximum}"
    if minimum is None:
        return "an integer"
    if minimum == 0:
        return "a non-negative integer"
    if minimum == 1:
        return "a positive integer"
    return f"an integer >= {minimum}"
