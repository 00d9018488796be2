// The live dashboard: one multiplexed EventSource for every panel; feed text lands as text only.
"use strict";

(function () {
  const grid = document.getElementById("panels");
  const connection = document.getElementById("connection");
  const panels = new Map();
  for (const el of document.querySelectorAll(".panel")) {
    const topic = el.dataset.topic;
    if (!panels.has(topic)) panels.set(topic, []);
    panels.get(topic).push({
      el,
      latest: el.querySelector('[data-role="latest"]'),
      status: el.querySelector('[data-role="status"]'),
      age: el.querySelector('[data-role="age"]'),
      updated: 0,
    });
  }

  function parse(data) {
    try { return JSON.parse(data); } catch (e) { return data; }
  }

  function show(topic, type, event) {
    const value = parse(event.data);
    for (const panel of panels.get(topic) || []) {
      if (type === "status") {
        panel.status.textContent = value && value.state ? value.state : String(value);
        panel.el.dataset.status = panel.status.textContent;
        continue;
      }
      panel.latest.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
      panel.el.dataset.lastId = event.lastEventId;
      panel.updated = Date.now();
      if (panel.el.dataset.status !== "restarting") panel.status.textContent = "live";
    }
  }

  function setConnection(state) {
    connection.dataset.state = state;
    connection.textContent = state;
  }

  const topics = JSON.parse(grid.dataset.topics);
  const query = topics.map((t) => "topic=" + encodeURIComponent(t)).join("&");
  const source = new EventSource("/sse?" + query);
  for (const topic of topics) {
    source.addEventListener(topic, (e) => show(topic, "message", e));
  }
  for (const [topic, list] of panels) {
    for (const type of JSON.parse(list[0].el.dataset.events)) {
      source.addEventListener(topic + ":" + type, (e) => show(topic, type, e));
    }
  }
  source.onopen = () => setConnection("live");
  source.onerror = () => setConnection(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");

  setInterval(() => {
    const now = Date.now();
    for (const list of panels.values()) {
      for (const panel of list) {
        if (panel.updated) panel.age.textContent = Math.round((now - panel.updated) / 1000) + "s ago";
      }
    }
  }, 1000);
})();
