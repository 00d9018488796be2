"""Configuration errors: every class reported at once, each with file:line and a plain sentence."""

import subprocess
import sys
import textwrap

import pytest

from dashboard.config import load_config, parse_config
from dashboard.errors import ConfigError, did_you_mean
from dashboard.web.boards import effective_panels
from tests.support import ROOT


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "cfg.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_valid_config_with_env_substitution(monkeypatch):
    monkeypatch.setenv("DASH_PORT", "9100")
    config = parse_config(
        textwrap.dedent(
            """
            server: {port: "${DASH_PORT}", host: "${DASH_HOST:-0.0.0.0}"}
            topics:
              cpu.total_1: {feed: demo, options: {interval: 0.5}, history: 10}
            panels:
              - {topic: cpu.total_1, view: chart}
            """
        )
    )
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"
    assert config.topics["cpu.total_1"].history == 10
    [panel] = effective_panels(config)
    assert (panel.title, panel.view) == ("cpu.total_1", "chart")


def test_yaml_anchors_and_merge_keys_override_without_errors():
    text = (
        "topics:\n"
        "  a: {feed: demo, options: &walk {mode: walk, interval: 0.5}}\n"
        "  b: {feed: demo, options: {<<: *walk, interval: 2.0}}\n"
    )
    config = parse_config(text)
    assert config.topics["b"].options == {"mode": "walk", "interval": 2.0}
    # an anchored mapping with a merge, used again through its alias
    reused = (
        text.replace("options: {<<: *walk", "options: &slow {<<: *walk")
        + "  c: {feed: demo, options: *slow}\n"
    )
    assert parse_config(reused).topics["c"].options == {"mode": "walk", "interval": 2.0}


def test_default_panels_one_per_topic_with_the_feed_view():
    config = parse_config("topics: {a: {feed: demo}, b: {feed: demo}}")
    assert [(p.topic, p.view) for p in effective_panels(config)] == [("a", "json"), ("b", "json")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  hots: x\n", "cfg.yaml:2: unknown key 'hots' in server"),
        ("server:\n  port: lots\n", "cfg.yaml:2: server.port: expected a whole number, got text"),
        (
            "topics:\n  a:\n    feed: nope\n",
            "cfg.yaml:3: topics.a.feed: unknown feed type 'nope'; known: ai, demo, metrics",
        ),
        ("topics:\n  Bad Name:\n    feed: demo\n", "cfg.yaml:2: bad topic name 'Bad Name'"),
        (
            "topics:\n  a:\n    feed: demo\n    options:\n      interval: -1\n",
            "cfg.yaml:5: topics.a.options.interval",
        ),
        ("topics:\n  a:\n    feed: demo\n    options: {colour: red}\n", "cfg.yaml:4: unknown key 'colour'"),
        ("topics:\n  a:\n    feed: demo\n    history: 0\n", "cfg.yaml:4: topics.a.history"),
        ("topics:\n  a:\n    options: {}\n", "cfg.yaml:2: topics.a.feed: required key is missing"),
        ("broker:\n  url: ${NOPE_NOT_SET}\n", "cfg.yaml:2: environment variable NOPE_NOT_SET is not set"),
        (
            "topics: {a: {feed: demo}}\npanels:\n  - {topic: b}\n",
            "cfg.yaml:3: panels.0.topic: no topic named 'b'",
        ),
        ("topics: {a: {feed: demo}}\npanels:\n  - {topic: a, view: pie}\n", "cfg.yaml:3: panels.0.view"),
        ("server: {port: 1}\nserver: {port: 2}\n", "cfg.yaml:2: duplicate key 'server'"),
        (
            "broker:\n  url: kafka://x\n",
            "cfg.yaml:2: broker.url: unsupported broker URL 'kafka://x'",
        ),
        ("topics:\n  a: {feed: demo\n", "cfg.yaml:3: invalid YAML"),
        ("- just\n- a list\n", "cfg.yaml:1: the config must be a mapping"),
        (
            "topics:\n  a: {feed: 'no.such.module:Feed'}\n",
            "cfg.yaml:2: topics.a.feed: cannot import 'no.such.module'",
        ),
        ("topics:\n  a: {feed: 'dashboard:Event'}\n", "is not a subclass of dashboard.Feed"),
        (
            "topics:\n  a:\n    feed: ai\n    options: {model: gpt-9}\n",
            "cfg.yaml:4: topics.a.options: no provider in ai.providers serves model 'gpt-9'",
        ),
        (
            "auth:\n  api_keys:\n    - {name: a, token: t1}\n    - {name: a, token: t2}\n",
            "cfg.yaml:4: auth.api_keys.1.name: api key name 'a' is used twice",
        ),
        (
            "auth:\n  api_tokens: [t1]\n  api_keys:\n    - {name: a, token: t1}\n",
            "cfg.yaml:4: auth.api_keys.0.token: the token of api key 'a' is also another key's or in api",
        ),
        (
            "auth:\n  api_keys:\n    - {name: a, token: t1}\n    - name: b\n      token: t1\n",
            "cfg.yaml:5: auth.api_keys.1.token: the token of api key 'b' is also another key's",
        ),
        (
            "auth:\n  api_keys:\n    - {name: a, token: ''}\n",
            "cfg.yaml:3: auth.api_keys.0.token: api key 'a' has an empty",
        ),
        ("auth:\n  api_keys:\n    - {name: a, token: t, rpm: -1}\n", "cfg.yaml:3: auth.api_keys.0.rpm"),
        (
            "topics: {n: {feed: notifications}, m: {feed: metrics}}\nalerts:\n"
            "  - {name: hot, topic: m, field: cpu, above: 90, notify: n}\n"
            "  - {name: hot, topic: m, field: mem, above: 90, notify: n}\n",
            "cfg.yaml:4: alerts.1.name: alert name 'hot' is used twice",
        ),
        ("auth:\n  api_keys:\n    - {name: a, token: t, daily_usd: -0.5}\n", "auth.api_keys.0.daily_usd"),
        (
            "auth: {api_keys: [{name: a, token: t}]}\n"
            "topics:\n  c:\n    feed: ai\n    options: {page_key: b}\n",
            "cfg.yaml:5: topics.c.options: page_key 'b' is not the name of one of auth.api_keys (a)",
        ),
    ],
)
def test_each_class_of_error_has_a_location_and_a_sentence(text, expected):
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_at_once():
    errors = errors_of(
        """
        server:
          port: nope
          colour: blue
        topics:
          Bad!: {feed: demo}
          ok: {feed: missing}
        """
    )
    assert len(errors) == 4, errors
    assert [e.split(":")[1] for e in errors] == ["3", "4", "6", "7"]


def test_cross_checks_come_in_the_same_round_as_type_errors():
    errors = errors_of(
        """
        server: {port: nope}
        topics:
          a: {feed: demo}
        panels:
          - {topic: missing}
        """
    )
    assert any("server.port" in e for e in errors), errors
    assert any("no topic named 'missing'" in e for e in errors), errors


def test_panels_need_topics():
    [error] = errors_of("panels:\n  - {topic: a}\n")
    assert "cfg.yaml:2: panels.0.topic: no topic named 'a'" in error


def test_unknown_feed_lists_the_known_ones():
    [error] = errors_of("topics: {a: {feed: metricz}}")
    assert "known: ai, demo, metrics, notifications, server" in error and "package.module:Class" in error


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def run_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dashboard", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_check_exits_1_with_every_error_and_0_when_fixed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  prot: 1\ntopics:\n  a: {feed: nope}\n")
    result = run_cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: unknown key 'prot' in server" in result.stderr
    assert f"{bad}:4: topics.a.feed: unknown feed type 'nope'" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("topics:\n  a: {feed: demo}\n")
    result = run_cli("check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_serve_refuses_to_start_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics:\n  a: {feed: nope}\n")
    result = run_cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 1
    assert "unknown feed type 'nope'" in result.stderr
    assert "refusing to start" in result.stderr


def test_committed_config_is_valid():
    result = run_cli("check", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr


BILLION_LAUGHS = """\
topics: {t: {feed: demo}}
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_is_a_config_error_with_its_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    # Expanded, this holds a billion strings; unbounded, `check` ran for minutes and gigabytes.
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", "--config", str(bomb)],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 1, result.stderr
    # `f` is the first value past 100,000 values (9**6 = 531,441 strings).
    assert f"{bomb}:7: invalid YAML: this value holds more than 100000 values" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_merge_key_bombs_and_self_reference_are_config_errors():
    doubling = "\n".join(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], x{i}: 1}}" for i in range(1, 40))
    errors = errors_of("topics: {}\nm0: &m0 {k0: 1, k1: 2}\n" + doubling)
    assert len(errors) == 1 and "more than 100000 values" in errors[0], errors
    assert errors_of("topics: &t {a: {feed: demo, options: {x: *t}}}") == [
        "cfg.yaml:1: invalid YAML: an alias refers to a value that contains it"
    ]
    assert errors_of("topics: " + "[" * 5000 + "]" * 5000) == ["cfg.yaml:1: invalid YAML: nested too deeply"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a misspelt key, feed, view or topic: "did you mean"
        ("server:\n  hots: x\n", "cfg.yaml:2: unknown key 'hots' in server (did you mean 'host'?)"),
        (
            "topics:\n  a: {feed: demp}\n",
            "cfg.yaml:2: topics.a.feed: unknown feed type 'demp' (did you mean 'demo'?)",
        ),
        (
            "topics: {a: {feed: demo}}\npanels:\n  - {topic: a, view: chrat}\n",
            "cfg.yaml:3: panels.0.view: unknown view 'chrat' (did you mean 'chart'?): use one of alerts,",
        ),
        (
            "topics: {cpu: {feed: demo}}\npanels:\n  - {topic: cpus}\n",
            "cfg.yaml:3: panels.0.topic: no topic named 'cpus' (did you mean 'cpu'?)",
        ),
        (
            "topics:\n  a:\n    feed: demo\n    options: {colour: red}\n",
            "cfg.yaml:4: unknown key 'colour' in topics.a.options; it takes mode, interval",
        ),
        # indentation, in words, with what to do
        (
            "topics:\n  a:\n    feed: demo\n   title: x\n",
            "cfg.yaml:4: invalid YAML: this line is indented differently from the lines around it: keys of "
            "one mapping start in the same column",
        ),
        (
            "topics:\n  a:\n  feed: demo\n",
            "cfg.yaml:2: topics.a: expected a mapping (keys indented under it, or {key: value}), "
            "got nothing: are its keys indented under it?",
        ),
        ("topics:\n\ta: {feed: demo}\n", "cfg.yaml:2: invalid YAML: a tab: indent with spaces only"),
        (
            "topics:\n  a:\n    feed: demo\n      title: x\n",
            "cfg.yaml:4: invalid YAML: a ': ' where no key may start: is this line indented deeper than the "
            "keys above it?",
        ),
        ("topics: [a, b\n", "cfg.yaml:2: invalid YAML: a '[' that is not closed by ']'"),
        (
            "topics:\n  a: {feed: demo\npanels: []\n",
            "cfg.yaml:3: invalid YAML: a '{' that is not closed by '}', or items without a ',' between them "
            "(opened at line 2, column 6)",
        ),
        ("server: {port: 99999}\n", "cfg.yaml:1: server.port: must be at most 65535"),
        (
            "topics:\n  a: {feed: demo, options: {mode: wlk}}\n",
            "topics.a.options.mode: must be one of 'clock' or 'walk'",
        ),
    ],
)
def test_errors_speak_in_the_projects_words_with_a_hint(text, expected):
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors
    for library_words in ("Input should", "Value error", "<block", "expected <", "scanning", "parsing a"):
        assert not any(library_words in e for e in errors), errors


def test_check_shows_the_line_at_fault_with_a_caret_under_the_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics:\n  a:\n    feed: demo\n    optoins: {interval: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[1:] == [
        f"  {bad}:4: unknown key 'optoins' in topics.a (did you mean 'options'?)",
        f"    --> {bad}:4:5",
        "          optoins: {interval: 1}",
        "          ^",
    ], result.stderr


def test_a_bad_value_is_shown_at_the_value_and_a_missing_one_at_its_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: lots\ntopics:\n  cpu: {feed: metrcs}\n  b:\n")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "check", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.stderr.splitlines()[1:] == [
        f"  {bad}:2: server.port: expected a whole number, got text",
        f"    --> {bad}:2:9",
        "        port: lots",
        "              ^",
        f"  {bad}:4: topics.cpu.feed: unknown feed type 'metrcs' (did you mean 'metrics'?); known: ai, demo, "
        "metrics, notifications, server, spend (or give a dotted path, package.module:Class)",
        f"    --> {bad}:4:15",
        "        cpu: {feed: metrcs}",
        "                    ^",
        f"  {bad}:5: topics.b: expected a mapping (keys indented under it, or {{key: value}}), got nothing: "
        "are its keys indented under it?",
        f"    --> {bad}:5:3",
        "        b:",
        "        ^",
    ], result.stderr


@pytest.mark.parametrize(
    ("panel", "expected"),
    [
        (
            "{topic: a, view: stat, options: {feilds: {n: {label: Count}}}}",
            "cfg.yaml:3: unknown key 'feilds' in panels.0.options (did you mean 'fields'?)",
        ),
        (
            "{topic: a, view: chart, options: {fields: {n: {thresholds: {warning: 5}}}}}",
            "cfg.yaml:3: unknown key 'warning' in panels.0.options.fields.n.thresholds "
            "(did you mean 'warn'?)",
        ),
        (
            "{topic: a, view: chart, options: {fields: [n], colour: red}}",
            "cfg.yaml:3: unknown key 'colour' in panels.0.options; "
            "it takes fields, window, unit, min, max, event",
        ),
        (
            "{topic: a, view: chart, options: {window: 0}}",
            "cfg.yaml:3: panels.0.options.window: must be more than",
        ),
        (
            "{topic: a, view: log, options: {max: lots}}",
            "cfg.yaml:3: panels.0.options.max: expected a whole number",
        ),
        ("{topic: a, options: {rows: x}}", "cfg.yaml:3: panels.0.options: the json view takes no options"),
        (  # the view a panel names no view for is its feed's: metrics' is the chart
            "{topic: m, options: {fields: {cpu_percent: {unit: 5}}}}",
            "cfg.yaml:3: panels.0.options.fields.cpu_percent.unit: expected text, got a number",
        ),
    ],
)
def test_a_panels_options_are_checked_against_its_view(panel, expected):
    errors = errors_of(f"topics: {{a: {{feed: demo}}, m: {{feed: metrics}}}}\npanels:\n  - {panel}\n")
    assert [e for e in errors if e.startswith(expected)] == errors, errors
    ok = "fields: {n: {label: Count, unit: B/s, thresholds: {warn: 1, crit: 2, below: true}}}, window: 60"
    assert parse_config(
        f"topics: {{a: {{feed: demo}}}}\npanels:\n  - {{topic: a, view: chart, options: {{{ok}}}}}\n"
    )


def test_a_key_without_a_space_after_its_colon_is_named_and_an_empty_config_warned_of():
    assert errors_of("topics:\n  count:\n    feed:myfeeds:Ticker\n") == [
        "cfg.yaml:3: topics.count: expected a mapping (keys indented under it, or {key: value}), got text: "
        "a key needs a space after its ':' (feed: ..., not feed:...)"
    ]
    assert parse_config("", "cfg.yaml").warnings() == [
        "no topics: the page will be empty; add some under `topics:`, e.g. clock: {feed: demo}"
    ]
    assert parse_config("topics: {}\n").warnings() == []  # a relay alone


def test_a_misspelt_topics_section_is_one_error_not_one_per_panel():
    errors = errors_of("topcis:\n  cpu: {feed: metrics}\npanels:\n  - {topic: cpu}\n  - {topic: cpu}\n")
    assert errors == ["cfg.yaml:1: unknown key 'topcis' in the top level (did you mean 'topics'?)"]


@pytest.mark.parametrize(
    ("word", "choices", "said"),
    [
        ("chrat", ["chat", "chart", "stat"], " (did you mean 'chart'?)"),  # two letters swapped
        ("stta", ["stat", "star"], " (did you mean 'stat'?)"),
        ("lgo", ["log", "list"], " (did you mean 'log'?)"),
        ("cpus", ["cpu", "gpu"], " (did you mean 'cpu'?)"),
        ("mem", ["cpu", "gpu"], ""),
        ("gpu", ["cpu", "apu"], " (did you mean 'apu' or 'cpu'?)"),  # two as close: both
        ("hostname", ["host", "port"], " (did you mean 'host'?)"),  # far in edits, close in letters
    ],
)
def test_did_you_mean_prefers_the_smallest_slip(word, choices, said):
    assert did_you_mean(word, choices) == said


def test_a_topic_without_a_panel_is_a_warning_when_panels_are_listed():
    listed = parse_config("topics: {a: {feed: demo}, b: {feed: demo}}\npanels: [{topic: a}]\n")
    assert listed.warnings() == [
        "topic(s) b have no panel: the page lists only the panels under `panels:` (or `dashboards:`); "
        "add one, e.g. - {topic: b}"
    ]
    assert parse_config("topics: {a: {feed: demo}, b: {feed: demo}}\n").warnings() == []  # one panel each


@pytest.mark.parametrize(
    ("module", "feed", "expected"),
    [
        (
            "from dashboard import Feed\nclass Ticker(Feed)\n    pass\n",
            "Ticker",
            "cannot import 'broken': expected ':' ({file}:2:19)",
        ),
        (
            "x = 1 / 0\n",
            "Ticker",
            "cannot import 'broken': importing it raised ZeroDivisionError: division by zero ({file}:1)",
        ),
        (
            "from dashboard import Feed\n\nclass Ticker(Feed):\n    pass\n",
            "Tikcer",
            "module 'broken' has no attribute 'Tikcer' (did you mean 'Ticker'?)",
        ),
    ],
)
def test_a_feed_module_that_does_not_load_is_one_line_with_where(tmp_path, module, feed, expected):
    (tmp_path / "broken.py").write_text(module)
    (tmp_path / "config.yaml").write_text(f"topics:\n  a: {{feed: 'broken:{feed}'}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "check"], capture_output=True, text=True, cwd=tmp_path
    )
    said = expected.format(file=tmp_path / "broken.py")
    assert f"config.yaml:2: topics.a.feed: {said}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
