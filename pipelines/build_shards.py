"""Entry point `python -m pipelines.build_shards`: the whole run on Ray, locally or on a cluster, resumable.

Before phase A, the opt-out pre-pass (pipelines/optout_hosts.py): robots.txt and tdmrep.json once per origin.
Phase A (per unit, parallel): read rows -> text + language prefilter -> opt-out policies -> download/decode/resize
-> hashes -> stage/<unit>.{tar,parquet}; then CLIP scoring over completed units (Ray Data actor pool).
Phase B (metadata only): dedup clusters, CLIP threshold, balancing, shard assignment.
Phase C: shards, metadata, manifest, report.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from curate import fsutil, output_guard
from curate.config import ConfigError, RunConfig, documented_yaml, dump_yaml, load_config, to_dict
from curate.layout import RunLayout
from pipelines.cli import build_parser, overrides_from_args
from pipelines.progress import Progress, RunTimes

# keys that may change between a run and its resume without changing any stage (phase-A) output: run
# settings, and what only scoring and phases B/C use. A rerun with another scorer rescores the units whose
# scores another scorer made (stage_io.scores_done) and selects again: the bootstrap recipe (build without
# CLIP, train a scorer on the kept set, rebuild with it) fetches nothing twice.
RESUME_NEUTRAL = ("overwrite", "progress", "num_cpus", "ray_address", "max_units_in_flight",
                  "download.retry_failed", "download.threads", "seed", "clip", "reinforce", "balance", "shards",
                  "dedup.k", "dedup.max_bucket", "dedup.spread_min", "dedup.eval_hashes", "dedup.semantic",
                  "dedup.semantic_eps", "dedup.semantic_clusters", "dedup.hash", "dedup.low_detail_bits",
                  "dedup.low_detail_k", "dedup.second_k", "dedup.loose_k", "dedup.exact_sha256",
                  "dedup.colour_check", "dedup.colour_chroma", "dedup.plain_detail", "dedup.plain_tol")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def normalised(cfg: RunConfig) -> RunConfig:
    """cfg with its output and local input paths in one spelling (fsutil.normalise), so `./out/x/` resumes
    an output made with `out/x` and the saved config and manifest do not depend on the spelling."""
    paths = tuple(fsutil.normalise(p) for p in cfg.input.paths)
    return replace(cfg, output=fsutil.normalise(cfg.output), input=replace(cfg.input, paths=paths))


def _comparable(cfg_dict: dict) -> dict:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    # an output saved by a version that kept the spelling as given still resumes
    d["output"] = fsutil.normalise(d.get("output") or "")
    if isinstance(d.get("input"), dict) and d["input"].get("paths"):
        d["input"]["paths"] = [fsutil.normalise(p) for p in d["input"]["paths"]]
    for key in RESUME_NEUTRAL:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


def prepare_output(cfg: RunConfig) -> None:
    """Saves the config into a new output, or checks that an existing one was made with the same config
    (resume). Run it through claim_output, which checks and locks the output first."""
    import yaml

    fs, out = fsutil.get_fs(cfg.output)
    cfg_path = RunLayout(out).config
    if fsutil.exists(fs, cfg_path):
        old = yaml.safe_load(fsutil.read_bytes(fs, cfg_path)) or {}
        diff = _diff_keys(_comparable(old), _comparable(to_dict(cfg)))
        if diff:
            raise RunError(f"output {cfg.output} was made with a different config (differs in: "
                           f"{', '.join(diff[:8])}); rerun with the same config to resume, or pass --overwrite")
    fsutil.atomic_write(fs, cfg_path, dump_yaml(cfg).encode())


@contextmanager
def _one_line(output: str):
    """Refusals and OS errors (permissions, a file in the way, S3 credentials) as one-line RunErrors."""
    try:
        yield
    except output_guard.OutputError as e:
        raise RunError(str(e)) from None
    except OSError as e:
        raise RunError(output_guard.describe_os_error(output, e)) from None


@contextmanager
def claim_output(cfg: RunConfig, before_changes=None):
    """The output for this run: checked (a new or empty folder or a curate output holding no input),
    locked until the run ends, emptied of curate's entries on --overwrite, its config saved or compared.
    before_changes(), when given, runs once the output is checked and locked, before anything in it is
    deleted or written (run: Ray starts there, while the CLIP check runs, which it then awaits)."""
    with _one_line(cfg.output):
        output_guard.check_output(cfg.output, cfg.input.paths, cfg.overwrite)
        lock = output_guard.OutputLock(cfg.output)
        lock.acquire()
    try:
        if before_changes is not None:
            before_changes()
        with _one_line(cfg.output):
            if cfg.overwrite:
                gone = output_guard.clear_output(cfg.output)
                if gone:
                    print(f"--overwrite: deleted {', '.join(gone)} from {cfg.output}", file=sys.stderr)
            prepare_output(cfg)
        yield
    finally:
        lock.release()


# Loads the CLIP model in a child process: the driver never imports torch/open_clip (about 0.75 GB of RSS and
# 4-5 CPU-s), nor holds the model, for the whole run; the workers load it when they score.
_MARK = "curate-clip-load-error: "
_CLIP_CHECK = (f"import sys\n_MARK = {_MARK!r}\n"
               "from curate.clip.model import ClipLoadError, load_clip\n"
               "try:\n    load_clip(sys.argv[1], sys.argv[2], 'cpu')\n"
               "except ClipLoadError as e:\n    print(_MARK + str(e), file=sys.stderr)\n    sys.exit(3)\n")


class ClipCheck:
    """load_clip(model, pretrained) running in a child process (start: now; wait: its verdict), so the
    check's seconds overlap Ray's start-up and the driver stays torch-free."""

    def __init__(self, model: str, pretrained: str):
        import subprocess
        from pathlib import Path

        import curate
        self.model, self.pretrained = model, pretrained
        root = str(Path(curate.__file__).resolve().parents[1])  # the child imports this curate, not another one
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-c", _CLIP_CHECK, model, pretrained], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait(self) -> None:
        """Raises ClipLoadError with the child's message when the model does not load (RuntimeError with its
        stderr tail for anything else)."""
        _, err = self.proc.communicate()
        if self.proc.returncode == 3:
            from curate.clip.model import ClipLoadError  # the failure path only: the driver stays torch-free
            raise ClipLoadError(err.rpartition(_MARK)[2].strip())
        if self.proc.returncode:
            raise RuntimeError(f"clip: loading {self.model!r} ({self.pretrained!r}) failed in a check process "
                               f"(exit {self.proc.returncode}): {err.strip()[-2000:]}")

    def close(self) -> None:
        """Stops the check if it still runs (the run failed before awaiting it)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def check_dependencies(cfg: RunConfig) -> ClipCheck | None:
    """Fails now, not hours later on a worker: backends and models the run needs must load. The language
    backend is checked here; the CLIP model's check is started in a child process and returned: await it
    (ClipCheck.wait) before the run changes anything."""
    if cfg.language.enabled:
        from curate.language import check_backend
        check_backend(cfg.language)
    if cfg.reinforce.enabled:  # each teacher loads in a child process too, awaited now: reinforce is opt-in
        from curate.reinforce.identity import parse_teacher
        for check in [ClipCheck(*parse_teacher(t)) for t in cfg.reinforce.teachers]:
            check.wait()
    return ClipCheck(cfg.clip.model, cfg.clip.pretrained) if cfg.clip.enabled else None


@contextmanager
def ray_session(cfg: RunConfig):
    """Connects to a cluster (RAY_ADDRESS, ray job submit, or cfg.ray_address) or starts local Ray
    (pipelines/ray_start.py: its own session, retries; a start that keeps failing is a RunError)."""
    from contextlib import ExitStack

    import ray

    from pipelines.ray_start import RayStartError, cluster_session, local_session

    with ExitStack() as stack:
        if not ray.is_initialized():  # else the caller owns Ray (tests, notebooks)
            address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
            try:
                stack.enter_context(cluster_session(address) if address else local_session(cfg.num_cpus))
            except RayStartError as e:
                raise RunError(str(e)) from None
        yield


def _process_unit_task(args):
    """Ray task body (module-level so it pickles by reference)."""
    import ray

    from curate.unit import process_unit, retry_unit
    unit_id, cfg, retry, scorers, teach = args  # scorers: start_unit_scorers' actors (the task scores), or None
    extra = {"node_id": ray.get_runtime_context().get_node_id()} if ray.is_initialized() else {}
    if retry:
        return retry_unit(unit_id, cfg, extra)
    score = False
    if scorers:
        from pipelines.scoring import unit_scorer
        score = unit_scorer(scorers, unit_id)
    return process_unit(unit_id, cfg, extra, score=score, teach=teach)


def models_in_units(cfg: RunConfig) -> bool:
    """True when the models (the CLIP scorer, the reinforce teachers) run inside the download tasks: a CPU-only
    cluster with clip.cpu_in_units and no CLIP embeddings asked for (those come from the pass). Otherwise one
    Ray Data pass after the downloads runs them on the same actors (pipelines/scoring.py): one GPU actor per
    GPU reads each unit's images once, and the teachers' forwards go to the GPU, not to CPU tasks. clip.device
    and clip.cpu_in_units decide it with CLIP off too (reinforce only): they place the teachers alike."""
    import ray

    clip = cfg.clip
    if not clip.cpu_in_units or clip.device == "cuda" or (clip.enabled and clip.save_embeddings):
        return False
    if ray.cluster_resources().get("GPU", 0) and clip.device != "cpu":
        return False
    if clip.enabled or cfg.reinforce.enabled:
        what = " and ".join(w for w, on in (("scoring", clip.enabled), ("teachers", cfg.reinforce.enabled)) if on)
        print(f"no GPU in the Ray cluster; {what} on CPU inside the download tasks", file=sys.stderr)
    return True


def cluster_cpus() -> int:
    """CPUs of the connected Ray cluster (what the planner cuts small inputs for)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def phase_a(cfg: RunConfig, units: list, done: set[int], times: RunTimes | None = None,
            in_units: bool = False) -> None:
    """Downloads every unit not yet complete (not in `done`: stage_io.done_units; a partial or corrupt unit
    is redone) and retries failures when asked, with progress; adds each finished unit's time breakdown to
    `times`. in_units (models_in_units): the tasks also score and reinforce the units they download."""
    from curate.parallel import parallel_map

    todo = [u for u in units if u.unit_id not in done]
    retry = [u for u in units if u not in todo] if cfg.download.retry_failed else []
    print(f"phase A: {len(units)} units, {len(units) - len(todo)} already complete, {len(todo)} to fetch"
          + (f", {len(retry)} to re-check for retryable failures" if retry else ""), file=sys.stderr)
    if not todo and not retry:
        return
    teach, scorers = in_units and cfg.reinforce.enabled, None
    if todo and in_units and cfg.clip.enabled:  # one shared scorer per node, not torch in every worker
        from pipelines.scoring import start_unit_scorers
        scorers = start_unit_scorers(cfg.clip)
    jobs = [(u.unit_id, cfg, False, scorers, teach) for u in todo] + [(u.unit_id, cfg, True, None, False)
                                                                      for u in retry]
    rows = {u.unit_id: u.num_rows for u in units}
    prog = Progress("download", len(jobs), sum(rows[j[0]] for j in jobs), enabled=cfg.progress)

    def on_result(_i, stats):
        if times is not None:
            times.add_unit(stats)
        if stats is None:  # a retry with nothing to retry
            prog.update(0)
            return
        prog.update(stats.rows, stats.images, stats.failed)

    # a task waiting on a shared scorer lends its CPU to Ray, which would start one more unit (and worker) per
    # waiting task: with scorers, no more units in flight than CPUs
    limit = cfg.max_units_in_flight or (cluster_cpus() if scorers else None)
    try:
        parallel_map(_process_unit_task, jobs, num_cpus=1, max_in_flight=limit, on_result=on_result, spread=True)
    finally:
        if scorers:
            from pipelines.scoring import stop_unit_scorers
            stop_unit_scorers(scorers)
    prog.close()


def phase_scoring(cfg: RunConfig, units: list, in_units: bool) -> None:
    """The Ray Data model pass (pipelines/scoring.py): scores the units that lack them and, when the models
    run outside the download tasks (in_units false), the reinforce teachers on the same actors, reading each
    unit's images once. With in_units, phase_reinforce does the units that lack teacher embeddings."""
    teach = cfg.reinforce.enabled and not in_units
    if not (cfg.clip.enabled or teach):
        return
    from pipelines.scoring import PassModels, run_pass
    t0 = time.time()
    models = PassModels(cfg.clip, cfg.clip.enabled, cfg.reinforce if teach else None, cfg.seed)
    res = run_pass(cfg.output, [u.unit_id for u in units], models)
    print(f"phase A (model pass): {res} in {time.time() - t0:.1f} s", file=sys.stderr)


def _reinforce_unit_task(args):
    """Ray task body: one completed unit's teacher embeddings (curate.reinforce.teachers.reinforce_unit)."""
    from curate.reinforce.teachers import reinforce_unit
    unit_id, cfg = args
    return reinforce_unit(cfg.output, unit_id, cfg.reinforce, cfg.seed)


def phase_reinforce(cfg: RunConfig, units: list) -> None:
    """Teacher embeddings of the completed units that lack them, in CPU tasks (models_in_units): phase A writes
    them inside each unit task, so this does the units of an output that reinforce was turned on for, or
    whose failures were retried. Otherwise the model pass does them (phase_scoring)."""
    from curate.parallel import parallel_map
    from curate.reinforce.identity import pending_units
    t0 = time.time()
    todo = pending_units(cfg.output, [u.unit_id for u in units], cfg.reinforce, cfg.seed)
    rows = parallel_map(_reinforce_unit_task, [(u, cfg) for u in todo], num_cpus=1) if todo else []
    print(f"phase A (reinforce): {len(todo)} units, {sum(rows)} rows in {time.time() - t0:.1f} s", file=sys.stderr)


def run(cfg: RunConfig) -> dict:
    """Runs (or resumes) the whole job; returns the manifest."""
    from curate.inputs.plan import plan_units
    from curate.stage_io import done_units
    from pipelines.optout_hosts import optout_prepass, publish_hosts, warn_if_all_off
    from pipelines.select_write import phase_b_c

    if not cfg.output:
        raise RunError("no output given: pass --output DIR (or output: in the config)")
    if not cfg.input.paths:
        raise RunError("no input given: pass --input FILE|DIR|GLOB (or input.paths in the config)")
    cfg = normalised(cfg)
    warn_if_all_off(cfg)  # said at start; the manifest's optout entry records it too
    times = RunTimes()  # the breakdown of where the time goes: stage/timings.json
    t0 = time.time()
    with times.run("check_dependencies"):
        clip_check = check_dependencies(cfg)
    ray_up = ExitStack()

    def start_ray_then_await_check():  # Ray starts while the CLIP check runs; its verdict comes first
        with times.run("ray_start"):
            ray_up.enter_context(ray_session(cfg))
        if clip_check is not None:
            with times.run("check_dependencies"), ExitStack() as failed:
                failed.callback(ray_up.close)  # a failed check stops Ray before the output's lock goes
                clip_check.wait()
                failed.pop_all()

    with ExitStack() as stack:
        if clip_check is not None:
            stack.callback(clip_check.close)
        stack.enter_context(claim_output(cfg, before_changes=start_ray_then_await_check))
        stack.enter_context(ray_up)  # Ray stops before the output's lock is released, as before
        with times.run("plan"):
            units = plan_units(cfg.input, cfg.output, cpus=cluster_cpus())
        with times.run("verify_units"):  # once, for the pre-pass and phase A: it reads every stage tar (sha256)
            done = done_units(cfg.output, [u.unit_id for u in units])
        with times.run("optout_hosts"):
            optout_prepass(cfg, units, done)  # robots.txt and tdmrep.json per origin, before any image request
        in_units = models_in_units(cfg)
        with times.run("phase_a"):
            phase_a(cfg, units, done, times, in_units)
        with times.run("scoring_pass"):
            phase_scoring(cfg, units, in_units)
        if cfg.reinforce.enabled and in_units:
            with times.run("reinforce_pass"):
                phase_reinforce(cfg, units)
        publish_hosts(cfg)  # metadata/optout_hosts.parquet, which the manifest counts
        manifest = phase_b_c(cfg, units, times.run)
        with times.run("ray_teardown"):
            ray_up.close()
        times.write(cfg.output)
    print(times.summary(), file=sys.stderr)
    manifest_time = time.time() - t0
    print(f"run finished in {manifest_time:.1f} s -> {cfg.output}", file=sys.stderr)
    return manifest


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_config:
        print(documented_yaml(), end="")
        return 0
    from curate.inputs import InputError
    try:
        cfg = load_config(args.config, overrides_from_args(args))
        run(cfg)
    except (ConfigError, RunError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
