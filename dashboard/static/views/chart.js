// chart view: a rolling time series of an event's numeric fields, drawn with uPlot.
// Options: fields (list; default: every numeric field seen, up to 8), window (seconds shown,
// default 300), unit (after the y values), min / max (fix the y axis; default: fit the data),
// event (the event type to read, default message).
"use strict";

window.Dashboard.views.chart = function (panel) {
  const { el, isObject, numericFields, formatNumber, clock, palette, cssVar, onThemeChange } = window.Dashboard.util;
  const o = panel.options;
  const fixed = Array.isArray(o.fields) && o.fields.length ? o.fields.map(String) : null;
  const fields = fixed ? fixed.slice() : [];
  const windowS = Number(o.window) > 0 ? Number(o.window) : 300;
  const MAX_POINTS = 5000;
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
  const eventType = typeof o.event === "string" ? o.event : "message";
  const unit = o.unit ? String(o.unit) : "";

  const box = el("div", { className: "chart-box" });
  const legend = el("div", { className: "chart-legend" });
  const note = el("p", { className: "chart-note", text: "Waiting for numeric data." });
  panel.body.append(note, box, legend);
  // Axis ticks stay short whatever the magnitude (1.6K, 2.3M), so they never get cut off.
  const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

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
        x: { time: true },
        y: {
          range: (u, lo, hi) => {
            const min = typeof o.min === "number" ? o.min : lo;
            const max = typeof o.max === "number" ? o.max : hi;
            const pad = max === min ? 1 : 0;
            return [min - pad, max + pad];
          },
        },
      },
      axes: [
        { ...axis, space: 70, incrs: TIME_STEPS, values: (u, ticks) => ticks.map((t) => clock(t * 1000)) },
        { ...axis, size: 60, values: (u, ticks) => ticks.map((v) => compact.format(v) + unit) },
      ],
      series: [
        { label: "time", value: (u, t) => (t === null || t === undefined ? "–" : clock(t * 1000)) },
        ...fields.map((name, i) => ({
          label: name,
          stroke: colours[i % colours.length],
          width: 2,
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "–" : formatNumber(v) + unit),
        })),
      ],
    };
    plot = new uPlot(opts, [xs, ...ys], box);
    if (xs.length) plot.setLegend({ idx: xs.length - 1 });
  }

  function redraw() {
    if (!fresh) return;
    fresh = false;
    if (!plot) build();
    else plot.setData([xs, ...ys]);
    // The legend shows the latest values unless the pointer is over the chart.
    if (plot && xs.length && !(plot.cursor.left >= 0)) plot.setLegend({ idx: xs.length - 1 });
  }

  new ResizeObserver(() => {
    if (plot) plot.setSize(size());
  }).observe(box);
  onThemeChange(build);

  return {
    event(type, data, meta) {
      if (type !== eventType || !isObject(data)) return;
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
      if (!fields.length) return;
      const x = meta.time / 1000;
      if (xs.length && x < xs[xs.length - 1]) return; // out of order: uPlot needs sorted x
      xs.push(x);
      fields.forEach((name, i) => {
        const v = data[name];
        ys[i].push(typeof v === "number" && isFinite(v) ? v : null);
      });
      let drop = 0;
      while (drop < xs.length && (xs[drop] < x - windowS || xs.length - drop > MAX_POINTS)) drop++;
      if (drop) {
        xs.splice(0, drop);
        for (const series of ys) series.splice(0, drop);
      }
      fresh = true;
    },
    flush: redraw, // the page calls it once per animation frame
  };
};
