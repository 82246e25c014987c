"""Does a row's verdict word agree with its numbers? For rows whose verdict starts with "met" or "missed", the simple
comparisons in the target are checked against the numbers the verdict prints:

- a clause with a unit (`p99 <= 30 ms`, `<= 60 s, <= 2048 MB`, `<= 5%`) against "0.85x of target" or "0.59x the
  target", else the verdict's leading "Rx" items (one per such clause, in order; R is measured / threshold), else a
  leading "V <unit>": it holds when R <= 1 (V <= the threshold);
- a relative clause (`>= 0.9 x oracle`, `median <= 0.33x Phoenix's`) against the first "V x oracle" / "V x Phoenix";
- a named number (`Recall@100 >= 0.95`) against "Recall@100 0.998";
- a verdict that leads with a count "a/b" (seeds, days) is met only when a == b.

Parenthesised text of the target (anchors, notes) is not a clause. A printed number stands for anything that rounds
to it, so a threshold inside that rounding interval accepts either word. "met" needs every clause read to hold,
"missed" one to fail. A row with no clause that can be read is not judged (check() returns None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUM = r"(\d+(?:\.\d+)?)"
CLAUSE = re.compile(
    r"(?P<metric>[A-Za-z][\w@]*)?\s*(?P<op><=|>=|<|>)\s*" + NUM + r"\s*"
    r"(?:x\s*(?P<name>[A-Za-z][\w]*)(?:'s)?|(?P<unit>ms|s|MB|GB|%|days?)(?!\w))?"
)


@dataclass(frozen=True)
class Clause:
    op: str
    threshold: float
    metric: str = ""  # e.g. Recall@100, when neither a unit nor a relative name follows the number
    name: str = ""  # relative: "x oracle" -> oracle
    unit: str = ""


def clauses(target: str) -> list[Clause]:
    plain = re.sub(r"\([^)]*\)", "", target)
    return [
        Clause(m["op"], float(m[3]), m["metric"] or "", m["name"] or "", m["unit"] or "")
        for m in CLAUSE.finditer(plain)
    ]


def _holds(value: str, op: str, threshold: float) -> bool | None:
    """value op threshold for every real number that prints as `value`; None when the rounding decides."""
    decimals = len(value.split(".")[1]) if "." in value else 0
    half = 0.5 * 10**-decimals
    lo, hi = float(value) - half, float(value) + half
    below = {"<=": hi <= threshold, "<": hi < threshold, ">=": lo >= threshold, ">": lo > threshold}[op]
    above = {"<=": lo > threshold, "<": lo >= threshold, ">=": hi < threshold, ">": hi <= threshold}[op]
    return True if below else False if above else None


def _unit_pattern(unit: str) -> str:
    return "days?" if unit.startswith("day") else re.escape(unit)


def _ratio_evidence(body: str, n: int) -> list[str]:
    """Measured/threshold ratios for n unit clauses: "Rx of target" / "Rx the target", else leading "Rx" items."""
    explicit = re.findall(NUM + r"x (?:of |the )target", body)
    if explicit:
        return explicit[:n]
    leading = []
    for item in re.split(r"[;,]", body):
        m = re.match(r"\s*" + NUM + r"x\b", item)
        if not m:
            break
        leading.append(m[1])
    return leading[:n] if len(leading) >= n else []


def check(target: str, verdict: str) -> tuple[bool, str] | None:
    """(True, "") when the verdict's word agrees with its numbers, (False, why) when not, None when not judged."""
    head = re.match(r"\s*(met|missed)\b:?\s*(.*)", verdict, re.S)
    if not head:
        return None
    word, body = head[1], head[2]
    count = re.match(r"(\d+)/(\d+)\b", body)
    if count:
        complete = count[1] == count[2]
        ok = complete == (word == "met")
        return ok, "" if ok else f"{word} but {count[0]}"
    results: list[tuple[Clause, str, bool | None]] = []
    found = clauses(target)
    unit_clauses = [c for c in found if c.unit]
    ratios = _ratio_evidence(body, len(unit_clauses))
    for i, c in enumerate(unit_clauses):
        if i < len(ratios):
            results.append((c, f"{ratios[i]}x of the threshold", _holds(ratios[i], c.op, 1.0)))
        elif i == 0 and (m := re.match(NUM + r"\s*" + _unit_pattern(c.unit) + r"(?!\w)", body.strip())):
            results.append((c, m[0], _holds(m[1], c.op, c.threshold)))
    for c in found:
        if c.name:
            m = re.search(NUM + r"\s*x\s+" + re.escape(c.name) + r"\b", body)
            if m:
                results.append((c, m[0], _holds(m[1], c.op, c.threshold)))
        elif c.metric and not c.unit:
            m = re.search(re.escape(c.metric) + r"\s+" + NUM, body)
            if m:
                results.append((c, m[0], _holds(m[1], c.op, c.threshold)))
    if not results:
        return None
    failed = [(c, seen) for c, seen, holds in results if holds is False]
    undecided = any(holds is None for _, _, holds in results)
    if word == "met":
        if failed:
            c, seen = failed[0]
            return False, f"met, but {seen} breaks '{c.op} {c.threshold:g}'"
        return True, ""
    if failed or undecided:
        return True, ""
    held = "; ".join(f"{seen} ({c.op} {c.threshold:g})" for c, seen, _ in results)
    return False, f"missed, but every clause holds: {held}"
