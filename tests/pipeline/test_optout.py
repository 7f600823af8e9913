"""Opt-out evidence end to end (issue 16): robots.txt and TDMRep served on 127.0.0.1 decide rows before any image
request; the ledger's optout_signals, metadata/optout_hosts.parquet, the manifest's optout entry and the report
record it; a resumed run reuses the host table; a run with every signal off warns and checks nothing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.democorpus import CorpusServer, make_corpus
from curate.layout import RunLayout
from curate.schema import COL, Status
from pipelines.build_shards import run
from tests.pipeline.helpers import run_config

ROBOTS = b"""User-agent: curate
Disallow: /private/
Crawl-delay: 0.01

User-agent: CCBot
Disallow: /ccbot/

User-agent: otherbot
Disallow: /
"""
ACCEPTED = "https://pub.example/accepted-terms.json"
TDMREP = json.dumps([
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://pub.example/policy.json"},
    {"location": "/licensed/*", "tdm-reservation": 1, "tdm-policy": ACCEPTED},
    {"location": "/*", "tdm-reservation": 0}]).encode()
PREFIXES = ("pub", "private", "ccbot", "reserved", "licensed")
POLICY_PATHS = ("/robots.txt", "/.well-known/tdmrep.json")
PREFILTERED = (Status.CAPTION_RULE, Status.LANG, Status.DUPLICATE_URL, Status.DUPLICATE_PREFETCH)
# prefix -> (status, reason, optout_signals written by the opt-out stage) on the server with the policies
EXPECT = {"private": (Status.ROBOTS, "robots:robots_txt", ["robots_txt:disallow"]),
          "ccbot": (Status.ROBOTS, "robots:robots_txt", ["robots_txt:disallow"]),
          "reserved": (Status.ROBOTS, "robots:tdmrep", ["robots_txt:allow", "tdmrep:disallow"]),
          "licensed": (None, None, ["robots_txt:allow", "tdmrep:allow"]),
          "pub": (None, None, ["robots_txt:allow", "tdmrep:allow"])}


def _url_list(tmp: Path, good: CorpusServer, down: CorpusServer) -> tuple[Path, dict[str, str]]:
    """~30 rows on `good` spread over PREFIXES and 4 rows on `down` (whose robots.txt answers 503);
    returns (url list, {url: what the row is})."""
    rows, files = make_corpus(60, 7, good.base_url)
    images = [(files[r.url[len(good.base_url):]], r.caption) for r in rows if r.kind == "match"]
    served, urls, captions, what = {}, [], [], {}
    for i, (data, caption) in enumerate(images):
        prefix = PREFIXES[i % len(PREFIXES)]
        path = f"/{prefix}/{i:03d}.jpg"
        served[path] = data
        srv, kind = (down, "down") if i >= len(images) - 4 else (good, prefix)
        urls.append(srv.base_url + path)
        captions.append(caption)
        what[srv.base_url + path] = kind
    good.set_files({**served, "/robots.txt": ROBOTS, "/.well-known/tdmrep.json": TDMREP})
    down.set_files(served)
    down.failing.add("/robots.txt")
    path = tmp / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return path, what


@pytest.fixture(scope="module")
def optout_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optout")
    with CorpusServer() as good, CorpusServer() as down:
        path, what = _url_list(tmp, good, down)
        cfg = run_config(path, tmp / "run", **{"download.optout.accepted_tdm_policies": [ACCEPTED],
                                               "dedup.enabled": False})
        manifest = run(cfg)
        yield {"cfg": cfg, "out": tmp / "run", "manifest": manifest, "what": what, "good": good, "down": down,
               "path": path, "tmp": tmp}


def _ledger(out: Path) -> list[dict]:
    return pq.read_table(out / "metadata" / "ledger").to_pylist()


def test_policies_decide_rows_before_any_image_request(optout_run):
    good, down, what = optout_run["good"], optout_run["down"], optout_run["what"]
    ledger = _ledger(optout_run["out"])
    assert {what[r[COL.URL]] for r in ledger} == {*PREFIXES, "down"}
    for r in ledger:
        kind, path = what[r[COL.URL]], r[COL.URL].split("/", 3)[3]
        if r[COL.OPTOUT_SIGNALS] is None:  # dropped before the opt-out stage (caption, language): never checked
            assert r[COL.STATUS] in PREFILTERED and r[COL.HTTP_STATUS] is None, r
            continue
        if kind == "down":  # robots.txt 503: disallow all for the run (RFC 9309), nothing else asked
            assert (r[COL.STATUS], r[COL.REASON], r[COL.OPTOUT_SIGNALS]) == (
                Status.ROBOTS, "robots:robots_txt", ["robots_txt:unreachable"])
            assert down.path_hits.get("/" + path, 0) == 0
            continue
        status, reason, signals = EXPECT[kind]
        assert r[COL.OPTOUT_SIGNALS][:len(signals)] == signals, r
        if status is not None:
            assert (r[COL.STATUS], r[COL.REASON], r[COL.HTTP_STATUS]) == (status, reason, None)
            assert good.path_hits.get("/" + path, 0) == 0  # an opted-out image is never requested
        else:
            assert r[COL.STATUS] != Status.ROBOTS and r[COL.HTTP_STATUS] == 200, r
    # one request per policy file and origin for the whole run
    assert [good.path_hits.get(p) for p in POLICY_PATHS] == [1, 1]
    assert [down.path_hits.get(p) for p in POLICY_PATHS] == [1, 1]


def test_host_table_is_published_for_audits(optout_run):
    out, good, down = optout_run["out"], optout_run["good"], optout_run["down"]
    con = duckdb.connect()
    rows = con.execute(f"select origin, signal, http_status, outcome, rules_digest, crawl_delay, body from "
                       f"read_parquet('{out}/metadata/optout_hosts.parquet') order by origin, signal").fetchall()
    want = {(good.base_url, "robots_txt"): (200, "rules", hashlib.sha256(ROBOTS).hexdigest(), 0.01, ROBOTS),
            (good.base_url, "tdmrep"): (200, "rules", hashlib.sha256(TDMREP).hexdigest(), None, TDMREP),
            (down.base_url, "robots_txt"): (503, "disallow_all", None, None, None),
            (down.base_url, "tdmrep"): (404, "allow_all", None, None, None)}
    got = {(o, s): (st, oc, dg, cd, b.encode() if b is not None else None) for o, s, st, oc, dg, cd, b in rows}
    assert got == want
    stage = pq.read_table(RunLayout(str(out)).stage_optout_hosts)
    assert pq.read_table(out / "metadata" / "optout_hosts.parquet").equals(stage)
    assert all(r["fetched_at"].endswith("Z") for r in stage.to_pylist())


def test_manifest_and_report_record_the_evidence(optout_run):
    out, m, what = optout_run["out"], optout_run["manifest"], optout_run["what"]
    opt = m["optout"]
    assert opt["switches"] == {"robots_txt": True, "tdmrep": True, "headers": True, "embedded": True}
    assert opt["agents"][:2] == ["curate", "ccbot"] and "warning" not in opt
    assert opt["origins_checked"] == 2
    assert opt["policy_files"] == {"robots_txt": {"disallow_all": 1, "rules": 1},
                                   "tdmrep": {"allow_all": 1, "rules": 1}}
    ledger = _ledger(out)
    n_robots = sum(r[COL.REASON] == "robots:robots_txt" for r in ledger)
    n_tdm = sum(r[COL.REASON] == "robots:tdmrep" for r in ledger)
    assert n_robots == sum(what[r[COL.URL]] in ("private", "ccbot", "down") for r in ledger) > 0
    checked = sum(any(e.startswith("robots_txt:") for e in r[COL.OPTOUT_SIGNALS] or []) for r in ledger)
    assert opt["signals"]["robots_txt"] == {"rows_checked": checked, "rows_dropped": n_robots,
                                            "hosts_checked": 2, "hosts_disallowing": 2}
    assert opt["signals"]["tdmrep"]["rows_dropped"] == n_tdm > 0
    assert opt["signals"]["tdmrep"]["hosts_disallowing"] == 1
    assert m["reasons"]["robots:robots_txt"] == n_robots
    html = (out / "report.html").read_text()
    assert 'id="optout"' in html
    row = f'data-signal="robots_txt" data-checked="{checked}" data-dropped="{n_robots}"'
    assert row in html


def test_resume_reuses_the_host_table(optout_run):
    """A unit left incomplete is redone; its origins are in stage/optout_hosts.parquet: no policy file is
    asked for again, and every unit found its origins there (none fetched inside a unit)."""
    out, good, down = optout_run["out"], optout_run["good"], optout_run["down"]
    lay = RunLayout(str(out))
    hosts = pq.read_table(lay.stage_optout_hosts)
    before = _ledger(out)
    Path(lay.unit(0).done).unlink()
    run(optout_run["cfg"])
    assert [good.path_hits.get(p) for p in POLICY_PATHS] == [1, 1]
    assert [down.path_hits.get(p) for p in POLICY_PATHS] == [1, 1]
    assert pq.read_table(lay.stage_optout_hosts).equals(hosts)
    after = _ledger(out)
    assert [(r[COL.UID], r[COL.REASON], r[COL.OPTOUT_SIGNALS]) for r in after] == \
        [(r[COL.UID], r[COL.REASON], r[COL.OPTOUT_SIGNALS]) for r in before]
    for stats in sorted((out / "stage").glob("*_stats.json")):
        assert json.loads(stats.read_text())["optout_origins_fetched_in_unit"] == 0, stats


def test_everything_off_warns_and_checks_nothing(optout_run, capsys):
    good, tmp = optout_run["good"], optout_run["tmp"]
    off = {f"download.optout.{s}": False for s in ("robots_txt", "tdmrep", "headers", "embedded")}
    cfg = run_config(optout_run["path"], tmp / "off", **off, **{"dedup.enabled": False})
    hits = dict(good.path_hits)
    m = run(cfg)
    assert "WARNING: every opt-out signal is switched off" in capsys.readouterr().err
    assert m["optout"]["warning"].startswith("every opt-out signal is switched off")
    assert m["optout"]["switches"] == dict.fromkeys(("robots_txt", "tdmrep", "headers", "embedded"), False)
    assert [good.path_hits.get(p) for p in POLICY_PATHS] == [hits.get(p) for p in POLICY_PATHS]
    assert not (tmp / "off" / "metadata" / "optout_hosts.parquet").exists()
    assert not (tmp / "off" / "stage" / "optout_hosts.parquet").exists()
    ledger = _ledger(tmp / "off")
    private = [r for r in ledger if "/private/" in r[COL.URL] and r[COL.URL].startswith(good.base_url)]
    assert private and all(r[COL.HTTP_STATUS] == 200 and r[COL.STATUS] != Status.ROBOTS for r in private)
    for r in ledger:
        assert not any(e.split(":")[0] in ("robots_txt", "tdmrep") for e in r[COL.OPTOUT_SIGNALS] or [])
    assert 'class="warn">WARNING: every opt-out signal' in (tmp / "off" / "report.html").read_text()


def _host_row(origin: str, signal: str, outcome: str, body: bytes | None, delay: float | None = None) -> dict:
    return {"origin": origin, "signal": signal, "fetched_at": "2026-01-01T00:00:00.000Z",
            "http_status": {"rules": 200, "allow_all": 404, "disallow_all": 503}[outcome], "outcome": outcome,
            "rules_digest": hashlib.sha256(body).hexdigest() if body else None, "crawl_delay": delay,
            "body": body.decode() if body else None}


def test_stage_on_a_few_rows_without_ray(tmp_path):
    """OptOutStage alone: decisions from a host table, null for rows dropped earlier, Crawl-delay handed to
    the download fetcher, and an origin missing from the table fetched in the unit (and counted)."""
    from curate.config import load_config
    from curate.download import get_fetcher
    from curate.optout.stage import OptOutStage
    from curate.schema import table_schema
    from curate.stage import StageStats

    rows = [_host_row("http://a.test", "robots_txt", "rules", ROBOTS, 0.01),
            _host_row("http://a.test", "tdmrep", "rules", TDMREP),
            _host_row("http://b.test", "robots_txt", "disallow_all", None),
            _host_row("http://b.test", "tdmrep", "allow_all", None)]
    hosts = tmp_path / "optout_hosts.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table_schema("optout_hosts")), hosts)
    with CorpusServer({"/robots.txt": b"User-agent: *\nDisallow: /\n"}) as srv:
        dl = load_config(None, {"download.allow_private_networks": True}).download
        urls = ["http://a.test/private/1.jpg", "http://a.test/reserved/2.jpg", "http://a.test:80/pub/3.jpg",
                "http://b.test/pub/4.jpg", "http://a.test/pub/5.jpg", srv.base_url + "/pub/6.jpg"]
        table = pa.table({COL.URL: urls, COL.STATUS: ["ok"] * 4 + [Status.LANG, "ok"],
                          COL.REASON: [None] * 4 + [Status.LANG, None]})
        stats = StageStats()
        out = OptOutStage(dl, str(hosts))(table, stats).to_pylist()
    assert [(r[COL.REASON], r[COL.OPTOUT_SIGNALS]) for r in out] == [
        ("robots:robots_txt", ["robots_txt:disallow"]),
        ("robots:tdmrep", ["robots_txt:allow", "tdmrep:disallow"]),
        (None, ["robots_txt:allow", "tdmrep:allow"]),  # the default port is the same origin
        ("robots:robots_txt", ["robots_txt:unreachable"]),
        (Status.LANG, None),  # dropped before: never checked
        ("robots:robots_txt", ["robots_txt:disallow"])]  # fetched here: its robots.txt disallows all
    assert srv.path_hits["/robots.txt"] == 1 and "/pub/6.jpg" not in srv.path_hits
    assert stats.as_dict() == {"optout_origins_fetched_in_unit": 1, "optout_robots_txt_checked": 5,
                               "optout_robots_txt_dropped": 3, "optout_tdmrep_checked": 2,
                               "optout_tdmrep_dropped": 1}
    assert get_fetcher(dl).limiter.delays.get("a.test") == 0.01
