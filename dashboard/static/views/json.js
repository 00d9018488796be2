// json view: the latest event, pretty-printed as text.
"use strict";

window.Dashboard.views.json = function (panel) {
  const { el, clock } = window.Dashboard.util;
  const about = el("p", { className: "json-about" });
  const pre = el("pre", { className: "json-latest", attrs: { tabindex: "0" } });
  panel.body.append(about, pre);
  let latest = null; // shown at the next frame: the newest event only
  return {
    event(type, data, meta) {
      latest = { type, data, meta };
    },
    flush() {
      if (!latest) return;
      const { type, data, meta } = latest;
      latest = null;
      pre.textContent = typeof data === "string" ? data : JSON.stringify(data, null, 2);
      about.textContent = (type === "message" ? "" : type + " · ") + clock(meta.time);
    },
  };
};
