"""The log privacy scan that closes every test run catches what it must and passes what is masked."""

from tests.privacy import leaks


def test_the_scan_flags_a_real_number_a_key_and_a_token() -> None:
    """An unmasked number, an API key or a provider token in a line is a leak."""
    found = leaks(
        [
            '{"event": "x", "caller": "+919876543210"}',
            "calling 919876543210 now",
            "auth msk_abcdefghijklmnop",
            "Authorization: Bearer provider-token-xyz",
        ]
    )
    assert len(found) == 4


def test_the_scan_passes_masked_numbers_ids_and_timestamps() -> None:
    """Masked numbers, UUIDs, timestamps and counters are not leaks."""
    assert (
        leaks(
            [
                '{"caller": "+91******3210", "status": 200}',
                '{"request_id": "5f0c1e6a9b8d4c3e2f1a0b9c8d7e6f5a", "ms": 1.25}',
                '{"timestamp": "2026-11-28T03:25:01.123456Z", "call_id": "0b7d9b84-3c2a-4b8e-9f61-2d5e7c1a9b30"}',
            ]
        )
        == []
    )
