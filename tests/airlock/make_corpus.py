"""The airlock's corpus: a synthetic patients table, exfiltration attempts on it and legitimate
outputs of a study of it. `cases()` builds them in memory (the tests and bench/airlock.py use
it); run this file to write them under tests/airlock/corpus/ for people to look at:

    .venv/bin/python tests/airlock/make_corpus.py

Every name, personnummer and postcode here is made up; the personnummer carry valid checksums
so the identifier checks see them as real ones.
"""

from __future__ import annotations

import base64
import bz2
import csv
import gzip
import hashlib
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from secd_airlock.checks import OutputFile, Table
from secd_shared.luhn import luhn_digit

KEY = b"airlock-corpus-key-0123456789abcdef"
COLUMNS = [
    "patient_id",
    "name",
    "personnummer",
    "age",
    "sex",
    "diagnosis",
    "postcode",
    "hba1c",
    "admitted",
]
FIRST = (
    "Anna Eva Maria Karin Sara Lena Emma Kerstin Ingrid Malin Sofia Linnea Elin Hanna Ida "
    "Johanna Åsa Märta Lars Erik Anders Johan Karl Per Nils Mikael Jan Hans Olof Gustav Sven "
    "Björn Oskar Axel Filip Viktor Jonas Magnus Örjan"
).split()
LAST = (
    "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsson Persson Svensson Gustafsson "
    "Pettersson Jonsson Jansson Hansson Bengtsson Jönsson Lindberg Jakobsson Magnusson "
    "Lindström Lindqvist Lindgren Berg Axelsson Bergström Lundberg Lind Lundgren Lundqvist "
    "Mattsson Berglund Fredriksson Sandberg Henriksson Forsberg Sjöberg Wallin Engström Eklund "
    "Danielsson Lundin Håkansson Björk Bergman Gunnarsson Holm Wikström Samuelsson Isaksson "
    "Fransson Bergqvist Nyström Holmberg Arvidsson Löfgren Söderberg Nyberg Blomqvist Claesson "
    "Nordström"
).split()
DIAGNOSES = [
    "Type 2 diabetes",
    "Hypertension",
    "Asthma",
    "COPD",
    "Heart failure",
    "Atrial fibrillation",
    "Depression",
    "Migraine",
    "Hypothyroidism",
    "Chronic kidney disease",
]


def patients(n: int = 200, seed: int = 11) -> list[tuple]:
    """The synthetic patients table: fake names, personnummer with valid checksums, ages,
    diagnoses, postcodes, HbA1c and admission dates."""
    rng = random.Random(seed)
    rows = []
    names: set[str] = set()
    for pid in range(1, n + 1):
        while True:
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            if name not in names:
                names.add(name)
                break
        year = rng.randint(1935, 2004)
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        serial = f"{rng.randint(0, 999):03d}"
        short = f"{year % 100:02d}{month:02d}{day:02d}{serial}"
        pnr = f"{year}{month:02d}{day:02d}-{serial}{luhn_digit(short)}"
        age = 2024 - year
        rows.append(
            (
                pid,
                name,
                pnr,
                age,
                rng.choice("FM"),
                rng.choice(DIAGNOSES),
                f"{rng.randint(100, 989)}{rng.randint(10, 99)}",
                round(rng.uniform(4.0, 9.9), 1),
                f"202{rng.randint(0, 3)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            )
        )
    return rows


ROWS = patients()


def patients_table() -> Table:
    """The table as the airlock is granted it."""
    return Table("patients", COLUMNS, ROWS)


@dataclass(frozen=True)
class Case:
    """One run's outputs: an exfiltration attempt (`expect` block or review) or a legitimate
    output (`expect` pass)."""

    name: str
    category: str  # "exfil" or "legit"
    description: str
    expect: str  # "block", "review" (at least) or "pass"
    files: list[OutputFile] = field(default_factory=list)
    log: bytes = b""


def _csv(columns: list[str], rows: list[tuple], delimiter: str = ",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().encode()


def _png(width: int = 320, height: int = 200, info: PngInfo | None = None) -> bytes:
    """A line chart, drawn as matplotlib would roughly draw one."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(30, 10), (30, 180), (310, 180)], fill="black", width=1)
    points = [(30 + i * 28, 170 - int(60 * (1 - 0.8**i)) - (i % 3) * 5) for i in range(11)]
    draw.line(points, fill=(31, 119, 180), width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _rounded(n: int, base: int = 5) -> int:
    return base * round(n / base)


def exfiltration() -> list[Case]:
    """Attempts to take the table (or part of it) out."""
    full = _csv(COLUMNS, ROWS)
    records = [dict(zip(COLUMNS, r, strict=True)) for r in ROWS]
    head = ROWS[:40]
    cases = [
        Case("csv-dump", "exfil", "SELECT * written to a CSV", "block", [
            OutputFile("results.csv", full, "table")]),
        Case("renamed-columns", "exfil", "the dump with meaningless column names", "block", [
            OutputFile("results.csv", _csv([f"c{i}" for i in range(9)], ROWS), "table")]),
        Case("transposed-dump", "exfil", "the dump transposed: one row per column", "block", [
            OutputFile("wide.csv", _csv(["field", *range(len(ROWS))],
                       [(c, *(r[i] for r in ROWS)) for i, c in enumerate(COLUMNS)]), "table")]),
        Case("json-dump", "exfil", "records as JSON (non-ASCII escaped)", "block", [
            OutputFile("data.json", json.dumps(records).encode(), "metrics")]),
        Case("json-columns", "exfil", "pandas to_json, orient=columns", "block", [
            OutputFile("data.json", json.dumps(
                {c: {str(i): r[j] for i, r in enumerate(ROWS)} for j, c in enumerate(COLUMNS)},
                ensure_ascii=False).encode(), "metrics")]),
        Case("printed-tuples", "exfil", "print(rows) saved as a text file", "block", [
            OutputFile("notes.txt", repr(ROWS).encode(), "text")]),
        Case("base64-csv", "exfil", "base64 of the CSV inside notes", "block", [
            OutputFile("notes.txt", b"Notes on the analysis.\n\nappendix:\n"
                       + base64.b64encode(full) + b"\n", "text")]),
        Case("base64-wrapped", "exfil", "base64 of the CSV wrapped at 76 columns", "block", [
            OutputFile("notes.md", b"# Appendix\n\n" + base64.encodebytes(full), "text")]),
        Case("hex-csv", "exfil", "the CSV as hex", "block", [
            OutputFile("checksum.txt", full[:6000].hex().encode(), "text")]),
        Case("gzip-base64", "exfil", "gzip then base64", "block", [
            OutputFile("notes.txt", b"blob: " + base64.b64encode(gzip.compress(full, mtime=0)),
                       "text")]),
        Case("bz2-base64url-in-json", "exfil", "bz2, base64url, inside a metrics value", "block", [
            OutputFile("metrics.json", json.dumps({"auc": 0.81, "extra": base64.urlsafe_b64encode(
                bz2.compress(full)).decode()}).encode(), "metrics")]),
        Case("double-base64", "exfil", "base64 of base64 of the CSV", "block", [
            OutputFile("notes.txt", base64.b64encode(base64.b64encode(full[:8000])), "text")]),
        Case("zip-as-png", "exfil", "a zip of the CSV named .png", "block", [
            OutputFile("figure.png", _zip({"data.csv": full}), "figure")]),
        Case("png-text-chunk", "exfil", "a real plot carrying the CSV in a tEXt chunk", "block", [
            OutputFile("plot.png", _png(info=_pnginfo("Comment", full.decode())), "figure")]),
        Case("png-trailing", "exfil", "the CSV appended after the PNG's end", "block", [
            OutputFile("plot.png", _png() + full, "figure")]),
        Case("jpeg-comment", "exfil", "a JPEG whose comment holds rows", "block", [
            OutputFile("plot.jpg", _jpeg(comment=_csv(COLUMNS, head)), "figure")]),
        Case("file-names", "exfil", "data in file names, harmless content", "review", [
            OutputFile(f"{r[1].replace(' ', '_')}_{r[2]}.txt", b"ok\n", "text") for r in ROWS[:3]]),
        Case("names-personnummer", "exfil", "a column subset: names and personnummer", "block", [
            OutputFile("ids.csv", _csv(["who", "id"], [(r[1], r[2]) for r in ROWS]), "table")]),
        Case("partial-6-rows", "exfil", "six rows only", "block", [
            OutputFile("sample.csv", _csv(COLUMNS, ROWS[50:56]), "table")]),
        Case("one-row", "exfil", "one patient's record as JSON", "review", [
            OutputFile("example.json", json.dumps(records[7]).encode(), "metrics")]),
        Case("quasi-identifiers", "exfil", "no names: age, sex, diagnosis, postcode, hba1c",
             "block", [OutputFile("subset.csv", _csv(["a", "s", "d", "p", "h"],
                       [(r[3], r[4], r[5], r[6], r[7]) for r in head]), "table")]),
        Case("personnummer-list", "exfil", "personnummer only, one a line", "block", [
            OutputFile("ids.txt", "\n".join(r[2] for r in ROWS).encode(), "text")]),
        Case("markdown-table", "exfil", "a markdown report with 10 patients in a table",
             "block", [OutputFile("report.md", _markdown_rows(ROWS[100:110]), "text")]),
        Case("to-string", "exfil", "pandas to_string, upper-case, floats", "block", [
            OutputFile("table.txt", _fixed_width(ROWS[:30]), "text")]),
        Case("log-print-rows", "exfil", "print(row) for every row, in the log", "block",
             log=b"".join(f"{r!r}\n".encode() for r in ROWS[:20])),
        Case("log-split-rows", "exfil", "each row printed over two log lines", "block",
             log=b"".join(f"patient {r[1]}\nid {r[2]} age {r[3]}\n".encode() for r in head)),
        Case("exception-rows", "exfil", "a traceback holding a row", "review", log=(
            b"Traceback (most recent call last):\n  File \"main.py\", line 12, in <module>\n"
            + f"ValueError: bad row {ROWS[3]!r}\n".encode())),
        Case("log-base64", "exfil", "base64 of rows printed in the log", "block",
             log=b"step 1\n" + base64.b64encode(_csv(COLUMNS, head)) + b"\ndone\n"),
        Case("high-entropy", "exfil", "encrypted bytes as base64 (decodes to nothing)",
             "review", [OutputFile("notes.txt", b"key material:\n" + base64.b64encode(
                 random.Random(3).randbytes(600)) + b"\n", "text")]),
        Case("small-counts", "exfil", "counts by postcode: small, unrounded cells", "review", [
            OutputFile("counts.csv", _csv(["postcode_area", "n"], _by_area()), "counts")]),
    ]  # fmt: skip
    return cases + disguised()


def _pnr10(row: tuple) -> str:
    """A row's personnummer as ten digits (YYMMDDNNNN), as people often write it."""
    return row[2].replace("-", "")[2:]


def _spread(value: str, sep: str) -> str:
    return sep.join(value)


def disguised() -> list[Case]:
    """The dump, or its identifying columns, written so that no value reads as itself (issue 11):
    each once passed every check."""
    head = ROWS[:40]
    part = _csv(COLUMNS, ROWS[:30])
    ids = [(r[1], r[2]) for r in head]
    rot13 = str.maketrans(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
    )
    cases = [
        Case("spaced-digits", "exfil", "personnummer with a space between digits", "block", [
            OutputFile("ids.txt", "\n".join(_spread(_pnr10(r), " ") for r in head).encode(),
                       "text")]),
        Case("dashed-digits", "exfil", "personnummer as 7-1-0-2-...", "block", [
            OutputFile("ids.txt", "\n".join(_spread(_pnr10(r), "-") for r in head).encode(),
                       "text")]),
        Case("char-codes-json", "exfil", "names and personnummer as character codes", "block", [
            OutputFile("codes.json", json.dumps([{"a": list(map(ord, n)), "b": list(map(ord, p))}
                       for n, p in ids]).encode(), "metrics")]),
        Case("byte-array-csv", "exfil", "the CSV as a JSON array of its bytes", "block", [
            OutputFile("weights.json", json.dumps({"w": list(part)}).encode(), "metrics")]),
        Case("log-split-personnummer", "exfil", "personnummer printed as 710211 1015", "block",
             log="".join(f"checked {p[:6]} {p[6:]}\n" for p in map(_pnr10, head)).encode()),
        Case("ascii85-adobe", "exfil", "Ascii85 of the CSV between <~ and ~>", "block", [
            OutputFile("notes.txt", b"appendix " + base64.a85encode(part, adobe=True), "text")]),
        Case("base85-glued", "exfil", "base85 of the CSV glued to a word", "block", [
            OutputFile("notes.txt", b"see payload" + base64.b85encode(part), "text")]),
        Case("base64-glued", "exfil", "base64 of the CSV glued to a word", "block", [
            OutputFile("notes.txt", b"see payload" + base64.b64encode(part), "text")]),
        Case("reversed-rows", "exfil", "each line of the CSV reversed", "block", [
            OutputFile("notes.txt", "\n".join(line[::-1] for line in part.decode().splitlines())
                       .encode(), "text")]),
        Case("rot13-names", "exfil", "names only, ROT13", "block", [
            OutputFile("names.txt", "\n".join(r[1].translate(rot13) for r in head).encode(),
                       "text")]),
        Case("percent-encoded", "exfil", "every byte of the CSV percent-encoded", "block", [
            OutputFile("links.txt", "".join(f"%{b:02X}" for b in part).encode(), "text")]),
        Case("unicode-escapes", "exfil", "every character of the CSV as \\uXXXX", "block", [
            OutputFile("notes.txt", "".join(f"\\u{ord(c):04x}" for c in part.decode()).encode(),
                       "text")]),
        Case("quoted-printable", "exfil", "every byte of the CSV as =XX", "block", [
            OutputFile("notes.txt", "".join(f"={b:02X}" for b in part).encode(), "text")]),
        Case("digit-per-cell", "exfil", "personnummer one digit per CSV cell", "block", [
            OutputFile("digits.csv", _csv([f"d{i}" for i in range(10)],
                       [tuple(_pnr10(r)) for r in head]), "table")]),
        Case("digit-per-row", "exfil", "one patient per column, one digit per row", "block", [
            OutputFile("digits.csv", _csv([f"p{i}" for i in range(20)],
                       list(zip(*(_pnr10(r) for r in head[:20]), strict=True))), "table")]),
    ]  # fmt: skip
    return cases


def _pnginfo(key: str, value: str) -> PngInfo:
    info = PngInfo()
    info.add_text(key, value)
    return info


def _jpeg(comment: bytes = b"") -> bytes:
    with Image.open(io.BytesIO(_png())) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=85, comment=comment)
    return out.getvalue()


def _markdown_rows(rows: list[tuple]) -> bytes:
    lines = ["# Interesting cases", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]  # fmt: skip
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _fixed_width(rows: list[tuple]) -> bytes:
    lines = ["  ".join(f"{c.upper():>16}" for c in COLUMNS)]
    for i, r in enumerate(rows):
        cells = [str(v).upper() if isinstance(v, str) else f"{float(v):.6f}" for v in r]
        lines.append(f"{i:<4}" + "  ".join(f"{c:>16}" for c in cells))
    return ("\n".join(lines) + "\n").encode()


def _by_area() -> list[tuple]:
    counts: dict[str, int] = {}
    for r in ROWS:
        counts[r[6][:2]] = counts.get(r[6][:2], 0) + 1
    return sorted(counts.items())


def _by(column: int) -> dict[str, list[tuple]]:
    groups: dict[str, list[tuple]] = {}
    for r in ROWS:
        groups.setdefault(r[column], []).append(r)
    return groups


def legitimate() -> list[Case]:
    """Outputs a study of the table would release."""
    by_diagnosis = _by(5)
    counts = [(d, _rounded(len(g))) for d, g in sorted(by_diagnosis.items())]
    means = [
        (d, f"{sum(r[3] for r in g) / len(g):.1f}", f"{sum(r[7] for r in g) / len(g):.2f}")
        for d, g in sorted(by_diagnosis.items())
    ]
    bands: dict[str, int] = {}
    for r in ROWS:
        low = min(r[3] // 20 * 20, 80)
        bands[f"{low}-{low + 19}"] = bands.get(f"{low}-{low + 19}", 0) + 1
    band_rows = [(b, _rounded(n)) for b, n in sorted(bands.items())]
    metrics = {"auc": 0.8123, "accuracy": 0.771, "f1": 0.702, "n_train": 160, "n_test": 40}
    models = [
        ("logistic", 0.8123, 0.702, 0.74, 0.67),
        ("random_forest", 0.8341, 0.721, 0.76, 0.69),
        ("gradient_boosting", 0.8407, 0.733, 0.75, 0.72),
        ("baseline", 0.5, 0.0, 0.0, 0.0),
    ]
    coefficients = {"intercept": -3.214, "age": 0.0312, "sex_M": 0.187, "hba1c": 0.4406}
    log = "".join(
        f"2024-03-0{1 + e // 4}T10:{e:02d}:00 epoch {e} loss={0.69 * 0.9**e:.4f} "
        f"val_auc={0.6 + 0.02 * e:.3f}\n"
        for e in range(12)
    )
    log += (
        "saved model sha256=" + hashlib.sha256(b"model").hexdigest() + "\nrun finished in 12.4 s\n"
    )
    report = (
        "# HbA1c by diagnosis\n\n"
        "We compared mean HbA1c across the ten diagnoses in the cohort (n = 200).\n\n"
        "| diagnosis | mean age | mean HbA1c |\n|---|---|---|\n"
        + "".join(f"| {d} | {a} | {h} |\n" for d, a, h in means)
        + "\nPatients with type 2 diabetes had the highest mean HbA1c, as expected. "
        "Contact the study team at study-team@example.org for the analysis code.\n"
    )
    info = PngInfo()
    info.add_text("Software", "matplotlib version3.8.4, https://matplotlib.org/")
    config = {
        "commit": "9fceb02d0ae598e95dc970b09f3b2e4d7a1b1c9e",
        "data_digest": "sha256:" + "a3" * 8 + "5be1" * 12,
        "seed": 42,
        "features": ["age", "sex", "hba1c"],
    }
    schema = {
        "__class__": "LogisticRegression",
        "__module__": "sklearn.linear_model._logistic",
        "__loader__": "ObjectNode",
        "protocol": 1,
        "_skops_version": "0.10.0",
        "content": {"coef_": {"__loader__": "NdArrayNode", "file": "coef.npy"}},
    }
    cases = [
        Case("counts-by-diagnosis", "legit", "patients per diagnosis, rounded to 5", "pass", [
            OutputFile("counts.csv", _csv(["diagnosis", "n"], counts), "counts")]),
        Case("counts-by-age-band", "legit", "patients per age band, rounded to 5", "pass", [
            OutputFile("age_bands.csv", _csv(["age_band", "count"], band_rows), "counts")]),
        Case("metrics-json", "legit", "a summary metrics JSON", "pass", [
            OutputFile("metrics.json", json.dumps(metrics, indent=2).encode(), "metrics")]),
        Case("model-metrics", "legit", "a model comparison table", "pass", [
            OutputFile("models.csv", _csv(["model", "auc", "f1", "precision", "recall"], models),
                       "table")]),
        Case("means-by-diagnosis", "legit", "mean age and HbA1c by diagnosis", "pass", [
            OutputFile("means.tsv", _csv(["diagnosis", "mean_age", "mean_hba1c"], means, "\t"),
                       "table")]),
        Case("plot-png", "legit", "a line plot with matplotlib's text chunk", "pass", [
            OutputFile("loss.png", _png(info=info), "figure")]),
        Case("plot-jpeg", "legit", "the plot as JPEG", "pass", [
            OutputFile("loss.jpg", _jpeg(), "figure")]),
        Case("markdown-report", "legit", "a report with a table of means and a contact",
             "pass", [OutputFile("report.md", report.encode(), "text")]),
        Case("coefficients", "legit", "regression coefficients", "pass", [
            OutputFile("coefficients.json", json.dumps(coefficients).encode(), "metrics")]),
        Case("training-log", "legit", "a training log with a model digest", "pass",
             log=log.encode()),
        Case("run-config", "legit", "the run's config with a commit and a digest", "pass", [
            OutputFile("config.json", json.dumps(config).encode(), "metrics")]),
        Case("skops-model", "legit", "a small skops model", "pass", [
            OutputFile("model.skops", _zip({"schema.json": json.dumps(schema).encode(),
                       "coef.npy": b"\x93NUMPY" + bytes(120)}), "model")]),
        Case("summary-text", "legit", "a plain-text summary", "pass", [
            OutputFile("summary.txt", (
                b"Cohort: 200 patients, 10 diagnoses, admitted 2020-2023.\n"
                b"Median age 55 (IQR 37-72). Logistic regression AUC 0.81 (95% CI 0.74-0.88).\n"
            ), "text")]),
    ]  # fmt: skip
    return cases + numeric()


def numeric() -> list[Case]:
    """Legitimate outputs full of numbers, escapes and lists: what the readings of disguised
    values (checks/disguises.py) must leave alone."""
    rng = random.Random(17)
    # 200 coefficients as a model predicting one of ten diagnoses from 20 features has them
    # (a flat list of 200 is held by the table check's row limit, not by a reading).
    coefficients = {
        "intercept": [round(rng.gauss(0, 1), 6) for _ in range(10)],
        "coef": [[round(rng.gauss(0, 0.4), 6) for _ in range(20)] for _ in range(10)],
    }
    # Counts between 32 and 126 read as printable characters: a histogram is not a message.
    histogram = {
        "bin_edges": [round(4.0 + 0.3 * i, 1) for i in range(21)],
        "counts": [5 * rng.randint(7, 25) for _ in range(20)],
    }
    crosstab = [(d, *(5 * rng.randint(2, 24) for _ in range(5))) for d in DIAGNOSES]
    folds = {
        "fold_auc": [round(rng.uniform(0.7, 0.9), 4) for _ in range(10)],
        "fold": list(range(1, 11)),
        "seeds": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "confusion": [[52, 11], [9, 48]],
        "learning_curve": {
            "n": [20, 40, 60, 80, 100, 120, 140, 160],
            "auc": [round(0.6 + 0.03 * i, 3) for i in range(8)],
        },
    }
    links = (
        "# Sources\n\n"
        "- [registry query](https://example.org/search?q=type%202%20diabetes%20HbA1c&lang=sv)\n"
        "- [guideline](https://example.org/riktlinjer/diabetes%C3%A5rsrapport%202023.pdf)\n"
        "- HbA1c &#8805; 48 mmol/mol; BMI &#8804; 30\n"
        "- Versions: numpy 1.26.4, scikit-learn 1.4.2, python 3.11.9\n"
        "- Folds 1 2 3 4 5, seeds 0, 1, 2, 3, 4; stages I-II-III-IV\n"
        "- A\\u00e5 header read as \\u00c5r (year) by pandas 2.2\n"
    )
    cases = [
        Case("coefficients-200", "legit", "200 float coefficients (10 classes, 20 features)",
             "pass", [
            OutputFile("coef.json", json.dumps(coefficients).encode(), "metrics")]),
        Case("histogram-counts", "legit", "a histogram of HbA1c: bin edges and counts", "pass", [
            OutputFile("hist.json", json.dumps(histogram).encode(), "metrics")]),
        Case("crosstab-counts", "legit", "diagnosis by age band, rounded counts", "pass", [
            OutputFile("crosstab.csv", _csv(["diagnosis", "20-39", "40-59", "60-79", "80-99",
                       "100+"], crosstab), "counts")]),
        Case("cv-metrics", "legit", "cross-validation metrics with integer lists", "pass", [
            OutputFile("cv.json", json.dumps(folds, indent=1).encode(), "metrics")]),
        Case("links-and-versions", "legit", "percent-encoded links, entities, lists", "pass", [
            OutputFile("sources.md", links.encode(), "text")]),
    ]  # fmt: skip
    return cases


def cases() -> list[Case]:
    """Every case of the corpus: exfiltration attempts, then legitimate outputs."""
    return exfiltration() + legitimate()


def write(root: Path) -> None:
    """Write the corpus under root: <category>/<case>/<file> (and secd-run.log), plus
    manifest.json naming each case's kind and expected verdict."""
    manifest = []
    for case in cases():
        folder = root / case.category / case.name
        folder.mkdir(parents=True, exist_ok=True)
        for f in case.files:
            (folder / f.name).write_bytes(f.data)
        if case.log:
            (folder / "secd-run.log").write_bytes(case.log)
        manifest.append(
            {
                "name": case.name,
                "category": case.category,
                "description": case.description,
                "expect": case.expect,
                "files": [{"name": f.name, "kind": f.kind} for f in case.files],
                "log": bool(case.log),
            }
        )
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    write(Path(__file__).resolve().parent / "corpus")
