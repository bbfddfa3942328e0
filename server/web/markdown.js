// Markdown → sanitised HTML for assistant messages (model output is untrusted).
//
// Pipeline: marked (GFM) → DOMPurify → DOM, then code blocks get a header with the language and a copy
// button. Two layers keep model output inert: raw HTML in the Markdown is shown as text (escaped by the
// renderer below), and everything marked produces still goes through DOMPurify with a strict allow-list
// (no scripts, styles, event handlers, forms, frames or images; links only to http(s), mailto, relative
// or in-page targets, opened in a new tab without an opener).
"use strict";

(function () {
  const { marked } = window.marked ? window : { marked: null };
  if (!marked || !window.DOMPurify || !window.hljs) {
    throw new Error("markdown.js: marked, DOMPurify and highlight.js must load first");
  }

  const escapeHtml = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  // Language names the models write that highlight.js knows under another name.
  const LANG_ALIASES = { py: "python", js: "javascript", ts: "typescript", sh: "bash", zsh: "bash", console: "shell",
    golang: "go", rs: "rust", "c++": "cpp", yml: "yaml", html: "xml", vue: "xml", text: "plaintext", txt: "plaintext" };

  // Highlighting a block is the costly part of a re-render while a reply streams in; finished blocks are
  // cached by (language, text). Auto-detection (no language on the fence) runs only once the text is final.
  const cache = new Map();
  function highlight(code, lang, final) {
    let language = (lang || "").trim().toLowerCase().split(/\s+/)[0];
    language = LANG_ALIASES[language] || language;
    const key = language + "\u0000" + code;
    const hit = cache.get(key);
    if (hit) return hit;
    let out;
    try {
      if (language && hljs.getLanguage(language)) {
        out = { html: hljs.highlight(code, { language, ignoreIllegals: true }).value, language };
      } else if (!language && final && code.length < 20000) {
        const r = hljs.highlightAuto(code);
        out = { html: r.value, language: r.language || "" };
      } else {
        out = { html: escapeHtml(code), language };
      }
    } catch (_) {
      out = { html: escapeHtml(code), language };
    }
    if (final || cache.size < 500) {
      if (cache.size > 1000) cache.clear();
      cache.set(key, out);
    }
    return out;
  }

  let finalPass = true; // set by render(); read by the code renderer

  const renderer = {
    // Raw HTML written by the model is displayed, not interpreted.
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const code = text.replace(/\n$/, "");
      const h = highlight(code, lang, finalPass);
      const label = (lang || h.language || "").trim().split(/\s+/)[0];
      return `<pre data-lang="${escapeHtml(label)}"><code class="hljs${h.language ? " language-" + escapeHtml(h.language) : ""}">${h.html}</code></pre>\n`;
    },
    // Images are not fetched (privacy, and the page works offline): show a link to them instead.
    image({ href, text }) {
      return `<a href="${escapeHtml(href || "")}">${escapeHtml(text || href || "image")}</a>`;
    },
  };

  marked.use({ gfm: true, breaks: false, renderer });

  const SAFE_URI = /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i;
  const PURIFY = {
    ALLOWED_TAGS: ["a", "b", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6",
      "hr", "i", "input", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td",
      "tfoot", "th", "thead", "tr", "ul", "kbd", "mark", "small", "details", "summary"],
    ALLOWED_ATTR: ["href", "title", "class", "data-lang", "align", "colspan", "rowspan", "start", "type",
      "checked", "disabled"],
    ALLOWED_URI_REGEXP: SAFE_URI,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
  };

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      const href = node.getAttribute("href") || "";
      if (href && !href.startsWith("#")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    } else if (node.tagName === "INPUT") {
      // Only GFM task-list checkboxes, read-only.
      if (node.getAttribute("type") !== "checkbox") node.remove();
      else node.setAttribute("disabled", "");
    }
  });
  /** Markdown → sanitised HTML string. `streaming`: the text is still growing (skip costly detection). */
  function render(md, { streaming = false } = {}) {
    finalPass = !streaming;
    let html;
    try {
      html = marked.parse(String(md || ""), { async: false });
    } catch (e) {
      html = `<pre>${escapeHtml(md)}</pre>`;
    } finally {
      finalPass = true;
    }
    return DOMPurify.sanitize(html, PURIFY);
  }

  /** Wrap each code block of `root` with a header: language label and a copy button. */
  function decorateCodeBlocks(root, labels) {
    for (const pre of root.querySelectorAll("pre")) {
      if (pre.parentElement && pre.parentElement.classList.contains("code-block")) continue;
      const wrap = document.createElement("div");
      wrap.className = "code-block";
      const head = document.createElement("div");
      head.className = "code-head";
      const lang = document.createElement("span");
      lang.className = "code-lang";
      lang.textContent = pre.getAttribute("data-lang") || "";
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "copy-code";
      btn.textContent = labels.copy;
      btn.setAttribute("aria-label", labels.copyCode);
      head.append(lang, btn);
      pre.replaceWith(wrap);
      wrap.append(head, pre);
    }
  }

  /** Render `md` into `el` (sanitised), with decorated code blocks. */
  function renderInto(el, md, opts = {}) {
    el.innerHTML = render(md, opts);
    decorateCodeBlocks(el, opts.labels || { copy: "Copy", copyCode: "Copy code" });
  }

  window.QuireMarkdown = { render, renderInto, escapeHtml };
})();
