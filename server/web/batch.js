// Batch view: start a batch job (a template and a CSV/JSONL file of rows, or a JSONL batch file), watch it
// run, and review each text beside its prompt: approve, ask for changes, reject, edit, export the approved
// ones. Everything lives on the server (/v1/files, /v1/batches and the review extension), so several
// editors see the same state and a reload loses nothing; the address (#batch/<id>) can be shared.
"use strict";

(function () {
  const UI = window.quireUI;
  const { h, icon, toast } = UI;
  const t = (k, v) => UI.t(k, v);
  const $ = (sel, root = document) => root.querySelector(sel);
  const dialog = $("#batch-dialog");
  const VERDICTS = ["pending", "approved", "needs_changes", "rejected"];
  const OPEN = ["validating", "in_progress", "finalizing", "cancelling"];
  const PAGE = 50;

  let current = null; // the batch shown (its object), or null: the new-batch form
  let items = []; // its loaded items
  let counts = {};
  let total = 0;
  let filter = localStorage.getItem("quire.batch.filter.v1") || "all";
  let shown = PAGE;
  let editing = new Set(); // custom_ids whose text is being edited (polling leaves them alone)
  let pollTimer = 0;
  let source = "template";

  async function api(path, opts = {}) {
    const r = await fetch(path, { cache: "no-store", ...opts, headers: { ...UI.authHeaders(), ...(opts.headers || {}) } });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error((j.error && j.error.message) || `${r.status} ${r.statusText}`);
    }
    return r;
  }
  const json = async (path, opts) => (await api(path, opts)).json();
  const post = (path, body) =>
    json(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  // ---------------------------------------------------------------- open, close, address
  function open(id) {
    if (!dialog.open) dialog.showModal();
    if (id) select(id);
    else if (!current) renderNew();
    refreshList();
  }
  function close() {
    clearTimeout(pollTimer);
    if (dialog.open) dialog.close();
  }
  dialog.addEventListener("close", () => {
    clearTimeout(pollTimer);
    if (location.hash.startsWith("#batch")) history.replaceState(null, "", location.pathname + location.search);
  });
  function setHash(id) {
    history.replaceState(null, "", id ? "#batch/" + encodeURIComponent(id) : "#batch");
  }

  // ---------------------------------------------------------------- the list of batches
  async function refreshList() {
    const list = $("#batch-list");
    try {
      const j = await json("v1/batches?limit=50");
      list.replaceChildren(...j.data.map((b) => h("button", {
        type: "button",
        class: "batch-entry" + (current && current.id === b.id ? " active" : ""),
        dataset: { id: b.id },
        onclick: () => select(b.id),
      },
      h("span", { class: "batch-entry-name", text: title(b) }),
      h("span", { class: "batch-entry-meta" },
        h("span", { class: "badge status-" + b.status, text: t("status_" + b.status) }),
        " " + done(b) + " / " + b.request_counts.total))));
      if (!j.data.length) list.append(h("p", { class: "muted small pad", text: t("noBatches") }));
    } catch (e) {
      list.replaceChildren(h("p", { class: "muted small pad", text: e.message }));
    }
  }
  const done = (b) => b.request_counts.completed + b.request_counts.failed;
  function title(b) {
    const m = b.metadata || {};
    return m.name || m.template || b.id;
  }

  // ---------------------------------------------------------------- a new batch
  function renderNew() {
    current = null;
    clearTimeout(pollTimer);
    setHash(null);
    const view = $("#batch-view");
    const tpls = UI.builtinTemplates();
    const select = h("select", { id: "batch-template" },
      ...tpls.map((x) => h("option", { value: x.id, text: UI.loc(x.name) })));
    const columns = h("p", { class: "muted small", id: "batch-columns" });
    const showColumns = () => {
      const tpl = tpls.find((x) => x.id === select.value);
      if (!tpl) return;
      const need = tpl.fields.filter((f) => !f.optional).map((f) => f.key);
      const opt = tpl.fields.filter((f) => f.optional).map((f) => f.key);
      columns.replaceChildren(t("columnsNeeded", { columns: need.join(", ") }) + (opt.length ? " " + t("columnsOptional", { columns: opt.join(", ") }) : "") + " ",
        h("a", { href: "#", id: "batch-sample", text: t("sampleCsv"), onclick: (e) => { e.preventDefault(); sampleCsv(tpl); } }));
    };
    select.addEventListener("change", showColumns);
    const file = h("input", { type: "file", id: "batch-file", accept: ".csv,.jsonl,.json,text/csv,application/jsonl" });
    const err = h("p", { class: "error-text", id: "batch-error", role: "alert" });
    const tabs = h("div", { class: "seg", role: "tablist" },
      ...["template", "file"].map((s) => h("button", {
        type: "button", role: "tab", class: "seg-btn" + (source === s ? " active" : ""), id: "batch-source-" + s,
        "aria-selected": String(source === s), text: t(s === "template" ? "fromTemplate" : "fromBatchFile"),
        onclick: () => { source = s; renderNew(); },
      })));
    const start = h("button", { type: "submit", class: "btn primary", id: "batch-start" }, icon("upload"), " " + t("startBatch"));
    const form = h("form", { class: "batch-form", onsubmit: (e) => { e.preventDefault(); startBatch(file, select, err, start); } },
      tabs,
      source === "template"
        ? [h("label", { class: "field" }, h("span", { text: t("template") }), select), columns,
           h("label", { class: "field" }, h("span", { text: t("dataFile") }), file)]
        : [h("p", { class: "muted small", text: t("batchFileHint") }),
           h("label", { class: "field" }, h("span", { text: t("batchFile") }), file)],
      err,
      h("div", { class: "dialog-actions" }, h("span", { class: "spacer" }), start));
    view.replaceChildren(h("h3", { text: t("newBatch") }), h("p", { class: "muted", text: t("newBatchHint") }), form);
    showColumns();
    for (const e of document.querySelectorAll(".batch-entry.active")) e.classList.remove("active");
  }

  function sampleCsv(tpl) {
    const q = (s) => (/[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s);
    const text = "\ufeff" + ["custom_id", ...tpl.fields.map((f) => f.key)].map(q).join(",") + "\n";
    const a = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: tpl.id + ".csv" });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  async function startBatch(file, select, err, button) {
    err.textContent = "";
    const f = file.files[0];
    if (!f) {
      err.textContent = t("chooseFile");
      return;
    }
    button.disabled = true;
    try {
      const form = new FormData();
      form.append("purpose", source === "template" ? "user_data" : "batch");
      form.append("file", f, f.name);
      const up = await json("v1/files", { method: "POST", body: form });
      const tplId = () => {
        const tpl = UI.builtinTemplates().find((x) => x.id === select.value);
        return tpl.variants[UI.lang] || tpl.variants.en || Object.values(tpl.variants)[0];
      };
      const body = { input_file_id: up.id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata: { name: f.name } };
      if (source === "template") body.template = tplId();
      const b = await post("v1/batches", body);
      toast(t("batchStarted"));
      await select_(b.id, b);
    } catch (e) {
      err.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- one batch
  async function select(id) {
    shown = PAGE;
    editing = new Set();
    await select_(id);
  }
  // `initial`: the batch as its creation returned it, shown at once (a short job may be done before the
  // first fetch answers; the user still sees it start).
  async function select_(id, initial) {
    setHash(id);
    if (initial) {
      current = initial;
      counts = {};
      renderDetail();
      renderHead();
    }
    try {
      current = await json("v1/batches/" + encodeURIComponent(id));
    } catch (e) {
      toast(e.message, true);
      renderNew();
      return;
    }
    if (!initial) renderDetail();
    await refreshItems();
    refreshList();
  }

  async function refreshItems() {
    if (!current) return;
    const id = current.id;
    const q = `offset=0&limit=${Math.min(shown, 500)}&review=${filter}`;
    const j = await json(`v1/batches/${encodeURIComponent(id)}/items?${q}`);
    if (!current || current.id !== id) return;
    current = j.batch.id ? { ...current, quire: null, ...j.batch } : current; // a closed batch has no quire (ETA)
    items = j.data;
    counts = j.review_counts;
    total = j.total;
    renderHead();
    renderItems(j.has_more);
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(pollTimer);
    if (!dialog.open || !current) return;
    const running = OPEN.includes(current.status);
    pollTimer = setTimeout(async () => {
      try {
        current = { ...current, quire: null, ...(await json("v1/batches/" + encodeURIComponent(current.id))) };
        await refreshItems();
        if (!running || !OPEN.includes(current.status)) refreshList();
      } catch (_) {
        schedulePoll();
      }
    }, running ? 1500 : 5000);
  }

  function renderDetail() {
    const view = $("#batch-view");
    view.replaceChildren(
      h("div", { id: "batch-head" }),
      h("div", { class: "batch-items", id: "batch-items" }));
  }

  function renderHead() {
    const b = current;
    const head = $("#batch-head");
    if (!head) return;
    const n = b.request_counts;
    const q = b.quire || {};
    const eta = q.eta_seconds != null ? t("eta", { time: human(q.eta_seconds) }) : "";
    const queued = q.queue_position > 0 ? t("queuePosition", { n: q.queue_position }) : "";
    const progress = h("progress", { id: "batch-progress", max: String(Math.max(1, n.total)), value: String(done(b)) });
    const actions = [];
    if (["validating", "in_progress"].includes(b.status)) {
      actions.push(h("button", { type: "button", class: "btn ghost small danger-text", id: "batch-cancel", text: t("cancelBatch"),
        onclick: async () => {
          if (!(await UI.confirm(t("confirmCancelBatch"), t("cancelBatch")))) return;
          try { current = await post(`v1/batches/${encodeURIComponent(b.id)}/cancel`, {}); refreshItems(); } catch (e) { toast(e.message, true); }
        } }));
    }
    const exportBtn = (fmt, label) => h("button", { type: "button", class: "btn ghost small", id: "batch-export-" + fmt,
      onclick: () => exportAs(fmt) }, icon("download"), " " + label);
    const chips = h("div", { class: "chips batch-filter", role: "group" },
      ...["all", ...VERDICTS].map((v) => h("button", {
        type: "button", class: "chip" + (filter === v ? " active" : ""), dataset: { filter: v },
        onclick: () => { filter = v; localStorage.setItem("quire.batch.filter.v1", v); shown = PAGE; refreshItems(); },
      }, t("review_" + v) + " " + (v === "all" ? n.total : counts[v] ?? 0))));
    const errors = b.errors && b.errors.data && b.errors.data.length
      ? h("p", { class: "error-text", id: "batch-errors", text: b.errors.data.map((e) => e.message).join("; ") }) : null;
    head.replaceChildren(...[
      h("div", { class: "batch-title" },
        h("h3", { text: title(b) }),
        h("span", { class: "badge status-" + b.status, id: "batch-status", dataset: { status: b.status }, text: t("status_" + b.status) }),
        h("span", { class: "spacer" }), ...actions),
      h("div", { class: "batch-progress-line" }, progress,
        h("span", { class: "muted small", id: "batch-progress-text",
          text: t("progressText", { done: done(b), total: n.total, failed: n.failed }) + (eta ? " · " + eta : "") + (queued ? " · " + queued : "") })),
      errors,
      h("div", { class: "batch-toolbar" }, chips, h("span", { class: "spacer" }),
        h("span", { class: "muted small", text: t("exportApproved") }),
        exportBtn("jsonl", "JSONL"), exportBtn("csv", "CSV"), exportBtn("zip", t("markdownZip")))].filter(Boolean));
  }

  function human(s) {
    if (s < 60) return Math.max(1, Math.round(s)) + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function renderItems(hasMore) {
    const box = $("#batch-items");
    if (!box) return;
    const keep = new Map([...box.querySelectorAll(".batch-item")].map((e) => [e.dataset.id, e]));
    const els = items.map((it) => (editing.has(it.custom_id) && keep.get(it.custom_id)) || itemEl(it));
    if (!els.length) els.push(h("p", { class: "muted pad", text: total === 0 && filter !== "all" ? t("noItemsFilter") : t("noItemsYet") }));
    if (hasMore) {
      els.push(h("button", { type: "button", class: "btn ghost wide", id: "batch-more", text: t("showMore"),
        onclick: () => { shown += PAGE; refreshItems(); } }));
    }
    box.replaceChildren(...els);
  }

  function itemEl(it) {
    const verdict = it.review.status;
    const text = it.review.text ?? it.text;
    const result = h("div", { class: "batch-result" });
    if (it.state === "completed") {
      result.classList.add("md");
      UI.MD.renderInto(result, text || "", { labels: { copy: t("copy"), copyCode: t("copyCode") } });
    } else if (it.state === "failed") {
      result.append(h("p", { class: "error-text", text: it.error || t("failed") }));
    } else {
      result.append(h("p", { class: "muted", text: t("state_queued") }));
    }
    const act = (v, label, cls) => h("button", {
      type: "button", class: "btn small " + (verdict === v ? "primary" : "ghost") + (cls ? " " + cls : ""),
      dataset: { verdict: v }, "aria-pressed": String(verdict === v), disabled: it.state !== "completed",
      onclick: () => review(it, { status: verdict === v ? "pending" : v }),
    }, v === "approved" ? icon("check") : null, label);
    const el = h("article", { class: "batch-item verdict-" + verdict, dataset: { id: it.custom_id, state: it.state } },
      h("header", { class: "batch-item-head" },
        h("span", { class: "batch-item-id", text: it.custom_id }),
        it.row != null ? h("span", { class: "muted small", text: t("rowN", { n: it.row }) }) : null,
        h("span", { class: "badge state-" + it.state, text: t("state_" + it.state) }),
        it.review.text != null ? h("span", { class: "badge edited", text: t("edited") }) : null,
        h("span", { class: "spacer" }),
        h("span", { class: "badge verdict " + verdict, dataset: { role: "verdict" }, text: t("review_" + verdict) })),
      h("div", { class: "batch-item-body" },
        h("div", { class: "batch-input" }, h("div", { class: "batch-label", text: t("input") }),
          h("pre", { class: "batch-prompt", text: it.prompt })),
        h("div", { class: "batch-output" }, h("div", { class: "batch-label", text: t("result") }), result)),
      h("footer", { class: "batch-item-actions" },
        act("approved", t("approve")), act("needs_changes", t("needsChanges")), act("rejected", t("reject"), "danger-text"),
        h("span", { class: "spacer" }),
        it.review.text != null ? h("button", { type: "button", class: "btn ghost small", dataset: { action: "revert" }, text: t("revertEdit"),
          onclick: () => review(it, { text: null }) }) : null,
        h("button", { type: "button", class: "btn ghost small", dataset: { action: "edit" }, disabled: it.state !== "completed",
          onclick: () => startEdit(el, it) }, icon("pen"), " " + t("edit"))));
    return el;
  }

  function startEdit(el, it) {
    editing.add(it.custom_id);
    const area = h("textarea", { class: "batch-edit mono", rows: 12 });
    area.value = it.review.text ?? it.text ?? "";
    const out = $(".batch-output", el);
    const save = h("button", { type: "button", class: "btn primary small", dataset: { action: "save" }, text: t("save"),
      onclick: async () => { editing.delete(it.custom_id); await review(it, { text: area.value }); } });
    const cancel = h("button", { type: "button", class: "btn ghost small", text: t("cancel"),
      onclick: () => { editing.delete(it.custom_id); el.replaceWith(itemEl(it)); } });
    out.replaceChildren(h("div", { class: "batch-label", text: t("result") }), area,
      h("div", { class: "dialog-actions" }, h("span", { class: "spacer" }), cancel, save));
    area.focus();
  }

  async function review(it, change) {
    try {
      const updated = await post(`v1/batches/${encodeURIComponent(current.id)}/items/${encodeURIComponent(it.custom_id)}/review`, change);
      const i = items.findIndex((x) => x.custom_id === it.custom_id);
      if (i >= 0) items[i] = updated;
      const el = document.querySelector(`.batch-item[data-id="${CSS.escape(it.custom_id)}"]`);
      if (el) el.replaceWith(itemEl(updated));
      refreshItems().catch(() => {});
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function exportAs(fmt) {
    try {
      const r = await api(`v1/batches/${encodeURIComponent(current.id)}/export?format=${fmt}&review=approved`);
      const blob = await r.blob();
      const cd = r.headers.get("content-disposition") || "";
      const name = (cd.match(/filename="([^"]+)"/) || [])[1] || `${current.id}.${fmt}`;
      const a = h("a", { href: URL.createObjectURL(blob), download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) {
      toast(e.message, true);
    }
  }

  // ---------------------------------------------------------------- wiring
  $("#open-batches").addEventListener("click", () => {
    open(null);
    if (!current) setHash(null);
  });
  $("#batch-new").addEventListener("click", () => renderNew());
  $("#batch-close").addEventListener("click", close);
  document.addEventListener("quire:lang", () => {
    if (!dialog.open) return;
    if (current) { renderHead(); renderItems(items.length < total); } else renderNew();
    refreshList();
  });
  document.addEventListener("quire:templates", () => { if (dialog.open && !current) renderNew(); });
  const fromHash = () => {
    const m = location.hash.match(/^#batch(?:\/(.+))?$/);
    if (m) open(m[1] ? decodeURIComponent(m[1]) : null);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
