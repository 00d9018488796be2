// stat view: one big number with its unit, a sparkline, and warning/critical colours.
// Options: field (default: the first numeric field), unit, decimals, warn, crit,
// below (true when low values are bad: warn/crit trigger at or under the threshold), points
// (sparkline length, default 60), event (the event type to read, default message).
"use strict";

window.Dashboard.views.stat = function (panel) {
  const { el, svg, isObject, numericFields, formatNumber, text } = window.Dashboard.util;
  const o = panel.options;
  const eventType = typeof o.event === "string" ? o.event : "message";
  const points = Number(o.points) > 1 ? Number(o.points) : 60;
  let field = typeof o.field === "string" ? o.field : null;
  const values = [];

  const number = el("span", { className: "stat-value", text: "–" });
  const unit = el("span", { className: "stat-unit", text: o.unit ? String(o.unit) : "" });
  const label = el("p", { className: "stat-label", text: field || "" });
  const spark = svg("svg", { class: "sparkline", viewBox: "0 0 100 30", preserveAspectRatio: "none", "aria-hidden": "true" });
  const area = svg("polygon", { class: "spark-area" });
  const line = svg("polyline", { class: "spark-line" });
  spark.append(area, line);
  panel.body.append(el("p", { className: "stat-number" }, number, unit), label, spark);

  function level(v) {
    const hit = (t) => typeof t === "number" && (o.below ? v <= t : v >= t);
    if (hit(o.crit)) return "crit";
    if (hit(o.warn)) return "warn";
    return "ok";
  }

  function drawSpark() {
    if (values.length < 2) return;
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (hi === lo) {
      hi += 1;
      lo -= 1;
    }
    const step = 100 / (values.length - 1);
    const coords = values.map((v, i) => (i * step).toFixed(2) + "," + (28 - ((v - lo) / (hi - lo)) * 26).toFixed(2));
    line.setAttribute("points", coords.join(" "));
    area.setAttribute("points", "0,30 " + coords.join(" ") + " 100,30");
  }

  let latest; // the newest value, shown at the next frame
  let fresh = false;

  return {
    event(type, data) {
      if (type !== eventType) return;
      if (!field) {
        field = numericFields(data)[0] || null;
        label.textContent = field || "";
      }
      const value = !field ? data : isObject(data) ? data[field] : undefined;
      if (value === undefined) return; // an event without this field (another type of event)
      latest = value;
      fresh = true;
      if (typeof value === "number" && isFinite(value)) {
        values.push(value);
        if (values.length > points) values.shift();
      }
    },
    flush() {
      if (!fresh) return;
      fresh = false;
      if (typeof latest !== "number" || !isFinite(latest)) {
        number.textContent = text(latest);
        panel.el.dataset.level = "";
        return;
      }
      number.textContent = formatNumber(latest, typeof o.decimals === "number" ? o.decimals : undefined);
      const shown = level(latest);
      if (panel.el.dataset.level !== shown) panel.el.dataset.level = shown;
      drawSpark();
    },
  };
};
