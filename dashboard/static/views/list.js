// list view: notifications, newest first, coloured by level, with relative times.
// Event data: {id, title, body, level: info|success|warning|error, source, url, ts}; a plain string
// becomes the title; typed events are left out. Options: max (items kept, default 50).
"use strict";

window.Dashboard.views.list = function (panel) {
  const { el, isObject, toMillis, ago, text } = window.Dashboard.util;
  const LEVELS = new Set(["info", "success", "warning", "error"]);
  const max = Number(panel.options.max) > 0 ? Number(panel.options.max) : 50;
  const list = el("ol", { className: "list-items", attrs: { "aria-live": "polite" } });
  const empty = el("p", { className: "list-empty", text: "Nothing yet." });
  panel.body.append(empty, list);
  const byId = new Map();

  // Only web links: a feed must not be able to plant a javascript: URL.
  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function item(data, meta) {
    const n = isObject(data) ? data : { title: text(data) };
    const level = LEVELS.has(n.level) ? n.level : "info";
    const when = toMillis(n.ts) || meta.time;
    const time = el("time", {
      text: ago(when),
      title: new Date(when).toLocaleString(),
      attrs: { datetime: new Date(when).toISOString() },
    });
    time.dataset.ms = String(when);
    const title = n.title !== undefined ? text(n.title) : n.body !== undefined ? "" : text(n);
    const url = safeUrl(n.url);
    const heading = url
      ? el("a", { text: title || url, attrs: { href: url, target: "_blank", rel: "noopener noreferrer" } })
      : el("span", { text: title });
    return el(
      "li",
      { className: "list-item level-" + level, dataset: { level } },
      el("div", { className: "list-head" }, el("span", { className: "level-dot", text: level, attrs: { "aria-hidden": "false" } }), heading),
      n.body !== undefined && n.body !== "" ? el("p", { className: "list-body", text: text(n.body) }) : null,
      el(
        "div",
        { className: "list-meta" },
        n.source ? el("span", { className: "list-source", text: text(n.source) }) : null,
        time
      )
    );
  }

  const keyOf = new WeakMap(); // item -> its id, to forget it when it drops off the end
  let pending = []; // items that came since the last frame (at most `max`)

  function show(data, meta) {
    const node = item(data, meta);
    const key = isObject(data) && data.id !== undefined ? String(data.id) : null;
    if (key && byId.has(key)) {
      byId.get(key).replaceWith(node);
    } else {
      list.prepend(node);
    }
    if (key) {
      byId.set(key, node);
      keyOf.set(node, key);
    }
  }

  return {
    event(type, data, meta) {
      if (type !== "message") return; // typed events (a chat's tokens...) are not notifications
      pending.push([data, meta]);
      if (pending.length > max) pending.shift();
    },
    flush() {
      if (!pending.length) return;
      for (const [data, meta] of pending) show(data, meta);
      pending = [];
      let extra = list.childElementCount - max;
      while (extra-- > 0) {
        const last = list.lastElementChild;
        if (byId.get(keyOf.get(last)) === last) byId.delete(keyOf.get(last));
        last.remove();
      }
      empty.hidden = true;
    },
    tick(now) {
      for (const t of list.querySelectorAll("time[data-ms]")) {
        const label = ago(Number(t.dataset.ms), now);
        if (t.textContent !== label) t.textContent = label;
      }
    },
  };
};
