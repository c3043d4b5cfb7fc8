/*
 * raychat web chat: one page, no build step, no third-party code, no requests off its own origin.
 *
 * Talks to the serving app over one WebSocket at ws(s)://<same host>/ws/chat (protocol: see
 * docs / contracts): sends {"type":"chat",messages,params} and {"type":"stop"}; receives start, token,
 * tool_call, tool_result, done (usage + timings) and error (code + message). One generation at a time per
 * socket; a dropped socket reconnects on its own with exponential backoff (0.5 s doubling to 15 s, ±20 %).
 *
 * API key: when the user sets one in Settings it travels in the WebSocket handshake as the subprotocol
 * "raychat.bearer.<key>", offered together with "raychat.v1" (browsers cannot set an Authorization header on a
 * WebSocket). The server must select one of the offered subprotocols (raychat serve picks "raychat.v1"), or
 * the browser drops the connection. Keys are limited to HTTP token characters (letters, digits and
 * !#$%&'*+-.^_`|~). `raychat serve` also accepts the key once as /?api_key=... and keeps it in a cookie.
 *
 * State lives in localStorage: conversations ("raychat.conversations.v1"), the open one
 * ("raychat.active.v1") and settings ("raychat.settings.v1"). Model output is rendered by RaychatMarkdown,
 * which only ever creates text nodes; user text is shown with textContent. Nothing here uses innerHTML.
 */
(function () {
  "use strict";

  const STORE_CONVS = "raychat.conversations.v1";
  const STORE_ACTIVE = "raychat.active.v1";
  const STORE_SETTINGS = "raychat.settings.v1";
  const DEFAULT_SETTINGS = Object.freeze({
    // max_tokens "" = let the server choose (it picks what still fits the model's context window).
    temperature: 0.8, top_k: 50, top_p: 1.0, max_tokens: "", seed: "", system_prompt: "", api_key: "",
  });
  const TOKEN_CHARS_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const STOP_GRACE_MS = 10000; // if the server never confirms a stop, finish locally after this long
  const PART_TO_WIRE = { text: "text", tool_call: "python", tool_result: "python_output" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    body: document.body, sidebar: $("sidebar"), scrim: $("scrim"), menuBtn: $("menu-btn"),
    newChat: $("new-chat"), convList: $("conv-list"), convEmpty: $("conv-empty"), title: $("conv-title"),
    connText: $("conn-text"), connRetry: $("conn-retry"), banner: $("banner"), bannerText: $("banner-text"),
    bannerAction: $("banner-action"), bannerClose: $("banner-close"), messages: $("messages"),
    emptyState: $("empty-state"), thread: $("thread"), composer: $("composer"), input: $("composer-input"),
    sendBtn: $("send-btn"), settings: $("settings"), settingsForm: $("settings-form"),
    settingsError: $("settings-error"),
  };

  const state = {
    convs: [],          // [{id, title, created, updated, messages}], newest first
    activeId: null,
    draft: null,        // a new chat with no messages yet: shown, but not saved or listed
    settings: { ...DEFAULT_SETTINGS },
    gen: null,          // the running generation: {convId, msg, el, stopping, stopTimer}
    ws: null,
    conn: "connecting", // connecting | online | offline | unauthorized
    retries: 0,
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    reconnectAfterGen: false,
    deleted: new Set(),   // ids this tab deleted, so merging with other tabs' writes cannot bring them back
  };

  // ------------------------------------------------------------------ storage

  function loadJSON(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw ? JSON.parse(raw) : fallback;
    } catch (_err) {
      return fallback;
    }
  }

  function saveJSON(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
      return true;
    } catch (_err) {
      showBanner("Could not save to this browser's storage (it may be full). Delete some old chats.");
      return false;
    }
  }

  let saveTimer = null;
  function saveConvs(soon) {
    clearTimeout(saveTimer);
    if (soon) { saveTimer = setTimeout(() => saveConvs(false), 500); return; }
    mergeFromOtherTabs();
    saveJSON(STORE_CONVS, state.convs);
    try { localStorage.setItem(STORE_ACTIVE, state.activeId || ""); } catch (_err) { /* reported above */ }
  }

  function storedConvs() {
    const convs = loadJSON(STORE_CONVS, []);
    return Array.isArray(convs) ? convs.filter((c) => c && c.id && Array.isArray(c.messages)) : [];
  }

  /**
   * Another tab may have written chats since this one loaded. Before overwriting the store, keep the newer
   * copy of each conversation (by `updated`), add the ones this tab has not seen, and drop the ones this tab
   * deleted. The conversation this tab is streaming into always keeps this tab's copy.
   */
  function mergeFromOtherTabs() {
    const mine = new Map(state.convs.map((c) => [c.id, c]));
    let changed = false;
    for (const c of storedConvs()) {
      if (state.deleted.has(c.id) || (state.gen && state.gen.convId === c.id)) continue;
      const own = mine.get(c.id);
      if (!own) { state.convs.push(c); changed = true; } else if (c.updated > own.updated) {
        state.convs[state.convs.indexOf(own)] = c;
        changed = true;
      }
    }
    if (changed) {
      state.convs.sort((a, b) => b.updated - a.updated);
      renderSidebar();
    }
  }

  function loadState() {
    state.convs = storedConvs();
    for (const conv of state.convs) {
      // A reply that was streaming when the page closed can never finish now.
      for (const m of conv.messages) {
        if (m.role === "assistant" && m.status === "streaming") {
          m.status = "error";
          m.error = { code: "disconnected", message: "" };
        }
      }
    }
    const saved = loadJSON(STORE_SETTINGS, {});
    state.settings = { ...DEFAULT_SETTINGS, ...(saved && typeof saved === "object" ? saved : {}) };
    let active = null;
    try { active = localStorage.getItem(STORE_ACTIVE); } catch (_err) { active = null; }
    state.activeId = state.convs.some((c) => c.id === active) ? active : null;
    if (!state.activeId) newDraft();
  }

  function newId() {
    // crypto.randomUUID only exists in secure contexts; the page is often served over plain http on a LAN.
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
  }

  function newDraft() {
    state.draft = { id: newId(), title: "", created: Date.now(), updated: Date.now(), messages: [] };
    state.activeId = state.draft.id;
  }

  function activeConv() {
    if (state.draft && state.draft.id === state.activeId) return state.draft;
    return state.convs.find((c) => c.id === state.activeId) || null;
  }

  function findConv(id) {
    if (state.draft && state.draft.id === id) return state.draft;
    return state.convs.find((c) => c.id === id) || null;
  }

  function touch(conv) {
    conv.updated = Date.now();
    if (state.draft === conv) {
      state.convs.unshift(conv);
      state.draft = null;
    } else {
      state.convs.sort((a, b) => b.updated - a.updated);
    }
  }

  function makeTitle(text) {
    const flat = text.replace(/\s+/g, " ").trim();
    return flat.length > 48 ? flat.slice(0, 47) + "…" : flat || "Untitled chat";
  }

  // ------------------------------------------------------------------ connection

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat";
  }

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    if (state.ws) return;
    setConn("connecting");
    const key = state.settings.api_key;
    let ws;
    try {
      // "raychat.v1" is what the server selects (so the key is not echoed back); the bearer entry carries the key.
      ws = key ? new WebSocket(wsUrl(), ["raychat.v1", "raychat.bearer." + key]) : new WebSocket(wsUrl());
    } catch (_err) {
      setConn("unauthorized", "The API key has characters a browser cannot send; check it in Settings.");
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      if (state.ws !== ws) return;
      state.retries = 0;
      setConn("online");
      hideBanner("connection");
    };
    ws.onmessage = (ev) => { if (state.ws === ws) onServerMessage(ev.data); };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (state.gen) finishGeneration("error", null, { code: "disconnected", message: "" });
      // 1008 (policy violation) and 4401/4403 are what a server closes with for a missing or wrong key.
      if (state.conn === "unauthorized" || ev.code === 1008 || ev.code === 4401 || ev.code === 4403) {
        setConn("unauthorized");
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.retries);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    state.retries += 1;
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(connect, delay);
    setConn("offline");
    clearInterval(state.countdown);
    state.countdown = setInterval(() => setConn("offline"), 1000);
    if (state.retries >= 3) {
      showBanner("Can't reach the server. Retrying automatically" +
        (state.settings.api_key ? "." : "; if it needs an API key, set one in Settings."), "Retry now", reconnectNow,
        "connection");
    }
  }

  function reconnectNow() {
    if (state.ws) {
      const old = state.ws;
      state.ws = null;
      old.close();
    }
    state.retries = 0;
    connect();
  }

  function setConn(conn, message) {
    state.conn = conn;
    ui.body.dataset.connection = conn;
    let text = "Connected";
    if (conn === "connecting") text = "Connecting…";
    if (conn === "offline") {
      const secs = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = secs > 0 ? `Disconnected · retrying in ${secs} s` : "Disconnected · retrying…";
    }
    if (conn === "unauthorized") {
      text = "Not authorized";
      clearInterval(state.countdown);
      showBanner(message || "The server refused the connection: it needs a valid API key. Set it in Settings.",
        "Open settings", openSettings, "connection");
    }
    ui.connText.textContent = text;
    ui.connRetry.hidden = !(conn === "offline" || conn === "unauthorized");
    updateComposer();
  }

  function send(obj) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------------ protocol

  function onServerMessage(raw) {
    let msg;
    try { msg = JSON.parse(raw); } catch (_err) { return; }
    if (!msg || typeof msg !== "object") return;
    const gen = state.gen;
    switch (msg.type) {
      case "start":
        if (gen) gen.requestId = msg.id;
        break;
      case "token":
        if (gen) appendPart(gen.msg, "text", String(msg.text ?? ""));
        break;
      case "tool_call":
      case "tool_result":
        if (gen) appendPart(gen.msg, msg.type, String(msg.text ?? ""));
        break;
      case "done":
        if (gen) finishGeneration(msg.finish_reason === "cancelled" ? "stopped" : "done", msg);
        break;
      case "error": {
        const err = { code: String(msg.code || "internal"), message: String(msg.message || "") };
        if (err.code === "unauthorized") state.conn = "unauthorized";
        if (gen) finishGeneration("error", null, err);
        else if (err.code === "unauthorized") setConn("unauthorized", describeError(err).join(" "));
        // With nothing running, a bad_request can only answer a stop that crossed the reply's end: not news.
        else if (err.code !== "bad_request") showBanner(describeError(err).filter(Boolean).join(" "));
        break;
      }
      default:
        break; // unknown message types are ignored so the server can add some
    }
  }

  function appendPart(msg, type, text) {
    const last = msg.parts[msg.parts.length - 1];
    if (type === "text" && last && last.type === "text") last.text += text;
    else msg.parts.push({ type, text });
    scheduleStreamRender();
    saveConvs(true);
  }

  function toWireMessages(messages) {
    const out = [];
    const sys = state.settings.system_prompt.trim();
    if (sys) out.push({ role: "system", content: sys });
    for (const m of messages) {
      let content;
      if (m.role === "user") {
        content = m.content;
      } else {
        const parts = (m.parts || []).filter((p) => p.text);
        if (!parts.length) continue; // failed or stopped-before-any-token replies are not history
        content = parts.every((p) => p.type === "text")
          ? parts.map((p) => p.text).join("")
          : parts.map((p) => ({ type: PART_TO_WIRE[p.type] || "text", text: p.text }));
      }
      // Chat templates want user/assistant turns to alternate; a dropped reply leaves two user turns in a row.
      const prev = out[out.length - 1];
      if (prev && prev.role === m.role && typeof prev.content === "string" && typeof content === "string") {
        prev.content += "\n\n" + content;
      } else {
        out.push({ role: m.role, content });
      }
    }
    return out;
  }

  function wireParams() {
    const s = state.settings;
    const params = { temperature: s.temperature, top_k: s.top_k, top_p: s.top_p };
    if (s.max_tokens !== "" && s.max_tokens !== null) params.max_tokens = Number(s.max_tokens);
    if (s.seed !== "" && s.seed !== null) params.seed = Number(s.seed);
    return params;
  }

  // ------------------------------------------------------------------ generation

  function startGeneration(conv) {
    if (state.gen) return false;
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showBanner("Not connected to the server yet; your message was not sent. Reconnecting…");
      return false;
    }
    const history = conv.messages.slice();
    const msg = { role: "assistant", parts: [], status: "streaming" };
    conv.messages.push(msg);
    state.gen = { convId: conv.id, msg, el: null, stopping: false, stopTimer: null };
    send({ type: "chat", messages: toWireMessages(history), params: wireParams() });
    touch(conv);
    saveConvs(false);
    hideBanner();
    renderSidebar();
    renderThread();
    updateComposer();
    return true;
  }

  function stopGeneration() {
    const gen = state.gen;
    if (!gen || gen.stopping) return;
    gen.stopping = true;
    if (!send({ type: "stop" })) {
      finishGeneration("stopped", null);
      return;
    }
    gen.stopTimer = setTimeout(() => { if (state.gen === gen) finishGeneration("stopped", null); }, STOP_GRACE_MS);
    updateComposer();
  }

  function finishGeneration(status, done, error) {
    const gen = state.gen;
    if (!gen) return;
    clearTimeout(gen.stopTimer);
    state.gen = null;
    gen.msg.status = status;
    if (done) {
      gen.msg.stats = { finish_reason: done.finish_reason, usage: done.usage || null, timings: done.timings || null };
    }
    if (error) gen.msg.error = error;
    saveConvs(false);
    if (state.activeId === gen.convId) renderThread();
    updateComposer();
    if (state.reconnectAfterGen) {
      state.reconnectAfterGen = false;
      reconnectNow();
    }
  }

  let renderPending = false;
  function scheduleStreamRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      const gen = state.gen;
      if (!gen || !gen.el || state.activeId !== gen.convId) return;
      const stick = nearBottom();
      renderAssistantBody(gen.msg, gen.el.querySelector(".msg-body"));
      if (stick) scrollToBottom();
    });
  }

  function sendUserText(text) {
    if (!text.trim() || state.gen) return false;
    const conv = activeConv();
    conv.messages.push({ role: "user", content: text });
    if (!conv.title) conv.title = makeTitle(text);
    if (!startGeneration(conv)) {
      conv.messages.pop();
      if (conv.messages.length === 0) conv.title = "";
      return false;
    }
    return true;
  }

  function regenerate(conv) {
    if (state.gen) return;
    const last = conv.messages[conv.messages.length - 1];
    if (last && last.role === "assistant") conv.messages.pop();
    if (!conv.messages.length) return;
    if (!startGeneration(conv)) conv.messages.push(last);
  }

  function editAndResend(conv, index, text) {
    if (state.gen || !text.trim()) return false;
    const removed = conv.messages.splice(index);
    conv.messages.push({ role: "user", content: text });
    if (index === 0) conv.title = makeTitle(text);
    if (!startGeneration(conv)) {
      conv.messages.splice(index, 1, ...removed);
      return false;
    }
    return true;
  }

  // ------------------------------------------------------------------ rendering

  function h(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(label, cls, onClick, ariaLabel) {
    const b = h("button", "btn " + (cls || ""), label);
    b.type = "button";
    if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
    b.addEventListener("click", onClick);
    return b;
  }

  function renderSidebar() {
    ui.convList.replaceChildren();
    for (const conv of state.convs) {
      const li = h("li", "conv-item" + (conv.id === state.activeId ? " active" : ""));
      const open = button(conv.title || "Untitled chat", "conv-open", () => switchTo(conv.id));
      open.title = conv.title || "";
      if (conv.id === state.activeId) open.setAttribute("aria-current", "true");
      const del = button("×", "btn-icon conv-delete", () => {
        if (!del.classList.contains("confirm")) {
          del.classList.add("confirm");
          del.textContent = "Delete?";
          del.setAttribute("aria-label", "Confirm delete chat: " + (conv.title || "Untitled chat"));
          setTimeout(() => {
            del.classList.remove("confirm");
            del.textContent = "×";
            del.setAttribute("aria-label", "Delete chat: " + (conv.title || "Untitled chat"));
          }, 4000);
          return;
        }
        deleteConv(conv.id);
      }, "Delete chat: " + (conv.title || "Untitled chat"));
      li.append(open, del);
      ui.convList.appendChild(li);
    }
    ui.convEmpty.hidden = state.convs.length > 0;
  }

  function renderThread() {
    const conv = activeConv();
    ui.title.textContent = (conv && conv.title) || "New chat";
    document.title = conv && conv.title ? conv.title + " · raychat" : "raychat";
    ui.thread.replaceChildren();
    const messages = conv ? conv.messages : [];
    ui.emptyState.hidden = messages.length > 0;
    const lastAssistant = messages.length && messages[messages.length - 1].role === "assistant"
      ? messages.length - 1 : -1;
    messages.forEach((m, i) => {
      const node = m.role === "user" ? renderUser(conv, m, i) : renderAssistant(conv, m, i === lastAssistant);
      ui.thread.appendChild(node);
      if (state.gen && state.gen.msg === m) state.gen.el = node;
    });
    ui.messages.setAttribute("aria-busy", state.gen && state.gen.convId === state.activeId ? "true" : "false");
    scrollToBottom();
  }

  function renderUser(conv, m, index) {
    const wrap = h("div", "msg msg-user");
    wrap.dataset.index = String(index);
    const bubble = h("div", "bubble", m.content);
    const actions = h("div", "msg-actions");
    const edit = button("Edit", "btn-link", () => startEdit(conv, index, wrap), "Edit message");
    edit.disabled = !!state.gen;
    actions.append(edit, copyButton(() => m.content, "Copy message"));
    wrap.append(bubble, actions);
    return wrap;
  }

  function startEdit(conv, index, wrap) {
    if (state.gen) return;
    const m = conv.messages[index];
    const box = h("div", "edit-box");
    const ta = h("textarea", "edit-input");
    ta.value = m.content;
    ta.rows = Math.min(10, Math.max(2, m.content.split("\n").length));
    ta.setAttribute("aria-label", "Edit message");
    const save = button("Save & send", "btn-primary", () => {
      if (editAndResend(conv, index, ta.value)) return;
      if (!state.gen) ta.focus();
    });
    const cancel = button("Cancel", "", () => renderThread());
    ta.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); save.click(); }
      if (e.key === "Escape") { e.preventDefault(); renderThread(); }
    });
    const actions = h("div", "edit-actions");
    actions.append(cancel, save);
    box.append(ta, actions);
    wrap.replaceChildren(box);
    ta.focus();
    ta.setSelectionRange(ta.value.length, ta.value.length);
  }

  function renderAssistant(conv, m, isLast) {
    const wrap = h("div", "msg msg-assistant" + (m.status === "streaming" ? " streaming" : ""));
    wrap.dataset.status = m.status || "done";
    const body = h("div", "msg-body");
    renderAssistantBody(m, body);
    wrap.appendChild(body);
    if (m.error) wrap.appendChild(renderError(conv, m.error, isLast));
    if (m.status !== "streaming") {
      const meta = renderMeta(m);
      if (meta) wrap.appendChild(meta);
      const actions = h("div", "msg-actions");
      const text = assistantText(m);
      if (text) actions.appendChild(copyButton(() => text, "Copy reply"));
      if (isLast && !m.error) { // an error box carries its own Retry
        const regen = button("Regenerate", "btn-link", () => regenerate(conv), "Regenerate reply");
        regen.disabled = !!state.gen;
        actions.appendChild(regen);
      }
      if (actions.childNodes.length) wrap.appendChild(actions);
    }
    return wrap;
  }

  function assistantText(m) {
    return (m.parts || []).filter((p) => p.type === "text").map((p) => p.text).join("");
  }

  function renderAssistantBody(m, body) {
    const nodes = [];
    for (const part of m.parts || []) {
      if (part.type === "text") {
        const div = h("div", "md");
        window.RaychatMarkdown.renderInto(div, part.text);
        nodes.push(div);
      } else {
        const isCall = part.type === "tool_call";
        const block = h("div", "tool-block " + (isCall ? "tool-call" : "tool-result"));
        block.appendChild(h("div", "tool-label", isCall ? "Tool call · calculator" : "Tool result"));
        block.appendChild(h("pre", "tool-text", part.text));
        nodes.push(block);
      }
    }
    if (m.status === "streaming") {
      const cursor = h("span", "cursor");
      cursor.setAttribute("aria-hidden", "true");
      if (!nodes.length) {
        const waiting = h("div", "thinking", "Thinking");
        waiting.appendChild(cursor);
        nodes.push(waiting);
      } else {
        nodes.push(cursor);
      }
    }
    body.replaceChildren(...nodes);
  }

  function describeError(err) {
    const detail = err.message ? String(err.message) : "";
    switch (err.code) {
      case "context_length_exceeded":
        return ["This conversation is too long for the model's context window.",
          detail, "Start a new chat, shorten an earlier message with Edit, or lower Max tokens in Settings."];
      case "overloaded":
        return ["The server is busy right now.", detail, "Wait a few seconds, then press Retry."];
      case "unauthorized":
        return ["The server refused the request: it needs a valid API key.", detail, "Set it in Settings."];
      case "bad_request":
        return ["The server rejected the request.", detail, "Check the settings (temperature, top-k, max tokens)."];
      case "disconnected":
        return ["The connection to the server was lost, so the reply stopped.", detail,
          "Reconnecting automatically; press Retry once connected."];
      default:
        return ["Something went wrong on the server.", detail, "Press Retry to try again."];
    }
  }

  function renderError(conv, err, isLast) {
    const [title, detail, hint] = describeError(err);
    const box = h("div", "msg-error error-" + err.code.replace(/[^a-z_]/g, ""));
    box.setAttribute("role", "alert");
    box.appendChild(h("strong", "error-title", title));
    if (detail) box.appendChild(h("div", "error-detail", detail));
    box.appendChild(h("div", "error-hint", hint));
    const actions = h("div", "error-actions");
    if (isLast) actions.appendChild(button("Retry", "btn-link", () => regenerate(conv), "Retry this reply"));
    if (err.code === "context_length_exceeded") actions.appendChild(button("New chat", "btn-link", () => newChat()));
    if (err.code === "unauthorized") actions.appendChild(button("Open settings", "btn-link", openSettings));
    if (actions.childNodes.length) box.appendChild(actions);
    return box;
  }

  function renderMeta(m) {
    const bits = [];
    const st = m.stats;
    if (m.status === "stopped") bits.push("Stopped");
    if (st) {
      if (st.finish_reason === "length") bits.push("Cut off at the max tokens limit");
      const usage = st.usage || {};
      const t = st.timings || {};
      if (Number.isFinite(usage.completion_tokens)) bits.push(`${usage.completion_tokens} tokens`);
      if (Number.isFinite(t.tokens_per_second)) bits.push(`${t.tokens_per_second.toFixed(1)} tok/s`);
      if (Number.isFinite(t.ttft_ms)) bits.push(`first token ${Math.round(t.ttft_ms)} ms`);
    }
    if (!bits.length) return null;
    const meta = h("div", "msg-meta", bits.join(" · "));
    if (st && st.usage) {
      meta.title = `prompt ${st.usage.prompt_tokens} + completion ${st.usage.completion_tokens} tokens` +
        (st.timings && Number.isFinite(st.timings.total_ms) ? `, ${Math.round(st.timings.total_ms)} ms total` : "");
    }
    return meta;
  }

  function copyButton(getText, ariaLabel) {
    const b = button("Copy", "btn-link copy-msg", async () => {
      const ok = await copyText(getText());
      flashLabel(b, ok ? "Copied" : "Copy failed");
    }, ariaLabel);
    return b;
  }

  function flashLabel(b, text) {
    const old = b.dataset.label || b.textContent;
    b.dataset.label = old;
    b.textContent = text;
    setTimeout(() => { b.textContent = old; }, 1500);
  }

  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch (_err) { /* fall through to the legacy path */ }
    // Plain http on a LAN address is not a secure context, so the Clipboard API is missing there.
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "clipboard-helper";
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (_err) { ok = false; }
    ta.remove();
    return ok;
  }

  function nearBottom() {
    const el = ui.messages;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 120;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function updateComposer() {
    const gen = state.gen;
    const busy = !!gen;
    ui.body.dataset.generating = busy ? "true" : "false";
    ui.sendBtn.classList.toggle("stop", busy);
    ui.sendBtn.textContent = busy ? (gen.stopping ? "Stopping…" : "Stop") : "Send";
    ui.sendBtn.setAttribute("aria-label", busy ? "Stop generating" : "Send message");
    ui.sendBtn.disabled = busy && gen.stopping;
    for (const b of ui.thread.querySelectorAll(".msg-actions .btn-link:not(.copy-msg)")) b.disabled = busy;
  }

  let bannerOwner = null;
  function showBanner(text, actionLabel, action, owner) {
    ui.bannerText.textContent = text;
    ui.bannerAction.hidden = !actionLabel;
    ui.bannerAction.textContent = actionLabel || "";
    ui.bannerAction.onclick = action || null;
    ui.banner.hidden = false;
    bannerOwner = owner || null;
  }

  function hideBanner(owner) {
    if (owner && bannerOwner !== owner) return;
    ui.banner.hidden = true;
    bannerOwner = null;
  }

  // ------------------------------------------------------------------ conversations

  function switchTo(id) {
    state.activeId = id;
    if (state.draft && state.draft.id !== id) state.draft = null;
    saveConvs(false);
    renderSidebar();
    renderThread();
    updateComposer();
    closeSidebar();
    ui.input.focus();
  }

  function newChat() {
    newDraft();
    saveConvs(false);
    renderSidebar();
    renderThread();
    updateComposer();
    closeSidebar();
    ui.input.focus();
  }

  function deleteConv(id) {
    if (state.gen && state.gen.convId === id) stopGeneration();
    state.convs = state.convs.filter((c) => c.id !== id);
    state.deleted.add(id);
    if (state.activeId === id) newDraft();
    saveConvs(false);
    renderSidebar();
    renderThread();
    updateComposer();
  }

  // ------------------------------------------------------------------ settings

  function openSettings() {
    const s = state.settings;
    const f = ui.settingsForm.elements;
    f.temperature.value = s.temperature;
    f.top_k.value = s.top_k;
    f.top_p.value = s.top_p;
    f.max_tokens.value = s.max_tokens;
    f.seed.value = s.seed;
    f.system_prompt.value = s.system_prompt;
    f.api_key.value = s.api_key;
    ui.settingsError.hidden = true;
    if (!ui.settings.open) ui.settings.showModal();
    f.temperature.focus();
  }

  /** Reads and checks the form; returns [settings, null] or [null, "what is wrong"]. */
  function readSettingsForm() {
    const f = ui.settingsForm.elements;
    const num = (v) => (String(v).trim() === "" ? NaN : Number(v));
    const s = {
      temperature: num(f.temperature.value), top_k: num(f.top_k.value), top_p: num(f.top_p.value),
      max_tokens: String(f.max_tokens.value).trim(), seed: String(f.seed.value).trim(),
      system_prompt: f.system_prompt.value, api_key: f.api_key.value.trim(),
    };
    if (!(s.temperature >= 0 && s.temperature <= 2)) return [null, "Temperature must be a number from 0 to 2."];
    if (!(Number.isInteger(s.top_k) && s.top_k >= 0 && s.top_k <= 200)) {
      return [null, "Top-k must be a whole number from 0 to 200."];
    }
    if (!(s.top_p > 0 && s.top_p <= 1)) return [null, "Top-p must be above 0 and at most 1."];
    if (s.max_tokens !== "" && !(Number.isInteger(Number(s.max_tokens)) && Number(s.max_tokens) >= 1)) {
      return [null, "Max tokens must be blank or a whole number, 1 or more."];
    }
    if (s.seed !== "" && !(Number.isInteger(Number(s.seed)) && Number(s.seed) >= 0)) {
      return [null, "Seed must be blank or a whole number, 0 or more."];
    }
    if (s.api_key && !TOKEN_CHARS_RE.test(s.api_key)) {
      return [null, "The API key may only use letters, digits and !#$%&'*+-.^_`|~ (it travels in the WebSocket handshake)."];
    }
    return [s, null];
  }

  function saveSettings(e) {
    e.preventDefault();
    const [s, problem] = readSettingsForm();
    if (problem) {
      ui.settingsError.textContent = problem;
      ui.settingsError.hidden = false;
      return;
    }
    const keyChanged = s.api_key !== state.settings.api_key;
    state.settings = s;
    saveJSON(STORE_SETTINGS, s);
    ui.settings.close();
    if (keyChanged || state.conn === "unauthorized") {
      hideBanner("connection");
      if (state.gen) state.reconnectAfterGen = true;
      else reconnectNow();
    }
  }

  // ------------------------------------------------------------------ layout + events

  function openSidebar() {
    ui.body.classList.add("sidebar-open");
    ui.scrim.hidden = false;
    ui.menuBtn.setAttribute("aria-expanded", "true");
    const first = ui.sidebar.querySelector("button");
    if (first) first.focus();
  }

  function closeSidebar() {
    if (!ui.body.classList.contains("sidebar-open")) return;
    ui.body.classList.remove("sidebar-open");
    ui.scrim.hidden = true;
    ui.menuBtn.setAttribute("aria-expanded", "false");
  }

  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight, 220) + "px";
  }

  function submitComposer() {
    if (state.gen) { stopGeneration(); return; }
    if (sendUserText(ui.input.value)) {
      ui.input.value = "";
      autosize();
    }
  }

  function bindEvents() {
    ui.composer.addEventListener("submit", (e) => { e.preventDefault(); submitComposer(); });
    ui.input.addEventListener("keydown", (e) => {
      // keyCode 229 / isComposing: Enter that confirms an IME composition (CJK input) must not send.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        if (!state.gen) submitComposer();
      } else if (e.key === "Escape" && state.gen) {
        e.preventDefault();
        stopGeneration();
      }
    });
    ui.input.addEventListener("input", autosize);
    ui.newChat.addEventListener("click", newChat);
    ui.menuBtn.addEventListener("click", () =>
      (ui.body.classList.contains("sidebar-open") ? closeSidebar() : openSidebar()));
    ui.scrim.addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && ui.body.classList.contains("sidebar-open")) closeSidebar();
    });
    $("open-settings").addEventListener("click", openSettings);
    $("open-settings-top").addEventListener("click", openSettings);
    ui.settingsForm.addEventListener("submit", saveSettings);
    $("settings-cancel").addEventListener("click", () => ui.settings.close());
    $("settings-reset").addEventListener("click", () => {
      const key = ui.settingsForm.elements.api_key.value;
      const saved = state.settings;
      state.settings = { ...DEFAULT_SETTINGS, api_key: key };
      openSettings();
      state.settings = saved;
    });
    ui.connRetry.addEventListener("click", reconnectNow);
    ui.bannerClose.addEventListener("click", () => hideBanner());
    for (const b of document.querySelectorAll(".suggestion")) {
      b.addEventListener("click", () => { ui.input.value = b.textContent; autosize(); submitComposer(); });
    }
    // Code-block copy buttons are created by the Markdown renderer; one delegated listener serves them all.
    ui.thread.addEventListener("click", async (e) => {
      const b = e.target.closest(".copy-code");
      if (!b) return;
      const code = b.closest(".code-block").querySelector("code");
      flashLabel(b, (await copyText(code.textContent)) ? "Copied" : "Copy failed");
    });
    window.addEventListener("online", () => { if (!state.ws) reconnectNow(); });
    // Another tab changed the saved chats: pick that up unless a reply is streaming here.
    window.addEventListener("storage", (e) => {
      if (e.key !== STORE_CONVS || state.gen) return;
      // Another tab saved: take its list, but keep this tab's own open conversation (or unsent draft), and
      // leave the thread alone (an open edit box, the scroll position) unless that conversation changed.
      const before = activeConv();
      state.convs = storedConvs();
      if (!activeConv()) newDraft();
      renderSidebar();
      const after = activeConv();
      if (after !== state.draft && (!before || after.updated !== before.updated)) renderThread();
      else if (after === state.draft && before !== state.draft) renderThread();
    });
  }

  function init() {
    loadState();
    bindEvents();
    renderSidebar();
    renderThread();
    updateComposer();
    connect();
    ui.input.focus();
  }

  init();
})();
