// chat-web page script. Everything from the chat (names, messages, server names) is put
// in the page with textContent or as text nodes: never parsed as HTML.
"use strict";

(() => {
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);

  const state = {
    me: null,
    joined: new Set(),
    channels: [],
    users: [],
    view: null, // {type: "channel", name} | {type: "direct", peer}
    stores: new Map(), // "c:NAME" | "direct" -> {items, keys, next, loaded, loading}
    unread: new Map(), // "c:NAME" | "u:NAME" -> count
    announcements: [],
    es: null,
    timers: [],
    streamWasDown: false,
  };

  // ---------- small helpers ----------

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function clock(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  let errorTimer = null;
  function showError(message) {
    $("error-text").textContent = message;
    $("error").hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { $("error").hidden = true; }, 10000);
  }

  function toast(who, text) {
    const box = $("toasts");
    const t = el("div", { class: "toast" },
      el("strong", { class: "toast-from", text: who }), " ",
      el("span", { class: "toast-text", text }));
    box.append(t);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => t.remove(), 12000);
  }

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (_) {
      throw new ApiError("The chat-web server cannot be reached; is it running?", "network", 0);
    }
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      const msg = (data && data.message) || `The request failed (HTTP ${res.status}).`;
      if (res.status === 401 && state.me) signedOut(msg);
      throw new ApiError(msg, data && data.error, res.status);
    }
    return data || {};
  }

  // Runs an action; shows its error to the person instead of throwing.
  async function attempt(action) {
    try {
      return await action();
    } catch (e) {
      showError(e instanceof ApiError ? e.message : `Something went wrong: ${e}`);
      return undefined;
    }
  }

  // ---------- conversations ----------

  function store(key) {
    let s = state.stores.get(key);
    if (!s) {
      s = { items: [], keys: new Set(), next: null, loaded: false, loading: false };
      state.stores.set(key, s);
    }
    return s;
  }

  const viewKey = (v) => (v.type === "channel" ? `c:${v.name}` : "direct");
  const peerOf = (m) => (m.src === state.me ? m.dst : m.src);
  const itemKey = (m) => m.id || `local|${m.src}|${m.dst}|${m.message}|${m.clock}`;

  // Adds items to a store, without duplicates; a server copy replaces the sender's own
  // local copy of a private message.
  function merge(s, items) {
    let changed = false;
    for (const m of items) {
      const key = itemKey(m);
      if (s.keys.has(key)) continue;
      if (m.id && m.kind === "direct") {
        const i = s.items.findIndex((x) => !x.id && x.src === m.src && x.dst === m.dst && x.message === m.message);
        if (i >= 0) {
          s.keys.delete(itemKey(s.items[i]));
          s.items.splice(i, 1);
        }
      }
      s.keys.add(key);
      s.items.push(m);
      changed = true;
    }
    if (changed) {
      s.items.sort((a, b) => (a.clock - b.clock) || String(a.id || "").localeCompare(String(b.id || "")));
    }
    return changed;
  }

  function visibleItems() {
    const v = state.view;
    if (!v) return [];
    const s = store(viewKey(v));
    if (v.type === "channel") return s.items;
    return s.items.filter((m) => peerOf(m) === v.peer);
  }

  function renderMessages(stick) {
    const scroller = $("scroller");
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    const nearBottom = fromBottom - scroller.clientHeight < 80;
    const list = $("messages");
    const items = visibleItems();
    list.replaceChildren(...items.map((m) => {
      const author = m.kind === "post" ? m.user : m.src;
      const mine = author === state.me;
      return el("li", { class: mine ? "msg mine" : "msg" },
        el("span", { class: "time", text: clock(m.timestamp), title: `${m.timestamp} · Lamport ${m.clock}` }),
        el("span", { class: "author", text: author }),
        el("span", { class: "text", text: m.message }));
    }));
    const v = state.view;
    const s = v ? store(viewKey(v)) : null;
    $("load-older").hidden = !(s && s.next);
    $("empty").textContent = v && s && s.loaded && items.length === 0 ? "No messages yet. Say hello!" : "";
    if (stick === "keep") {
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
    } else if (stick === "bottom" || nearBottom) {
      scroller.scrollTop = scroller.scrollHeight;
    }
  }

  async function loadHistory(v, older) {
    const s = store(viewKey(v));
    if (s.loading) return;
    s.loading = true;
    try {
      let path = v.type === "channel"
        ? `/api/history/channel?name=${encodeURIComponent(v.name)}&limit=${PAGE}`
        : `/api/history/direct?limit=${PAGE}`;
      if (older && s.next) path += `&before=${encodeURIComponent(s.next)}`;
      const page = await api("GET", path);
      merge(s, page.items || []);
      if (older || !s.loaded) s.next = page.next || null;
      s.loaded = true;
    } finally {
      s.loading = false;
    }
    if (state.view && viewKey(state.view) === viewKey(v)) renderMessages(older ? "keep" : "bottom");
  }

  function renderHeader() {
    const v = state.view;
    $("conv-title").textContent = !v ? "Pick a channel or a person"
      : v.type === "channel" ? `# ${v.name}` : `Private: ${v.peer}`;
    $("leave").hidden = !(v && v.type === "channel");
    $("compose").hidden = !v;
    $("compose-text").placeholder = !v ? "" : v.type === "channel"
      ? `Message #${v.name}` : `Private message to ${v.peer}`;
  }

  async function openChannel(name) {
    if (!state.joined.has(name)) {
      const ok = await attempt(() => api("POST", "/api/join", { channel: name }));
      if (ok === undefined) return;
      state.joined.add(name);
    }
    state.view = { type: "channel", name };
    state.unread.delete(`c:${name}`);
    afterViewChange();
  }

  function openDirect(peer) {
    state.view = { type: "direct", peer };
    state.unread.delete(`u:${peer}`);
    afterViewChange();
  }

  function afterViewChange() {
    renderHeader();
    renderChannels();
    renderUsers();
    renderMessages("bottom");
    const v = state.view;
    if (v) attempt(() => loadHistory(v, false));
    $("compose-text").focus();
  }

  // ---------- sidebar ----------

  function badge(key) {
    const n = state.unread.get(key) || 0;
    return n ? el("span", { class: "badge", text: String(n) }) : null;
  }

  function renderChannels() {
    const v = state.view;
    const names = [...new Set([...state.channels, ...state.joined])].sort();
    $("channel-list").replaceChildren(...names.map((name) => {
      const cls = ["item", state.joined.has(name) ? "joined" : "", v && v.type === "channel" && v.name === name ? "active" : ""];
      return el("li", {},
        el("button", { type: "button", class: cls.join(" ").trim(), title: state.joined.has(name) ? "joined" : "join", on: { click: () => openChannel(name) } },
          el("span", { class: "name", text: `# ${name}` }), badge(`c:${name}`)));
    }));
  }

  function renderUsers() {
    const v = state.view;
    const names = state.users.filter((u) => u !== state.me).sort();
    $("user-list").replaceChildren(...names.map((name) => {
      const active = v && v.type === "direct" && v.peer === name;
      return el("li", {},
        el("button", { type: "button", class: active ? "item active" : "item", on: { click: () => openDirect(name) } },
          el("span", { class: "name", text: name }), badge(`u:${name}`)));
    }));
  }

  let refreshing = false;
  async function refreshLists() {
    if (!state.me || refreshing) return;
    refreshing = true;
    try {
      const [c, u] = await Promise.all([api("GET", "/api/channels"), api("GET", "/api/users")]);
      state.channels = c.channels || [];
      for (const j of c.joined || []) state.joined.add(j);
      state.users = u.users || [];
      renderChannels();
      renderUsers();
      if (state.es && state.es.readyState === EventSource.OPEN) setConn("live", "receiving live messages");
    } catch (e) {
      if (e instanceof ApiError && e.status !== 401) setConn("error", e.message);
    } finally {
      refreshing = false;
    }
  }

  // ---------- live events ----------

  function setConn(kind, title) {
    const c = $("conn");
    c.className = `conn ${kind}`;
    c.textContent = kind === "live" ? "live" : kind === "error" ? "cluster trouble" : "reconnecting…";
    c.title = title || "";
  }

  function onItem(m) {
    if (m.kind === "coordinator") {
      state.announcements.unshift({ ...m, at: new Date().toISOString() });
      state.announcements.length = Math.min(state.announcements.length, 8);
      renderAnnouncements();
      return;
    }
    if (m.kind === "post") {
      if (!merge(store(`c:${m.channel}`), [m])) return;
      const v = state.view;
      if (v && v.type === "channel" && v.name === m.channel) renderMessages();
      else {
        state.unread.set(`c:${m.channel}`, (state.unread.get(`c:${m.channel}`) || 0) + 1);
        renderChannels();
      }
      return;
    }
    if (m.kind === "direct") {
      if (!merge(store("direct"), [m])) return;
      const peer = peerOf(m);
      const v = state.view;
      if (v && v.type === "direct" && v.peer === peer) renderMessages();
      else if (m.src !== state.me) {
        state.unread.set(`u:${peer}`, (state.unread.get(`u:${peer}`) || 0) + 1);
        if (!state.users.includes(peer)) state.users.push(peer);
        renderUsers();
      }
      if (m.src !== state.me) toast(`Private message from ${m.src}:`, m.message);
    }
  }

  function openEvents() {
    if (state.es) state.es.close();
    const es = new EventSource("/api/events");
    state.es = es;
    es.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      onItem(m);
    };
    es.onopen = () => {
      setConn("live", "receiving live messages");
      if (state.streamWasDown && state.view) {
        // Events may have been missed while the stream was down: reload the latest page.
        attempt(() => loadHistory(state.view, false));
      }
      state.streamWasDown = false;
    };
    es.onerror = () => {
      state.streamWasDown = true;
      setConn("down", "the live stream is reconnecting");
      if (es.readyState === EventSource.CLOSED && state.es === es) {
        // The server refused the stream (for instance, the session expired): find out why.
        setTimeout(() => {
          if (state.es !== es || !state.me) return;
          api("GET", "/api/session").then(openEvents, () => {});
        }, 2000);
      }
    };
  }

  // ---------- cluster panel ----------

  function renderAnnouncements() {
    $("announcements").replaceChildren(...state.announcements.map((a) =>
      el("li", { text: `${clock(a.at)} ${a.coordinator} is coordinator (term ${a.term}, rank ${a.rank})` })));
    $("no-announcements").hidden = state.announcements.length > 0;
  }

  async function pollCluster() {
    if (!state.me) return;
    let c;
    try {
      c = await api("GET", "/api/cluster");
    } catch (_) {
      return;
    }
    const rows = (c.servers || []).map((s) => {
      const role = !s.answering ? "not answering" : s.name === c.coordinator ? "coordinator" : "replica";
      const offset = s.answering ? `${s.clock_offset_ms >= 0 ? "+" : ""}${s.clock_offset_ms} ms` : "";
      return el("tr", { class: role.replace(" ", "-") },
        el("td", { class: "server-name", text: s.name }),
        el("td", { text: s.rank === null || s.rank === undefined ? "?" : String(s.rank) }),
        el("td", { class: "role", text: role }),
        el("td", { text: s.answering ? String(s.term) : "" }),
        el("td", { text: s.answering ? String(s.lamport) : "" }),
        el("td", { text: offset }),
        el("td", { text: s.answering ? String(s.messages) : "" }));
    });
    $("servers").tBodies[0].replaceChildren(...rows);
    let summary;
    if (c.error && !(c.servers || []).some((s) => s.answering)) summary = c.error;
    else if (c.coordinator) {
      const modes = [...new Set((c.servers || []).filter((s) => s.answering && s.clock_sync).map((s) => s.clock_sync))];
      summary = `Coordinator ${c.coordinator} (term ${c.term}) · ${rows.length} server${rows.length === 1 ? "" : "s"}`;
      if (modes.length) summary += ` · ${modes.join(" + ")} clock sync`;
    }
    else if (rows.length) summary = `${rows.length} server${rows.length === 1 ? "" : "s"}, no coordinator elected yet`;
    else summary = "Asking the servers…";
    if (c.announcement && !state.announcements.length) {
      state.announcements.push({ ...c.announcement, at: new Date(Date.now() - c.announcement.age_ms).toISOString() });
      renderAnnouncements();
    }
    $("cluster-summary").textContent = summary;
    $("cluster-summary").className = c.error ? "hint warn" : "hint";
  }

  // ---------- cluster self-check ----------

  const MARKS = { pass: "\u2714", fail: "\u2718", skip: "\u2013" };

  async function runCheck() {
    const button = $("check-button");
    const summary = $("check-summary");
    button.disabled = true;
    summary.textContent = "Checking the cluster\u2026";
    summary.className = "hint";
    $("check-steps").replaceChildren();
    let r;
    try {
      r = await api("POST", "/api/check");
    } catch (e) {
      summary.textContent = e instanceof ApiError ? e.message : `The check could not run: ${e}`;
      summary.className = "hint warn";
      button.disabled = false;
      return;
    }
    const steps = r.steps || [];
    $("check-steps").replaceChildren(...steps.map((s) =>
      el("li", { class: `step ${s.outcome}` },
        el("span", { class: "step-mark", text: MARKS[s.outcome] || "?" }),
        el("span", { class: "step-title", text: s.title }),
        el("span", { class: "step-ms", text: `${s.ms} ms` }),
        el("div", { class: "step-detail", text: s.detail }))));
    const failed = steps.filter((s) => s.outcome === "fail").length;
    const skipped = steps.filter((s) => s.outcome === "skip").length;
    summary.textContent = r.ok
      ? `All ${steps.length} steps passed in ${r.ms} ms.`
      : `${failed} of ${steps.length} steps failed${skipped ? `, ${skipped} skipped` : ""} (${r.ms} ms).`;
    summary.className = r.ok ? "hint ok" : "hint warn";
    button.disabled = false;
  }

  // ---------- sign in / out ----------

  function enter(session) {
    state.me = session.user;
    state.joined = new Set(session.joined || []);
    $("me").textContent = state.me;
    $("whoami").hidden = false;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    openEvents();
    refreshLists();
    pollCluster();
    state.timers.push(setInterval(refreshLists, 3000), setInterval(pollCluster, 2000));
    const first = [...state.joined].sort()[0];
    if (first) openChannel(first);
    else { state.view = null; renderHeader(); renderMessages(); }
  }

  function signedOut(message) {
    if (state.es) state.es.close();
    state.es = null;
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    state.me = null;
    state.view = null;
    state.joined = new Set();
    state.stores = new Map();
    state.unread = new Map();
    state.announcements = [];
    renderAnnouncements();
    $("check-steps").replaceChildren();
    $("whoami").hidden = true;
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    $("conn").className = "conn";
    $("conn").textContent = "";
    $("messages").replaceChildren();
    if (message) showError(message);
    $("login-user").focus();
  }

  // ---------- wiring ----------

  function wire() {
    $("error-close").addEventListener("click", () => { $("error").hidden = true; });

    $("login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const user = $("login-user").value.trim();
      if (!user) return;
      $("login-button").disabled = true;
      const session = await attempt(() => api("POST", "/api/login", { user }));
      $("login-button").disabled = false;
      if (session) {
        $("error").hidden = true;
        enter(session);
      }
    });

    $("logout").addEventListener("click", async () => {
      await attempt(() => api("POST", "/api/logout"));
      signedOut();
    });

    $("create-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const channel = $("new-channel").value.trim();
      if (!channel) return;
      const r = await attempt(() => api("POST", "/api/channels", { channel }));
      if (!r) return;
      $("new-channel").value = "";
      state.joined.add(r.channel);
      if (!state.channels.includes(r.channel)) state.channels.push(r.channel);
      openChannel(r.channel);
    });

    $("compose").addEventListener("submit", async (e) => {
      e.preventDefault();
      const v = state.view;
      const input = $("compose-text");
      const message = input.value;
      if (!v || !message.trim()) return;
      $("send-button").disabled = true;
      const ok = v.type === "channel"
        ? await attempt(() => api("POST", "/api/publish", { channel: v.name, message }))
        : await attempt(() => api("POST", "/api/message", { to: v.peer, message }));
      $("send-button").disabled = false;
      if (ok) input.value = "";
      input.focus();
    });

    $("leave").addEventListener("click", async () => {
      const v = state.view;
      if (!v || v.type !== "channel") return;
      const ok = await attempt(() => api("POST", "/api/leave", { channel: v.name }));
      if (!ok) return;
      state.joined.delete(v.name);
      state.stores.delete(`c:${v.name}`);
      state.view = null;
      afterViewChange();
    });

    const older = () => {
      const v = state.view;
      if (v) attempt(() => loadHistory(v, true));
    };
    $("check-button").addEventListener("click", runCheck);
    $("load-older").addEventListener("click", older);
    $("scroller").addEventListener("scroll", () => {
      const v = state.view;
      if (!v || $("scroller").scrollTop > 30) return;
      const s = store(viewKey(v));
      if (s.next && !s.loading) older();
    });
  }

  async function start() {
    wire();
    try {
      enter(await api("GET", "/api/session"));
    } catch (_) {
      signedOut();
    }
  }

  start();
})();
