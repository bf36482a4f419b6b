"""What the loader reports, and the walk that collects it while tables are parsed.

`str(problem)` is the one line `tlsgate check` prints, e.g.
`tlsgate.toml: listener[1].backend: expected HOST:PORT, got "localhost"`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from tlsgate.config import parse

Parser = Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Finding:
    file: str  # the config file as the user named it
    key: str  # key path such as `listener[0].tls`; empty for the file as a whole
    expected: str
    got: str  # already rendered for display

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: expected {self.expected}, got {self.got}"


@dataclass(frozen=True, slots=True)
class ConfigProblem(_Finding):
    """An error: the config must not be used."""


@dataclass(frozen=True, slots=True)
class ConfigWarning(_Finding):
    """Worth telling the operator, but the config is usable (`check` still exits 0)."""


class ConfigError(Exception):
    """The config is invalid; `problems` holds every problem found.

    Problems with single values come first, in file order, then those across fields.
    """

    def __init__(
        self, problems: Sequence[ConfigProblem], warnings: Sequence[ConfigWarning] = ()
    ) -> None:
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)  # found on the way; still worth printing
        super().__init__("\n".join(str(problem) for problem in self.problems))


class Walk:
    """Collects findings for one file while tables are parsed."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigWarning] = []

    def error(self, key: str, expected: str, got: str) -> None:
        self.problems.append(ConfigProblem(self.file, key, expected, got))

    def warn(self, key: str, expected: str, got: str) -> None:
        self.warnings.append(ConfigWarning(self.file, key, expected, got))

    def unknown(self, path: str, key: str, known: Collection[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        hint = (
            f'a known key (did you mean "{close[0]}"?)' if close else "one of " + ", ".join(known)
        )
        self.error(join(path, key), hint, f"unknown key {parse.render(key)}")

    def table(
        self,
        path: str,
        raw: object,
        parsers: Mapping[str, Parser],
        required: Collection[str] = (),
    ) -> dict[str, object]:
        """Parse one table; returns the keys that parsed (problems recorded, not raised)."""
        if not isinstance(raw, Mapping):
            self.error(path, "a table", parse.render(raw))
            return {}
        values: dict[str, object] = {}
        for key, value in raw.items():
            if key not in parsers:
                self.unknown(path, key, parsers)
                continue
            try:
                values[key] = parsers[key](value)
            except parse.Invalid as exc:
                for index, item, why in exc.items:
                    self.error(f"{join(path, key)}[{index}]", why.expected, parse.render(item))
                if not exc.items:
                    self.error(join(path, key), exc.expected, parse.render(value))
        for key in required:
            if key not in raw:
                self.error(join(path, key), "a value (the key is required)", "nothing")
        return values

    def array(self, key: str, raw: object) -> list[object]:
        """An array of tables (`[[key]]`); anything else is one problem."""
        if isinstance(raw, list) and all(isinstance(item, Mapping) for item in raw):
            return list(raw)
        self.error(key, f"an array of tables ([[{key}]])", parse.render(raw))
        return []


def join(path: str, key: str) -> str:
    """A key path: `listener[0]` and `tls` make `listener[0].tls`; the top level has no path."""
    return f"{path}.{key}" if path else key
