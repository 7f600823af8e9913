"""Starts the embedded local Ray reliably on a busy machine (own session, retries), or connects to a cluster.

Why a separate process: Ray's raylet gives the dashboard agent a fixed 15 s to write its port files and
the head start gives the raylet a fixed 30 s to register (neither has a setting in Ray 2.x). On a machine
whose cores are busy with other work the agent's Python start-up misses that window and the start fails
("The current node timed out during startup"). Started from a launcher in a new session, every Ray
process lands in its own scheduling group (Linux autogroup), so the kernel shares the CPU between this run
and the other work instead of between every busy process; a start that still fails is cleaned up (the
whole session is killed) and retried.

The launcher is this file run as a script: `python ray_start.py NUM_CPUS` (NUM_CPUS 0: all cores).
It starts Ray, prints the GCS address as one JSON line, and shuts Ray down when its stdin closes (the
driver ended or was killed).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

START_ATTEMPTS = 3
START_TIMEOUT_S = 240.0   # one attempt; Ray ends a failed start sooner, this only bounds a hang
STOP_TIMEOUT_S = 30.0     # a graceful shutdown, then the launcher's session is killed
WORKER_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}  # no update checks, no reporting
# the local Ray processes also get Ray's start-up limits that have a setting raised for a slow machine
# (a worker that registers late is killed after 60 s; the runtime-env agent gets 30 s to answer)
RAY_ENV = {**WORKER_ENV, "RAY_worker_register_timeout_seconds": "600", "RAY_agent_register_timeout_ms": "300000"}
# Allocators of the local Ray processes; a value set by the user wins. glibc gives a thread that allocates its
# own arena (up to 8 per core) and keeps what is freed in each: a unit task's download threads left ~50 MB
# more per worker process, at no CPU gain. Arrow's default pool (mimalloc) kept ~120 MB of a unit's freed
# image column in each worker; the system pool (glibc, trimmed after the heavy stages) returns it
# (tests/bench/results/pipeline_memory.json).
ALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}
ADVICE = ("free some CPU and rerun, pass --num-cpus 1, or start Ray yourself (`ray start --head`) and "
          "run with RAY_ADDRESS=auto")


class RayStartError(RuntimeError):
    """Local Ray could not be started; the message says why and what to do."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def cluster_session(address: str):
    """Connects to an existing cluster (the job path); disconnects on exit."""
    import ray

    ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=True)
    _log(f"connected to Ray cluster at {address}")
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def local_session(num_cpus: int | None, attempts: int = START_ATTEMPTS, timeout_s: float = START_TIMEOUT_S):
    """Starts a private local Ray (retrying a failed start) and connects this process to it.

    Raises RayStartError when every attempt failed."""
    import ray

    proc = _start_with_retries(num_cpus, attempts, timeout_s)
    try:
        _log(f"started local Ray with {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
        yield
    finally:
        ray.shutdown()
        _stop(proc)


def _start_with_retries(num_cpus: int | None, attempts: int, timeout_s: float) -> subprocess.Popen:
    import ray

    reason = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            _log(f"local Ray did not start ({reason}); retrying ({attempt}/{attempts})")
        proc, log_path = _launch(num_cpus)
        try:
            address = _await_address(proc, log_path, timeout_s)
            _match_auth_mode()
            ray.init(address=address, log_to_driver=True, configure_logging=False)
            return proc
        except BaseException as e:  # any failure of this attempt: clean up everything it started
            ray.shutdown()
            _stop(proc, graceful=False)
            if not isinstance(e, Exception):  # Ctrl-C: stop, do not retry
                raise
            reason = _one_line(str(e))
        finally:
            os.unlink(log_path)
    raise RayStartError(f"local Ray did not start in {attempts} attempts ({reason}); {ADVICE}")


def _match_auth_mode() -> None:
    """A cluster that ray.init starts uses token auth (~/.ray/auth_token) unless RAY_AUTH_MODE says
    otherwise, but a driver connecting to an explicit address sends the token only when the mode is set:
    set it as ray.init does for the cluster it starts (env for child processes, then reload Ray's config)."""
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


def _launch(num_cpus: int | None) -> tuple[subprocess.Popen, str]:
    fd, log_path = tempfile.mkstemp(prefix="curate-ray-start-", suffix=".log")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENV)
    env.update({k: v for k, v in ALLOC_ENV.items() if k not in os.environ})
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(num_cpus or 0)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                start_new_session=True)
    return proc, log_path


def _await_address(proc: subprocess.Popen, log_path: str, timeout_s: float) -> str:
    """The GCS address the launcher prints once Ray is up; raises with the launcher's reason if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line:
                return json.loads(line)["address"]
        if proc.poll() is not None:
            raise RuntimeError(_failure_reason(log_path) or f"launcher exited with code {proc.returncode}")
    raise RuntimeError(f"no answer within {timeout_s:.0f} s")


def _failure_reason(log_path: str) -> str:
    """The last exception line the launcher wrote (Ray's own message), capped."""
    with open(log_path, errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return _one_line((errors or lines or [""])[-1])


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _stop(proc: subprocess.Popen, graceful: bool = True) -> None:
    """Asks the launcher to shut Ray down; kills its whole session (every Ray process) if it does not
    (at once for a start that failed: the launcher reads stdin only once Ray is up)."""
    try:
        proc.stdin.close()
        proc.wait(STOP_TIMEOUT_S if graceful else 0)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):  # leftovers: processes of a start that failed half-way
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    proc.wait()
    proc.stdout.close()


def serve(num_cpus: int) -> None:
    """Launcher body: start Ray, print its address, keep it up until stdin closes."""
    import ray

    ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    print(json.dumps({"address": ray.get_runtime_context().gcs_address}), flush=True)
    sys.stdin.read()
    ray.shutdown()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
