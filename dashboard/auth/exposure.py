"""What a server opens to whom: the startup banner's account of it, and the reasons a bind beyond
loopback is refused (what loopback kept private would be open to the network)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dashboard.security import is_loopback

if TYPE_CHECKING:
    from dashboard.config import Config


def network_problems(config: Config) -> list[str]:
    """Why serving `config` on a non-loopback address would open what loopback kept private."""
    auth = config.auth
    problems = []
    paid = [p.name for p in config.ai.providers if p.type != "simulated"]
    if paid and not (auth.api_tokens or auth.api_keys) and "ai" not in auth.open_on_network:
        problems.append(
            f"the AI relay (/v1 and prompts) would spend the key of provider {paid[0]!r} for anyone who "
            "reaches the port: set auth.api_tokens or auth.api_keys, or add `ai` to auth.open_on_network "
            "to serve it open"
        )
    page_prompts = [n for n, t in config.topics.items() if getattr(t._feed_options, "page_prompts", False)]
    if paid and page_prompts and auth.viewers is None and "ai" not in auth.open_on_network:
        problems.append(
            f"the prompt box of topic {page_prompts[0]!r} would let anyone who opens the page spend the "
            f"key of provider {paid[0]!r}: configure auth.viewers (only viewers of the topic may prompt), "
            "set its option page_prompts: false (api tokens only), or add `ai` to auth.open_on_network"
        )
    pushable = [name for name, t in config.topics.items() if t.feed_class.accepts_publish]
    if pushable and not auth.publish_tokens and "publish" not in auth.open_on_network:
        problems.append(
            f"topic {pushable[0]!r} takes pushed events but auth.publish_tokens is empty: set "
            "auth.publish_tokens, or add `publish` to auth.open_on_network (publishing stays disabled)"
        )
    return problems


def describe(config: Config, hosts: list[str]) -> list[str]:
    """What is open to whom, one line each, for the startup banner; `hosts`: the Host header names
    the server answers for."""
    auth = config.auth
    where = "this machine" if is_loopback(config.server.host) else "anyone who reaches the port"
    lines = []
    if auth.viewers is None:
        lines.append(f"topics: readable by {where} (no auth.viewers)")
    else:
        public = [n for n, t in config.topics.items() if t.public]
        ways = []
        if auth.viewers.secret or auth.viewers.public_key:
            ways.append("tokens")
        if auth.viewers.proxy_header:
            ways.append("proxy users")
        lines.append(
            f"topics: private to viewers ({' and '.join(ways)}); public: {', '.join(public) or 'none'}"
        )
    paid = any(p.type != "simulated" for p in config.ai.providers)
    if auth.api_tokens or auth.api_keys:
        page = "viewers of the topic" if auth.viewers else f"{where} (whoever opens the page)"
        lines.append(
            f"AI relay and prompts: {len(auth.api_tokens)} api token(s), {len(auth.api_keys)} named key(s); "
            f"the page's prompt box: {page}"
        )
    else:
        lines.append(f"AI relay and prompts: {where}{'' if paid else ' (simulated providers only)'}")
    if auth.publish_tokens:
        lines.append(f"publish: {len(auth.publish_tokens)} publish token(s)")
    else:
        lines.append("publish: disabled (no auth.publish_tokens)")
    if "*" in hosts:
        lines.append("Host header: any (set server.allowed_hosts to the names you serve)")
    else:
        lines.append(f"Host header: {', '.join(hosts)}")
    secret = auth.viewers.secret if auth.viewers is not None else None
    if secret is not None and len(secret.get_secret_value().encode()) < 32:
        lines.append("WARNING: auth.viewers.secret is under 32 bytes: tokens can be forged by brute force")
    if config.server.cors_origins:
        lines.append(f"CORS (/sse, /api): {', '.join(config.server.cors_origins)}")
    return lines
