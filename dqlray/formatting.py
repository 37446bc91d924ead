"""How numbers look to people: one formatter for the terminal tables, the HTML reports and the chat messages.

:func:`fmt` formats one value by *kind* (``pct``, ``ratio``, ``int``, ...); a missing or non-finite number shows as
``missing`` (a dash unless told otherwise). Typeset text (reports, messages) has a real minus sign and thousands
separators; ``plain=True`` gives terminal text: an ASCII minus and no separators, so that columns can be grepped,
pasted and parsed back.
"""

from __future__ import annotations

import math
from typing import Any

from dqlray.metrics import finite_or_none

MINUS = "\u2212"  # a real minus sign: "−0.12" lines up with "0.12" in tabular figures
DASH = "\u2013"  # shown for a missing or non-finite value


def fmt(v: Any, kind: str = "general", *, missing: str = DASH, plain: bool = False) -> str:
    """Format one value (plain text, not escaped).

    Kinds: ``pct`` (0.157 -> 15.7%), ``ratio`` (2 decimals), ``int``, ``float1``, ``float3``, ``sci`` (6.47e-4,
    learning rates), ``seconds``, ``general`` (4 significant digits), ``bool`` (yes/no), ``text``. A missing or
    non-finite number shows as ``missing``; a string given for a number is shown as it is.
    """
    if kind == "text":
        return "" if v is None else str(v)
    if kind == "bool":
        if isinstance(v, str):
            v = v.strip().lower() in ("true", "1", "yes")
        return missing if v is None else ("yes" if v else "no")
    f = finite_or_none(v)
    if f is None:
        return missing if not isinstance(v, str) or not v else v
    sep = "" if plain else ","

    def signed(text: str) -> str:
        return MINUS + text[1:] if text.startswith("-") and not plain else text

    if kind == "pct":
        p = f * 100
        return signed(f"{p:{sep}.0f}%" if abs(p) >= 1000 else f"{p:.1f}%")
    if kind == "ratio":
        return signed(f"{f:.2f}")
    if kind == "int":
        return signed(f"{f:{sep}.0f}")
    if kind == "float1":
        return signed(f"{f:{sep}.1f}")
    if kind == "float3":
        return signed(f"{f:.3f}")
    if kind == "sci":
        if f == 0:
            return "0"
        exp = math.floor(math.log10(abs(f)))
        mant = f / 10**exp
        if abs(round(mant, 2)) >= 10:
            mant, exp = mant / 10, exp + 1
        return signed(f"{mant:.2f}e{exp}").replace("e-", "e-" if plain else "e" + MINUS)
    if kind == "seconds":
        return f"{f:.1f} s" if f < 120 else f"{f / 60:.1f} min"
    if f == int(f) and abs(f) < 1e15:
        return signed(f"{int(f)}")
    return signed(f"{f:.4g}")


def fmt_sd(sd: Any, kind: str) -> str:
    """The spread next to a mean: ``± 7.0`` (percentage points for ``pct``), or empty when unknown."""
    f = finite_or_none(sd)
    if f is None:
        return ""
    if kind == "pct":
        return f"± {f * 100:.1f}"
    if kind == "int":
        return f"± {f:,.0f}"
    if kind == "float1":
        return f"± {f:,.1f}"
    return f"± {f:.2f}"
