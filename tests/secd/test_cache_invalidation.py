"""What invalidates a cached result: the code it runs and the libraries it uses, nothing else.

Each test writes a small project to disk and runs it as the researcher would (`python main.py`
in a fresh process), editing files between runs; computed.log counts the real computations.
"""

from __future__ import annotations

from pathlib import Path

from tests.secd.conftest import ResearchProject

MAIN = """\
import secd
from analysis import cleaning

@secd.cache
def prepare(values):
    with open("computed.log", "a") as log:
        log.write("prepare\\n")
    return cleaning.clean(values)

print(prepare([1, 2, 3]))
"""

CLEANING = """\
from analysis.scaling import scale

OFFSET = 1

def clean(values):
    return [scale(v) + OFFSET for v in values]

def never_called():
    return "not part of prepare"
"""

SCALING = """\
def scale(value):
    return value * 10
"""

UNRELATED = """\
def plot():
    return "a figure"
"""


def _analysis(project: ResearchProject) -> None:
    project.write("main.py", MAIN)
    project.write("analysis/__init__.py", "")
    project.write("analysis/cleaning.py", CLEANING)
    project.write("analysis/scaling.py", SCALING)
    project.write("analysis/plots.py", UNRELATED)


def test_a_change_in_a_called_helper_invalidates(project: ResearchProject) -> None:
    _analysis(project)
    assert project.run().stdout == "[11, 21, 31]\n"
    assert project.run().stdout == "[11, 21, 31]\n"
    assert project.computed == 1

    project.write("analysis/scaling.py", SCALING.replace("* 10", "* 100"))  # two calls deep
    assert project.run().stdout == "[101, 201, 301]\n"
    assert project.computed == 2

    project.write("analysis/cleaning.py", CLEANING.replace("OFFSET = 1", "OFFSET = 2"))
    assert project.run().stdout == "[102, 202, 302]\n"
    assert project.computed == 3


def test_a_change_elsewhere_in_the_project_does_not(project: ResearchProject) -> None:
    _analysis(project)
    project.run()
    project.write("analysis/plots.py", UNRELATED.replace("a figure", "another figure"))
    project.write("notes.py", "print('scratch')\n")
    # Same file as the helper, but a function prepare never reaches; and a comment in the helper.
    project.write(
        "analysis/cleaning.py",
        CLEANING.replace("not part of prepare", "still not part of it").replace(
            "def clean(values):", "def clean(values):  # a comment changes no bytecode"
        ),
    )
    assert project.run().stdout == "[11, 21, 31]\n"
    assert project.computed == 1


def test_code_versions_live_side_by_side(project: ResearchProject) -> None:
    _analysis(project)
    project.run()
    project.write("analysis/scaling.py", SCALING.replace("* 10", "* 100"))
    project.run()
    assert project.computed == 2
    assert len(project.entries()) == 2  # the new version did not wipe the old one

    project.write("analysis/scaling.py", SCALING)  # back to the first version: a hit
    assert project.run().stdout == "[11, 21, 31]\n"
    assert project.computed == 2


def test_imports_inside_the_function_and_closures_are_followed(project: ResearchProject) -> None:
    project.write(
        "main.py",
        """\
        import secd

        def make_step(factor):
            def step(values):
                from analysis import tools  # imported only when it runs
                with open("computed.log", "a") as log:
                    log.write("step\\n")
                return [tools.adjust(v) * factor for v in values]
            return secd.cache(step)

        print(make_step(2)([1, 2]))
        """,
    )
    project.write("analysis/__init__.py", "")
    project.write("analysis/tools.py", "def adjust(v):\n    return v + 1\n")
    assert project.run().stdout == "[4, 6]\n"
    assert project.run().stdout == "[4, 6]\n"
    assert project.computed == 1
    project.write("analysis/tools.py", "def adjust(v):\n    return v + 2\n")
    assert project.run().stdout == "[6, 8]\n"
    assert project.computed == 2


def test_methods_of_a_project_class_are_followed(project: ResearchProject) -> None:
    project.write(
        "main.py",
        """\
        import secd
        from model import Model

        @secd.cache
        def fit(rows):
            with open("computed.log", "a") as log:
                log.write("fit\\n")
            return Model(rows).score()

        print(fit([1, 2, 3]))
        """,
    )
    model = """\
    class Base:
        def weight(self):
            return 1

    class Model(Base):
        def __init__(self, rows):
            self.rows = rows

        def score(self):
            return sum(self.rows) * self.weight()
    """
    project.write("model.py", model)
    assert project.run().stdout == "6\n"
    project.write("model.py", model.replace("return 1", "return 2"))  # a base class method
    assert project.run().stdout == "12\n"
    assert project.computed == 2


def test_a_library_version_change_invalidates(project: ResearchProject, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text("def double(x):\n    return 2 * x\n")

    def install(version: str) -> None:
        for old in site.glob("fakelib-*.dist-info"):
            for file in old.iterdir():
                file.unlink()
            old.rmdir()
        info = site / f"fakelib-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fakelib\nVersion: {version}\n"
        )
        (info / "top_level.txt").write_text("fakelib\n")

    project.write(
        "main.py",
        """\
        import secd
        import fakelib

        @secd.cache
        def run(x):
            with open("computed.log", "a") as log:
                log.write("run\\n")
            return fakelib.double(x)

        print(run(21))
        """,
    )
    install("1.0")
    project.run(PYTHONPATH=str(site))
    project.run(PYTHONPATH=str(site))
    assert project.computed == 1
    install("1.1")  # same code, new version: the library's behaviour may have changed
    project.run(PYTHONPATH=str(site))
    assert project.computed == 2


def test_arguments_are_part_of_the_key(project: ResearchProject) -> None:
    project.write(
        "main.py",
        """\
        import sys
        import secd

        @secd.cache
        def square(x, *, label="a"):
            with open("computed.log", "a") as log:
                log.write("square\\n")
            return x * x

        print(square(int(sys.argv[1])), square(int(sys.argv[1]), label="a"))
        """,
    )
    assert project.run("main.py", "3").stdout == "9 9\n"  # a default given or not: one key
    assert project.run("main.py", "4").stdout == "16 16\n"
    assert project.run("main.py", "3").stdout == "9 9\n"
    assert project.computed == 2


def test_a_recursive_cached_function_and_a_cached_helper(project: ResearchProject) -> None:
    project.write(
        "main.py",
        """\
        import secd
        from helpers import base

        @secd.cache
        def fib(n):
            with open("computed.log", "a") as log:
                log.write(f"fib {n}\\n")
            return n if n < 2 else fib(n - 1) + fib(n - 2) + base()

        print(fib(10))
        """,
    )
    project.write(
        "helpers.py",
        """\
        import secd

        @secd.cache
        def base():
            return 0
        """,
    )
    assert project.run().stdout == "55\n"
    assert project.computed == 11  # each n once, though fib(n - 2) is asked for again
    assert project.run().stdout == "55\n"
    assert project.computed == 11
    project.write("helpers.py", "import secd\n\n@secd.cache\ndef base():\n    return 1\n")
    assert project.run().stdout == "143\n"  # a cached helper's code is followed too
    assert project.computed == 22
