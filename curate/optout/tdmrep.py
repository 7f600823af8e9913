"""W3C TDMRep /.well-known/tdmrep.json: rules {location, tdm-reservation, tdm-policy}; `reserved(path)` per URL path.

The file is a JSON array of rules; `location` is a path pattern with robots.txt's `*` and `$`; the first rule
whose location matches the path applies (the TDMRep report asks publishers to order rules from the most to the
least specific). A malformed file (not JSON, not an array) reserves nothing: `TdmRep.error` records why, and
malformed entries inside a good array are skipped one by one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from curate.optout.robots import Rule, normalize


@dataclass(frozen=True, slots=True)
class TdmRule:
    """One entry: the location matcher, whether TDM rights are reserved, and the policy URL offered."""
    location: Rule
    reserved: bool
    policy: str | None


def _rule(entry) -> TdmRule | None:
    """A well-formed entry as a TdmRule, else None (location a string, tdm-reservation 0 or 1)."""
    if not isinstance(entry, dict):
        return None
    loc, res, policy = entry.get("location"), entry.get("tdm-reservation"), entry.get("tdm-policy")
    if isinstance(res, str) and res.strip() in ("0", "1"):  # "1" as a string still means what it says
        res = int(res)
    if not isinstance(loc, str) or not loc.strip() or res not in (0, 1) or isinstance(res, bool):
        return None
    return TdmRule(Rule.of(loc.strip(), allow=not res), bool(res), policy if isinstance(policy, str) else None)


class TdmRep:
    """A parsed tdmrep.json; `rules` in file order, `error` set when the file could not be read as rules."""

    def __init__(self, rules: list[TdmRule], error: str | None = None):
        self.rules = rules
        self.error = error

    def reserved(self, path: str) -> tuple[bool, str | None]:
        """(True, policy URL or None) when the first rule matching `path` (plus "?query") reserves TDM rights."""
        path = normalize(path or "/")
        for r in self.rules:
            if r.location.matches(path):
                return r.reserved, r.policy if r.reserved else None
        return False, None


def parse(text: str) -> TdmRep:
    """Parses a tdmrep.json body; never raises on content (a malformed file reserves nothing, `error` says why)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        return TdmRep([], f"not JSON: {e}"[:200])
    if not isinstance(data, list):
        return TdmRep([], f"not a JSON array but {type(data).__name__}")
    rules = [r for r in map(_rule, data) if r is not None]
    skipped = len(data) - len(rules)
    return TdmRep(rules, f"{skipped} malformed entries skipped" if skipped else None)
