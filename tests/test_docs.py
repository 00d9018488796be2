"""The documentation: the site builds without a warning, the configuration reference matches the
schema key for key (the pydantic models are the one source of truth), every config sample passes
the config check, and the code samples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, SecretStr, TypeAdapter

from dashboard.config import Config, parse_config
from dashboard.config.panels import VIEW_OPTIONS
from dashboard.plugins import FEEDS
from tests.doc_samples import CHAPTERS, README, Sample, sample, samples
from tests.support import ROOT, Server, read_events

REFERENCE = ROOT / "docs" / "configuration.md"

#: what the samples' ${VARIABLES} stand for while they are checked
ENVIRONMENT = {
    "VIEWER_SECRET": "a-viewer-secret-of-at-least-32-bytes",
    "OPENAI_API_KEY": "sk-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "TEAM_A_TOKEN": "team-a-token",
    "HOOK_SECRET": "whsec_c2VjcmV0LWtleS1vZi10aGUtZXhhbXBsZQ==",
}


def test_the_site_builds_without_a_warning(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the nav or a missing
    one fails the build."""
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "WARNING" not in run.stderr, run.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "A first panel in five minutes" in home, "the site's home page is not the README"
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_the_readme_links_to_every_chapter():
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", README.read_text()))
    missing = [chapter.name for chapter in CHAPTERS if chapter.name not in linked]
    assert not missing, f"README.md does not link to {missing}"


# -- the configuration reference ---------------------------------------------------------------


def models_under(model: type[BaseModel], path: str = "the top level") -> dict[str, type[BaseModel]]:
    """Each model the config holds, by the path the reference names it at (`ai.providers[].retries`),
    the first place it is met."""
    found = {path: model}
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation: Any = field.annotation
        where = (field.alias or name) if path == "the top level" else f"{path}.{field.alias or name}"
        while get_origin(annotation) in (list, dict, Union, UnionType):
            if get_origin(annotation) is list:
                where, annotation = where + "[]", get_args(annotation)[0]
            elif get_origin(annotation) is dict:
                where, annotation = where + ".<name>", get_args(annotation)[1]
            else:
                annotation = next(a for a in get_args(annotation) if a is not type(None))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not SecretStr:
            for inner_path, inner in models_under(annotation, where).items():
                if inner not in found.values():
                    found[inner_path] = inner
    return found


def tables(path, marker: str) -> dict[str, dict[str, str]]:
    """The tables under `<!-- {marker}: NAME -->` comments: NAME -> {key: default cell}."""
    found: dict[str, dict[str, str]] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.fullmatch(rf"<!-- {marker}: (.+) -->", line.strip())
        if not match:
            continue
        rows = {}
        for row in lines[i + 3 :]:  # past the header and its separator
            if not row.startswith("|"):
                break
            key, default = (cell.strip() for cell in row.strip("|").split(" | ")[:2])
            rows[key.strip("`")] = default
        found[match.group(1)] = rows
    return found


def undocumented(model: type[BaseModel], rows: dict[str, str]) -> list[str]:
    """What is wrong with a reference table of `model`: keys missing or unknown, defaults not the model's."""
    problems = []
    fields = {field.alias or name: field for name, field in model.model_fields.items() if not field.exclude}
    problems += [f"{key} is not documented" for key in fields if key not in rows]
    problems += [f"{key} is not a key of {model.__name__}" for key in rows if key not in fields]
    for key, field in fields.items():
        cell = rows.get(key)
        if cell is None:
            continue
        if field.is_required():
            if cell != "required":
                problems.append(f"{key} is required, the table says {cell}")
            continue
        default = field.get_default(call_default_factory=True)
        written = re.fullmatch(r"`(.*)`", cell)
        if written is None:
            problems.append(f"{key}: write its default as `value`, not {cell}")
        elif TypeAdapter(field.annotation).validate_python(yaml.safe_load(written.group(1))) != default:
            problems.append(f"{key}: the default is {default!r}, the table says {cell}")
    return problems


def test_the_reference_documents_every_key_of_every_section_with_its_default():
    documented = tables(REFERENCE, "keys of")
    problems = []
    for path, model in models_under(Config).items():
        if path not in documented:
            problems.append(f"no table for {path} ({model.__name__}): add `<!-- keys of: {path} -->`")
            continue
        problems += [f"{path}: {problem}" for problem in undocumented(model, documented.pop(path))]
    problems += [f"{path}: no such section in the schema" for path in documented]
    assert not problems, "docs/configuration.md:\n" + "\n".join(problems)


def test_every_option_of_every_built_in_feed_is_documented_with_its_default():
    documented: dict[str, dict[str, str]] = {}
    for chapter in CHAPTERS:
        documented |= tables(chapter, "options of feed")
    problems = []
    for name in FEEDS.names():
        models = models_under(FEEDS.load(name).Options, name)
        for path, model in models.items():
            if not model.model_fields:
                continue
            if path not in documented:
                problems.append(f"feed {name}: no table `<!-- options of feed: {path} -->`")
                continue
            problems += [f"feed {path}: {problem}" for problem in undocumented(model, documented[path])]
    assert not problems, "\n".join(problems)


def test_the_reference_catches_a_wrong_default():
    """The check above can fail: a table whose default differs from the model's is reported."""
    rows = {"initial_backoff": "`2.0`", "max_backoff": "`60.0`"}
    assert undocumented(Config.model_fields["supervisor"].annotation, rows) == [
        "initial_backoff: the default is 1.0, the table says `2.0`"
    ]


# -- config samples ----------------------------------------------------------------------------

FRAGMENT = re.compile(r"config fragment(?: under (?P<under>\w+))?, with: (?P<with>.+)")


def merged(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in extra.items()}}
    return extra if base is None else base


def config_samples() -> list[Sample]:
    """The YAML blocks of the README and the chapters (docs/EXTENDING.md's are run by
    tests/test_extending.py, with the plugins they register)."""
    return [
        s
        for path in [README, *CHAPTERS]
        if path.name != "EXTENDING.md"
        for s in samples(path)
        if s.lang == "yaml"
    ]


def test_every_yaml_block_says_whether_it_is_a_config():
    unmarked = [
        str(s)
        for s in config_samples()
        if not (s.mark and (s.mark.startswith("config") or s.mark.startswith("not config")))
    ]
    assert not unmarked, (
        "mark each YAML block <!-- config -->, <!-- config fragment, with: {...} --> "
        f"or <!-- not config: why -->: {unmarked}"
    )


@pytest.mark.parametrize(
    "block", [s for s in config_samples() if s.mark and s.mark.startswith("config")], ids=str
)
def test_each_config_sample_passes_the_config_check(block, monkeypatch, tmp_path):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "myfeeds.py").write_text(sample(README, "feed: myfeeds.py"))  # the quick start's feed
    monkeypatch.syspath_prepend(str(tmp_path))
    text = block.code
    fragment = FRAGMENT.fullmatch(block.mark)
    if fragment:
        data = yaml.safe_load(text)
        if fragment.group("under"):
            data = {fragment.group("under"): data}
        text = yaml.safe_dump(merged(data, yaml.safe_load(fragment.group("with"))), sort_keys=False)
    parse_config(text, str(block))


# -- code samples ------------------------------------------------------------------------------


def test_the_quick_start_serves_its_panels_from_the_folder_it_starts_in(tmp_path):
    """README "A first panel in five minutes", as a newcomer does it: the two files in a new folder,
    `dashboard check`, `dashboard serve` there, the page with both panels, the events as SSE."""
    folder = tmp_path / "first-panel"
    folder.mkdir()
    (folder / "myfeeds.py").write_text(sample(README, "feed: myfeeds.py"))
    (folder / "config.yaml").write_text(sample(README, "config: quick start"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's `dashboard`; myfeeds.py is in `folder`
    check = subprocess.run(
        [sys.executable, "-m", "dashboard", "check"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "OK, 1 topic(s): count" in check.stdout, check.stdout + check.stderr
    server = Server(folder / "config.yaml", tmp_path / "server.log", home=folder).start()
    try:
        with server.client() as client:
            page = client.get("/").text
            assert "Counter" in page and "Latest" in page, page
            first, second = (event.json()["n"] for event in read_events(client, "/sse/count?replay=0", 2))
            assert second == first + 1, (first, second)
    finally:
        server.stop()


def test_the_sdk_examples_stream_from_the_simulated_provider(serve, capsys):
    server = serve("topics: {}\n")
    relay = ROOT / "docs" / "ai-relay.md"
    for mark in ("client: openai", "client: anthropic"):
        exec(sample(relay, mark).replace("http://127.0.0.1:8000", server.url), {})
        printed = capsys.readouterr().out
        assert len(printed.split()) >= 3, f"{mark}: {printed!r}"


def test_every_option_of_every_built_in_view_is_documented():
    """The views table of the dashboard chapter names each option the config check accepts."""
    rows = {}
    for line in (ROOT / "docs" / "dashboard.md").read_text().splitlines():
        match = re.fullmatch(r"\| `(\w+)` \|.*\| (.*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    problems = []
    for view, model in VIEW_OPTIONS.items():
        if view not in rows:
            problems.append(f"{view}: no row in the views table")
            continue
        names = set(re.findall(r"`(\w+)`", rows[view]))
        missing = [key for key in model.model_fields if key not in names]
        problems += [f"{view}: option {key} is not documented" for key in missing]
        if not model.model_fields and rows[view] != "none":
            problems.append(f"{view} takes no options, the table says {rows[view]}")
    assert not problems, "docs/dashboard.md:\n" + "\n".join(problems)
