"""The deploy files are consistent with the service: what can be checked without Docker is checked."""

import re
from pathlib import Path

import yaml

from service.cli import parser
from service.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_runs_postgres_two_replicas_and_a_proxy_over_both() -> None:
    """compose.yaml parses; both replicas share one database; the proxy's upstream lists both."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "service-1", "service-2", "proxy"} <= set(services)
    urls = {services[name]["environment"]["MASKING_DATABASE_URL"] for name in ("service-1", "service-2", "migrate")}
    assert len(urls) == 1 and "@postgres:5432/" in urls.pop()
    assert services["migrate"]["command"] == ["migrate"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert re.findall(r"server (service-\d):8000", nginx) == ["service-1", "service-2"]
    assert "proxy_next_upstream_tries 1" in nginx


def test_the_image_and_the_unit_run_real_commands() -> None:
    """The Dockerfile's entry point and the systemd unit's commands are commands of the CLI."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["masking"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    assert "USER masking" in dockerfile and "/readyz" in dockerfile
    unit = (DEPLOY / "masking.service").read_text()
    commands = re.findall(r"^Exec\w+=\S+/masking (\w+)$", unit, flags=re.M)
    assert commands == ["migrate", "serve"]
    choices = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "migrate"} <= set(choices)


def test_the_env_example_is_a_valid_configuration() -> None:
    """Every variable of the example is a real setting, and together they load."""
    pairs = [
        line.split("=", 1)
        for line in (DEPLOY / "masking.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    names = {name.removeprefix("MASKING_").lower() for name, _ in pairs}
    assert names <= set(Settings.__struct_fields__)
    settings = load_settings(dict(pairs))
    assert settings.provider_kind == "thundersms" and settings.workers == 2
