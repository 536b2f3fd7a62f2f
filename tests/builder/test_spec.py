"""secd.yml: defaults, each field's good and bad values, and one-line messages naming the field."""

from __future__ import annotations

import pytest

from secd_builder.spec import SpecError, parse_spec
from secd_shared.events import RunSpec
from secd_shared.limits import LimitsConfig, LimitValues, RequestedLimits


def refused(text: str, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text", [None, "", "   \n", "# only a comment\n", "---\n"])
def test_empty_gives_defaults(text):
    spec = parse_spec(text)
    assert spec == RunSpec()
    assert spec.runfor == 3.0
    assert spec.gpu == 0
    assert spec.cache_dir is None
    assert spec.cache_mount == "/cache"
    assert spec.command == ["python", "main.py"]
    assert spec.database is None


def test_full_spec():
    spec = parse_spec(
        "runfor: 0.1\n"
        "gpu: 2\n"
        "cache_dir: models/bert\n"
        "mount_path: /data/cache/\n"
        "command: [python, -m, train, --epochs, '3']\n"
        "database: cohort_2024\n"
    )
    assert spec == RunSpec(
        runfor=0.1,
        gpu=2,
        cache_dir="models/bert",
        cache_mount="/data/cache",
        command=["python", "-m", "train", "--epochs", "3"],
        database="cohort_2024",
    )


@pytest.mark.parametrize(
    ("value", "hours"), [("3", 3.0), ("0.1", 0.1), ("24", 24.0), ("1e-1", 0.1)]
)
def test_runfor_good(value, hours):
    assert parse_spec(f"runfor: {value}").runfor == hours


@pytest.mark.parametrize(
    "value", ["soon", "0", "-1", "true", "yes", "'3'", ".nan", ".inf", "[1]", "~"]
)
def test_runfor_bad(value):
    message = refused(f"runfor: {value}")
    assert message.startswith("secd.yml: runfor must be a number of hours greater than 0")


def test_runfor_message_shows_the_value():
    assert refused("runfor: soon") == (
        "secd.yml: runfor must be a number of hours greater than 0, like 3 or 0.5 (got 'soon')"
    )


def test_runfor_bool_is_not_an_hour():
    message = refused("runfor: true")
    assert "runfor" in message and "(got True)" in message


def test_runfor_over_the_site_limit():
    assert "at most 24 hours" in refused("runfor: 25")
    assert parse_spec("runfor: 30", max_runfor_h=48).runfor == 30.0
    assert "at most 2 hours" in refused("runfor: 3", max_runfor_h=2)


def test_default_runfor_fits_a_short_site_limit():
    assert parse_spec(None, max_runfor_h=1).runfor == 3.0  # None means "the defaults", as given
    assert parse_spec("gpu: 0", max_runfor_h=1).runfor == 1.0


@pytest.mark.parametrize(("value", "count"), [("true", 1), ("false", 0), ("0", 0), ("4", 4)])
def test_gpu_good(value, count):
    assert parse_spec(f"gpu: {value}").gpu == count


@pytest.mark.parametrize("value", ["-1", "1.5", "lots", "[1]", "~", "1000"])
def test_gpu_bad(value):
    assert refused(f"gpu: {value}").startswith("secd.yml: gpu must be")


def test_replay_true_or_false():
    assert parse_spec("replay: true").replay is True
    assert parse_spec("replay: false").replay is False
    assert parse_spec("runfor: 1").replay is False


@pytest.mark.parametrize("value", ["1", "yes please", "'true'", "[true]", "~"])
def test_replay_bad(value):
    assert refused(f"replay: {value}").startswith("secd.yml: replay must be true or false")


@pytest.mark.parametrize(
    ("value", "stored"),
    [("models", "models"), ("a/b/c", "a/b/c"), ("./x/", "x"), ("'weird name'", "weird name")],
)
def test_cache_dir_good(value, stored):
    assert parse_spec(f"cache_dir: {value}").cache_dir == stored


def test_cache_dir_null_is_no_cache():
    assert parse_spec("cache_dir:").cache_dir is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("/abs", "relative"),
        ("../up", "'..'"),
        ("a/../../b", "'..'"),
        ('"a\\0b"', "control characters"),
        ("'" + "x" * 256 + "'", "at most 255"),
        ("''", "path like"),
        (".", "name a directory"),
        ("3", "path like"),
    ],
)
def test_cache_dir_bad(value, says):
    message = refused(f"cache_dir: {value}")
    assert message.startswith("secd.yml: cache_dir ")
    assert says in message


@pytest.mark.parametrize(
    ("value", "stored"), [("/cache", "/cache"), ("/data//x/", "/data/x"), ("/scratch", "/scratch")]
)
def test_mount_path_good(value, stored):
    assert parse_spec(f"mount_path: {value}").cache_mount == stored


@pytest.mark.parametrize(
    "value",
    [
        "/",
        "/job",
        "/job/cache",
        "/output",
        "/tmp",
        "/tmp/x",
        "/proc",
        "/dev/shm",
        "/usr/local",
        "/etc",
        "/run",
        "//etc",
        "/./job",
    ],
)
def test_mount_path_reserved(value):
    message = refused(f"mount_path: {value}")
    assert message.startswith("secd.yml: mount_path must not be ")
    assert "try '/cache'" in message


@pytest.mark.parametrize(
    ("value", "says"),
    [("cache", "absolute"), ("/a/../etc", "'..'"), ("5", "path like"), ('"/x\\n"', "control")],
)
def test_mount_path_bad(value, says):
    message = refused(f"mount_path: {value}")
    assert message.startswith("secd.yml: mount_path ")
    assert says in message


def test_command_forms():
    assert parse_spec("command: python train.py --fast").command == [
        "python",
        "train.py",
        "--fast",
    ]
    assert parse_spec("command: \"sh -c 'echo hi there'\"").command == ["sh", "-c", "echo hi there"]
    assert parse_spec("command: [Rscript, analysis.R]").command == ["Rscript", "analysis.R"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[]", "must name a program"),
        ("''", "must name a program"),
        ("[python, 3]", "item 2"),
        ("{a: b}", "must be a list"),
        ("7", "must be a list"),
        ('"python \'unclosed"', "cannot be split"),
    ],
)
def test_command_bad(value, says):
    message = refused(f"command: {value}")
    assert message.startswith("secd.yml: command ")
    assert says in message


@pytest.mark.parametrize("value", ["main", "cohort_2024", "a-b", "x" * 32])
def test_database_good(value):
    assert parse_spec(f"database: {value}").database == value


@pytest.mark.parametrize("value", ["Main", "x" * 33, "a b", "'a;drop'", "'db\\n'", "3", "''"])
def test_database_bad(value):
    assert refused(f"database: {value}").startswith("secd.yml: database must be")


def test_database_newline_suffix_refused():
    # re.match with $ would accept a trailing newline; the name goes into SQL and subjects.
    assert refused('database: "main\\n"').startswith("secd.yml: database must be")


def test_unknown_key_suggests_the_close_one():
    assert refused("run_for: 3") == "secd.yml: unknown key 'run_for' (did you mean 'runfor'?)"
    assert "did you mean 'gpu'" in refused("gpus: 1")
    assert "did you mean 'cache_dir'" in refused("cachedir: x")


def test_unknown_key_without_a_close_one_lists_the_keys():
    message = refused("colour: blue")
    assert message.startswith("secd.yml: unknown key 'colour'; known keys: runfor, gpu")


def test_duplicate_key_refused():
    assert refused("runfor: 1\ngpu: 1\nrunfor: 2\n") == (
        "secd.yml: line 3: key 'runfor' is given twice; keep one"
    )


def test_invalid_yaml_names_the_line():
    message = refused("runfor: 3\ngpu: 1\ncommand: [python, main.py\n")
    assert message.startswith("secd.yml is not valid YAML: line ")
    message = refused("runfor: 3\n  gpu: : 1\n")
    assert message.startswith("secd.yml is not valid YAML: line 2: ")


@pytest.mark.parametrize(("text", "kind"), [("- runfor: 3", "list"), ("just words", "str")])
def test_not_a_mapping(text, kind):
    assert refused(text) == (f"secd.yml must be a mapping of keys like 'runfor: 3' (got a {kind})")


def test_python_tags_are_not_loaded():
    message = refused("runfor: !!python/object/apply:os.system ['true']")
    assert message.startswith("secd.yml is not valid YAML")


def test_oversized_spec_refused():
    assert "larger than" in refused("# " + "x" * 70_000)


def test_limits_within_the_site_maximum():
    spec = parse_spec("limits:\n  memory: 8GiB\n  cpus: 0.5\n  pids: 100\n  tmp: 256MiB\n")
    assert spec.limits == RequestedLimits(memory=8 * 1024**3, cpus=0.5, pids=100, tmp=256 * 1024**2)
    assert spec.limits.disk is None  # the site's default applies
    assert parse_spec("runfor: 1\n").limits is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("limits: 8GiB\n", "limits must be a mapping"),
        ("limits: {ram: 8GiB}\n", "limits.ram is not a limit; use memory, cpus, pids, tmp, disk"),
        ("limits: {memory: lots}\n", "limits.memory must be a size like 4GiB"),
        ("limits: {memory: 1TiB}\n", "limits.memory must be at most 16 GiB on this site"),
        ("limits: {cpus: 0}\n", "limits.cpus must be a number greater than 0"),
        ("limits: {cpus: 64}\n", "limits.cpus must be at most 8 on this site"),
        ("limits: {pids: 1.5}\n", "limits.pids must be a whole number greater than 0"),
        ("limits: {disk: 10PiB}\n", "limits.disk: unknown unit 'pib'"),
    ],
)
def test_bad_limits_name_the_field(text, says):
    assert says in refused(text)


def test_the_site_maximum_is_the_one_configured():
    maximum = LimitsConfig(max=LimitValues(memory="32GiB")).maximum()
    assert parse_spec("limits: {memory: 20GiB}\n", max_limits=maximum).limits.memory == 20 * 1024**3
    assert "at most 2 GiB" in refused(
        "limits: {memory: 3GiB}\n",
        max_limits=LimitsConfig(max=LimitValues(memory="2GiB")).maximum(),
    )


def test_a_big_secd_yml_is_refused_at_64_kib():
    assert refused("# " + "x" * 70_000 + "\n") == "secd.yml is larger than 64 KiB; keep it short"
