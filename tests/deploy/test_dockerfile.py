"""The Dockerfile builds what pyproject.toml packages, as a non-root user (no docker here)."""

import fnmatch
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in pairs]


def copied_sources() -> list[str]:
    sources = []
    for name, args in instructions():
        if name == "COPY" and not args.startswith("--from"):
            *srcs, _dest = shlex.split(args)
            sources += srcs
    return sources


def ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    sources = copied_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is excluded by .dockerignore"


def test_every_packaged_package_is_copied() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    assert packages <= set(copied_sources())
    assert {"pyproject.toml", "README.md"} <= set(copied_sources())  # README: the metadata


def test_it_runs_pimesh_as_a_non_root_user() -> None:
    steps = instructions()
    images = [args for name, args in steps if name == "FROM"]
    assert all(image.startswith("python:3.11-slim") for image in images)
    user = [args for name, args in steps if name == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric USER lets the kubelet check runAsNonRoot"
    assert int(uid) != 0
    assert [args for name, args in steps if name == "ENTRYPOINT"] == ['["pimesh"]']
    runs = " ".join(args for name, args in steps if name == "RUN")
    assert "[dev]" not in runs
    assert "--no-deps" in runs  # the wheel alone; its dependencies resolve at install
    # The Deployment runs the image as that user.
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "controller.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_dockerignore_keeps_the_venv_history_and_tests_out() -> None:
    for path in (".git", ".venv", "tests", "deploy", "__pycache__/x.pyc"):
        assert ignored(path) or ignored(path.split("/")[-1]), path
