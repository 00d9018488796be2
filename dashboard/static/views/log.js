// log view: every event as one line, newest at the bottom; hovering or focusing it pauses scrolling.
// Options: max (lines kept, default 500), status (also log feed status events, default true).
"use strict";

window.Dashboard.views.log = function (panel) {
  const { el, clock, text } = window.Dashboard.util;
  const max = Number(panel.options.max) > 0 ? Number(panel.options.max) : 500;
  const logStatus = panel.options.status !== false;
  const box = el("div", {
    className: "log-lines",
    attrs: { tabindex: "0", role: "log", "aria-label": "events (hover or focus pauses scrolling)" },
  });
  const badge = el("span", { className: "log-paused", attrs: { "aria-live": "polite" } });
  badge.hidden = true;
  panel.body.append(badge, box);

  let paused = false;
  let held = [];
  let pending = []; // lines that came since the last frame (at most `max`)

  function line(type, value, meta) {
    return el(
      "div",
      { className: "log-line", dataset: { type } },
      el("time", { text: clock(meta.time), attrs: { datetime: new Date(meta.time).toISOString() } }),
      type === "message" ? null : el("span", { className: "log-type", text: type }),
      el("span", { className: "log-text", text: text(value) })
    );
  }

  function append(nodes) {
    box.append(...nodes);
    let extra = box.childElementCount - max;
    while (extra-- > 0) box.firstElementChild.remove();
    return scrollDown;
  }

  // Run by the page after every panel's writes of this frame: one layout for all of them.
  function scrollDown() {
    box.scrollTop = box.scrollHeight;
  }

  function add(type, value, meta) {
    pending.push([type, value, meta]);
    if (pending.length > max) pending.shift();
  }

  function flush() {
    if (!pending.length) return;
    const nodes = pending.map(([type, value, meta]) => line(type, value, meta));
    pending = [];
    if (paused) {
      held.push(...nodes);
      if (held.length > max) held.splice(0, held.length - max);
      badge.textContent = "paused · " + held.length + " new";
      badge.hidden = false;
      return null;
    }
    return append(nodes);
  }

  function pause() {
    paused = true;
    badge.textContent = "paused";
    badge.hidden = false;
  }

  function resume() {
    if (box.matches(":hover") || box.contains(document.activeElement)) return;
    paused = false;
    badge.hidden = true;
    const nodes = held;
    held = [];
    if (nodes.length) append(nodes)();
  }

  box.addEventListener("mouseenter", pause);
  box.addEventListener("focusin", pause);
  box.addEventListener("mouseleave", () => setTimeout(resume));
  box.addEventListener("focusout", () => setTimeout(resume));

  return {
    event(type, data, meta) {
      add(type, data, meta);
    },
    status(data, meta) {
      if (logStatus) {
        add("status", data, meta);
        const then = flush();
        if (then) then();
      }
    },
    flush,
  };
};
