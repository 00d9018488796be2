// chat view: the AI panel. A prompt box POSTs {"prompt"} to feeds/<topic>/prompt; the answer
// streams in as text from `token` events; Stop POSTs to feeds/<topic>/stop.
// Events: prompt {completion, prompt, model}, token {completion, text},
// done {completion, finish_reason, stopped, usage, ttft_ms, tokens_per_s, duration_ms, provider, simulated},
// error {completion, code, message (for the person who asked), detail (for operators)}.
"use strict";

window.Dashboard.views.chat = function (panel) {
  const { el, isObject, formatNumber, text } = window.Dashboard.util;
  const $ = (role) => panel.body.querySelector('[data-role="' + role + '"]');
  const transcript = $("transcript");
  const meta = $("meta");
  const form = $("form");
  const input = form.querySelector("textarea");
  const send = $("send");
  const stop = $("stop");
  const note = $("note");
  const base = (document.documentElement.dataset.root || "") + "feeds/" + encodeURIComponent(panel.topic) + "/";
  const completions = new Map(); // completion id -> {node, answer (Text), state}
  let mine = null; // the completion this page asked for, while it streams

  function isSimulated(info) {
    return info.simulated === true || (typeof info.model === "string" && /simulat/i.test(info.model));
  }

  function nearBottom() {
    return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  }

  function scrolled(fn) {
    const stick = nearBottom();
    fn();
    if (stick) transcript.scrollTop = transcript.scrollHeight;
  }

  function badge(label, className) {
    return el("span", { className: "badge " + (className || ""), text: label });
  }

  function exchange(id, prompt, model) {
    const answer = document.createTextNode("");
    const who = el("p", { className: "chat-who" }, model ? el("span", { text: text(model) }) : "assistant");
    const bubble = el("div", { className: "chat-answer", dataset: { state: "streaming" } }, who, el("p", { className: "chat-text" }, answer));
    const stats = el("p", { className: "chat-stats" });
    const node = el(
      "article",
      { className: "chat-exchange", dataset: { completion: id } },
      el("p", { className: "chat-prompt", text: prompt }),
      bubble,
      stats
    );
    const entry = { node, bubble, who, answer, stats, state: "streaming" };
    if (model && isSimulated({ model })) who.append(" ", badge("simulated", "badge-sim"));
    completions.set(id, entry);
    scrolled(() => transcript.append(node));
    return entry;
  }

  function entryFor(id) {
    return completions.get(id) || exchange(id, "", "");
  }

  function streaming() {
    if (mine && completions.has(mine) && completions.get(mine).state === "streaming") return mine;
    let last = null;
    for (const [id, entry] of completions) if (entry.state === "streaming") last = id;
    return last;
  }

  function refresh() {
    stop.disabled = !streaming();
  }

  function finish(entry, state) {
    entry.state = state;
    entry.bubble.dataset.state = state;
    if (mine && completions.get(mine) === entry) mine = null;
    refresh();
  }

  function showMeta(info) {
    meta.replaceChildren();
    const parts = [];
    if (info.provider || info.model) parts.push(el("span", { text: [info.provider, info.model].filter(Boolean).map(text).join(" · ") }));
    if (isSimulated(info)) parts.push(badge("simulated", "badge-sim"));
    if (typeof info.ttft_ms === "number") parts.push(el("span", { className: "chat-ttft", text: "TTFT " + formatNumber(info.ttft_ms, 0) + " ms" }));
    if (typeof info.tokens_per_s === "number") parts.push(el("span", { className: "chat-tps", text: formatNumber(info.tokens_per_s, 1) + " tokens/s" }));
    meta.append(...parts);
  }

  function stats(info) {
    const bits = [];
    if (typeof info.ttft_ms === "number") bits.push("TTFT " + formatNumber(info.ttft_ms, 0) + " ms");
    if (typeof info.tokens_per_s === "number") bits.push(formatNumber(info.tokens_per_s, 1) + " tokens/s");
    if (isObject(info.usage) && typeof info.usage.completion_tokens === "number") bits.push(info.usage.completion_tokens + " tokens");
    if (typeof info.duration_ms === "number") bits.push(formatNumber(info.duration_ms / 1000, 1) + " s");
    if (typeof info.cost_usd === "number" && info.cost_usd > 0) bits.push("$" + info.cost_usd.toFixed(4));
    if (info.stopped) bits.push("stopped");
    else if (info.finish_reason && info.finish_reason !== "stop") bits.push(text(info.finish_reason));
    return bits.join(" · ");
  }

  function promptHeaders() {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    // With api tokens on the server, the page proves it was served by it (bound to its cookie).
    const proof = document.getElementById("panels").dataset.promptProof;
    if (proof) headers["X-Dashboard-Prompt"] = proof;
    return headers;
  }

  async function post(path, body) {
    const response = await fetch(base + path, {
      method: "POST",
      headers: promptHeaders(),
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    let json = null;
    try {
      json = await response.json();
    } catch (e) {
      json = null;
    }
    return { response, json };
  }

  function errorText(result, fallback) {
    const err = result.json && result.json.error;
    return err && err.message ? String(err.message) : fallback + " (HTTP " + result.response.status + ")";
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const prompt = input.value.trim();
    if (!prompt) return;
    send.disabled = true;
    note.textContent = "";
    try {
      const result = await post("prompt", { prompt });
      if (result.response.status === 202 && result.json && result.json.completion !== undefined) {
        mine = String(result.json.completion);
        input.value = "";
      } else if (result.response.status === 429) {
        note.textContent = "Busy: too many prompts are waiting. Try again in a moment.";
      } else {
        note.textContent = errorText(result, "The prompt was not accepted");
      }
    } catch (err) {
      note.textContent = "Could not reach the server.";
    } finally {
      send.disabled = false;
      refresh();
    }
  });

  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  stop.addEventListener("click", async () => {
    const id = streaming();
    if (!id) return;
    stop.disabled = true;
    try {
      const result = await post("stop", { completion: id });
      if (!result.response.ok) note.textContent = errorText(result, "Could not stop the answer");
    } catch (err) {
      note.textContent = "Could not reach the server.";
    }
    refresh();
  });

  return {
    event(type, data) {
      if (!isObject(data)) return;
      const id = data.completion !== undefined ? String(data.completion) : "";
      if (type === "prompt") {
        if (!completions.has(id)) exchange(id, text(data.prompt === undefined ? "" : data.prompt), data.model ? text(data.model) : "");
        showMeta({ model: data.model });
      } else if (type === "token") {
        const entry = entryFor(id);
        if (typeof data.text === "string") scrolled(() => entry.answer.appendData(data.text));
      } else if (type === "done") {
        const entry = entryFor(id);
        entry.stats.textContent = stats(data);
        if (isSimulated(data) && !entry.who.querySelector(".badge-sim")) entry.who.append(" ", badge("simulated", "badge-sim"));
        finish(entry, data.stopped ? "stopped" : "done");
        showMeta(data);
      } else if (type === "error") {
        const entry = entryFor(id);
        // `message` says what failed and whether to retry; the details (`detail`) are for operators.
        const message = typeof data.message === "string" && data.message ? data.message : "The answer failed. Try again.";
        entry.bubble.append(el("p", { className: "chat-error", text: message }));
        finish(entry, "error");
      }
      refresh();
    },
  };
};
