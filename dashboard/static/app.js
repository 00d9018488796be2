// The live dashboard: one multiplexed EventSource for every panel on the page.
//
// `event:` is the topic (`cpu`) or `topic:type` (`chat:token`, `cpu:status`). Each event has an id;
// the browser resumes with Last-Event-ID by itself, and when it gives up (the server answered with
// an error) we open a new stream with `?last_event_id=` so that nothing is missed or repeated.
// When the server cannot replay all we missed, a `gap` event says so and the panel shows it.
"use strict";

(function () {
  const { views, util } = window.Dashboard;
  const grid = document.getElementById("panels");
  const connection = document.getElementById("connection");
  const OFFLINE_AFTER_MS = 10000; // reconnecting this long -> "offline" (still retrying)

  // -- panels ------------------------------------------------------------------------------------
  const byTopic = new Map();
  const lastId = new Map(); // topic -> last id shown: replays never show an event twice

  for (const el of document.querySelectorAll(".panel")) {
    const panel = {
      el,
      topic: el.dataset.topic,
      view: el.dataset.view,
      events: JSON.parse(el.dataset.events || "[]"),
      options: JSON.parse(el.dataset.options || "{}"),
      body: el.querySelector('[data-role="body"]'),
      statusEl: el.querySelector('[data-role="status"]'),
      ageEl: el.querySelector('[data-role="age"]'),
      errorEl: el.querySelector('[data-role="error"]'),
      noticeEl: el.querySelector('[data-role="notice"]'),
      updated: 0,
      state: el.querySelector('[data-role="status"]').dataset.state || "waiting",
    };
    const make = views[panel.view] || views.json;
    try {
      panel.handler = make(panel);
    } catch (err) {
      console.error("panel", panel.topic, "view", panel.view, "failed to start:", err);
      panel.handler = views.json(panel);
    }
    if (!byTopic.has(panel.topic)) byTopic.set(panel.topic, []);
    byTopic.get(panel.topic).push(panel);
  }

  function setState(panel, state, detail) {
    panel.state = state;
    panel.el.dataset.status = state;
    panel.statusEl.dataset.state = state;
    panel.statusEl.textContent = state;
    panel.errorEl.hidden = !detail;
    panel.errorEl.textContent = detail || "";
  }

  function showStatus(panel, status) {
    const state = util.isObject(status) && typeof status.state === "string" ? status.state : "unknown";
    let detail = util.isObject(status) && status.error ? String(status.error) : "";
    if (state === "restarting") {
      detail = detail || "the feed failed";
      if (typeof status.retry_in === "number") detail += " (retry in " + util.formatNumber(status.retry_in) + "s)";
    }
    setState(panel, state, detail);
    panel.statusEl.title = util.isObject(status) && status.restarts ? "restarts: " + status.restarts : "";
  }

  // A reload of the server's config removed the topic: its panels go, and so does the topic from
  // the stream the page opens next (the server would refuse a stream naming it).
  const isRemoved = (status) => util.isObject(status) && status.state === "removed";

  function removeTopic(topic) {
    for (const panel of byTopic.get(topic) || []) {
      dirty.delete(panel);
      panel.el.remove();
    }
    byTopic.delete(topic);
    lastId.delete(topic);
    const at = topics.indexOf(topic);
    if (at >= 0) topics.splice(at, 1);
  }

  // The server could not replay everything since our last event: it left history ("expired"),
  // or our id is not one of its own ("unknown_id", and it replays its history from the start).
  function showGap(topic, gap, id) {
    const expired = util.isObject(gap) && gap.reason === "expired";
    if (expired) lastId.set(topic, Math.max(lastId.get(topic) || 0, id));
    else lastId.delete(topic); // the replay starts below the id we had: show it
    const text = expired
      ? "Events were lost while disconnected (more than the history keeps)"
      : "Reconnected to a server that did not know where we were: history replayed";
    for (const panel of byTopic.get(topic) || []) {
      panel.noticeEl.hidden = false;
      panel.noticeEl.textContent = text + " at " + util.clock(Date.now()) + ".";
      panel.noticeEl.title = util.isObject(gap) ? String(gap.message || "") : "";
      panel.el.dataset.gap = expired ? "expired" : "unknown_id";
    }
  }

  function deliver(topic, type, event) {
    // A topic named "error" or "open" shares its name with the EventSource's own events.
    if (!(event instanceof MessageEvent)) return;
    if (type === "gap") return showGap(topic, util.parse(event.data), Number(event.lastEventId));
    if (type === "status" && isRemoved(util.parse(event.data))) return removeTopic(topic); // it has no id
    const id = Number(event.lastEventId);
    if (id && id <= (lastId.get(topic) || 0)) return; // already shown
    if (id) lastId.set(topic, id);
    const data = util.parse(event.data);
    const meta = { id: event.lastEventId, time: util.idTime(event.lastEventId) || Date.now(), type };
    for (const panel of byTopic.get(topic) || []) {
      if (type === "status") {
        showStatus(panel, data);
        if (panel.handler.status) panel.handler.status(data, meta);
        continue;
      }
      panel.updated = Math.max(panel.updated, meta.time);
      // The state the server rendered holds until the first event shows the feed at work.
      if (!panel.el.dataset.status || panel.state === "waiting" || panel.state === "ready") {
        setState(panel, "running");
      }
      try {
        panel.handler.event(type, data, meta); // views only take note here...
      } catch (err) {
        console.error("panel", topic, "could not show an event:", err);
      }
      if (panel.handler.flush) dirty.add(panel);
    }
    schedule();
  }

  // ...and change the page once per animation frame per panel, however many events came, at
  // most every FRAME_MS: each frame repaints what changed, and at 60 a second that alone can take
  // a slow machine's whole main thread.
  const FRAME_MS = 100;
  const dirty = new Set();
  let scheduled = false;
  let lastDraw = -Infinity;

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    const wait = lastDraw + FRAME_MS - performance.now();
    if (wait > 0) setTimeout(() => requestAnimationFrame(draw), wait);
    else requestAnimationFrame(draw);
  }

  function draw(now) {
    scheduled = false;
    lastDraw = now;
    updateAges(false);
    // Writes first, then what must read the layout (a log scrolling down): one layout per frame.
    const reads = [];
    for (const panel of dirty) {
      try {
        const then = panel.handler.flush();
        if (typeof then === "function") reads.push(then);
      } catch (err) {
        console.error("panel", panel.topic, "could not show its events:", err);
      }
    }
    dirty.clear();
    for (const read of reads) read();
  }

  function updateAges(tick) {
    const now = Date.now();
    for (const list of byTopic.values()) {
      for (const panel of list) {
        if (panel.updated) {
          const label = util.ago(panel.updated, now);
          if (panel.ageEl.textContent !== label) panel.ageEl.textContent = label;
          const stale = typeof panel.options.stale_after === "number" && now - panel.updated > panel.options.stale_after * 1000;
          if (panel.el.classList.contains("stale") !== stale) panel.el.classList.toggle("stale", stale);
        }
        if (tick && panel.handler.tick) panel.handler.tick(now);
      }
    }
  }

  // Presence frames carry no id of their own: they bypass deliver() and its replay check.
  function showWatching(list, event) {
    if (!(event instanceof MessageEvent)) return;
    const data = util.parse(event.data);
    if (!util.isObject(data) || typeof data.watching !== "number") return;
    for (const panel of list) {
      const el = panel.el.querySelector('[data-role="watching"]');
      el.textContent = data.watching + " watching";
      el.hidden = false;
    }
  }

  // -- the connection ----------------------------------------------------------------------------
  const topics = JSON.parse(grid.dataset.topics || "[]");
  let source = null;
  let downSince = 0;
  let manualRetry = 0;

  function setConnection(state) {
    if (connection.dataset.state === state) return;
    connection.dataset.state = state;
    connection.textContent = state;
  }

  function resumeFrom() {
    let max = 0;
    for (const id of lastId.values()) max = Math.max(max, id);
    return max;
  }

  // Whether the stream was refused because the viewer's session ended (401) or lost a topic (403):
  // retrying cannot help then, so the page says what to do instead of trying for ever.
  async function signedOut() {
    const probe = new AbortController();
    const response = await fetch(streamUrl(), { signal: probe.signal, credentials: "same-origin" });
    probe.abort();
    if (response.status !== 401 && response.status !== 403) return false;
    let message = "";
    try {
      message = (await response.json()).error.message;
    } catch (e) {
      message = "";
    }
    setConnection("signed out");
    const notice = document.createElement("p");
    notice.className = "empty";
    notice.setAttribute("role", "alert");
    notice.textContent = (message || "Access was refused") + ". Open the dashboard again with a new link.";
    grid.prepend(notice);
    return true;
  }

  function streamUrl() {
    const params = topics.map((t) => "topic=" + encodeURIComponent(t));
    params.push("presence=1"); // how many watch each topic, pushed when it changes
    const from = resumeFrom();
    if (from) params.push("last_event_id=" + from);
    return (document.documentElement.dataset.root || "") + "sse?" + params.join("&");
  }

  function connect() {
    source = new EventSource(streamUrl());
    for (const [topic, list] of byTopic) {
      source.addEventListener(topic, (e) => deliver(topic, "message", e));
      for (const type of list[0].events) {
        source.addEventListener(topic + ":" + type, (e) => deliver(topic, type, e));
      }
      source.addEventListener(topic + ":presence", (e) => showWatching(list, e));
    }
    source.onopen = (e) => {
      if (e instanceof MessageEvent) return; // an event of a topic named "open"
      downSince = 0;
      manualRetry = 0;
      setConnection("live");
    };
    source.onerror = (e) => {
      if (e instanceof MessageEvent) return; // an event of a topic named "error"
      if (!downSince) downSince = Date.now();
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status, e.g. 503 while the server stops or sheds new
        // streams): retry ourselves, jittered so that a crowd of pages does not come back at once.
        setConnection("offline");
        source = null;
        manualRetry = Math.min(manualRetry + 1, 6);
        const retry = () => setTimeout(connect, 500 * 2 ** (manualRetry - 1) * (0.5 + Math.random()));
        signedOut().then((gone) => gone || retry(), retry);
      } else {
        setConnection(Date.now() - downSince > OFFLINE_AFTER_MS ? "offline" : "reconnecting");
      }
    };
  }

  // -- the viewer's tools: theme, full screen ------------------------------------------------------
  const themeButton = document.getElementById("theme");
  function showTheme() {
    themeButton.textContent = "theme: " + util.theme();
  }
  if (themeButton) {
    showTheme();
    themeButton.addEventListener("click", () => {
      util.setTheme(util.THEMES[(util.THEMES.indexOf(util.theme()) + 1) % util.THEMES.length]);
      showTheme();
    });
  }
  for (const button of document.querySelectorAll('[data-role="fullscreen"]')) {
    button.addEventListener("click", () => {
      const section = button.closest(".panel");
      if (document.fullscreenElement === section) document.exitFullscreen();
      else section.requestFullscreen().catch((err) => console.error("full screen refused:", err));
    });
  }

  if (topics.length) connect();
  setInterval(() => {
    updateAges(true);
    if (downSince && source && source.readyState !== EventSource.OPEN && Date.now() - downSince > OFFLINE_AFTER_MS) {
      setConnection("offline");
    }
  }, 1000);
  window.addEventListener("offline", () => setConnection("offline"));
})();
