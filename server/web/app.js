// Quire chat page: conversations, streaming from /v1/chat/completions (SSE), templates, settings.
// Everything is kept in this browser's localStorage; the server holds no conversation state.
"use strict";

(function () {
  const I18N = window.QUIRE_I18N;
  // Built-in templates come from the server (GET /v1/templates: examples/templates/ and --templates DIR),
  // each job in its languages; the page shows the interface language's version.
  let BUILTIN = [];
  const MD = window.QuireMarkdown;

  // ---------------------------------------------------------------- helpers
  const $ = (sel, root = document) => root.querySelector(sel);
  function h(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k in e && typeof v !== "string") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c != null && c !== false) e.append(c);
    return e;
  }
  // Line icons (drawn for this page; no icon font, so nothing depends on the fonts installed).
  const ICONS = {
    plus: '<path d="M12 5v14M5 12h14"/>',
    close: '<path d="M6 6l12 12M18 6L6 18"/>',
    menu: '<path d="M4 6h16M4 12h16M4 18h16"/>',
    settings: '<path d="M4 6h9M17 6h3M4 12h3M11 12h9M4 18h11M19 18h1"/><circle cx="15" cy="6" r="2"/><circle cx="9" cy="12" r="2"/><circle cx="17" cy="18" r="2"/>',
    templates: '<rect x="4" y="4" width="16" height="16" rx="2"/><path d="M4 9h16M9 9v11"/>',
    stop: '<rect x="6.5" y="6.5" width="11" height="11" rx="1.5" fill="currentColor"/>',
    pen: '<path d="M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4"/>',
    trash: '<path d="M4 7h16M10 11v6M14 11v6M9 7V4h6v3M6 7l1 13h10l1-13"/>',
    copy: '<rect x="8" y="8" width="12" height="12" rx="2"/><path d="M16 8V5a1 1 0 0 0-1-1H5a1 1 0 0 0-1 1v10a1 1 0 0 0 1 1h3"/>',
    refresh: '<path d="M20 12a8 8 0 1 1-2.34-5.66M20 4v5h-5"/>',
    sun: '<circle cx="12" cy="12" r="4"/><path d="M12 2v2M12 20v2M2 12h2M20 12h2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4"/>',
    moon: '<path d="M20 14.5A8 8 0 1 1 9.5 4a6.5 6.5 0 0 0 10.5 10.5z"/>',
    globe: '<circle cx="12" cy="12" r="9"/><path d="M3 12h18M12 3a14 14 0 0 1 0 18M12 3a14 14 0 0 0 0 18"/>',
    article: '<path d="M6 3h9l4 4v14H6zM15 3v4h4"/><path d="M9 11h7M9 15h7"/>',
    code: '<path d="M9 8l-4 4 4 4M15 8l4 4-4 4"/>',
    terminal: '<rect x="3" y="4" width="18" height="16" rx="2"/><path d="M7 9l3 3-3 3M12 15h5"/>',
    tag: '<path d="M3 12V4h8l10 10-8 8z"/><circle cx="7.5" cy="7.5" r="1.5"/>',
    mail: '<rect x="3" y="5" width="18" height="14" rx="2"/><path d="M3 7l9 6 9-6"/>',
    report: '<path d="M4 20V4M4 20h16M8 16v-5M12 16V8M16 16v-3"/>',
    help: '<circle cx="12" cy="12" r="9"/><path d="M9.5 9.5a2.5 2.5 0 1 1 3.5 2.3c-.6.3-1 .9-1 1.6v.6M12 17h.01"/>',
    batch: '<path d="M12 3l9 5-9 5-9-5z"/><path d="M3 13l9 5 9-5"/>',
    check: '<path d="M5 12.5l4.5 4.5L19 7"/>',
    download: '<path d="M12 4v11M7 10l5 5 5-5M5 20h14"/>',
    upload: '<path d="M12 20V9M7 14l5-5 5 5M5 4h14"/>',
    star: '<path d="M12 3l2.7 5.6 6.1.9-4.4 4.3 1 6.1-5.4-2.9-5.4 2.9 1-6.1-4.4-4.3 6.1-.9z"/>',
  };
  function icon(name) {
    const span = document.createElement("span");
    span.className = "i";
    span.setAttribute("aria-hidden", "true");
    span.innerHTML =
      '<svg viewBox="0 0 24 24" width="1em" height="1em" fill="none" stroke="currentColor" stroke-width="1.8" ' +
      'stroke-linecap="round" stroke-linejoin="round">' + (ICONS[name] || ICONS.star) + "</svg>";
    return span;
  }
  for (const e of document.querySelectorAll("[data-icon]")) e.replaceWith(icon(e.dataset.icon));

  const uid = (p) => p + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  const now = () => Date.now();

  // ---------------------------------------------------------------- storage
  const KEYS = {
    convs: "quire.conversations.v1",
    current: "quire.current.v1",
    settings: "quire.settings.v1",
    templates: "quire.templates.v1",
    theme: "quire.theme",
    lang: "quire.lang",
  };
  const store = {
    get(key, fallback) {
      try {
        const raw = localStorage.getItem(key);
        return raw == null ? fallback : JSON.parse(raw);
      } catch (_) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
        return true;
      } catch (e) {
        toast(t("storageFull"), true);
        return false;
      }
    },
  };

  // ---------------------------------------------------------------- i18n
  const browserLang = () =>
    (navigator.languages && navigator.languages[0]) || navigator.language || "en";
  let lang = store.get(KEYS.lang, null) || (/^zh/i.test(browserLang()) ? "zh" : "en");
  if (!I18N[lang]) lang = "en";

  function t(key, vars) {
    let s = (I18N[lang] && I18N[lang][key]) ?? I18N.en[key] ?? key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? vars[k] : m));
    return s;
  }
  const loc = (v) => (v && typeof v === "object" ? v[lang] ?? v.en ?? Object.values(v)[0] : v ?? "");

  function applyI18n() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
    for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
    for (const e of document.querySelectorAll("[data-i18n-title]")) e.title = t(e.dataset.i18nTitle);
    for (const e of document.querySelectorAll("[data-i18n-aria]")) e.setAttribute("aria-label", t(e.dataset.i18nAria));
    $("#lang-toggle").replaceChildren(icon("globe"), lang === "zh" ? "English" : "中文");
    applyTheme();
    renderConvList();
    renderMessages();
    renderEmptyChips();
    renderStatus();
    if ($("#templates-dialog").open) renderTemplates();
    document.dispatchEvent(new CustomEvent("quire:lang"));
  }

  // ---------------------------------------------------------------- theme
  let theme = store.get(KEYS.theme, "dark") === "light" ? "light" : "dark";
  function applyTheme() {
    document.documentElement.dataset.theme = theme;
    const b = $("#theme-toggle");
    b.replaceChildren(icon(theme === "dark" ? "sun" : "moon"), t(theme === "dark" ? "light" : "dark"));
  }

  // ---------------------------------------------------------------- toast
  let toastTimer = 0;
  function toast(text, isError) {
    const el = $("#toast");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (el.hidden = true), isError ? 5000 : 2500);
  }

  // ---------------------------------------------------------------- settings
  const DEFAULTS = { systemPrompt: "", temperature: 0.7, topP: 0.8, maxTokens: 1024, apiKey: "" };
  let settings = { ...DEFAULTS, ...store.get(KEYS.settings, {}) };

  function num(v, lo, hi, fallback, int) {
    let x = Number(v);
    if (!Number.isFinite(x) || v === "") return fallback;
    if (int) x = Math.round(x);
    return Math.min(hi, Math.max(lo, x));
  }

  function openSettings() {
    $("#set-system").value = settings.systemPrompt;
    $("#set-temperature").value = settings.temperature;
    $("#set-top-p").value = settings.topP;
    $("#set-max-tokens").value = settings.maxTokens;
    $("#set-api-key").value = settings.apiKey;
    $("#settings-dialog").showModal();
  }
  function saveSettingsFromForm() {
    settings = {
      systemPrompt: $("#set-system").value,
      temperature: num($("#set-temperature").value, 0, 2, DEFAULTS.temperature),
      topP: num($("#set-top-p").value, 0, 1, DEFAULTS.topP),
      maxTokens: num($("#set-max-tokens").value, 1, 32768, DEFAULTS.maxTokens, true),
      apiKey: $("#set-api-key").value.trim(),
    };
    store.set(KEYS.settings, settings);
    toast(t("settingsSaved"));
    checkServer();
    loadBuiltinTemplates();
  }

  function authHeaders() {
    const hd = {};
    if (settings.apiKey) hd.Authorization = "Bearer " + settings.apiKey;
    return hd;
  }

  // ---------------------------------------------------------------- conversations
  let convs = store.get(KEYS.convs, []);
  if (!Array.isArray(convs)) convs = [];
  convs = convs.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages));
  for (const c of convs) {
    for (const m of c.messages) {
      if (!m.id) m.id = uid("m");
      if (m.status === "streaming") m.status = "stopped"; // the page was closed mid-answer
    }
  }
  let currentId = store.get(KEYS.current, null);
  if (!convs.some((c) => c.id === currentId)) currentId = null;
  let streaming = null; // { controller, conv, msg }

  const current = () => convs.find((c) => c.id === currentId) || null;
  function saveConvs() {
    store.set(KEYS.convs, convs);
    store.set(KEYS.current, currentId);
  }
  function titleFrom(text) {
    const line = text.replace(/\s+/g, " ").trim();
    return line.length > 48 ? line.slice(0, 47) + "…" : line || t("untitled");
  }

  function selectConversation(id) {
    currentId = id;
    store.set(KEYS.current, currentId);
    renderConvList();
    renderMessages(true);
    closeSidebarIfNarrow();
    $("#input").focus();
  }

  function newConversation() {
    currentId = null;
    store.set(KEYS.current, null);
    renderConvList();
    renderMessages();
    closeSidebarIfNarrow();
    $("#input").focus();
  }

  async function deleteConversation(id) {
    const c = convs.find((x) => x.id === id);
    if (!c) return;
    if (!(await confirmDialog(t("confirmDeleteConv", { title: c.title })))) return;
    if (streaming && streaming.conv === c) streaming.controller.abort();
    convs = convs.filter((x) => x.id !== id);
    if (currentId === id) currentId = null;
    saveConvs();
    renderConvList();
    renderMessages();
  }

  function startRename(id, item) {
    const c = convs.find((x) => x.id === id);
    if (!c) return;
    const input = h("input", { class: "rename-input", value: c.title, "aria-label": t("rename") });
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      const v = input.value.trim();
      if (save && v) {
        c.title = v.slice(0, 120);
        c.titleEdited = true;
        saveConvs();
      }
      renderConvList();
      renderTitle();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.isComposing) finish(true);
      else if (e.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    item.replaceChildren(input);
    input.focus();
    input.select();
  }

  function renderConvList() {
    const list = $("#conv-list");
    list.replaceChildren();
    const sorted = [...convs].sort((a, b) => b.updated - a.updated);
    if (!sorted.length) {
      list.append(h("p", { class: "muted small pad", text: t("noConversations") }));
      return;
    }
    for (const c of sorted) {
      const item = h("div", { class: "conv-item" + (c.id === currentId ? " active" : ""), dataset: { id: c.id } });
      const open = h("button", {
        type: "button",
        class: "conv-open",
        title: c.title,
        onclick: () => selectConversation(c.id),
      }, h("span", { class: "conv-title", text: c.title }));
      const rename = h("button", {
        type: "button", class: "icon-btn conv-rename", title: t("rename"), "aria-label": t("rename"),
        onclick: (e) => { e.stopPropagation(); startRename(c.id, item); },
      }, icon("pen"));
      const del = h("button", {
        type: "button", class: "icon-btn conv-delete", title: t("delete"), "aria-label": t("delete"),
        onclick: (e) => { e.stopPropagation(); deleteConversation(c.id); },
      }, icon("trash"));
      if (c.id === currentId) open.setAttribute("aria-current", "true");
      item.append(open, h("span", { class: "conv-actions" }, rename, del));
      list.append(item);
    }
  }

  function renderTitle() {
    const c = current();
    $("#conv-title").textContent = c ? c.title : t("newChat");
    document.title = c ? `${c.title} · Quire` : "Quire";
  }

  // ---------------------------------------------------------------- messages
  const msgEls = new Map(); // message id → element, for the conversation on screen

  function statsText(m) {
    const s = m.stats;
    const parts = [];
    if (s) {
      if (s.ttftMs != null) parts.push(`${t("ttft")} ${(s.ttftMs / 1000).toFixed(2)} s`);
      if (s.tps != null) parts.push(`${s.tps.toFixed(1)} ${t("tokPerSec")}`);
      if (s.tokens != null) parts.push(`${s.tokens} ${t("tokens")}`);
    }
    if (m.status === "stopped") parts.push(t("stopped"));
    else if (s && s.finish === "length") parts.push(t("hitMaxTokens"));
    return parts.join(" · ");
  }

  function statsTitle(m) {
    const s = m.stats;
    if (!s) return "";
    const lines = [];
    if (s.promptTokens != null) lines.push(`${t("promptTokens")}: ${s.promptTokens}`);
    if (s.cachedTokens) lines.push(`${t("cachedTokens")}: ${s.cachedTokens}`);
    if (s.totalMs != null) lines.push(`${t("totalTime")}: ${(s.totalMs / 1000).toFixed(2)} s`);
    return lines.join("\n");
  }

  function messageEl(m, isLast) {
    const body = h("div", { class: "msg-body" });
    // A reasoning model's thinking (delta.reasoning_content) goes in a fold above the answer.
    const reasoning = h("details", { class: "msg-reasoning", hidden: true },
      h("summary", {}), h("div", { class: "msg-reasoning-body" }));
    const el = h("article", { class: `msg ${m.role}`, dataset: { mid: m.id, role: m.role } },
      h("div", { class: "msg-avatar", "aria-hidden": "true", text: m.role === "user" ? t("youShort") : "Q" }),
      h("div", { class: "msg-content" }, reasoning, body, h("div", { class: "msg-meta" })));
    fillMessage(el, m, isLast);
    return el;
  }

  function fillMessage(el, m, isLast) {
    const body = $(".msg-body", el);
    const live = m.status === "streaming";
    el.classList.toggle("streaming", live);
    el.classList.toggle("error", m.status === "error");
    if (m.role === "user") {
      body.textContent = m.content;
    } else {
      MD.renderInto(body, m.content, { streaming: live, labels: { copy: t("copy"), copyCode: t("copyCode") } });
      if (live) cursorHost(body).append(h("span", { class: "cursor", "aria-hidden": "true" }));
      if (m.status === "error") {
        body.append(h("div", { class: "msg-error", role: "alert", text: `${t("errorPrefix")} ${m.error || ""}` }));
      }
      if (live && !m.content && !m.reasoning) body.prepend(h("span", { class: "thinking", text: t("waiting") }));
      fillReasoning(el, m, live);
    }
    const meta = $(".msg-meta", el);
    meta.replaceChildren();
    if (m.role === "assistant") {
      const st = h("span", { class: "msg-stats", text: statsText(m), title: statsTitle(m) });
      if (m.stats) {
        if (m.stats.ttftMs != null) st.dataset.ttftMs = String(Math.round(m.stats.ttftMs));
        if (m.stats.tps != null) st.dataset.tps = m.stats.tps.toFixed(2);
        if (m.stats.tokens != null) st.dataset.tokens = String(m.stats.tokens);
      }
      meta.append(st);
    }
    if (!live) {
      meta.append(h("button", {
        type: "button", class: "icon-btn msg-copy", title: t("copyMessage"), "aria-label": t("copyMessage"),
        onclick: () => copyText(m.content),
      }, icon("copy")));
      if (m.role === "assistant" && isLast && !streaming) {
        meta.append(h("button", {
          type: "button", class: "icon-btn msg-regen", title: t("regenerate"), "aria-label": t("regenerate"),
          onclick: regenerate,
        }, icon("refresh")));
      }
    }
  }

  // Open while the model thinks; folded once, when the answer starts, and then left as the user sets it.
  function fillReasoning(el, m, live) {
    const box = $(".msg-reasoning", el);
    box.hidden = !m.reasoning;
    if (!m.reasoning) return;
    const thinking = live && !m.content;
    $("summary", box).textContent = thinking ? t("waiting") : t("reasoning");
    $(".msg-reasoning-body", box).textContent = m.reasoning;
    if (thinking && !box.dataset.folded) box.open = true;
    else if (box.open && !box.dataset.folded && live) box.open = false;
    if (!thinking) box.dataset.folded = "1";
  }

  // Where the blinking cursor goes while a reply streams: at the end of the text being written, which may
  // be deep inside a list item or a code block, not below them.
  function cursorHost(body) {
    let host = body;
    for (;;) {
      let last = host.lastChild;
      while (last && last.nodeType === Node.TEXT_NODE && !last.textContent.trim()) last = last.previousSibling;
      if (!last || last.nodeType !== Node.ELEMENT_NODE || /^(TABLE|HR|BR|INPUT|IMG)$/.test(last.tagName)) return host;
      host = last;
    }
  }

  function renderMessages(scrollToEnd) {
    const box = $("#messages");
    const empty = $("#empty-state");
    const c = current();
    for (const e of [...box.children]) if (e !== empty) e.remove();
    msgEls.clear();
    renderTitle();
    if (!c || !c.messages.length) {
      empty.hidden = false;
      return;
    }
    empty.hidden = true;
    const frag = document.createDocumentFragment();
    c.messages.forEach((m, i) => {
      const e = messageEl(m, i === c.messages.length - 1);
      msgEls.set(m.id, e);
      frag.append(e);
    });
    box.append(frag);
    if (scrollToEnd !== false) box.scrollTop = box.scrollHeight;
  }

  function nearBottom() {
    const box = $("#messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  // Re-render a streaming message at most once per frame.
  let renderQueued = null;
  function queueRender(m) {
    if (renderQueued) return;
    renderQueued = requestAnimationFrame(() => {
      renderQueued = null;
      const el = msgEls.get(m.id);
      if (!el) return;
      const stick = nearBottom();
      fillMessage(el, m, true);
      if (stick) $("#messages").scrollTop = $("#messages").scrollHeight;
    });
  }

  // ---------------------------------------------------------------- clipboard
  async function copyText(text, btn) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        ok = true;
      }
    } catch (_) { /* fall back below */ }
    if (!ok) {
      const ta = h("textarea", { style: "position:fixed;top:-1000px;opacity:0", readonly: true });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      ta.remove();
    }
    if (btn) {
      btn.textContent = ok ? t("copied") : t("copyFailed");
      btn.classList.toggle("done", ok);
      setTimeout(() => { btn.textContent = t("copy"); btn.classList.remove("done"); }, 1500);
    } else {
      toast(ok ? t("copied") : t("copyFailed"), !ok);
    }
  }

  // One listener for every code block's copy button (they are re-created as a reply streams in).
  document.addEventListener("click", (e) => {
    const btn = e.target.closest && e.target.closest(".copy-code");
    if (!btn) return;
    const code = btn.closest(".code-block").querySelector("pre code");
    copyText(code ? code.textContent : "", btn);
  });

  // ---------------------------------------------------------------- streaming
  /** Read an SSE body, calling onData(parsedJson) for each `data:` event until `[DONE]`. */
  async function readSse(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let idx;
      while ((idx = buf.search(/\r?\n\r?\n/)) >= 0) {
        const event = buf.slice(0, idx);
        buf = buf.slice(idx + (buf[idx] === "\r" ? 4 : 2));
        const data = event
          .split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue; // comment (keep-alive) or empty event
        if (data === "[DONE]") return;
        let obj;
        try { obj = JSON.parse(data); } catch (_) { continue; }
        onData(obj);
      }
    }
  }

  class ApiError extends Error {}

  async function errorFrom(resp) {
    let msg = `HTTP ${resp.status}`;
    try {
      const j = await resp.json();
      if (j && j.error && j.error.message) msg += ": " + j.error.message;
    } catch (_) { /* not JSON */ }
    if (resp.status === 401) msg += " — " + t("needApiKey");
    if (resp.status === 429) msg += " — " + t("serverBusy");
    return new ApiError(msg);
  }

  function requestMessages(conv, upto) {
    const out = [];
    if (settings.systemPrompt.trim()) out.push({ role: "system", content: settings.systemPrompt });
    for (const m of conv.messages) {
      if (m === upto) break;
      if (m.role === "assistant" && (m.status === "error" || !m.content)) continue;
      out.push({ role: m.role, content: m.content });
    }
    return out;
  }

  async function complete(conv, msg) {
    const controller = new AbortController();
    streaming = { controller, conv, msg };
    setBusy(true);
    msg.status = "streaming";
    msg.content = "";
    msg.reasoning = "";
    msg.stats = null;
    msg.error = undefined;
    const t0 = performance.now();
    let tFirst = null;
    let tLast = null;
    let pieces = 0;
    let usage = null;
    let finish = null;
    let lastSave = now();
    const body = {
      model: serverModel || undefined,
      messages: requestMessages(conv, msg),
      stream: true,
      stream_options: { include_usage: true },
      temperature: settings.temperature,
      top_p: settings.topP,
      max_tokens: settings.maxTokens,
    };
    try {
      const resp = await fetch("v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!resp.ok) throw await errorFrom(resp);
      await readSse(resp.body, (obj) => {
        if (obj.error) throw new ApiError(obj.error.message || JSON.stringify(obj.error));
        if (obj.usage) usage = obj.usage;
        const ch = obj.choices && obj.choices[0];
        if (!ch) return;
        const piece = ch.delta && ch.delta.content;
        const thought = ch.delta && ch.delta.reasoning_content;
        if (piece || thought) {
          const tNow = performance.now();
          if (tFirst == null) tFirst = tNow;
          tLast = tNow;
          pieces++;
          if (piece) msg.content += piece;
          if (thought) msg.reasoning += thought;
          queueRender(msg);
          if (now() - lastSave > 2000) { lastSave = now(); saveConvs(); }
        }
        if (ch.finish_reason) finish = ch.finish_reason;
      });
      msg.status = undefined;
    } catch (e) {
      if (e.name === "AbortError") {
        msg.status = "stopped";
      } else {
        msg.status = "error";
        msg.error = e instanceof ApiError ? e.message : `${t("networkError")} (${e.message})`;
      }
    } finally {
      const tEnd = performance.now();
      const tokens = usage && usage.completion_tokens != null ? usage.completion_tokens : pieces;
      const stats = { tokens, finish, totalMs: tEnd - t0 };
      if (tFirst != null) {
        stats.ttftMs = tFirst - t0;
        // Decode speed: the tokens after the first, over the time since the first arrived.
        const span = ((msg.status === "stopped" ? tLast : tEnd) - tFirst) / 1000;
        if (tokens > 1 && span > 0) stats.tps = (tokens - 1) / span;
      }
      if (usage) {
        stats.promptTokens = usage.prompt_tokens;
        const det = usage.prompt_tokens_details;
        if (det && det.cached_tokens) stats.cachedTokens = det.cached_tokens;
      }
      msg.stats = stats;
      conv.updated = now();
      streaming = null;
      saveConvs();
      setBusy(false);
      if (renderQueued) { cancelAnimationFrame(renderQueued); renderQueued = null; }
      if (conv.id === currentId) {
        const stick = nearBottom();
        renderMessages(false);
        if (stick) $("#messages").scrollTop = $("#messages").scrollHeight;
      }
      renderConvList();
    }
  }

  async function send(text) {
    if (streaming || !text.trim()) return;
    let conv = current();
    if (!conv) {
      conv = { id: uid("c"), title: titleFrom(text), titleEdited: false, created: now(), updated: now(), messages: [] };
      convs.push(conv);
      currentId = conv.id;
    }
    conv.messages.push({ id: uid("m"), role: "user", content: text });
    const msg = { id: uid("m"), role: "assistant", content: "", status: "streaming" };
    conv.messages.push(msg);
    conv.updated = now();
    saveConvs();
    renderConvList();
    renderMessages(true);
    await complete(conv, msg);
  }

  async function regenerate() {
    const conv = current();
    if (streaming || !conv) return;
    const last = conv.messages[conv.messages.length - 1];
    if (!last || last.role !== "assistant") return;
    last.status = "streaming";
    last.content = "";
    renderMessages(true);
    await complete(conv, last);
  }

  function setBusy(busy) {
    $("#send").hidden = busy;
    $("#stop").hidden = !busy;
    document.body.classList.toggle("busy", busy);
  }

  // ---------------------------------------------------------------- server status
  let serverModel = "";
  let serverState = "unknown"; // unknown | ok | loading | down | auth
  let statusTimer = 0;
  async function checkServer() {
    clearTimeout(statusTimer);
    try {
      const hr = await fetch("health", { cache: "no-store" });
      if (hr.status === 503) {
        serverState = "loading";
        statusTimer = setTimeout(checkServer, 2000);
      } else {
        const mr = await fetch("v1/models", { headers: authHeaders(), cache: "no-store" });
        if (mr.status === 401) serverState = "auth";
        else if (mr.ok) {
          const j = await mr.json();
          serverModel = (j.data && j.data[0] && j.data[0].id) || "";
          serverState = "ok";
        } else serverState = "down";
      }
    } catch (_) {
      serverState = "down";
      statusTimer = setTimeout(checkServer, 5000);
    }
    renderStatus();
  }
  function renderStatus() {
    const el = $("#server-status");
    el.dataset.state = serverState;
    const text = {
      ok: serverModel || t("connected"),
      loading: t("modelLoading"),
      down: t("serverDown"),
      auth: t("needApiKey"),
      unknown: "",
    }[serverState];
    $("#model-name").textContent = text;
    el.title = text;
  }

  // ---------------------------------------------------------------- composer
  const input = $("#input");
  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px";
  }
  input.addEventListener("input", autosize);
  input.addEventListener("keydown", (e) => {
    // Enter sends; Shift+Enter is a new line; never while an IME is composing (Chinese input).
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim() || streaming) return;
    input.value = "";
    autosize();
    send(text);
  });
  $("#stop").addEventListener("click", () => {
    if (streaming) streaming.controller.abort();
  });

  // ---------------------------------------------------------------- confirm dialog
  function confirmDialog(text, okLabel) {
    const d = $("#confirm-dialog");
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel || t("delete");
    d.returnValue = "";
    d.showModal();
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    });
  }

  // ---------------------------------------------------------------- templates
  let userTemplates = store.get(KEYS.templates, []);
  if (!Array.isArray(userTemplates)) userTemplates = [];
  let tplSelected = null;
  let tplMode = "use"; // use | edit
  let tplDraft = null; // template being edited (user template copy or new)
  let tplValues = {}; // field values typed in the "use" form, per template id

  const PLACEHOLDER = /\{\{\s*([^{}]+?)\s*\}\}/g;
  function fieldsOf(tpl) {
    if (tpl.builtin) return tpl.fields;
    const seen = new Set();
    const out = [];
    for (const m of String(tpl.body).matchAll(PLACEHOLDER)) {
      if (seen.has(m[1])) continue;
      seen.add(m[1]);
      out.push({ key: m[1], label: m[1], multiline: true });
    }
    return out;
  }
  function allTemplates() {
    return [...BUILTIN.map((b) => ({ ...b, builtin: true })), ...userTemplates];
  }
  const findTemplate = (id) => allTemplates().find((x) => x.id === id);
  // The server renders built-in templates (the same renderer as batches); user templates are filled here.
  async function fillTemplate(tpl, values) {
    if (!tpl) return "";
    if (tpl.builtin) {
      const id = tpl.variants[lang] || tpl.variants.en || Object.values(tpl.variants)[0];
      const r = await fetch("v1/templates/render", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ template: id, values, partial: true }),
      });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error((j.error && j.error.message) || r.statusText);
      const user = j.messages.filter((m) => m.role === "user").pop();
      return user ? user.content : "";
    }
    return String(tpl.body).replace(PLACEHOLDER, (_, k) => (values[k] ?? "").trim()).replace(/\n{3,}/g, "\n\n").trim();
  }
  /** GET /v1/templates, grouped by job: `product-description` and `product-description.zh` are one entry. */
  async function loadBuiltinTemplates() {
    try {
      const r = await fetch("v1/templates", { headers: authHeaders(), cache: "no-store" });
      if (!r.ok) return;
      const j = await r.json();
      const byJob = new Map();
      for (const x of j.data || []) {
        const job = x.lang === "en" ? x.id : x.id.replace(new RegExp("\\." + x.lang + "$"), "");
        let b = byJob.get(job);
        if (!b) byJob.set(job, (b = { id: job, icon: x.icon, name: {}, description: {}, fieldsBy: {}, variants: {} }));
        b.variants[x.lang] = x.id;
        b.name[x.lang] = x.name;
        b.description[x.lang] = x.description;
        b.fieldsBy[x.lang] = x.fields;
        b.icon = b.icon || x.icon;
      }
      BUILTIN = [...byJob.values()].map((b) => {
        const base = b.fieldsBy.en || Object.values(b.fieldsBy)[0];
        const fields = base.map((f) => {
          const o = { key: f.key, multiline: f.multiline, code: f.code, optional: f.optional, label: {}, placeholder: {} };
          for (const [l, fs] of Object.entries(b.fieldsBy)) {
            const g = fs.find((y) => y.key === f.key) || f;
            o.label[l] = g.label;
            o.placeholder[l] = g.placeholder || "";
          }
          return o;
        });
        return { id: b.id, icon: b.icon, name: b.name, description: b.description, fields, variants: b.variants };
      });
      renderEmptyChips();
      if ($("#templates-dialog").open) renderTemplates();
      document.dispatchEvent(new CustomEvent("quire:templates"));
    } catch (_) {
      // the server is down: the status line says so, and the next check loads them
    }
  }
  function saveUserTemplates() {
    store.set(KEYS.templates, userTemplates);
  }

  function openTemplates(id) {
    if (id) tplSelected = id;
    tplMode = "use";
    $("#tpl-search").value = "";
    renderTemplates();
    const d = $("#templates-dialog");
    if (!d.open) d.showModal();
    const first = $("#tpl-view input, #tpl-view textarea");
    if (first) first.focus();
  }

  function renderTemplates() {
    const q = $("#tpl-search").value.trim().toLowerCase();
    const list = $("#tpl-list");
    list.replaceChildren();
    const groups = [
      [t("builtinTemplates"), allTemplates().filter((x) => x.builtin)],
      [t("myTemplates"), userTemplates],
    ];
    for (const [label, items] of groups) {
      const shown = items.filter((x) =>
        !q || (loc(x.name) + " " + loc(x.description)).toLowerCase().includes(q));
      list.append(h("div", { class: "tpl-group", text: label }));
      if (!shown.length) {
        list.append(h("p", { class: "muted small pad", text: items === userTemplates && !q ? t("noUserTemplates") : "—" }));
      }
      for (const x of shown) {
        list.append(h("button", {
          type: "button",
          class: "tpl-item" + (x.id === tplSelected && !(tplMode === "edit" && !tplDraft.id) ? " active" : ""),
          dataset: { id: x.id },
          onclick: () => { tplSelected = x.id; tplMode = "use"; renderTemplates(); },
        }, h("span", { class: "tpl-icon" }, icon(x.icon || "star")),
        h("span", { class: "tpl-item-text" },
          h("span", { class: "tpl-name", text: loc(x.name) }),
          h("span", { class: "tpl-desc", text: loc(x.description) }))));
      }
    }
    $("#tpl-export").disabled = !userTemplates.length;
    if (tplMode === "edit") renderTemplateEditor();
    else renderTemplateUse();
  }

  function renderTemplateUse() {
    const view = $("#tpl-view");
    const tpl = findTemplate(tplSelected) || allTemplates()[0];
    if (!tpl) {
      view.replaceChildren(h("p", { class: "muted", text: t("templatesLoading") }));
      return;
    }
    tplSelected = tpl.id;
    const values = (tplValues[tpl.id] ||= {});
    const preview = h("pre", { class: "tpl-preview" });
    let asked = 0;
    let timer = 0;
    const update = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const mine = ++asked;
        try {
          const text = await fillTemplate(tpl, values);
          if (mine === asked) preview.textContent = text;
        } catch (e) {
          if (mine === asked) preview.textContent = t("errorPrefix") + " " + e.message;
        }
      }, tpl.builtin ? 150 : 0);
    };
    const fields = fieldsOf(tpl).map((f) => {
      const attrs = {
        name: f.key,
        placeholder: loc(f.placeholder) || "",
        class: f.code ? "mono" : "",
        oninput: (e) => { values[f.key] = e.target.value; update(); },
      };
      const ctl = f.multiline ? h("textarea", { rows: f.code ? 8 : 3, ...attrs }) : h("input", { type: "text", ...attrs });
      ctl.value = values[f.key] || "";
      return h("label", { class: "field" }, h("span", { text: loc(f.label) }), ctl);
    });
    update();
    const actions = [
      h("button", { type: "button", class: "btn primary", id: "tpl-use", text: t("useTemplate"), onclick: () => useTemplate(tpl, values) }),
    ];
    if (tpl.builtin) {
      actions.unshift(h("button", { type: "button", class: "btn ghost", id: "tpl-duplicate", text: t("duplicate"),
        onclick: async () => {
          // the built-in's text with each field as a {{field}} placeholder of the page's own templates
          const marks = Object.fromEntries(tpl.fields.map((f) => [f.key, "{{" + f.key + "}}"]));
          let body = "";
          try { body = await fillTemplate(tpl, marks); } catch (e) { toast(t("errorPrefix") + " " + e.message, true); return; }
          editTemplate({ id: null, name: loc(tpl.name), description: loc(tpl.description), body });
        } }));
    } else {
      actions.unshift(
        h("button", { type: "button", class: "btn ghost danger-text", id: "tpl-delete", text: t("delete"), onclick: () => deleteTemplate(tpl) }),
        h("button", { type: "button", class: "btn ghost", id: "tpl-edit", text: t("edit"), onclick: () => editTemplate({ ...tpl }) }));
    }
    view.replaceChildren(
      h("h3", { text: loc(tpl.name) }),
      h("p", { class: "muted", text: loc(tpl.description) }),
      h("form", { class: "tpl-form", onsubmit: (e) => { e.preventDefault(); useTemplate(tpl, values); } },
        fields.length ? fields : h("p", { class: "muted small", text: t("noFields") })),
      h("details", { class: "tpl-preview-box" }, h("summary", { text: t("preview") }), preview),
      h("div", { class: "dialog-actions" }, h("span", { class: "spacer" }), actions));
  }

  async function useTemplate(tpl, values) {
    try {
      input.value = await fillTemplate(tpl, values);
    } catch (e) {
      toast(t("errorPrefix") + " " + e.message, true);
      return;
    }
    $("#templates-dialog").close();
    autosize();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  function editTemplate(draft) {
    tplMode = "edit";
    tplDraft = draft;
    renderTemplates();
    const n = $("#tpl-edit-name");
    if (n) n.focus();
  }

  function renderTemplateEditor() {
    const d = tplDraft;
    const view = $("#tpl-view");
    const fieldsLine = h("p", { class: "muted small tpl-fields-line" });
    const showFields = (body) => {
      const f = fieldsOf({ body });
      fieldsLine.textContent = f.length ? t("fieldsFound", { fields: f.map((x) => x.key).join(", ") }) : t("noFieldsHint");
    };
    const name = h("input", { id: "tpl-edit-name", type: "text", value: d.name || "", required: true });
    const desc = h("input", { id: "tpl-edit-desc", type: "text", value: d.description || "" });
    const body = h("textarea", { id: "tpl-edit-body", rows: 10, class: "mono", required: true, oninput: (e) => showFields(e.target.value) });
    body.value = d.body || "";
    showFields(body.value);
    view.replaceChildren(
      h("h3", { text: d.id ? t("editTemplate") : t("newTemplate") }),
      h("form", { class: "tpl-form", id: "tpl-edit-form", onsubmit: (e) => {
        e.preventDefault();
        const v = { name: name.value.trim(), description: desc.value.trim(), body: body.value };
        if (!v.name || !v.body.trim()) return;
        if (d.id) {
          const i = userTemplates.findIndex((x) => x.id === d.id);
          if (i >= 0) userTemplates[i] = { ...userTemplates[i], ...v, updated: now() };
        } else {
          const nt = { id: uid("t"), ...v, created: now(), updated: now() };
          userTemplates.push(nt);
          d.id = nt.id;
        }
        saveUserTemplates();
        tplSelected = d.id;
        tplMode = "use";
        renderTemplates();
        toast(t("templateSaved"));
      } },
      h("label", { class: "field" }, h("span", { text: t("templateName") }), name),
      h("label", { class: "field" }, h("span", { text: t("templateDescription") }), desc),
      h("label", { class: "field" }, h("span", { text: t("templateBody") }), body),
      h("p", { class: "muted small", text: t("templateBodyHint") }),
      fieldsLine,
      h("div", { class: "dialog-actions" }, h("span", { class: "spacer" }),
        h("button", { type: "button", class: "btn ghost", text: t("cancel"), onclick: () => { tplMode = "use"; renderTemplates(); } }),
        h("button", { type: "submit", class: "btn primary", id: "tpl-save", text: t("save") }))));
  }

  async function deleteTemplate(tpl) {
    if (!(await confirmDialog(t("confirmDeleteTemplate", { name: tpl.name })))) return;
    userTemplates = userTemplates.filter((x) => x.id !== tpl.id);
    saveUserTemplates();
    tplSelected = BUILTIN.length ? BUILTIN[0].id : null;
    renderTemplates();
  }

  function exportTemplates() {
    const data = {
      format: "quire-templates",
      version: 1,
      exported: new Date().toISOString(),
      templates: userTemplates.map(({ name, description, body }) => ({ name, description, body })),
    };
    const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: "quire-templates.json" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  /** Accepts our export format, a bare array, or built-in style entries ({en, zh} strings). */
  function importTemplates(text) {
    let data;
    try { data = JSON.parse(text); } catch (_) { throw new Error(t("importNotJson")); }
    const items = Array.isArray(data) ? data : data && Array.isArray(data.templates) ? data.templates : null;
    if (!items) throw new Error(t("importBadFormat"));
    let added = 0;
    let skipped = 0;
    for (const it of items.slice(0, 1000)) {
      const name = it && typeof loc(it.name) === "string" ? loc(it.name).trim().slice(0, 200) : "";
      const body = it && typeof loc(it.body) === "string" ? loc(it.body) : "";
      if (!name || !body.trim() || body.length > 100000) { skipped++; continue; }
      const description = typeof loc(it.description) === "string" ? loc(it.description).slice(0, 500) : "";
      const existing = userTemplates.find((x) => x.name === name);
      if (existing) Object.assign(existing, { description, body, updated: now() });
      else userTemplates.push({ id: uid("t"), name, description, body, created: now(), updated: now() });
      added++;
    }
    saveUserTemplates();
    return { added, skipped };
  }

  function renderEmptyChips() {
    const box = $("#empty-templates");
    box.replaceChildren(...BUILTIN.map((x) => h("button", {
      type: "button", class: "chip", dataset: { id: x.id }, onclick: () => openTemplates(x.id),
    }, icon(x.icon), loc(x.name))));
  }

  // ---------------------------------------------------------------- sidebar (narrow screens)
  function closeSidebarIfNarrow() {
    document.body.classList.remove("sidebar-open");
    $("#scrim").hidden = true;
  }

  // ---------------------------------------------------------------- wiring
  $("#new-chat").addEventListener("click", newConversation);
  $("#open-settings").addEventListener("click", openSettings);
  $("#settings-form").addEventListener("submit", (e) => {
    if (e.submitter && e.submitter.value === "save") saveSettingsFromForm();
  });
  $("#settings-reset").addEventListener("click", () => {
    $("#set-system").value = DEFAULTS.systemPrompt;
    $("#set-temperature").value = DEFAULTS.temperature;
    $("#set-top-p").value = DEFAULTS.topP;
    $("#set-max-tokens").value = DEFAULTS.maxTokens;
  });
  $("#open-templates").addEventListener("click", () => openTemplates());
  $("#template-btn").addEventListener("click", () => openTemplates());
  $("#tpl-close").addEventListener("click", () => $("#templates-dialog").close());
  $("#tpl-search").addEventListener("input", () => renderTemplates());
  $("#tpl-new").addEventListener("click", () => editTemplate({ id: null, name: "", description: "", body: "" }));
  $("#tpl-export").addEventListener("click", exportTemplates);
  $("#tpl-import").addEventListener("click", () => $("#tpl-import-file").click());
  $("#tpl-import-file").addEventListener("change", async (e) => {
    const f = e.target.files && e.target.files[0];
    e.target.value = "";
    if (!f) return;
    try {
      if (f.size > 5 * 1024 * 1024) throw new Error(t("importTooBig"));
      const r = importTemplates(await f.text());
      renderTemplates();
      toast(t("imported", { n: r.added }) + (r.skipped ? " " + t("importSkipped", { n: r.skipped }) : ""));
    } catch (err) {
      toast(err.message, true);
    }
  });
  $("#theme-toggle").addEventListener("click", () => {
    theme = theme === "dark" ? "light" : "dark";
    store.set(KEYS.theme, theme);
    applyTheme();
  });
  $("#lang-toggle").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    store.set(KEYS.lang, lang);
    applyI18n();
  });
  $("#sidebar-open").addEventListener("click", () => {
    document.body.classList.add("sidebar-open");
    $("#scrim").hidden = false;
  });
  $("#sidebar-close").addEventListener("click", closeSidebarIfNarrow);
  $("#scrim").addEventListener("click", closeSidebarIfNarrow);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && streaming && !document.querySelector("dialog[open]")) streaming.controller.abort();
  });
  // Another tab changed the stored conversations: pick them up (unless this tab is streaming).
  window.addEventListener("storage", (e) => {
    if (streaming) return;
    if (e.key === KEYS.convs) {
      convs = store.get(KEYS.convs, []);
      if (!convs.some((c) => c.id === currentId)) currentId = null;
      renderConvList();
      renderMessages(false);
    } else if (e.key === KEYS.templates) {
      userTemplates = store.get(KEYS.templates, []);
    } else if (e.key === KEYS.settings) {
      settings = { ...DEFAULTS, ...store.get(KEYS.settings, {}) };
    }
  });

  applyI18n();
  renderMessages(true);
  autosize();
  checkServer();
  loadBuiltinTemplates();
  input.focus();

  // What the Batch view (batch.js) shares with the chat page.
  window.quireUI = {
    h, icon, toast, authHeaders, MD,
    t: (k, vars) => t(k, vars),
    loc: (v) => loc(v),
    get lang() { return lang; },
    builtinTemplates: () => BUILTIN,
    confirm: (text, okLabel) => confirmDialog(text, okLabel),
  };

  // Small surface for the browser tests and for debugging from the console.
  window.quire = {
    renderMarkdown: (md) => MD.render(md),
    /** Show `md` as an assistant reply (not saved) through the same path real replies take. */
    showTestReply(md) {
      const m = { id: uid("m"), role: "assistant", content: String(md) };
      $("#empty-state").hidden = true;
      const el = messageEl(m, false);
      el.classList.add("test-reply");
      $("#messages").append(el);
      return m.id;
    },
    fillTemplate: (id, values) => fillTemplate(findTemplate(id), values || {}),
    builtinTemplates: () => BUILTIN,
    get streaming() { return !!streaming; },
    get language() { return lang; },
    get theme() { return theme; },
  };
})();
