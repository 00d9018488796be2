// alerts view: the alert rules that notify this panel's topic, each with its state (ok, pending,
// firing), its last value and since when, updated live from the topic's `alert` events.
// The server renders the rules the viewer may read (data-rules); events of other rules are left out.
"use strict";

window.Dashboard.views.alerts = function (panel) {
  const { el, isObject, formatNumber, ago } = window.Dashboard.util;
  const list = el("ul", { className: "alert-rules", attrs: { "aria-live": "polite" } });
  const rules = new Map(); // name -> {row, state, since}
  let rendered = [];
  try {
    rendered = JSON.parse(panel.el.dataset.rules || "[]");
  } catch (e) {
    rendered = [];
  }
  if (!rendered.length) panel.body.append(el("p", { className: "list-empty", text: "No alert rules notify this topic." }));
  panel.body.append(list);

  function limit(rule) {
    return typeof rule.above === "number" ? "> " + formatNumber(rule.above) : "< " + formatNumber(rule.below);
  }

  function show(rule) {
    const known = rules.get(rule.rule);
    // History replays older changes after the state the server rendered: keep the newest.
    if (known && typeof rule.since === "number" && rule.since < known.since) return;
    const state = ["ok", "pending", "firing"].includes(rule.state) ? rule.state : "ok";
    const value = typeof rule.value === "number" ? formatNumber(rule.value) : "–";
    const since = el("time", { text: ago(rule.since * 1000), attrs: { datetime: new Date(rule.since * 1000).toISOString() } });
    since.dataset.ms = String(rule.since * 1000);
    const row = el(
      "li",
      { className: "alert-rule", dataset: { state, rule: rule.rule } },
      el("span", { className: "alert-state", text: state }),
      el("span", { className: "alert-name", text: rule.rule }),
      el("span", { className: "alert-detail", text: rule.field + " " + value + " (" + limit(rule) + ")" }),
      since
    );
    if (known) known.row.replaceWith(row);
    else list.append(row);
    rules.set(rule.rule, { row, since: rule.since });
  }

  for (const rule of rendered) show(rule);

  return {
    event(type, data) {
      if (type !== "alert" || !isObject(data) || !rules.has(data.rule)) return;
      show(data);
    },
    tick(now) {
      for (const t of list.querySelectorAll("time[data-ms]")) {
        const label = ago(Number(t.dataset.ms), now);
        if (t.textContent !== label) t.textContent = label;
      }
    },
  };
};
