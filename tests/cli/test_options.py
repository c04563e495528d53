"""cli.options: flags and PIMESH_* variables into settings; errors into one line and a code."""

import pytest
import typer
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.errors import CliError, UsageError
from cli.options import build_settings, describe, env_of, exits, flag_of
from shared.errors import InvalidMessage


class Sample(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    token_ttl: int = Field(default=3600, ge=600, description="Token lifetime in seconds.")
    rotate_every: int | None = Field(default=None, description="Seconds between rotations.")
    rotate_cron: str | None = Field(default=None, description="Cron expression.")

    @model_validator(mode="after")
    def _one_schedule(self) -> "Sample":
        if self.rotate_every is not None and self.rotate_cron is not None:
            msg = "give --rotate-every or --rotate-cron, not both"
            raise ValueError(msg)
        return self


def test_names() -> None:
    assert flag_of("token_ttl") == "--token-ttl"
    assert env_of(Sample, "token_ttl") == "PIMESH_TOKEN_TTL"
    assert describe(Sample, "token_ttl") == (
        "Token lifetime in seconds. (env PIMESH_TOKEN_TTL, default 3600)"
    )


def test_given_flags_win_and_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIMESH_TOKEN_TTL", "1200")
    monkeypatch.setenv("PIMESH_ROTATE_CRON", "*/5 * * * *")

    settings = build_settings(Sample, token_ttl=900, rotate_cron=None)

    assert settings.token_ttl == 900
    assert settings.rotate_cron == "*/5 * * * *"


def test_refused_flag_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIMESH_TOKEN_TTL", raising=False)

    with pytest.raises(UsageError) as caught:
        build_settings(Sample, token_ttl=60)

    assert caught.value.reason == "--token-ttl: Input should be greater than or equal to 600"
    assert caught.value.exit_code == 2


def test_refused_variable_names_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIMESH_TOKEN_TTL", "soon")

    with pytest.raises(UsageError) as caught:
        build_settings(Sample)

    assert caught.value.reason.startswith("--token-ttl (from PIMESH_TOKEN_TTL): Input should be")


def test_model_validator_message_stands_alone() -> None:
    with pytest.raises(UsageError) as caught:
        build_settings(Sample, rotate_every=600, rotate_cron="* * * * *")

    assert caught.value.reason == "give --rotate-every or --rotate-cron, not both"


@pytest.mark.parametrize(
    ("error", "code"),
    [(UsageError("bad\nvalue"), 2), (CliError("it failed"), 1), (InvalidMessage("garbled"), 1)],
)
def test_exits_turns_errors_into_one_line_and_a_code(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as caught, exits():
        raise error

    assert caught.value.exit_code == code
    err = capsys.readouterr().err
    assert err.startswith("pimesh: ")
    assert err.count("\n") == 1


def test_exits_lets_success_through() -> None:
    with exits():
        pass
