"""`masking keys rotate` (a new data key, old rows re-encrypted online) and `masking keys reindex` (a new index key).

Both change the key file first (MASKING_KEYS_FILE, or the embedded default's keys.json), then the rows. With
MASKING_KEYS (keys in a variable) the command cannot change the keys itself: it prints the new value to set.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import TextIO

import msgspec

from service import crypto
from service.cli.common import CliError, cli_user, run_with_db
from service.db import Conn
from service.settings import Settings


class TextBar:
    """A one-line progress bar on stderr, redrawn in place: `re-encrypting sessions [#####.....] 500/1000`."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream, self.width, self.what = stream, width, ""

    def __call__(self, what: str, done: int, total: int) -> None:
        if what != self.what and self.what:
            self.stream.write("\n")
        self.what = what
        filled = self.width * done // total if total else self.width
        self.stream.write(f"\r{what:<28} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.what:
            self.stream.write("\n")
            self.stream.flush()


def load_ring(settings: Settings) -> tuple[crypto.KeyRing, Path | None]:
    """The service's ring and the file it lives in (None: it came from MASKING_KEYS), or exit 2 saying why."""
    try:
        ring, _ = crypto.for_settings(settings)
    except crypto.KeysError as exc:
        raise CliError(str(exc)) from None
    if settings.keys:
        return ring, None
    if settings.keys_file:
        return ring, Path(settings.keys_file).expanduser()
    return ring, Path(settings.data_dir).expanduser().resolve() / crypto.KEY_FILE_NAME


def _print_variable(ring: crypto.KeyRing, then: str) -> None:
    """Keys in a variable: say what to set it to (this line is secret: it holds the keys)."""
    print(json.dumps({"set": "MASKING_KEYS", "value": ring.dumps().decode(), "then": then}))
    print(f"masking: set MASKING_KEYS to the printed value on every instance, then {then}", file=sys.stderr)


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import utc_now
    from service.broker import keys
    from service.broker.audit import Actor

    ring, path = load_ring(settings)
    crypto.install(ring)
    data_ids = list(ring.data)
    staged = data_ids[-1] if data_ids[-1] != ring.current else None

    async def work(conn: Conn) -> int:
        if args.stage:
            if staged is not None:
                raise CliError(f"data key {staged!r} is already added and not yet current: run `masking keys rotate`")
            new = ring.rotated(make_current=False)
            if path is None:
                _print_variable(new, "restart them and run `masking keys rotate`")
                return 0
            crypto.write_key_file(path, new, replace=True)
            from service.db import keys as q

            await q.register(conn, list(new.data)[-1])
            print(json.dumps({"added": list(new.data)[-1], "current": new.current, "key_file": str(path)}))
            return 0
        if staged is not None:
            new = ring.with_current(staged)
        elif await keys.pending_rotation(conn, ring):
            new = ring  # an unfinished rotation: go on with the current key
        else:
            new = ring.rotated()
        if new is not ring:
            if path is None:
                _print_variable(new, "run `masking keys rotate` again to re-encrypt")
                return 0
            crypto.write_key_file(path, new, replace=True)
            crypto.install(new)
        bar = TextBar()
        try:
            done = await keys.reencrypt(conn, Actor.cli(cli_user()), utc_now(), bar)
        finally:
            bar.close()
        print(json.dumps(msgspec.to_builtins(done)))
        if done.remaining:
            print(
                f"masking: {done.remaining} values are still under an older data key (a process still runs with "
                "the old keys?): restart every instance with the new key file, then run `masking keys rotate` "
                "again; it resumes.",
                file=sys.stderr,
            )
            return 1
        return 0

    return run_with_db(settings, work)


def cmd_keys_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import utc_now
    from service.broker import keys
    from service.broker.audit import Actor, Target, record

    ring, path = load_ring(settings)
    crypto.install(ring)
    number = len(ring.index) + 1
    while f"i{number}" in ring.index:
        number += 1
    new_id = f"i{number}"
    # The old index keys are of no use once the indexes are rebuilt (from the ciphertexts, not from them).
    new = crypto.KeyRing(ring.data, ring.current, {new_id: secrets.token_bytes(crypto.KEY_BYTES)}, new_id)

    async def work(conn: Conn) -> int:
        if path is None:
            _print_variable(new, "start the service (the indexes below are rebuilt under its new index key)")
        else:
            crypto.write_key_file(path, new, replace=True)
        crypto.install(new)
        # On record (service-wide: no tenant) once the new key is made, before the rebuild, as keys.rotate is.
        async with conn.transaction():
            target = Target("index_key", new_id)
            await record(conn, None, Actor.cli(cli_user()), "keys.reindex", target, None, None, None, utc_now())
        bar = TextBar()
        try:
            done = await keys.reindex(conn, bar)
        finally:
            bar.close()
        print(json.dumps(msgspec.to_builtins(done)))
        return 0

    return run_with_db(settings, work)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`masking keys rotate|reindex` on the command line's grammar."""
    keys = sub.add_parser("keys", help="the data and index keys (docs/security.md)").add_subparsers(
        dest="action", required=True
    )
    rotate = keys.add_parser(
        "rotate",
        help="make a new data key current and re-encrypt older rows online (run again to resume)",
        description="Make a new data key current (written to MASKING_KEYS_FILE) and re-encrypt every older "
        "ciphertext in batches while the service runs; run again to resume. With several instances, first "
        "`--stage` the key, give every instance the new file and restart them, then rotate.",
    )
    rotate.add_argument(
        "--stage", action="store_true", help="only add the new key (not current yet), for several instances"
    )
    rotate.set_defaults(run=cmd_keys_rotate)
    keys.add_parser(
        "reindex",
        help="make a new index key current and rebuild every blind index (service stopped)",
        description="Make a new index key current and rebuild every blind index from the ciphertexts. Stop the "
        "service first: until the rebuild ends, lookups miss rows (see docs/security.md for its cost).",
    ).set_defaults(run=cmd_keys_reindex)
