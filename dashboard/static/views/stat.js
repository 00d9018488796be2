// stat view: one big number with its unit, a sparkline, and warning/critical colours.
// Options: field (default: the first numeric field, but the time-like keys ts, time, epoch,
// timestamp), fields (as the chart's: {name: {label, unit, thresholds: {warn, crit, below}}}; the
// first one is shown), unit, decimals, warn, crit, below (true when low values are bad: warn/crit
// trigger at or under the threshold), points (sparkline length, default 60), event (the event
// type to read, default message). Units read at a glance (2.3 MB/s); the level is also said in text.
"use strict";

window.Dashboard.views.stat = function (panel) {
  const { el, svg, isObject, numericFields, fieldSpecs, withUnit, level, noFieldMessage, text } = window.Dashboard.util;
  const o = panel.options;
  const eventType = typeof o.event === "string" ? o.event : "message";
  const points = Number(o.points) > 1 ? Number(o.points) : 60;
  const specs = fieldSpecs(o.fields);
  let field = typeof o.field === "string" ? o.field : specs.size ? [...specs.keys()][0] : null;
  const number_ = (v) => (typeof v === "number" ? v : null);
  function spec() {
    const own = specs.get(field) || {};
    return {
      label: own.label || field || "",
      unit: own.unit || (o.unit ? String(o.unit) : ""),
      warn: own.warn ?? number_(o.warn),
      crit: own.crit ?? number_(o.crit),
      below: own.below || o.below === true,
    };
  }
  const seen = new Set();
  const values = [];

  const number = el("span", { className: "stat-value", text: "–" });
  const cue = el("span", { className: "stat-level" }); // the level in words, not by colour alone
  const label = el("p", { className: "stat-label", text: spec().label });
  const spark = svg("svg", { class: "sparkline", viewBox: "0 0 100 30", preserveAspectRatio: "none", "aria-hidden": "true" });
  const area = svg("polygon", { class: "spark-area" });
  const line = svg("polyline", { class: "spark-line" });
  spark.append(area, line);
  panel.body.append(el("p", { className: "stat-number" }, number, cue), label, spark);

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
      if (isObject(data)) for (const key of Object.keys(data)) if (seen.size < 50) seen.add(key);
      if (!field) {
        field = numericFields(data)[0] || null;
        label.textContent = field ? spec().label : isObject(data) ? noFieldMessage(seen) : "";
      }
      if (!field && isObject(data)) return; // no number to show: the label says why
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
      const now = spec();
      number.textContent = withUnit(latest, now.unit, typeof o.decimals === "number" ? o.decimals : undefined);
      const shown = level(latest, now);
      if (panel.el.dataset.level !== shown) {
        panel.el.dataset.level = shown;
        cue.textContent = shown === "ok" ? "" : shown === "crit" ? "critical" : "warning";
      }
      drawSpark();
    },
  };
};
