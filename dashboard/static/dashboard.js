// Shared helpers and the view registry. Views live in static/views/<name>.js and register here.
// Rule for every view: feed data reaches the page as text (textContent, Text nodes, attributes
// set through the DOM), never as HTML.
"use strict";

(function () {
  const views = {};

  // el("div", {className: "x", text: "y", dataset: {...}, attrs: {...}}, child, "text child")
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.className) node.className = p.className;
    if (p.text !== undefined && p.text !== null) node.textContent = String(p.text);
    if (p.title) node.title = String(p.title);
    for (const [k, v] of Object.entries(p.dataset || {})) node.dataset[k] = String(v);
    for (const [k, v] of Object.entries(p.attrs || {})) node.setAttribute(k, String(v));
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return text;
    }
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  // Event ids are microseconds since the epoch (see the broker): the time an event was published.
  function idTime(id) {
    const n = Number(id);
    return n > 1e15 && n < 1e16 ? n / 1000 : null;
  }

  // A timestamp as feeds send it: epoch seconds, epoch milliseconds or an ISO string -> ms, or null.
  // A time in milliseconds, or null: what no Date can hold (|t| over 8.64e15 ms) is no time at all.
  function toMillis(ts) {
    let t = null;
    if (typeof ts === "number" && isFinite(ts)) t = ts > 1e12 ? ts : ts * 1000;
    else if (typeof ts === "string" && ts) t = Date.parse(ts);
    return typeof t === "number" && Math.abs(t) <= 8.64e15 ? t : null;
  }

  function ago(ms, now) {
    const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
    if (s < 2) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  function clock(ms) {
    const d = new Date(ms);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }

  function formatNumber(value, decimals) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    if (typeof decimals === "number") return value.toFixed(decimals);
    const abs = Math.abs(value);
    const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
    return Number(value.toFixed(digits)).toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  // Keys that hold a time, not a measurement: left out when fields are picked automatically (the
  // README says so). Any other numeric field is shown; `fields` picks others.
  const TIME_KEYS = new Set(["ts", "time", "epoch", "timestamp"]);

  function numericFields(data) {
    if (!isObject(data)) return [];
    return Object.keys(data).filter((k) => typeof data[k] === "number" && isFinite(data[k]) && !TIME_KEYS.has(k.toLowerCase()));
  }

  // What a panel's `fields` option says of each field: {name: {label, unit, warn, crit, below}},
  // from a list of names or a mapping of name -> {label, unit, thresholds: {warn, crit, below}}.
  function fieldSpecs(option) {
    const specs = new Map();
    const entries = Array.isArray(option) ? option.map((name) => [name, {}]) : isObject(option) ? Object.entries(option) : [];
    for (const [name, raw] of entries) {
      const spec = isObject(raw) ? raw : {};
      const limits = isObject(spec.thresholds) ? spec.thresholds : {};
      specs.set(String(name), {
        label: typeof spec.label === "string" ? spec.label : String(name),
        unit: typeof spec.unit === "string" ? spec.unit : "",
        warn: typeof limits.warn === "number" ? limits.warn : null,
        crit: typeof limits.crit === "number" ? limits.crit : null,
        below: limits.below === true,
      });
    }
    return specs;
  }

  // Units shown with a value scaled to read at a glance: 2268 "B/s" -> "2.27 kB/s".
  const SCALED = {
    B: ["B", "kB", "MB", "GB", "TB", "PB"],
    bytes: ["B", "kB", "MB", "GB", "TB", "PB"],
    "B/s": ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"],
    "bytes/s": ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"],
  };

  // A value with its unit, humanised: bytes and bytes/s by 1000s, ms as s past a second, s as
  // min and h, USD as $, % and any other unit as given; no unit: a plain number.
  function withUnit(value, unit, decimals) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    const abs = Math.abs(value);
    if (SCALED[unit]) {
      const steps = SCALED[unit];
      let i = 0;
      let v = value;
      while (Math.abs(v) >= 1000 && i < steps.length - 1) {
        v /= 1000;
        i++;
      }
      return formatNumber(v, i ? decimals : 0) + " " + steps[i];
    }
    if (unit === "ms" && abs >= 1000) return withUnit(value / 1000, "s", decimals);
    if (unit === "s" && abs >= 3600) return formatNumber(value / 3600, decimals) + " h";
    if (unit === "s" && abs >= 60) return formatNumber(value / 60, decimals) + " min";
    if (unit === "USD" || unit === "$") return "$" + formatNumber(value, typeof decimals === "number" ? decimals : cents(abs));
    if (unit === "%") return formatNumber(value, decimals) + "%";
    return formatNumber(value, decimals) + (unit ? " " + unit : "");
  }

  // Decimals for a sum in dollars: cents from $1, 4 places below, and two significant digits
  // below a tenth of a cent, so a completion's $0.000046 does not read as $0.0000.
  function cents(abs) {
    if (abs >= 1) return 2;
    if (abs >= 0.001 || abs === 0) return 4;
    return Math.min(12, 1 - Math.floor(Math.log10(abs)));
  }

  // The level a value is at, by its thresholds: "crit", "warn" or "ok" (below: low values are bad).
  function level(value, spec) {
    const hit = (t) => typeof t === "number" && (spec.below ? value <= t : value >= t);
    if (hit(spec.crit)) return "crit";
    if (hit(spec.warn)) return "warn";
    return "ok";
  }

  // What an empty numeric panel says once events came: the fields it saw, and how to pick one.
  function noFieldMessage(seen) {
    const names = [...seen].slice(0, 12);
    if (!names.length) return "The events carry no fields: send objects such as {\"value\": 42}.";
    return "No numeric field to show in the events (fields seen: " + names.join(", ") + "): pick one with the panel's options.fields.";
  }

  function text(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  // The page's colours live in CSS custom properties, so both themes come from style.css.
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function palette() {
    const colours = [];
    for (let i = 1; i <= 8; i++) colours.push(cssVar("--series-" + i) || "#888");
    return colours;
  }

  // The theme: as the system ("auto"), or what the viewer chose, remembered in this browser.
  const THEME_KEY = "dashboard-theme";
  const THEMES = ["auto", "light", "dark"];
  const themeListeners = [];
  function onThemeChange(callback) {
    themeListeners.push(callback);
  }
  function theme() {
    const saved = localStorage.getItem(THEME_KEY);
    return THEMES.includes(saved) ? saved : "auto";
  }
  function setTheme(choice) {
    if (choice === "auto") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = choice;
    localStorage.setItem(THEME_KEY, choice);
    for (const callback of themeListeners) callback();
  }
  setTheme(theme());
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    for (const callback of themeListeners) callback();
  });

  window.Dashboard = {
    views,
    util: {
      el, svg, parse, isObject, idTime, toMillis, ago, clock, formatNumber, numericFields, fieldSpecs, withUnit, level,
      noFieldMessage, text, cssVar, palette, onThemeChange, theme, setTheme, THEMES,
    },
  };
})();
