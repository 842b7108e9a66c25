"""Bad input to both magic lines: a short UsageError or a one-line FiddleDock
error, never a Python traceback, and no container made for an input that fails.

A test per input bug found by hand, then a fuzz of generated lines (fixed seed)
through the real IPython shell, as a user would type them in a cell.
"""

import random

import pytest
from IPython.core.error import UsageError

from fiddledock_magic import FiddleDockError
from fiddledock_magic._config import DockerRun
from fiddledock_magic._extension import manager_of
from fiddledock_magic._spec import InstanceSpec, InvalidSetting, scope_id

GiB = 1 << 30


def containers_of(client, scope):
    """Names of every container of a scope (instances and pool containers)."""
    found = client.containers.list(all=True, filters={"label": "fiddledock.scope=%s"
                                                      % scope_id(scope)})
    return sorted(c.name for c in found)


def usage_error(call, *args):
    with pytest.raises(UsageError) as info:
        call(*args)
    return str(info.value)


def engine_capacity(docker_client):
    info = docker_client.info()
    return info["NCPU"], info["MemTotal"]


# --- one test per bug found by hand -----------------------------------------------------

def test_unbalanced_quote_in_the_cell_magic_is_a_usage_error(shell, own_scope, docker_client):
    message = usage_error(shell.run_cell_magic, "dockerrun", "qx --image 'x", "print(1)")
    assert message == "cannot parse \"qx --image 'x\": No closing quotation"
    assert containers_of(docker_client, own_scope) == []


def test_cell_magic_options_are_split_like_the_line_magic(shell, own_scope, docker_client):
    # Quotes group words and are removed, as in `%dockerrun create`: the engine
    # is asked about the image "no such image", not "'no such image'".
    with pytest.raises(FiddleDockError) as info:
        shell.run_cell_magic("dockerrun", "qy --image 'no such image'", "print(1)")
    assert str(info.value).startswith("'no such image' is not a valid image name")
    assert containers_of(docker_client, own_scope) == []


def test_delete_with_a_name_and_all_is_refused(shell, own_scope, docker_client, line_magic,
                                               unique_name):
    line_magic("create %s" % unique_name)
    line_magic("create %s-2" % unique_name)
    before = containers_of(docker_client, own_scope)
    message = usage_error(shell.run_line_magic, "dockerrun", "delete %s --all" % unique_name)
    assert message == "delete takes an instance name or --all, not both"
    assert containers_of(docker_client, own_scope) == before  # nothing deleted
    assert line_magic("delete %s" % unique_name) == "deleted instance %r\n" % unique_name


@pytest.mark.parametrize("option, expected", [
    ("--disk 99999999999999999999999g",
     "disk must be less than 8 EiB (what the engine can take), not '99999999999999999999999g'"),
    ("--memory 9223372036854775808",
     "memory must be less than 8 EiB (what the engine can take), not '9223372036854775808'"),
    ("--memory %s" % ("9" * 400), "memory must be less than 8 EiB (what the engine can take), "
                                  "not '9999999999999999999999999999999999...'"),
    ("--pids 99999999999999999999",
     "pids must be at most 4194304 (no Linux kernel has more process ids), not 99999999999999999999"),
    ("--cpus nan", "cpus must be between 0.01 and 256, not nan"),
    ("--cpus inf", "cpus must be between 0.01 and 256, not inf"),
    ("--cpus %s" % ("9" * 400), "cpus must be between 0.01 and 256, not inf"),
])
def test_settings_out_of_any_engines_range_are_refused(shell, own_scope, docker_client,
                                                       unique_name, option, expected):
    message = usage_error(shell.run_line_magic, "dockerrun",
                          "create %s %s" % (unique_name, option))
    assert message == expected
    assert containers_of(docker_client, own_scope) == []


def test_settings_beyond_the_engines_capacity_name_the_limit(shell, own_scope, docker_client,
                                                             unique_name):
    cpus, memory = engine_capacity(docker_client)
    shown = "%.1f GiB" % (memory / GiB)
    for option, expected in (
            ("--cpus 256", "cpus must be at most %d (the engine's CPU count), not 256.0" % cpus),
            ("--cpus %d" % (cpus + 1),
             "cpus must be at most %d (the engine's CPU count), not %.1f" % (cpus, cpus + 1)),
            ("--memory %dg" % (memory // GiB + 1),
             "memory must be at most %s (the engine's memory), not '%dg'"
             % (shown, memory // GiB + 1)),
            ("--disk %dg" % (memory // GiB + 1),
             "disk must be at most %s (the engine's memory: the writable folders are held "
             "in it), not '%dg'" % (shown, memory // GiB + 1))):
        message = usage_error(shell.run_line_magic, "dockerrun",
                              "create %s %s" % (unique_name, option))
        assert message == expected
    assert containers_of(docker_client, own_scope) == []


def test_an_instance_within_capacity_gets_its_limits(shell, own_scope, docker_client,
                                                     line_magic, unique_name):
    cpus, _ = engine_capacity(docker_client)
    line_magic("create %s --cpus %d --pids 4194304" % (unique_name, cpus))
    [name] = containers_of(docker_client, own_scope)
    host = docker_client.api.inspect_container(name)["HostConfig"]
    assert (host["NanoCpus"], host["PidsLimit"]) == (cpus * 10 ** 9, 4194304)


def test_config_refuses_cpus_and_memory_the_engine_does_not_have(shell, own_scope,
                                                                 docker_client, caplog):
    config = manager_of(shell).config
    cpus, memory = engine_capacity(docker_client)
    before = (config.cpus, config.memory, config.disk, config.pool_size)
    shell.run_line_magic("config", "DockerRun.cpus = %d" % (cpus + 1))
    shell.run_line_magic("config", "DockerRun.memory = '%dg'" % (memory // GiB + 1))
    shell.run_line_magic("config", "DockerRun.pool_size = 1000")
    said = [r.getMessage() for r in caplog.records]  # what %config shows the user
    assert ("cpus must be at most %d (the engine's CPU count), not %.1f" % (cpus, cpus + 1)
            in said)
    assert any(s.startswith("memory must be at most ") for s in said)
    assert "pool_size must be at most 32, not 1000" in said
    assert (config.cpus, config.memory, config.disk, config.pool_size) == before
    # and %dockerrun pool says the same as a usage error
    message = usage_error(shell.run_line_magic, "dockerrun", "pool 1000")
    assert message == "pool takes at most 32 instances, not 1000"
    assert config.pool_size == 0 and containers_of(docker_client, own_scope) == []


def test_invalid_setting_carries_its_field():
    for values, field in (({"memory": "lots"}, "memory"), ({"cpus": "nan"}, "cpus"),
                          ({"pids": 1 << 40}, "pids"), ({"disk": "1k"}, "disk"),
                          ({"network": "host"}, "network"), ({"env": {"1A": ""}}, "env"),
                          ({"image": ""}, "image")):
        spec = InstanceSpec(**dict({"image": "x"}, **values))
        with pytest.raises(InvalidSetting) as info:
            spec.validate()
        assert info.value.field == field, values
    assert str(info.value) == "an image name is required"  # the message is as before
    with pytest.raises(InvalidSetting) as info:
        InstanceSpec(image="x", cpus=4).check_capacity(2, 8 * GiB)
    assert (info.value.field, str(info.value)) == (
        "cpus", "cpus must be at most 2 (the engine's CPU count), not 4")


def test_a_spec_from_the_config_takes_each_setting_not_given():
    config = DockerRun(image="img:1", memory="1g", cpus=0.5, pids=64, disk="32m",
                       env={"A": "1", "B": "2"})
    spec = InstanceSpec.from_config(config)
    assert spec == InstanceSpec(image="img:1", memory="1g", cpus=0.5, pids=64, disk="32m",
                                network="none", runtime="runc", env={"A": "1", "B": "2"})
    spec = InstanceSpec.from_config(config, image=None, memory="2g", cpus=None, pids=128,
                                    env={"B": "3", "C": "4"})
    assert (spec.image, spec.memory, spec.cpus, spec.pids, spec.disk, spec.env) == (
        "img:1", "2g", 0.5, 128, "32m", {"A": "1", "B": "3", "C": "4"})
    assert config.env == {"A": "1", "B": "2"}  # the notebook's settings are not changed
    spec.env["D"] = "5"
    assert config.env == {"A": "1", "B": "2"}


# --- fuzz: generated lines for both magics ----------------------------------------------

SEED = 12
# No whitespace and no bare "--" here: those could turn a bad line into a valid one.
WEIRD = ["é", "日本語", "🐳", "\u200b", "\u202e", "ＡＢ", "a\u0301", "\x1b[31m", "\x00", "ß" * 3]
META = ["$(id)", "`id`", ";", "|", "&&", ">", "<", "*", "?", "~", "\\", "$HOME", "!!", "#",
        "-", "=", ","]
NUMBERS = ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e999", "-1e999", "0x10", "1_0",
           "99999999999999999999999999", "1e-9", "", "½", "٣"]
# Names no instance may have (the name check refuses them before the engine is asked).
# Words typed in the line stay short: IPython's {}-expansion of the line is slow
# on long lines (5 s for 10000 characters); a huge word comes from {fuzz_huge}.
BAD_NAMES = ["bad/name", "-x", ".x", "_x", "a" * 64, "x" * 1000, "'a b'", "a:b", "{}", "{1/0}",
             "$fuzz_huge", "{fuzz_huge}", "{fuzz_quote}"] + WEIRD + META
BAD_IMAGES = ["'no such image'", "UPPER", "a:b:c:d", "'$(id)'", "';rm -rf /'",
              "fiddledock-no-such-image:404", "{fuzz_huge}", "x" * 300]
SUBCOMMANDS = ["help", "list", "create", "delete", "restart", "reset", "use", "cleanup",
               "pool", "put", "get", "panel"]


def _junk(rng):
    """A word or two of garbage."""
    return rng.choice([
        lambda: rng.choice(WEIRD) * rng.randint(1, 3),
        lambda: rng.choice(META),
        lambda: rng.choice(NUMBERS) or "''",
        lambda: "--" + rng.choice(["zz-unknown", "x=1", "é", "imagex", "timeout-x"]),
        lambda: "-" + rng.choice("zqZ9"),
        lambda: "'" + rng.choice(WEIRD),  # unbalanced
        lambda: '"' + rng.choice(META),  # unbalanced
        lambda: "x" * rng.choice([100, 1000]),
        lambda: "{" + rng.choice(["", "fuzz_huge", "1/0", "fuzz_quote"]) + "}",
    ])()


def _defect(rng):
    """Options that make a cell magic line fail whatever else it holds."""
    return rng.choice([
        lambda: "--timeout %s" % (rng.choice(["nan", "inf", "-inf", "-1", "1e999", "-0.5",
                                              "abc", "{fuzz_nan}"])),
        lambda: "--timeout",  # no value
        lambda: "--image",  # no value
        lambda: "--image %s" % rng.choice(BAD_IMAGES),
        lambda: "--" + rng.choice(["zz-unknown", "memory 1g", "cpus 1", "all", "é"]),
        lambda: "'unbalanced",
        lambda: '"%s' % rng.choice(META),
        # several names are several instances: one bad name among them spoils the line
        lambda: "%s %s" % (rng.choice(["ok1", "ok2"]), rng.choice(["extra!", "more/"])),
    ])()


def cell_lines(rng, count):
    lines = []
    for _ in range(count):
        words = []
        if rng.random() < 0.5:
            words.append(rng.choice(BAD_NAMES))
        elif rng.random() < 0.5:
            words.append(rng.choice(["fuzzok", "q", "x.y-z"]))  # valid: needs a defect; not hex (an image id prefix)
        for _ in range(rng.randint(0, 2)):
            words.append(rng.choice(["--reset", "--timeout 5"]))  # --no-raise would not raise
        if rng.random() < 0.2:
            words.insert(rng.randint(0, len(words)), _junk(rng))
        if not words or words[0] not in BAD_NAMES or rng.random() < 0.5:
            words.append(_defect(rng))  # last: no later --timeout or word can mend it
        lines.append(" ".join(words))
    return lines


def line_lines(rng, count, tmp):
    missing_file = "%s/no-such-file" % tmp
    every = [
        lambda: rng.choice(["", "   ", "\t"]),
        lambda: _junk(rng),  # not a subcommand
        lambda: "%s %s" % (rng.choice(SUBCOMMANDS), "'" + rng.choice(WEIRD)),
        lambda: "%s --zz-unknown" % rng.choice(SUBCOMMANDS),
        lambda: "%s %s" % (rng.choice(["help", "list", "panel", "cleanup"]), _junk(rng)),
        lambda: "create %s" % rng.choice(BAD_NAMES),
        lambda: "create",
        lambda: "create fuzzc %s" % " ".join(rng.sample(_bad_create_options(rng), 2)),
        lambda: "create fuzzc --cpus 0.5 %s" % rng.choice(_bad_create_options(rng)),
        lambda: "delete",
        lambda: "delete %s --all" % rng.choice(["fuzzd", "x"]),
        lambda: "delete %s" % rng.choice(BAD_NAMES + ["fuzz-nonexistent"]),
        lambda: "%s %s" % (rng.choice(["restart", "reset"]),
                           rng.choice(BAD_NAMES + ["fuzz-nonexistent", ""])),
        lambda: "%s fuzz-nonexistent %s" % (rng.choice(["restart", "reset", "use"]), _junk(rng)),
        lambda: "use %s" % rng.choice(BAD_NAMES),
        lambda: "pool %s" % rng.choice(["-1", "-5", "33", "99999999999999999999", "nan", "1.5",
                                        "x", "1 2", "''"]),
        lambda: "put %s fuzz-nonexistent:/x" % missing_file,
        lambda: "put %s %s" % (missing_file, rng.choice(["noname", ":x", "x:", "bad/name:/x",
                                                          _junk(rng)])),
        lambda: "get fuzz-nonexistent:/etc %s/out" % tmp,
        lambda: "get %s %s/out" % (rng.choice(["noname", ":/x", "y:", "{}:/x", _junk(rng)]),
                                   tmp),
        lambda: "%s %s" % (rng.choice(SUBCOMMANDS), _junk(rng) + " " + _junk(rng)),
    ]
    return [rng.choice(every)() for _ in range(count)]


def _bad_create_options(rng):
    return [
        "--memory %s" % rng.choice(NUMBERS + ["lots", "1t", "1.5.5g", "-1g", "1e9g", "15m"]),
        "--disk %s" % rng.choice(NUMBERS + ["99999999999999999999999g", "1k", "1 g"]),
        # no number a bigger machine could grant ("1_0" and "٣" are 10 and 3 to Python)
        "--cpus %s" % rng.choice([n for n in NUMBERS if n not in ("1_0", "٣")]
                                 + ["257", "1e400", "0.001"]),
        "--pids %s" % rng.choice(NUMBERS + ["15", "4194305", "9" * 30]),
        "--network %s" % rng.choice(["host", "container:x", "é"]),
        "--runtime %s" % rng.choice(["kata", "runc;id", ""]) if rng.random() < 0.9 else "--runtime",
        "--env %s" % rng.choice(["NOVALUE", "1A=2", "=x", "A-B=1", "é=1"]),
        "--image %s" % rng.choice(BAD_IMAGES),
    ]


def _check(shell, source, capsys):
    """Run a cell as a notebook would; the error it showed, checked for shape."""
    capsys.readouterr()
    result = shell.run_cell(source, store_history=False)
    shown = capsys.readouterr()
    error = result.error_in_exec or result.error_before_exec
    assert error is not None, "accepted: %r" % source
    assert isinstance(error, (UsageError, FiddleDockError)), (
        "%s escaped for %r: %s" % (type(error).__name__, source, error))
    if not isinstance(error, UsageError):
        rendered = error._render_traceback_()
        assert len(rendered) == 1 and "\n" not in rendered[0], (source, rendered)
    assert "Traceback" not in shown.out + shown.err, source
    assert len(str(error)) < 2000, (source, str(error)[:200])
    return error


def test_fuzzed_magic_lines_fail_cleanly_and_create_nothing(shell, own_scope, docker_client,
                                                            capsys, tmp_path):
    config = manager_of(shell).config
    shell.user_ns.update(fuzz_huge="h" * 20000, fuzz_quote="it's", fuzz_nan=float("nan"))
    rng = random.Random(SEED)
    before = containers_of(docker_client, own_scope)
    settings = (config.default_instance, config.pool_size, config.cpus, config.memory,
                config.disk, config.pids, config.image, config.timeout)
    cells = cell_lines(rng, 250)
    lines = line_lines(rng, 250, tmp_path)
    # every subcommand there is (new ones too), with a broken quote and an unknown flag
    for sub in shell.magics_manager.registry["DockerRunMagics"].commands.names():
        lines += ["%s 'é" % sub, "%s --zz-unknown" % sub]
    kinds = {}
    for line in cells:
        error = _check(shell, "%%%%dockerrun %s\nprint('fuzz')\n" % line, capsys)
        kinds[type(error).__name__] = kinds.get(type(error).__name__, 0) + 1
    for line in lines:
        error = _check(shell, "%%dockerrun %s" % line, capsys)
        kinds[type(error).__name__] = kinds.get(type(error).__name__, 0) + 1
    # both kinds of error were met: the fuzz reached the engine too, not just the parser
    assert kinds.get("UsageError", 0) > 300 and sum(kinds.values()) == len(cells + lines), kinds
    assert kinds.get("ImageNotFound") and kinds.get("InstanceNotFound"), kinds
    assert containers_of(docker_client, own_scope) == before == []
    assert (config.default_instance, config.pool_size, config.cpus, config.memory, config.disk,
            config.pids, config.image, config.timeout) == settings
    assert list(tmp_path.iterdir()) == []  # `get` wrote nothing
    # and the shell still runs cells in a new instance afterwards
    assert repr(shell.run_cell_magic("dockerrun", "fuzz-after", "6 * 7")) == "42"
