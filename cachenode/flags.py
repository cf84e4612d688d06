"""How a config dataclass field declares its command-line flag (cachenode/options.py makes the click option).

    memory_bytes: int = flag(2 * GiB, "--memory", "Memory tier budget.", kind="size")

Beside the flag and its help sentence, a field may say: `kind` ("size", "rate", "dir", "file"),
`range` ((low, high), inclusive), `metavar`, `required`, `env` (the variable that stands in for a
missing flag, as cachenode/env.py reads it: the flag then has no default of its own) and
`default_text` (a default decided at run time, said in words). The option's parameter is the
field's name; a tuple field is a repeatable option, a bool field a flag.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def flag(default: Any, option: str, help: str, **more: Any) -> Any:
    """A dataclass field with `default` (dataclasses.MISSING: required) that is the option `option`."""
    return dataclasses.field(default=default, metadata={"option": option, "help": help, **more})


def nested(factory: Callable[[], Any]) -> Any:
    """A field holding another config dataclass whose flags are offered in this field's place."""
    return dataclasses.field(default_factory=factory, metadata={"nested": True})
