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

  // Keys that are timestamps or ids, not measurements: left out when fields are picked automatically.
  const NOT_MEASURES = new Set(["ts", "time", "epoch", "timestamp", "id", "seq", "n"]);

  function numericFields(data) {
    if (!isObject(data)) return [];
    return Object.keys(data).filter(
      (k) => typeof data[k] === "number" && isFinite(data[k]) && !NOT_MEASURES.has(k.toLowerCase())
    );
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

  const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");
  function onThemeChange(callback) {
    darkQuery.addEventListener("change", callback);
  }

  window.Dashboard = {
    views,
    util: { el, svg, parse, isObject, idTime, toMillis, ago, clock, formatNumber, numericFields, text, cssVar, palette, onThemeChange },
  };
})();
