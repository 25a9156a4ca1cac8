"""Lists of numbers typed in a command or a job file: channels, units and classes ('0-15,32',
'all'), and positive numbers ('1,2,4,8'). Bad text is a UserError that names the option."""
from __future__ import annotations

import re

from deepscope.errors import UserError


def parse_channels(text: str | None, what: str = "channels") -> list[int] | None:
    """'0-15,32' -> [0, ..., 15, 32]; None -> None (every channel). Channels, units, classes."""
    if text is None:
        return None
    out = []
    for piece in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", piece)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise UserError(f"bad --{what} {text!r}: use numbers and ranges, e.g. 0-15,32")
        out += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    return out


def parse_targets(text: str, count: int, what: str) -> list[int]:
    """'all' | '0-63' | '3,7,10-12' -> indices, each < count."""
    text = (text or "").strip()
    if text == "all":
        return list(range(count))
    out = parse_channels(text, what)
    bad = [t for t in out if t >= count]
    if bad:
        raise UserError(f"--{what}: {bad[0]} does not exist (there are {count}: 0-{count - 1})")
    return list(dict.fromkeys(out))


def parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad --{what} {text!r}: use numbers separated by commas, e.g. 1,2,4,8") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"bad --{what} {text!r}: give one or more positive numbers")
    return vals
