"""Finding: what one circumvention check recognised in a request (technique, name, the carried URL, a score)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    technique: str  # "signature" | "nested" | "heuristic" | "doh"
    name: str  # e.g. "glype", "ultraviolet", "translate.goog", "archive", "param-url", "dns-message"
    inner_url: str | None  # the decoded carried URL, when there is one
    score: float | None = None  # heuristic score
