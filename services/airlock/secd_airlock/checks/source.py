"""Source match: outputs compared with the granted tables themselves, which only secd can see.

The index holds keyed hashes (HMAC-SHA256 under the airlock's key, truncated to 12 bytes) and
never a raw value:
- of every cell value rare enough to identify someone: at most `rare_max_rows` rows of its
  column hold it, its column is not a category, and it is informative (not a tiny number, a
  boolean or a two-letter word); the rare words of a multi-word value ("Svensson" of
  "Anna Svensson") count for its cell too; each also reversed ("nossnevs anna") and in ROT13
  ("firaffba"), so values written those ways match as themselves;
- of each row's quasi-identifier tuple: the values of its category-like columns (age, sex,
  diagnosis, postcode...), every combination of at least `tuple_min_values` of them that at most
  `rare_max_rows` rows share.
A row of an output counts as matched when rare values of two or more of its columns appear
anywhere in the output, or its tuple appears within one line (record).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .base import Finding, Rules, Verdict, count_words
from .tokens import normalise_value, normalise_word, word_lines

NAME = "source-match"
VERSION = 2  # 2: rare values reversed and in ROT13 are matched too

DIGEST_BYTES = 12
MAX_NGRAM = 3
_MASK = (1 << 64) - 1
_CACHE_LIMIT = 500_000
_UNINFORMATIVE = frozenset({"", "true", "false", "yes", "no", "none", "null", "nan", "na", "n/a"})
# A line with more value combinations than this is not a record (a wide, transposed line is
# caught by its rare values instead).
_MAX_COMBINATIONS = 4096
_ROT13 = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm"
)  # tokens are lower-cased


@dataclass(frozen=True)
class Table:
    """A granted table as the airlock reads it: its name, column names and rows."""

    name: str
    columns: list[str]
    rows: Iterable[tuple[object, ...]]


@dataclass(frozen=True)
class TableMatch:
    """What of one granted table an output holds, in figures only."""

    table: str
    rows: int  # rows matched: rare values of two or more columns, or the tuple in one record
    columns: tuple[str, ...]  # the columns whose values were seen in matched rows
    tuple_rows: int  # matched rows seen through their quasi-identifier tuple
    single_column_rows: int  # rows with rare values of one column only (a list of names)


@dataclass(frozen=True)
class Match:
    """Per granted table, what an output holds of it; empty tables are left out."""

    tables: dict[str, TableMatch] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Matched rows over all tables."""
        return sum(t.rows for t in self.tables.values())


def informative(token: str) -> bool:
    """Whether a normalised value says enough to identify: not a boolean, tiny number or short
    word. Numbers need four digits (a postcode, a date, 12.37), words three letters."""
    if token in _UNINFORMATIVE:
        return False
    if token[0].isdigit() or token[0] == "-":
        return sum(c.isdigit() for c in token) >= 4
    return len(token) >= 3


class _Scan:
    """Hits gathered over the texts of one output."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], set[int]] = defaultdict(set)
        self.strong: set[tuple[int, int]] = set()
        self.tuple_rows: set[tuple[int, int]] = set()

    def add(self, index: SourceIndex, d: bytes) -> None:
        """Count one digest seen in the output."""
        postings = index._rare.get(d)
        if postings:
            strong = d in index._strong
            for tid, r, c in postings:
                self.cells[(tid, r)].add(c)
                if strong:
                    self.strong.add((tid, r))


class SourceIndex:
    """Keyed fingerprints of the granted tables; see the module docstring for what is kept."""

    def __init__(self, key: bytes, rules: Rules | None = None) -> None:
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)
        self.rules = rules or Rules()
        self.table_names: list[str] = []
        self.column_names: list[list[str]] = []
        # rare value digest -> (table, row, column) of every cell holding it
        self._rare: dict[bytes, list[tuple[int, int, int]]] = {}
        # digests of the first word of multi-word values: n-grams are built only from these
        self._heads: set[bytes] = set()
        # quasi-identifier value digest -> (table, column, item) where item feeds tuple sums
        self._qi: dict[bytes, list[tuple[int, int, int]]] = {}
        # sum of a combination's items -> (table, row) of the rows holding it
        self._tuples: dict[int, list[tuple[int, int]]] = {}
        self._cache: dict[str, bytes] = {}
        # Python's own hash of every indexed token, so most words of an output are dismissed
        # without an HMAC. It is keyed per process (hash randomisation) and never leaves it.
        self._prefilter: set[int] = set()
        # rows whose rare values of one column alone count (names, personnummer: long values,
        # not a five-digit number any log may print)
        self._strong: set[bytes] = set()

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, key: bytes, tables: Iterable[Table], rules: Rules | None = None) -> SourceIndex:
        """Fingerprint the granted tables under `key`. Raw values are held only while one table
        is read; the index keeps digests, table and column names."""
        index = cls(key, rules)
        for table in tables:
            index._add_table(table)
        index._cache.clear()
        return index

    def digest(self, token: str) -> bytes:
        """The keyed hash of one normalised token, truncated."""
        found = self._cache.get(token)
        if found is None:
            h = self._hmac.copy()
            h.update(token.encode())
            found = h.digest()[:DIGEST_BYTES]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = found
        return found

    def _item(self, table: int, column: int, value: bytes) -> int:
        return (
            int.from_bytes(value[:8], "big") ^ ((table << 20 | column) * 0x9E3779B97F4A7C15)
        ) & (_MASK)

    def _add_table(self, table: Table) -> None:
        rules = self.rules
        tid = len(self.table_names)
        self.table_names.append(table.name)
        self.column_names.append(list(table.columns))
        ncols = len(table.columns)
        rows = [[normalise_value(v) for v in row] for row in table.rows]
        values = [Counter(row[c] for row in rows if c < len(row)) for c in range(ncols)]
        word_rows: list[Counter[str]] = [Counter() for _ in range(ncols)]
        for row in rows:
            for c, value in enumerate(row):
                if " " in value:
                    word_rows[c].update(set(value.split(" ")))
        nrows = len(rows)
        categories = [len(v) <= rules.category_max_distinct for v in values]

        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if not value or categories[c]:
                    continue
                if values[c][value] <= rules.rare_max_rows and informative(value):
                    self._add_rare(value, (tid, r, c))
                if " " in value:
                    for word in set(value.split(" ")):
                        if word_rows[c][word] <= rules.rare_max_rows and informative(word):
                            self._add_rare(word, (tid, r, c))

        qi_columns = self._qi_columns(values, rows, nrows)
        if len(qi_columns) < rules.tuple_min_values:
            return
        combos: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for r, row in enumerate(rows):
            items = []
            for c in qi_columns:
                value = row[c] if c < len(row) else ""
                if not value:
                    continue
                d = self.digest(value)
                self._prefilter.add(hash(value))
                item = self._item(tid, c, d)
                self._qi.setdefault(d, [])
                if (tid, c, item) not in self._qi[d]:
                    self._qi[d].append((tid, c, item))
                if " " in value:
                    self._add_head(value)
                items.append(item)
            for k in range(rules.tuple_min_values, len(items) + 1):
                for combo in itertools.combinations(items, k):
                    combos[sum(combo) & _MASK].append((tid, r))
        for key, holders in combos.items():
            if len(holders) <= rules.rare_max_rows:
                self._tuples.setdefault(key, []).extend(holders)

    def _qi_columns(
        self, values: list[Counter[str]], rows: list[list[str]], nrows: int
    ) -> list[int]:
        """Category-like columns (repeated values, short), the most varied first."""
        chosen = []
        for c, counter in enumerate(values):
            distinct = len(counter) - ("" in counter)
            if distinct < 2 or distinct > max(self.rules.category_max_distinct, nrows // 2):
                continue
            if sum(v.count(" ") + 1 for v in counter) / len(counter) > 3:
                continue
            chosen.append((distinct, c))
        chosen.sort(reverse=True)
        return sorted(c for _, c in chosen[: self.rules.qi_max_columns])

    def _add_rare(self, token: str, where: tuple[int, int, int]) -> None:
        digits = sum(ch.isdigit() for ch in token)
        strong = digits >= 8 or (digits == 0 and len(token) >= 6)
        # A value written backwards or in ROT13 is the value: the index holds those forms too,
        # so an output is still read once (reading every text reversed would double the cost).
        for form in dict.fromkeys((token, token[::-1], token.translate(_ROT13))):
            d = self.digest(form)
            self._prefilter.add(hash(form))
            self._rare.setdefault(d, []).append(where)
            if strong:
                self._strong.add(d)
            if " " in form:
                self._add_head(form)

    def _add_head(self, value: str) -> None:
        head = value.split(" ", 1)[0]
        self._heads.add(self.digest(head))
        self._prefilter.add(hash(head))

    # -- matching ------------------------------------------------------------------------------

    def match(self, tokens: Iterable[str]) -> Match:
        """Rows whose rare values appear among `tokens` (normalised words and n-grams, as
        `tokens.tokens` makes them). Tuples need records: see `scan`."""
        scan = _Scan()
        for token in set(tokens):
            scan.add(self, self.digest(token))
        return self._result(scan)

    def scan_text(self, text: str) -> Match:
        """`scan` of one text."""
        return self.scan([text])

    def scan(self, texts: Iterable[str]) -> Match:
        """Rows of the granted tables that the texts (an output's content, its decoded parts,
        its name) hold between them. Each line of a text is a record for tuple matching."""
        scan = _Scan()
        for text in texts:
            self._scan_one(text, scan)
        return self._result(scan)

    def scan_lines(self, lines: list[str]) -> tuple[Match, list[bool]]:
        """`scan` of lines taken together (a row split over lines still matches), and for each
        line whether it holds values of a row matched in the whole."""
        total = _Scan()
        touched = []
        for line in lines:
            one = _Scan()
            self._scan_one(line, one)
            for where, cols in one.cells.items():
                total.cells[where].update(cols)
            total.tuple_rows |= one.tuple_rows
            total.strong |= one.strong
            touched.append(set(one.cells) | one.tuple_rows)
        matched = {w for w, cols in total.cells.items() if len(cols) >= 2} | total.tuple_rows
        return self._result(total), [bool(rows & matched) for rows in touched]

    def _scan_one(self, text: str, scan: _Scan) -> None:
        # Each line's words (a line is a record for tuples) and the distinct words, which are
        # hashed once each.
        lines, unique = word_lines(text)
        if not unique:
            return
        heads, qi, digest, pre = self._heads, self._qi, self.digest, self._prefilter
        head_words = set()
        qi_words: dict[str, str] = {}
        for w in unique:
            # normalise_word changes only a decimal ending in 0 or a digit group.
            n = w
            if (w[-1] == "0" or "-" in w or "+" in w) and w[0].isdigit():
                n = normalise_word(w)
            if hash(n) not in pre:
                continue
            d = digest(n)
            scan.add(self, d)
            if d in heads:
                head_words.add(w)
            if d in qi:
                qi_words[w] = n
        qi_grams = False
        if head_words:
            for ws in lines:
                if head_words.isdisjoint(ws):
                    continue
                for i in [i for i, w in enumerate(ws) if w in head_words]:
                    gram = [ws[i]]
                    for w in ws[i + 1 : i + MAX_NGRAM]:
                        gram.append(w)
                        token = " ".join(normalise_word(x) for x in gram)
                        if hash(token) not in pre:
                            continue
                        d = digest(token)
                        scan.add(self, d)
                        if d in qi:
                            qi_words[" ".join(gram)] = token
                            qi_grams = True
        if self._tuples and len(qi_words) + len(head_words) >= self.rules.tuple_min_values:
            self._scan_records(lines, head_words, qi_words, scan, qi_grams)

    def _scan_records(
        self,
        lines: list[list[str]],
        head_words: set[str],
        qi_words: dict[str, str],
        scan: _Scan,
        qi_grams: bool,
    ) -> None:
        """Tuple matching, line by line; only lines with enough quasi-identifier values."""
        need = self.rules.tuple_min_values
        watched = set(qi_words) | head_words
        # Many lines hold the same values (a table's categories): each set is matched once.
        seen: dict[frozenset[str], set[tuple[int, int]]] = {}
        # The lines with enough of the watched words, picked without a Python loop over all.
        presents = list(map(watched.intersection, lines))
        enough = map((need - qi_grams).__le__, map(len, presents))
        for ws, present in itertools.compress(zip(lines, presents, strict=True), enough):
            found = {qi_words[w] for w in present if w in qi_words}
            if not head_words.isdisjoint(present):
                for i, w in enumerate(ws):
                    if w in head_words:
                        for n in range(2, MAX_NGRAM + 1):
                            gram = " ".join(ws[i : i + n])
                            if gram in qi_words:
                                found.add(qi_words[gram])
            key = frozenset(found)
            rows = seen.get(key)
            if rows is None:
                rows = seen[key] = self._match_tuples(key)
            scan.tuple_rows |= rows

    def _match_tuples(self, found: frozenset[str]) -> set[tuple[int, int]]:
        """(table, row) of the rows whose tuple is among the combinations of `found`."""
        rows: set[tuple[int, int]] = set()
        per_table: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for token in found:
            for tid, c, item in self._qi.get(self.digest(token), ()):
                per_table[tid][c].add(item)
        need = self.rules.tuple_min_values
        # Tables, columns and values in sorted order: the budget below stops the search at the
        # same combination in every process (set order depends on the hash seed, and the rows
        # counted, so the evidence, once did too).
        for tid in sorted(per_table):
            columns = {c: sorted(values) for c, values in per_table[tid].items()}
            if len(columns) < need:
                continue
            cols = sorted(columns)
            budget = _MAX_COMBINATIONS
            for k in range(need, len(cols) + 1):
                for chosen in itertools.combinations(cols, k):
                    for items in itertools.product(*(columns[c] for c in chosen)):
                        budget -= 1
                        if budget < 0:
                            return rows
                        for holder in self._tuples.get(sum(items) & _MASK, ()):
                            if holder[0] == tid:
                                rows.add(holder)
        return rows

    def _result(self, scan: _Scan) -> Match:
        matched: dict[int, set[int]] = defaultdict(set)  # table -> rows
        seen_columns: dict[int, set[int]] = defaultdict(set)
        single: Counter[int] = Counter()
        for (tid, r), cols in scan.cells.items():
            if len(cols) >= 2:
                matched[tid].add(r)
                seen_columns[tid].update(cols)
            elif (tid, r) in scan.strong:
                single[tid] += 1
        tuple_rows: Counter[int] = Counter()
        for tid, r in scan.tuple_rows:
            tuple_rows[tid] += 1
            matched[tid].add(r)
        out = {}
        for tid in sorted(set(matched) | set(single)):
            name = self.table_names[tid]
            out[name] = TableMatch(
                table=name,
                rows=len(matched.get(tid, ())),
                columns=tuple(self.column_names[tid][c] for c in sorted(seen_columns[tid])),
                tuple_rows=tuple_rows[tid],
                single_column_rows=single[tid],
            )
        return Match(out)


def check_source(match: Match, rules: Rules, where: str = "") -> list[Finding]:
    """Findings for what an output holds of the granted tables: more than `match_rows_block`
    matched rows blocks, from `match_rows_review` it is held for review; rare values of a single
    column in many rows (a list of names) too."""
    findings = []
    suffix = f" {where}" if where else ""
    for t in match.tables.values():
        if t.rows >= rules.match_rows_review:
            verdict: Verdict = "block" if t.rows > rules.match_rows_block else "review"
            how = []
            if t.columns:
                how.append("columns " + ", ".join(t.columns))
            if t.tuple_rows:
                how.append(f"{count_words(t.tuple_rows, 'row')} by quasi-identifier tuple")
            detail = f" ({'; '.join(how)})" if how else ""
            findings.append(
                Finding(
                    NAME,
                    VERSION,
                    verdict,
                    f"{count_words(t.rows, 'row')} of {t.table} matched{detail}{suffix}",
                )
            )
        if t.single_column_rows >= rules.single_column_rows_review:
            verdict = (
                "block" if t.single_column_rows >= rules.single_column_rows_block else "review"
            )
            findings.append(
                Finding(
                    NAME,
                    VERSION,
                    verdict,
                    f"rare values of {count_words(t.single_column_rows, 'row')} of {t.table} "
                    f"appear (one column each){suffix}",
                )
            )
    return findings
