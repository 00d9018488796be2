"""Webhook payloads -> notification items: a generic JSON body, GitHub events, Alertmanager alerts.

Each `from_*` function returns plain dicts with the notification fields (id, title, body, level,
source, url, ts); the notifications feed validates them. Text is clipped to the item limits here,
and a link that is not http(s) is left out, so a sender's odd payload still becomes an item.
"""

from __future__ import annotations

import uuid
from typing import Any

TITLE_MAX = 300
BODY_MAX = 10_000
URL_MAX = 2_000


def clip(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_url(value: Any) -> str | None:
    """`value` when it is an http(s) link short enough to keep; else None."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")) and len(value) <= URL_MAX:
        return value
    return None


def first_of(mapping: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = mapping.get(key)
        if value not in (None, ""):
            return value
    return None


# -- generic JSON ----------------------------------------------------------------------------
def json_objects(body: Any) -> list[dict[str, Any]]:
    """A JSON object, or a non-empty list of them, as a list; ValueError saying what is wrong."""
    objects = body if isinstance(body, list) else [body]
    if not objects:
        raise ValueError("the body is an empty list: send an object or a list of objects")
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise ValueError(f"item {i}: expected a JSON object, got {type(obj).__name__}")
    return objects


def from_generic(body: Any) -> list[dict[str, Any]]:
    """An object (or a list of them) with a title and/or body under common names.

    title: title, summary, subject, name; body: body, message, text, description, content;
    level: level, severity; url: url, link, href; ts: ts, timestamp, time. Other keys are ignored.
    """
    items = []
    for i, obj in enumerate(json_objects(body)):
        title = first_of(obj, "title", "summary", "subject", "name")
        text = first_of(obj, "body", "message", "text", "description", "content")
        if title is None and text is None:
            raise ValueError(f"item {i}: a notification needs a title or a message")
        if title is None:
            title = str(text).strip().splitlines()[0] if str(text).strip() else str(text)
            text = text if str(text).strip() != title else ""
        item: dict[str, Any] = {
            "id": clip(first_of(obj, "id") or uuid.uuid4().hex, 200),
            "title": clip(title, TITLE_MAX),
            "body": clip(text, BODY_MAX),
            "level": first_of(obj, "level", "severity") or "info",
            "source": clip(first_of(obj, "source") or "webhook", 100),
            "url": safe_url(first_of(obj, "url", "link", "href")),
        }
        ts = first_of(obj, "ts", "timestamp", "time")
        if ts is not None:
            item["ts"] = ts
        items.append(item)
    return items


# -- GitHub ----------------------------------------------------------------------------------
def _repo(body: dict[str, Any]) -> str:
    return (body.get("repository") or {}).get("full_name") or "GitHub"


def _login(body: dict[str, Any], key: str = "sender") -> str:
    return (body.get(key) or {}).get("login") or "someone"


def _github_push(body: dict[str, Any]) -> dict[str, Any]:
    ref = body.get("ref") or ""
    name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    kind = "tag" if ref.startswith("refs/tags/") else "branch"
    who = (body.get("pusher") or {}).get("name") or _login(body)
    commits = body.get("commits") or []
    if body.get("deleted"):
        title, level = f"{who} deleted {kind} {name} in {_repo(body)}", "warning"
    elif body.get("created") and not commits:
        title, level = f"{who} created {kind} {name} in {_repo(body)}", "info"
    else:
        n = len(commits)
        title, level = f"{who} pushed {n} commit{'s' if n != 1 else ''} to {_repo(body)}:{name}", "info"
    lines = [
        f"{(c.get('id') or '')[:7]} {((c.get('message') or '').splitlines() or [''])[0]}"
        for c in commits[:10]
    ]
    if len(commits) > 10:
        lines.append(f"… and {len(commits) - 10} more")
    return {"title": title, "body": "\n".join(lines), "level": level, "url": body.get("compare")}


def _github_pull_request(body: dict[str, Any]) -> dict[str, Any]:
    pr = body.get("pull_request") or {}
    action = body.get("action") or "updated"
    level = "info"
    if action == "closed":
        action, level = ("merged", "success") if pr.get("merged") else ("closed", "warning")
    title = (
        f"PR #{pr.get('number', body.get('number', '?'))} {action} in {_repo(body)}: {pr.get('title', '')}"
    )
    return {"title": title, "body": f"by {_login(body)}", "level": level, "url": pr.get("html_url")}


def _github_issues(body: dict[str, Any]) -> dict[str, Any]:
    issue = body.get("issue") or {}
    action = body.get("action") or "updated"
    level = {"closed": "success", "reopened": "warning"}.get(action, "info")
    title = f"Issue #{issue.get('number', '?')} {action} in {_repo(body)}: {issue.get('title', '')}"
    return {"title": title, "body": f"by {_login(body)}", "level": level, "url": issue.get("html_url")}


def _github_issue_comment(body: dict[str, Any]) -> dict[str, Any]:
    issue = body.get("issue") or {}
    comment = body.get("comment") or {}
    title = (
        f"{_login(body)} commented on #{issue.get('number', '?')} in {_repo(body)}: {issue.get('title', '')}"
    )
    return {
        "title": title,
        "body": comment.get("body") or "",
        "level": "info",
        "url": comment.get("html_url"),
    }


def _github_release(body: dict[str, Any]) -> dict[str, Any]:
    release = body.get("release") or {}
    action = body.get("action") or "updated"
    name = release.get("name") or release.get("tag_name") or "?"
    level = "success" if action in ("published", "released") else "info"
    return {
        "title": f"Release {name} {action} in {_repo(body)}",
        "body": release.get("body") or "",
        "level": level,
        "url": release.get("html_url"),
    }


def _github_workflow_run(body: dict[str, Any]) -> dict[str, Any]:
    run = body.get("workflow_run") or {}
    action = body.get("action") or "updated"
    conclusion = run.get("conclusion")
    outcome = conclusion if action == "completed" and conclusion else action
    level = {
        "success": "success",
        "failure": "error",
        "timed_out": "error",
        "startup_failure": "error",
        "cancelled": "warning",
        "action_required": "warning",
    }.get(outcome, "info")
    name = run.get("name") or (body.get("workflow") or {}).get("name") or "workflow"
    branch = run.get("head_branch") or "?"
    return {
        "title": f"Workflow {name} {outcome} on {_repo(body)}:{branch}",
        "body": ((run.get("head_commit") or {}).get("message") or "").split("\n", 1)[0],
        "level": level,
        "url": run.get("html_url"),
    }


def _github_ping(body: dict[str, Any]) -> dict[str, Any]:
    hook = body.get("hook") or {}
    where = _repo(body) if body.get("repository") else (body.get("organization") or {}).get("login", "GitHub")
    return {
        "title": f"GitHub webhook connected for {where}",
        "body": body.get("zen") or "",
        "level": "success",
        "url": hook.get("html_url") if hook.get("html_url") else None,
    }


def _github_other(event: str, body: dict[str, Any]) -> dict[str, Any]:
    action = body.get("action")
    what = f"{event} {action}" if action else event
    return {"title": f"GitHub {what} in {_repo(body)} by {_login(body)}", "body": "", "level": "info"}


GITHUB_EVENTS = {
    "push": _github_push,
    "pull_request": _github_pull_request,
    "issues": _github_issues,
    "issue_comment": _github_issue_comment,
    "release": _github_release,
    "workflow_run": _github_workflow_run,
    "ping": _github_ping,
}


def from_github(event: str, delivery: str | None, body: Any) -> list[dict[str, Any]]:
    """One item per delivery; its id is the delivery GUID, so a redelivery is dropped as a duplicate."""
    if not isinstance(body, dict):
        raise ValueError(f"a GitHub {event!r} payload must be a JSON object")
    mapper = GITHUB_EVENTS.get(event)
    item = mapper(body) if mapper else _github_other(event, body)
    return [
        {
            "id": clip(f"github:{delivery}" if delivery else f"github:{uuid.uuid4().hex}", 200),
            "title": clip(item["title"], TITLE_MAX),
            "body": clip(item.get("body"), BODY_MAX),
            "level": item["level"],
            "source": clip(f"github:{_repo(body)}" if body.get("repository") else "github", 100),
            "url": safe_url(item.get("url")),
        }
    ]


# -- Prometheus Alertmanager -----------------------------------------------------------------
SEVERITY_LEVELS = {
    "critical": "error",
    "error": "error",
    "page": "error",
    "high": "error",
    "warning": "warning",
    "warn": "warning",
    "medium": "warning",
    "info": "info",
    "low": "info",
    "none": "info",
}


def is_alertmanager(body: Any) -> bool:
    """Alertmanager's webhook body: a version-4 style object with `alerts` and a receiver/groupKey."""
    return (
        isinstance(body, dict)
        and isinstance(body.get("alerts"), list)
        and ("receiver" in body or "groupKey" in body)
    )


def from_alertmanager(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One item per alert. Firing alerts take their level from the `severity` label (default
    warning); resolved ones are `success`. The id is fingerprint + status + start, so Alertmanager's
    repeat notifications of the same firing alert are dropped as duplicates."""
    items = []
    for alert in body.get("alerts", []):
        if not isinstance(alert, dict):
            raise ValueError("Alertmanager payload: each alert must be an object")
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        status = alert.get("status") or body.get("status") or "firing"
        name = labels.get("alertname") or "alert"
        summary = annotations.get("summary") or annotations.get("title") or name
        resolved = status == "resolved"
        level = (
            "success" if resolved else SEVERITY_LEVELS.get(str(labels.get("severity", "")).lower(), "warning")
        )
        text = annotations.get("description") or annotations.get("message") or ""
        shown = {k: v for k, v in labels.items() if k not in ("alertname", "severity")}
        if shown:
            text = (text + "\n" if text else "") + ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
        key = alert.get("fingerprint") or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        started = alert.get("startsAt") or ""
        item: dict[str, Any] = {
            "id": clip(f"alertmanager:{key}:{status}:{started}", 200),
            "title": clip(f"{'Resolved' if resolved else 'Firing'}: {summary}", TITLE_MAX),
            "body": clip(text, BODY_MAX),
            "level": level,
            "source": clip(
                f"alertmanager:{body.get('receiver')}" if body.get("receiver") else "alertmanager", 100
            ),
            "url": safe_url(alert.get("generatorURL")) or safe_url(body.get("externalURL")),
        }
        when = alert.get("endsAt") if resolved else started
        if when and not str(when).startswith("0001-"):  # Alertmanager's zero time means "not ended"
            item["ts"] = when
        items.append(item)
    return items
