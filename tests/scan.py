"""The at-rest scan: every byte of a database's files and a service's logs searched for phone numbers in clear.

A number is looked for by its national digits (`9876543210` of `+919876543210`) in every run of ASCII
digits, and each hit is told apart by what precedes it: `+91` (form `e164`), `91` (form `digits`, as the
provider's bodies carry it) or anything else (form `national`). The scan reports counts per file and
form and shows numbers only masked (`+91******3210`), so its own output leaks nothing.
"""

from __future__ import annotations

import mmap
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers

FORMS = ("e164", "digits", "national")


_ANY_NUMBER = re.compile(r"\+?\d{10,15}")


def mask(e164: str) -> str:
    """+919876543210 as +91******3210, the way the service masks numbers."""
    return e164[:3] + "******" + e164[-4:]


def masked(text: str) -> str:
    """Text for a failure message: every run of 10 to 15 digits (with or without +) masked."""
    return _ANY_NUMBER.sub(lambda m: mask(m.group()), text)


class Needles:
    """The numbers to look for, by their national digits."""

    def __init__(self, numbers: Iterable[str]) -> None:
        # national digits -> (E.164, country code digits)
        self.by_national: dict[bytes, tuple[str, bytes]] = {}
        for number in numbers:
            parsed = phonenumbers.parse(number)
            national = str(parsed.national_number).encode()
            self.by_national[national] = (number, str(parsed.country_code).encode())
        self.lengths = sorted({len(n) for n in self.by_national})
        # Runs of ASCII digits at least as long as the shortest national number: one regex pass over the data.
        self._runs = re.compile(rb"[0-9]{%d,}" % (self.lengths[0] if self.lengths else 1))

    def __len__(self) -> int:
        return len(self.by_national)

    def find(self, data: bytes | mmap.mmap) -> Counter[tuple[str, str]]:
        """How many times each (number, form) occurs in the data."""
        found: Counter[tuple[str, str]] = Counter()
        for run in self._runs.finditer(data):
            digits = run.group()
            for length in self.lengths:
                for i in range(len(digits) - length + 1):
                    hit = self.by_national.get(digits[i : i + length])
                    if hit is None:
                        continue
                    e164, cc = hit
                    if digits[:i].endswith(cc):
                        plus = i == len(cc) and run.start() > 0 and data[run.start() - 1 : run.start()] == b"+"
                        found[e164, "e164" if plus else "digits"] += 1
                    else:
                        found[e164, "national"] += 1
        return found


@dataclass(repr=False)
class Finding:
    """The numbers found in one place (a file, or a table of a logical dump)."""

    where: str
    kind: str
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def forms(self) -> Counter[str]:
        by_form: Counter[str] = Counter()
        for (_, form), n in self.hits.items():
            by_form[form] += n
        return by_form

    def describe(self) -> str:
        forms = ", ".join(f"{form} {n}" for form, n in sorted(self.forms().items()))
        numbers = sorted({number for number, _ in self.hits})
        shown = ", ".join(mask(n) for n in numbers[:3]) + (", ..." if len(numbers) > 3 else "")
        return f"{self.kind}: {self.where}: {self.total} hits ({forms}) of {len(numbers)} numbers, e.g. {shown}"

    __repr__ = describe  # never a number in full, in pytest's output either


def scan_file(path: Path, needles: Needles) -> Counter[tuple[str, str]]:
    """The numbers in clear in one file (every byte of it)."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size == 0:
        return Counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return needles.find(data)


@dataclass(repr=False)
class Report:
    """Everything one scan found, and what it looked at."""

    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def add(self, finding: Finding) -> None:
        if finding.total:
            self.findings.append(finding)

    def of(self, number: str) -> list[Finding]:
        """The places that hold this number, with only its hits."""
        found = []
        for f in self.findings:
            mine = Counter({k: n for k, n in f.hits.items() if k[0] == number})
            if mine:
                found.append(Finding(f.where, f.kind, mine))
        return found

    def without(self, numbers: set[str]) -> Report:
        """The same scan with these numbers' hits left out."""
        kept = Report(files=self.files, bytes=self.bytes)
        for f in self.findings:
            kept.add(Finding(f.where, f.kind, Counter({k: n for k, n in f.hits.items() if k[0] not in numbers})))
        return kept

    @property
    def total(self) -> int:
        return sum(f.total for f in self.findings)

    def __repr__(self) -> str:
        return f"<Report: {self.total} hits in {len(self.findings)} places>"

    def by_kind(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for f in self.findings:
            kinds[f.kind.split(" ", 1)[0]] += f.total
        return kinds

    def summary(self, numbers: int, limit: int = 20) -> str:
        """A failure message: totals by form and kind, the worst `limit` files with their counts and forms, and
        the dump's tables on one line; numbers masked."""
        files = sorted((f for f in self.findings if f.kind != "dump"), key=lambda f: -f.total)
        dumped = sorted((f for f in self.findings if f.kind == "dump"), key=lambda f: -f.total)
        forms: Counter[str] = Counter()
        for f in files:
            forms.update(f.forms())
        distinct = len({number for f in self.findings for number, _ in f.hits})
        lines = [
            f"{sum(f.total for f in files)} clear-text copies of {distinct} of the {numbers} party numbers used, in "
            f"{len(files)} of {self.files} files ({self.bytes:,} bytes scanned)",
            "  by form: " + ", ".join(f"{form} {forms[form]}" for form in FORMS),
            "  by kind: " + ", ".join(f"{kind} {n}" for kind, n in self.by_kind().most_common()),
        ]
        lines += ["  " + f.describe() for f in files[:limit]]
        if len(files) > limit:
            lines.append(f"  ... and {len(files) - limit} more files")
        if dumped:
            tables = ", ".join(f"{f.where} {f.total}" for f in dumped)
            lines.append(f"  in a dump (every row as text): {sum(f.total for f in dumped)} copies: {tables}")
        return "\n".join(lines)


def files_under(root: Path) -> list[Path]:
    """Every regular file under a folder (sockets, links and the like left out)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class Layout:
    """Where a PostgreSQL server keeps its files: its data folder, its logs (wherever they are), and which
    relation each file under base/ and global/ holds."""

    pgdata: Path
    logs: set[Path]
    log_dir: Path | None  # the logging collector's folder when it is outside the data folder
    relations: dict[str, str]  # base/5/16470 -> "table postgres.sessions"

    @classmethod
    def of(cls, settings: dict[str, str], current_log: str | None, relations: dict[str, str]) -> Layout:
        """From the server's settings (data_directory, logging_collector, log_directory) and pg_current_logfile()."""
        pgdata = Path(settings["data_directory"]).resolve()
        # pg_ctl -l: the embedded server's stderr, in its data folder; the collector's files when it runs.
        logs = {pgdata / "log"}
        log_dir = Path(settings["log_directory"])
        log_dir = (log_dir if log_dir.is_absolute() else pgdata / log_dir).resolve()
        if settings["logging_collector"] == "on" and log_dir.exists():
            logs |= set(files_under(log_dir))
        if current_log:
            logs.add((pgdata / current_log).resolve())
        outside = settings["logging_collector"] == "on" and not log_dir.is_relative_to(pgdata)
        return cls(pgdata, logs, log_dir if outside else None, relations)

    def kind_of(self, path: Path) -> str:
        """What a file is: the server's log, WAL, a named table or index, or another of the server's files."""
        if path in self.logs:
            return "server-log"
        if not path.is_relative_to(self.pgdata):
            return "data-folder"
        rel = path.relative_to(self.pgdata)
        if rel.parts[0] == "pg_wal":
            return "WAL"
        if rel.parts[0] in ("base", "global"):
            relation = re.sub(r"(_fsm|_vm|_init|\.\d+)$", "", str(rel))
            return self.relations.get(relation, "relation (dropped since)")
        return f"other ({rel.parts[0]})"

    def scan(self, data_dir: Path, service_logs: list[Path], needles: Needles) -> Report:
        """Every byte of every file under the data folder (and the log folder, when elsewhere) and the logs."""
        report = Report()
        roots = [data_dir.resolve()] + ([self.log_dir] if self.log_dir else [])
        places = [
            (path, str(path.relative_to(root.parent)), self.kind_of(path))
            for root in roots
            for path in files_under(root)
        ]
        places += [(log, log.name, "service-log") for log in service_logs]
        for path, where, kind in places:
            report.files += 1
            report.bytes += path.stat().st_size
            report.add(Finding(where, kind, scan_file(path, needles)))
        return report
