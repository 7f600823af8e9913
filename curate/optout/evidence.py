"""The opt-out evidence of a run: manifest.json's "optout" entry, from the final ledger and the host-policy table."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.config import DownloadConfig, RunConfig
from curate.schema import COL, Status

SWITCHES = ("robots_txt", "tdmrep", "headers", "embedded")  # download.optout's switches
SIGNALS = {  # signal (an optout_signals entry's head) -> the switch it belongs to, in evaluation order
    "robots_txt": "robots_txt", "tdmrep": "tdmrep", "x_robots_tag": "headers", "tdm_header": "headers",
    "content_usage": "headers", "c2pa": "embedded", "iptc": "embedded"}
OPTS_OUT = ("disallow", "unreachable")  # outcomes that opt a row out (unreachable: RFC 9309 disallow all)
ALL_OFF_WARNING = ("every opt-out signal is switched off (download.optout: robots_txt, tdmrep, headers, embedded): "
                   "no robots.txt, TDMRep, AI-preference header or image-metadata reservation is honoured")
_ORIGIN_RE = r"^(?P<origin>[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)"  # scheme://authority, to count hosts


def all_off(dl: DownloadConfig) -> bool:
    """True when every download.optout switch is off."""
    return not any(getattr(dl.optout, s) for s in SWITCHES)


def optout_summary(ledger: pa.Table, cfg: RunConfig, hosts: pa.Table | None) -> dict:
    """manifest.json's "optout": switches as configured, honoured agents, the policy files read per signal
    and outcome (hosts: the run's optout_hosts table, None without one), and per signal the rows checked,
    rows dropped (reason robots:<signal>), hosts checked and hosts with a disallow."""
    from curate.optout.hosts import honoured_agents

    opt = cfg.download.optout
    out = {"switches": {s: bool(getattr(opt, s)) for s in SWITCHES}, "agents": list(honoured_agents(cfg.download)),
           "accepted_tdm_policies": list(opt.accepted_tdm_policies),
           "origins_checked": 0 if hosts is None else _distinct(hosts["origin"]),
           "policy_files": _policy_files(hosts), "signals": signal_counts(ledger)}
    if all_off(cfg.download):
        out["warning"] = ALL_OFF_WARNING
    return out


def _policy_files(hosts: pa.Table | None) -> dict:
    """{signal: {outcome: origins}} of the host table (rules, allow_all, disallow_all)."""
    out: dict = {}
    if hosts is None:
        return out
    for r in hosts.group_by(["signal", "outcome"]).aggregate([("origin", "count")]).to_pylist():
        out.setdefault(r["signal"], {})[r["outcome"]] = r["origin_count"]
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def signal_counts(ledger: pa.Table) -> dict:
    """{signal: {rows_checked, rows_dropped, hosts_checked, hosts_disallowing}} from the ledger's optout_signals,
    url and reason columns; {} when the ledger has no optout_signals column."""
    if COL.OPTOUT_SIGNALS not in ledger.column_names or ledger.num_rows == 0:
        return {}
    lists = ledger[COL.OPTOUT_SIGNALS].combine_chunks()
    entries = pc.extract_regex(pc.list_flatten(lists), r"^(?P<signal>[^:]+):(?P<outcome>.*)$")
    urls = pc.take(ledger[COL.URL], pc.list_parent_indices(lists))
    origins = pc.utf8_lower(pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), _ORIGIN_RE), [0]))
    flat = pa.table({"signal": pc.struct_field(entries, [0]), "origin": origins,
                     "opts_out": pc.is_in(pc.struct_field(entries, [1]), pa.array(OPTS_OUT))})
    dropped = pc.value_counts(pc.filter(ledger[COL.REASON], pc.starts_with(ledger[COL.REASON], Status.ROBOTS + ":")))
    dropped = {d["values"].split(":", 1)[1]: d["counts"] for d in dropped.to_pylist()}
    out = {}
    for sig in sorted(set(pc.unique(flat["signal"]).to_pylist()) | set(dropped), key=signal_order):
        rows = flat.filter(pc.equal(flat["signal"], sig))
        hit = rows.filter(rows["opts_out"])
        out[sig] = {"rows_checked": rows.num_rows, "rows_dropped": int(dropped.get(sig, 0)),
                    "hosts_checked": _distinct(rows["origin"]), "hosts_disallowing": _distinct(hit["origin"])}
    return out


def _distinct(values) -> int:
    return pc.count_distinct(values).as_py() if len(values) else 0


def signal_order(signal: str) -> tuple:
    """Sort key: the signals in evaluation order (SIGNALS), unknown ones last."""
    names = list(SIGNALS)
    return (names.index(signal) if signal in names else len(names), signal)
