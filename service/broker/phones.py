"""Phone numbers: parse input leniently, validate with phonenumbers, hand back E.164."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from service.broker.errors import InvalidPhoneNumber


@lru_cache(maxsize=65_536)
def _parse(text: str) -> tuple[str, str] | None:
    digits = text.strip()
    if not digits.startswith("+"):
        digits = "+" + digits
    if not digits[1:].isdigit():
        return None
    try:
        parsed = phonenumbers.parse(digits, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    region = phonenumbers.region_code_for_number(parsed) or "001"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), region


def normalize(text: str, field: str) -> str:
    """Return the number as E.164 with `+`, or raise invalid_phone_number naming the field."""
    return parse_with_region(text, field)[0]


def parse_with_region(text: str, field: str) -> tuple[str, str]:
    """Return (E.164, ISO region) for a number, or raise invalid_phone_number naming the field."""
    result = _parse(text) if len(text) <= 32 else None
    if result is None:
        raise InvalidPhoneNumber(
            f"`{field}` is not a valid phone number: give it in E.164 with its country code, such as +14155550123.",
            field=field,
        )
    return result


def provider_digits(e164: str) -> str:
    """The provider's form of a number: country code and digits, no `+`."""
    return e164.removeprefix("+")
