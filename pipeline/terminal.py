"""Text from data or from people, made safe to print on a terminal.

A cell value, a file name or a reviewer's reason can hold terminal escape sequences (clear the
screen, move the cursor, set the window title) or characters that reorder or hide text (a
right-to-left override, a zero-width space). Printed raw, they let a data provider change what
a steward sees before releasing a row. ``terminal_safe`` shows each such character as its escape:

    >>> terminal_safe("ok\\x1b[2Jbätch\\u202e")
    'ok\\\\x1b[2Jbätch\\\\u202e'
"""

from __future__ import annotations

import unicodedata
from typing import Any

# control, format (bidi overrides, zero-width), line/paragraph separators, lone surrogates
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def terminal_safe(text: Any) -> str:
    """``text`` as a string with every control or invisible character written as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``; ordinary letters, accents, CJK and emoji kept as they are."""
    text = "" if text is None else str(text)
    if text.isprintable():  # the common case, in C: no Cc/Cf/Zl/Zp/Cs and no other separators
        return text
    return "".join(_escaped(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
