"""Opt-out signals in the image response's headers: X-Robots-Tag, TDMRep's tdm-reservation/tdm-policy, Content-Usage.

Every check returns an outcome; `header_signals` turns them into the row's evidence (`"<signal>:<outcome>"`,
schemas/ledger.json optout_signals) and names the signal that decided when one opts out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ALLOW, DISALLOW = "allow", "disallow"
X_ROBOTS_TAG, TDM_HEADER, CONTENT_USAGE = "x_robots_tag", "tdm_header", "content_usage"
_SKIP_ROBOT_KEYS = frozenset({"unavailable_after"})  # directives with a colon that are not agent names

# Content-Usage (draft-ietf-aipref-attach) carries an AI-preferences statement (draft-ietf-aipref-vocab): an
# RFC 9651 Dictionary of category labels with the tokens y / n. The labels that speak about training a model
# on the asset, which is what a CLIP training set is for:
#   train-ai     AI Training (every draft; in the current one: training a generative model)
#   train-genai  Generative AI Training (drafts -01..-05, a subset of train-ai there: the use train-ai now names;
#                curate cannot promise its sets never train a generative model, so n opts out)
#   bots, all    Automated Processing, the parent category of the hierarchical drafts: it applies to train-ai
#                when train-ai itself has no explicit preference
# `search` is not ours to use (curate is no search application), `ai-use` is about inputs to a model at use
# time; other labels are unknown and ignored, as the vocabulary requires. (`ai`/`tdm` are no labels of any
# WG draft: not honoured.)
_TRAIN_PARENTS = ("bots", "all")

# RFC 9651 Dictionary, strict enough that a malformed field is rejected as a whole (the draft: a parse
# failure means no preference), loose only in accepting every bare-item type without validating its value.
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_STR = r'"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"'
_BARE = (rf"(?:-?[0-9]{{1,15}}(?:\.[0-9]{{1,3}})?|{_STR}|%{_STR}|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*"
         r"|:[A-Za-z0-9+/=]*:|\?[01]|@-?[0-9]{1,15})")
_PARAMS = rf"(?:;[ ]*{_KEY}(?:={_BARE})?)*"
_INNER = rf"\([ ]*(?:{_BARE}{_PARAMS}(?:[ ]+{_BARE}{_PARAMS})*)?[ ]*\)"
_MEMBER = re.compile(rf"({_KEY})(?:=({_INNER}|{_BARE}))?{_PARAMS}")
_OWS_COMMA = re.compile(r"[ \t]*,[ \t]*")


@dataclass(frozen=True)
class HeaderChecks:
    """Which header signals run and with what settings (from download.robots_disallow and download.optout)."""
    robots_disallow: tuple[str, ...]    # X-Robots-Tag directives that opt out; () = not checked
    agent_token: str                    # our robots token: `curate: noai` applies to us
    headers: bool                       # tdm-reservation / Content-Usage checked
    accepted_tdm_policies: tuple[str, ...] = ()


def robots_disallowed(values: list[str], disallow: tuple[str, ...], agent_token: str) -> bool:
    """True when an X-Robots-Tag value opts out for everyone or for our agent token.

    `noai` and `curate: noai` apply to us; `otherbot: noai` does not (as search engines read it).
    """
    disallow_set = {d.lower() for d in disallow}
    for value in values:
        agent = None
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                head, rest = (s.strip() for s in part.split(":", 1))
                if head in _SKIP_ROBOT_KEYS:
                    continue
                agent, part = head, rest
            if part in disallow_set and agent in (None, "*", agent_token):
                return True
    return False


def tdm_reserved(reservation: list[str], policy: list[str], accepted: tuple[str, ...]) -> bool:
    """True when TDMRep headers reserve TDM rights (`tdm-reservation: 1`) under a policy we did not accept.

    TDMRep: 1 = rights reserved, 0 = not reserved, anything else = no statement. A reservation whose
    `tdm-policy` URL is listed in download.optout.accepted_tdm_policies is a licence offer the user took.
    """
    values = [v.strip() for v in reservation if v.strip() in ("0", "1")]
    if not values or values[0] != "1":
        return False
    return not (policy and policy[0].strip() in accepted)


def parse_usage(values: list[str]) -> dict[str, str | None]:
    """The AI-preferences Dictionary (label -> 'y' / 'n' / None = no explicit preference); {} when malformed.

    Several field lines are one Dictionary (RFC 9651: joined with commas); a repeated label keeps its last value.
    """
    text = ", ".join(v for v in values).strip(" \t")
    out: dict[str, str | None] = {}
    pos = 0
    while text:
        m = _MEMBER.match(text, pos)
        if m is None:
            return {}
        value = m.group(2)
        out[m.group(1)] = value if value in ("y", "n") else None
        pos = m.end()
        if pos == len(text):
            return out
        sep = _OWS_COMMA.match(text, pos)
        if sep is None or sep.end() == len(text):
            return {}
        pos = sep.end()
    return out


def usage_disallows_training(prefs: dict[str, str | None]) -> bool:
    """True when the preferences say no to training a model on the asset (see the label notes above)."""
    train = prefs.get("train-ai")
    if train is None:
        train = next((prefs[p] for p in _TRAIN_PARENTS if prefs.get(p) is not None), None)
    return train == "n" or prefs.get("train-genai") == "n"


def header_signals(headers, checks: HeaderChecks) -> tuple[tuple[str, ...], str | None, str | None]:
    """(evidence entries, deciding signal or None, message) for one final 2xx response's headers.

    `headers` has getlist() (urllib3's HTTPHeaderDict). Every switched-on signal is checked and recorded,
    so the ledger shows all reservations; the first that disallows (in the order below) decides.
    """
    found: list[tuple[str, str | None]] = []  # (signal, message when it opts out)
    if checks.robots_disallow:
        tags = headers.getlist("X-Robots-Tag")
        no = tags and robots_disallowed(tags, checks.robots_disallow, checks.agent_token)
        found.append((X_ROBOTS_TAG, "X-Robots-Tag: " + ", ".join(tags) if no else None))
    if checks.headers:
        res = headers.getlist("tdm-reservation")
        pol = headers.getlist("tdm-policy") if res else []
        no = res and tdm_reserved(res, pol, checks.accepted_tdm_policies)
        found.append((TDM_HEADER, f"tdm-reservation: {', '.join(res)}" + (f" (tdm-policy: {pol[0]})" if pol else "")
                      if no else None))
        usage = headers.getlist("Content-Usage")
        no = usage and usage_disallows_training(parse_usage(usage))
        found.append((CONTENT_USAGE, "Content-Usage: " + ", ".join(usage) if no else None))
    entries = tuple(f"{name}:{ALLOW if why is None else DISALLOW}" for name, why in found)
    decided = next(((name, why) for name, why in found if why is not None), (None, None))
    return entries, decided[0], decided[1]
