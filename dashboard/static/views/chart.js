// chart view: a rolling time series of an event's numeric fields, drawn with uPlot.
// Options: fields (default: every numeric field seen, up to 8, but the time-like keys ts, time,
// epoch, timestamp): a list of names, or a mapping name -> {label, unit, thresholds: {warn, crit,
// below}}; window (seconds shown, default 300; the viewer may pick 1 min to 1 h, and pause), unit (of every field that names none), min / max
// (fix the y axis; default: fit the data), event (the event type to read, default message).
// Units read at a glance (2.3 MB/s, 1.2 s, $0.0042); thresholds are dashed lines, labelled.
"use strict";

window.Dashboard.views.chart = function (panel) {
  const { el, isObject, numericFields, fieldSpecs, withUnit, noFieldMessage, clock, palette, cssVar, onThemeChange } =
    window.Dashboard.util;
  const o = panel.options;
  const specs = fieldSpecs(o.fields);
  const fixed = specs.size ? [...specs.keys()] : null;
  const fields = fixed ? fixed.slice() : [];
  let windowS = Number(o.window) > 0 ? Number(o.window) : 300; // what is shown: the viewer may change it
  const WINDOWS = [...new Set([60, 300, 900, 3600, windowS])].sort((a, b) => a - b);
  const KEPT_S = Math.max(...WINDOWS); // points are kept for the widest window (MAX_POINTS at most)
  const MAX_POINTS = 5000;
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
  const eventType = typeof o.event === "string" ? o.event : "message";
  const unitOf = (name) => (specs.get(name) || {}).unit || (o.unit ? String(o.unit) : "");
  const labelOf = (name) => (specs.get(name) || {}).label || name;
  const seen = new Set(); // the keys of the events, for the message of a panel with nothing to draw

  const box = el("div", { className: "chart-box" });
  const legend = el("div", { className: "chart-legend" });
  const note = el("p", { className: "chart-note", text: "Waiting for numeric data." });
  const limits = el("p", { className: "chart-thresholds" }); // the dashed lines, said in words
  // The viewer's tools: the time window shown, and pause (events keep coming in meanwhile).
  const span = (s) => (s >= 3600 ? s / 3600 + " h" : s >= 60 ? s / 60 + " min" : s + " s");
  const windowSelect = el("select", { className: "tool", attrs: { "aria-label": "time window shown" } });
  for (const s of WINDOWS) windowSelect.append(el("option", { text: span(s), attrs: { value: s } }));
  windowSelect.value = String(windowS);
  const pause = el("button", { className: "tool", text: "pause", attrs: { type: "button", "aria-pressed": "false" } });
  let paused = false;
  windowSelect.addEventListener("change", () => {
    windowS = Number(windowSelect.value);
    fresh = true;
    if (plot) plot.setData([xs, ...ys]); // the x range follows the window
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "resume" : "pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) redraw();
  });
  panel.body.append(el("div", { className: "chart-tools" }, windowSelect, pause), note, box, legend, limits);
  // Axis ticks stay short whatever the magnitude (1.6K, 2.3 MB/s), so they never get cut off: in
  // the fields' unit when they share one, else plain.
  const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
  function tick(v) {
    const units = new Set(fields.map(unitOf));
    return units.size === 1 && [...units][0] ? withUnit(v, [...units][0], 1) : compact.format(v);
  }

  // The y axis as wide as its longest label ("500.0 kB/s"), measured in the axis's font.
  function labelWidth(u, values, axisIndex, cycle) {
    const y = u.axes[axisIndex];
    if (cycle > 1) return y._size; // uPlot asks again after layout: keep the first answer
    const longest = (values || []).reduce((a, b) => (String(b).length > a.length ? String(b) : a), "");
    u.ctx.font = y.font[0];
    return Math.ceil(y.ticks.size + y.gap + u.ctx.measureText(longest).width / devicePixelRatio) + 4;
  }

  // Where warning and critical start: a dashed line each, in the level's colour and named in text,
  // so that neither colour nor dash alone carries the meaning.
  function thresholds() {
    const lines = [];
    for (const name of fields) {
      const spec = specs.get(name);
      if (!spec) continue;
      for (const kind of ["warn", "crit"]) {
        if (typeof spec[kind] !== "number") continue;
        const named = fields.length > 1 ? labelOf(name) + " " : "";
        lines.push({ kind, value: spec[kind], text: named + kind + " " + withUnit(spec[kind], unitOf(name)) });
      }
    }
    return lines;
  }

  function drawThresholds(u) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.font = 11 * devicePixelRatio + "px sans-serif";
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.lineWidth = devicePixelRatio;
    ctx.textAlign = "right";
    let lastText = -Infinity; // a label too close to the one before is left to the text below
    for (const line of thresholds().sort((a, b) => a.value - b.value)) {
      const y = u.valToPos(line.value, "y", true);
      if (y < top || y > top + height) continue;
      ctx.strokeStyle = ctx.fillStyle = cssVar(line.kind === "crit" ? "--bad" : "--warn");
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      if (Math.abs(lastText - y) > 14 * devicePixelRatio) {
        ctx.fillText(line.text, left + width - 4 * devicePixelRatio, y - 3 * devicePixelRatio);
        lastText = y;
      }
    }
    ctx.restore();
  }

  const xs = [];
  const ys = fields.map(() => []);
  let plot = null;
  let fresh = false; // points came since the last frame

  function size() {
    return { width: Math.max(box.clientWidth, 120), height: Math.max(box.clientHeight, 80) };
  }

  function build() {
    if (plot) plot.destroy();
    plot = null;
    if (!fields.length || typeof uPlot === "undefined") return;
    note.hidden = true;
    const colours = palette();
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 }, ticks: { stroke: cssVar("--grid") } };
    const opts = {
      ...size(),
      cursor: { drag: { x: false, y: false } },
      // Below the plot, not inside its fixed-height box: the card grows with the legend.
      legend: { live: true, mount: (u, table) => legend.replaceChildren(table) },
      scales: {
        x: { time: true, range: (u, lo, hi) => [Math.max(lo, hi - windowS), hi] },
        y: {
          range: (u, lo, hi) => {
            // the thresholds stay in view, so that the chart shows where "too high" starts
            const limits = thresholds().map((line) => line.value);
            const min = typeof o.min === "number" ? o.min : Math.min(lo, ...limits);
            const max = typeof o.max === "number" ? o.max : Math.max(hi, ...limits);
            const pad = max === min ? 1 : 0;
            return [min - pad, max + pad];
          },
        },
      },
      axes: [
        { ...axis, space: 70, incrs: TIME_STEPS, values: (u, ticks) => ticks.map((t) => clock(t * 1000)) },
        { ...axis, size: labelWidth, values: (u, ticks) => ticks.map(tick) },
      ],
      series: [
        { label: "time", value: (u, t) => (t === null || t === undefined ? "–" : clock(t * 1000)) },
        ...fields.map((name, i) => ({
          label: labelOf(name),
          stroke: colours[i % colours.length],
          width: 2,
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "–" : withUnit(v, unitOf(name))),
        })),
      ],
      hooks: { draw: [drawThresholds] },
    };
    plot = new uPlot(opts, [xs, ...ys], box);
    limits.textContent = thresholds().map((line) => line.text).join(" · ");
    if (xs.length) plot.setLegend({ idx: xs.length - 1 });
  }

  function redraw() {
    if (!fresh || paused) return;
    fresh = false;
    if (!plot) build();
    else plot.setData([xs, ...ys]);
    // The legend shows the latest values unless the pointer is over the chart.
    if (plot && xs.length && !(plot.cursor.left >= 0)) plot.setLegend({ idx: xs.length - 1 });
  }

  let step = 0; // seconds between events, as a running average

  new ResizeObserver(() => {
    if (plot) plot.setSize(size());
  }).observe(box);
  onThemeChange(build);

  return {
    event(type, data, meta) {
      if (type !== eventType || !isObject(data)) return;
      for (const key of Object.keys(data)) if (seen.size < 50) seen.add(key);
      if (!fixed) {
        for (const name of numericFields(data)) {
          if (!fields.includes(name) && fields.length < 8) {
            fields.push(name);
            ys.push(xs.map(() => null)); // a new series: earlier points have no value
            if (plot) {
              plot.destroy();
              plot = null;
            }
          }
        }
      }
      if (!fields.length) {
        note.textContent = noFieldMessage(seen);
        return;
      }
      const x = meta.time / 1000;
      const dt = xs.length ? x - xs[xs.length - 1] : 0;
      if (dt < 0) return; // out of order: uPlot needs sorted x
      if (step && dt > Math.max(5 * step, 2)) {
        // a silence (the server restarted, the feed stalled): a break in the line, not a straight
        // stroke across the time nothing came
        xs.push(x - dt / 2);
        for (const series of ys) series.push(null);
      } else if (dt > 0) {
        step = step ? step * 0.9 + dt * 0.1 : dt; // the usual time between events
      }
      xs.push(x);
      fields.forEach((name, i) => {
        const v = data[name];
        ys[i].push(typeof v === "number" && isFinite(v) ? v : null);
      });
      let drop = 0;
      while (drop < xs.length && (xs[drop] < x - KEPT_S || xs.length - drop > MAX_POINTS)) drop++;
      if (drop) {
        xs.splice(0, drop);
        for (const series of ys) series.splice(0, drop);
      }
      fresh = true;
    },
    flush: redraw, // the page calls it once per animation frame
  };
};
