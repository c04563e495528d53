"""The `pimesh` app: every command listed, and `agent run` importing only the agent.

The import check runs `pimesh agent run` in a fresh interpreter, as far as the agent is
built and about to start (`serve` is replaced by one that reports `sys.modules`), so it
sees everything the command imports on its way, from `cli.app` on.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import COMMANDS, app, load_commands

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

NEVER_IN_AN_AGENT = {
    "kubernetes",
    "kmock",
    "aiohttp",
    "jsonschema",
    "controller",
    "sandbox",
    "prometheus_client",  # the agent writes its /metrics text itself (device.metrics)
}
"""What the other commands need and an agent on a Pi must not load."""
THE_WEB_PAGE = {"flask", "werkzeug", "jinja2"}
"""What only the LED page needs: `--http-port 0` goes without."""

AGENT_RUN_PROBE = textwrap.dedent(
    """
    import json, sys
    import cli.agent, cli.app

    def report(component):
        names = sorted({name.split(".")[0] for name in sys.modules})
        print(json.dumps({"component": type(component).__name__, "modules": names}))

    cli.agent.serve = report
    sys.argv = ["pimesh", "agent", "run", *sys.argv[1:]]
    cli.app.main()
    """
)


def agent_run_modules(tmp_path: Path, *, http_port: int) -> set[str]:
    """The top-level modules loaded when `pimesh agent run` is about to start the agent."""
    (tmp_path / "root").mkdir()
    argv = [
        "--device-id", "import-probe",
        "--root", str(tmp_path / "root"),
        "--state-dir", str(tmp_path / "state"),
        "--address", "192.0.2.1",
        "--ztunnel-cmd", "none",
        "--led-backend", "simulated",
        "--http-port", str(http_port),
        "--broker", "mqtt://127.0.0.1:1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIMESH_")}
    done = subprocess.run(
        [sys.executable, "-c", AGENT_RUN_PROBE, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["component"] == "Agent"
    return set(report["modules"])


def test_agent_run_without_web_page_imports_neither_other_commands_nor_flask(
    tmp_path: Path,
) -> None:
    modules = agent_run_modules(tmp_path, http_port=0)
    assert {"device", "paho", "pydantic"} <= modules
    assert modules & NEVER_IN_AN_AGENT == set()
    assert modules & THE_WEB_PAGE == set()


def test_agent_run_with_web_page_imports_flask_but_not_the_other_commands(
    tmp_path: Path,
) -> None:
    # The port is never bound: the probe stops before `start()`.
    modules = agent_run_modules(tmp_path, http_port=8080)
    assert modules & NEVER_IN_AN_AGENT == set()
    assert modules >= THE_WEB_PAGE


def test_help_lists_every_command_in_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    first_words = [line.strip("│ ").split(" ")[0] for line in result.output.splitlines()]
    assert [word for word in first_words if word in COMMANDS] == list(COMMANDS)
    assert "Run a fleet of Raspberry Pis inside an Istio ambient service mesh." in result.output


@pytest.mark.parametrize("module", sorted(set(COMMANDS.values())))
def test_each_module_registers_exactly_the_commands_listed_for_it(module: str) -> None:
    listed = {name for name, owner in COMMANDS.items() if owner == module}
    assert set(load_commands(module)) == listed


def test_a_mistyped_command_is_a_usage_error_that_suggests_the_right_one() -> None:
    result = CliRunner().invoke(app, ["agnt", "run"])
    assert result.exit_code == 2
    assert "Did you mean 'agent'?" in result.output


def test_sub_command_help_and_version_still_work() -> None:
    runner = CliRunner()
    agent = runner.invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"})
    assert agent.exit_code == 0
    assert "--http-port" in agent.output
    assert "PIMESH_HTTP_PORT" in agent.output
    version = runner.invoke(app, ["version"])
    assert version.exit_code == 0
    assert version.output.strip()
