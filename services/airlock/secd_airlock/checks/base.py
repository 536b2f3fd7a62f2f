"""What every check speaks: verdicts, findings, the files it is given and the site's rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["pass", "review", "block"]
Kind = Literal["table", "counts", "figure", "text", "metrics", "model"]

KINDS: tuple[Kind, ...] = ("table", "counts", "figure", "text", "metrics", "model")
_RANK: dict[Verdict, int] = {"pass": 0, "review": 1, "block": 2}

MIB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One check's word on one file or line.

    `evidence` says what was seen in words and figures an officer (and, shortened, the researcher)
    can act on: "7 rows of patients matched (columns name, personnummer)". It never quotes the
    matched values themselves: findings travel in events and reach the researcher.
    """

    check: str
    version: int
    verdict: Verdict
    evidence: str


@dataclass(frozen=True)
class OutputFile:
    """A file the job declared as an output: its name relative to the output folder, its bytes and
    the kind secd.yml gave it; for a magnitude table, its contributors file (`sdc`), which the
    airlock reads and never releases."""

    name: str
    data: bytes
    kind: Kind
    contributors: bytes = b""


@dataclass(frozen=True)
class Rules:
    """A site's limits for the automatic checks; the defaults are the embedded site's."""

    # type
    max_file_bytes: int = 10 * MIB
    max_run_bytes: int = 50 * MIB
    # tables: a table longer or wider than max_rows (a transposed dump is wide) is held
    max_rows: int = 100
    max_cells: int = 5000
    # identifier-like values (personnummer with a valid checksum are held from the first one;
    # e-mail addresses and phone numbers from this many distinct ones: a report may sign off)
    contact_values_review: int = 3
    identifier_values_block: int = 6
    # source match: a value is rare enough to identify when at most rare_max_rows rows of its
    # column hold it; columns with at most category_max_distinct values are categories
    rare_max_rows: int = 3
    category_max_distinct: int = 20
    qi_max_columns: int = 6
    tuple_min_values: int = 4
    match_rows_review: int = 1
    match_rows_block: int = 5  # more than this many matched rows blocks
    single_column_rows_review: int = 5
    single_column_rows_block: int = 20
    # statistical disclosure control (kind counts and table; checks/sdc.py): a count under the
    # threshold (other than 0) or not a multiple of the rounding base (1: no rounding asked) is
    # held, and so is a zero when zeros_review; a magnitude cell whose dominance_n largest
    # contributors hold at least dominance_k of its total, or whose contributors other than the
    # two largest hold less than p_ratio of the largest (ACRO's defaults: 10, 2, 0.9, 0.1)
    small_count_threshold: int = 10
    rounding_base: int = 5
    zeros_review: bool = True
    dominance_n: int = 2
    dominance_k: float = 0.9
    p_ratio: float = 0.1
    # encodings
    decode_depth: int = 3
    encoded_min_chars: int = 24
    decoded_max_bytes: int = 20 * MIB
    entropy_min_chars: int = 100
    entropy_base64_bits: float = 4.8
    entropy_hex_bits: float = 3.3
    # models (kind model; secd_airlock.checks.models): worst-case membership inference's AUC
    # that holds a model for review (when also significant, p < 0.05) or blocks it, and the
    # true-positive rate at a false-positive rate of 0.01 that holds it; shadow models per
    # attack; the fewest table rows a tree's leaf may hold (k-anonymity) and the fewest
    # residual degrees of freedom; the most table rows the attacks read
    model_auc_review: float = 0.6
    model_auc_block: float = 0.8
    model_tpr_review: float = 0.1
    model_shadow_models: int = 3
    model_min_leaf_rows: int = 10
    model_min_dof: int = 10
    model_max_rows: int = 20000
    # LiRA, run when an officer asks (secd_airlock.checks.models.check_lira): its AUC that
    # holds or blocks, its true-positive rate at a false-positive rate of 0.01 that holds
    # (chance is 0.01), and how many shadow models it trains
    model_lira_auc_review: float = 0.6
    model_lira_auc_block: float = 0.75
    model_lira_tpr_review: float = 0.05
    model_lira_shadows: int = 16


def worst(findings: Iterable[Finding]) -> Verdict:
    """The strictest verdict among findings; `pass` when there are none."""
    verdict: Verdict = "pass"
    for finding in findings:
        if _RANK[finding.verdict] > _RANK[verdict]:
            verdict = finding.verdict
    return verdict


def stricter(a: Verdict, b: Verdict) -> Verdict:
    """The stricter of two verdicts."""
    return a if _RANK[a] >= _RANK[b] else b


def count_words(n: int, one: str, many: str | None = None) -> str:
    """'1 row', '7 rows': figures in evidence read as words do."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"
