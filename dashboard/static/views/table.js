// table view: the latest event as tables, for data that is rows: spend by key and by model,
// topics and their counters. A list of objects is one table, a row per item; an object of
// objects is one table, a row per key; an object whose values are such objects is one table per
// value (with its key as caption) and a table of what is left. Cells are text; numbers are
// humanised by their column's unit.
// Options: rows (the dotted path to the part to show, default: the whole event), columns (a
// list of names, or name -> {label, unit}; default: every key seen, up to 12), event (the event
// type to read, default message). A column named *_usd is in US dollars unless it says otherwise.
"use strict";

window.Dashboard.views.table = function (panel) {
  const { el, isObject, fieldSpecs, withUnit, text } = window.Dashboard.util;
  const o = panel.options;
  const eventType = typeof o.event === "string" ? o.event : "message";
  const specs = fieldSpecs(o.columns);
  const MAX_COLUMNS = 12;
  const MAX_ROWS = 500;
  const box = el("div", { className: "table-box" });
  const note = el("p", { className: "chart-note", text: "Waiting for data." });
  panel.body.append(note, box);
  let latest; // the newest event, shown at the next frame
  let fresh = false;

  const isRows = (value) =>
    (Array.isArray(value) && value.length > 0 && value.every(isObject)) ||
    (isObject(value) && Object.keys(value).length > 0 && Object.values(value).every(isObject));

  function at(data, path) {
    for (const key of path ? String(path).split(".") : []) data = isObject(data) ? data[key] : undefined;
    return data;
  }

  function cell(name, value) {
    const spec = specs.get(name) || {};
    const unit = spec.unit || (/_usd$/.test(name) ? "USD" : "");
    const shown = typeof value === "number" ? withUnit(value, unit) : value === undefined || value === null ? "" : text(value);
    return el("td", { className: typeof value === "number" ? "num" : "", text: shown });
  }

  function table(caption, rows) {
    // rows keyed by name: the name is the first column (not for the one row of totals, keyed "")
    const named = !Array.isArray(rows) && !(Object.keys(rows).length === 1 && "" in rows);
    const entries = Array.isArray(rows) ? rows.map((row, i) => [String(i + 1), row]) : Object.entries(rows);
    const columns = specs.size ? [...specs.keys()] : [];
    if (!columns.length) {
      for (const [, row] of entries) for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
    }
    const shown = columns.slice(0, MAX_COLUMNS);
    const head = el("tr", {}, ...(named ? [el("th", { text: "name", attrs: { scope: "col" } })] : []));
    for (const name of shown) head.append(el("th", { text: (specs.get(name) || {}).label || name, attrs: { scope: "col" } }));
    const body = el("tbody");
    for (const [name, row] of entries.slice(0, MAX_ROWS)) {
      const tr = el("tr", {}, ...(named ? [el("th", { text: name, attrs: { scope: "row" } })] : []));
      for (const column of shown) tr.append(cell(column, row[column]));
      body.append(tr);
    }
    return el("table", { className: "data-table" }, caption ? el("caption", { text: caption }) : null, el("thead", {}, head), body);
  }

  function render(data) {
    const part = at(data, o.rows);
    if (isRows(part)) return [table("", part)];
    if (!isObject(part)) return [];
    const tables = [];
    const rest = {};
    for (const [key, value] of Object.entries(part)) {
      if (isRows(value)) tables.push(table(key, value));
      else if (!isObject(value) && !Array.isArray(value)) rest[key] = value;
    }
    if (Object.keys(rest).length) tables.unshift(table("", { "": rest }));
    return tables;
  }

  return {
    event(type, data) {
      if (type !== eventType) return;
      latest = data;
      fresh = true;
    },
    flush() {
      if (!fresh) return;
      fresh = false;
      const tables = render(latest);
      note.hidden = tables.length > 0;
      if (!tables.length) note.textContent = "Nothing to tabulate in the latest event: it holds no rows (see the table view's options.rows).";
      box.replaceChildren(...tables);
    },
  };
};
