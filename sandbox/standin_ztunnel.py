"""A stand-in for ztunnel: records what it was started with, then idles until told to stop.

ztunnel cannot be built here (DESIGN.md), so `pimesh sandbox` and the tests supervise
this instead: `python -m sandbox.standin_ztunnel [--record PATH]`. On start it writes,
atomically, a JSON record to `--record` or `$PIMESH_STANDIN_RECORD` (the flag wins):
its pid, argv, working directory, uid/gid/groups, its whole environment, and for each
file ztunnel would read relative to its working directory whether it exists and its
sha256 (never the content: one is the token). Each start also appends one JSON line to
`PATH.starts`, so a test can count restarts.

The files are ztunnel's defaults (ztunnel `src/config.rs`): the token at `$AUTH_TOKEN`,
else `./var/run/secrets/tokens/istio-token`; the root certificate at
`./var/run/secrets/istio/root-cert.pem`; the mesh config at `./etc/istio/config/mesh`.

It then waits for SIGTERM or SIGINT and exits 0, like ztunnel's graceful shutdown. With
`$PIMESH_STANDIN_EXIT_AFTER_S=x` it exits 1 after x seconds instead: a crash to restart.
Standard library only, so it starts fast.
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

RECORD_ENV = "PIMESH_STANDIN_RECORD"
EXIT_AFTER_ENV = "PIMESH_STANDIN_EXIT_AFTER_S"
DEFAULT_TOKEN = "var/run/secrets/tokens/istio-token"  # noqa: S105 - a path
ROOT_CERT = "var/run/secrets/istio/root-cert.pem"
MESH_CONFIG = "etc/istio/config/mesh"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def file_facts(path: str) -> dict[str, object]:
    """Whether `path` (relative to the working directory) exists, and its sha256."""
    try:
        digest: str | None = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        digest = None
    return {"path": path, "exists": digest is not None, "sha256": digest}


def build_record() -> dict[str, object]:
    """What this process was started with, as the JSON record describes it."""
    return {
        "pid": os.getpid(),
        "argv": sys.orig_argv,
        "cwd": str(Path.cwd()),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "env": dict(os.environ),
        "files": {
            "token": file_facts(os.environ.get("AUTH_TOKEN", DEFAULT_TOKEN)),
            "root_cert": file_facts(ROOT_CERT),
            "mesh_config": file_facts(MESH_CONFIG),
        },
    }


def write_record(path: Path, record: dict[str, object]) -> None:
    """Replace `path` with `record` atomically, then append a line to `path.starts`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record, indent=2, sort_keys=True))
    temp.replace(path)
    line = json.dumps({"pid": record["pid"], "time": time.time()}) + "\n"
    # One short O_APPEND write: lines from quick restarts never interleave.
    with path.with_name(path.name + ".starts").open("a") as starts:
        starts.write(line)


def main(argv: list[str] | None = None) -> int:
    """Record, then wait for a stop signal (exit 0) or the configured crash (exit 1)."""
    # Blocked before anything else, so a SIGTERM sent right after start is not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    parser = argparse.ArgumentParser(prog="standin_ztunnel")
    parser.add_argument("--record", type=Path, default=os.environ.get(RECORD_ENV))
    args, _ = parser.parse_known_args(argv)
    if args.record is not None:
        write_record(Path(args.record), build_record())
    exit_after = os.environ.get(EXIT_AFTER_ENV)
    if exit_after is None:
        signal.sigwait(_STOP_SIGNALS)
        return 0
    return 0 if signal.sigtimedwait(_STOP_SIGNALS, float(exit_after)) else 1


if __name__ == "__main__":
    sys.exit(main())
