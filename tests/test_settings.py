"""Settings come from MASKING_* variables; bad values fail at start naming the variable."""

import pytest

from service.settings import SettingsError, load_settings


def test_defaults_follow_the_contract() -> None:
    """With nothing set, every setting has the contract's default."""
    s = load_settings({})
    assert (s.host, s.port, s.data_dir, s.database_url) == ("127.0.0.1", 8000, "./.masking", None)
    assert s.provider_kind == "simulator"
    assert s.thundersms_url == "http://portal.thundersms.com/api/v2/"
    assert (s.provider_timezone, s.provider_timeout_seconds) == ("Asia/Kolkata", 10.0)
    assert (s.default_ttl_seconds, s.cooloff_seconds, s.call_report_timeout_seconds) == (86400, 3600, 7200)


def test_values_are_read_and_converted_from_strings() -> None:
    """Numbers arrive as strings in the environment and become numbers."""
    s = load_settings({"MASKING_PORT": "9001", "MASKING_COOLOFF_SECONDS": "60", "MASKING_THUNDERSMS_TOKEN": "t"})
    assert (s.port, s.cooloff_seconds, s.provider_kind) == (9001, 60, "thundersms")
    proxies = load_settings({"MASKING_TRUSTED_PROXIES": " 10.1.2.3, fd00::/8 "}).trusted_networks
    assert [str(n) for n in proxies] == ["10.1.2.3/32", "fd00::/8"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MASKING_PORT", "eighty"),
        ("MASKING_PORT", "70000"),
        ("MASKING_DEFAULT_TTL_SECONDS", "5"),
        ("MASKING_PROVIDER", "twilio"),
        ("MASKING_LOG_FORMAT", "xml"),
        ("MASKING_PROVIDER_TIMEZONE", "Mars/Olympus"),
        ("MASKING_PROVIDER_TIMEOUT_SECONDS", "-1"),
        ("MASKING_TRUSTED_PROXIES", "10.0.0.0/8,nginx"),
        ("MASKING_LINK_REQUESTS_PER_MINUTE", "-5"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    """A value the service cannot use is refused with the variable's name in the message."""
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_thundersms_without_a_token_is_refused() -> None:
    """Choosing the real provider without its token fails at start, not at the first call."""
    with pytest.raises(SettingsError, match="MASKING_THUNDERSMS_TOKEN"):
        load_settings({"MASKING_PROVIDER": "thundersms"})
