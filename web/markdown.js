/*
 * raychat's Markdown renderer for chat messages.
 *
 * Model output is never trusted HTML. This renderer never parses HTML and never touches innerHTML: every
 * piece of source text ends up in the page through document.createTextNode / textContent, so "<script>",
 * "<img onerror=...>" and friends are shown as the characters they are. Markdown syntax only decides which
 * *elements* (from a fixed list) wrap that text.
 *
 * Supported, on purpose a small subset of CommonMark that small chat models actually emit:
 *   blocks:  ``` / ~~~ code fences (an unterminated fence renders as an open code block while streaming),
 *            ATX headings (#..######), paragraphs (single newlines kept as line breaks), ordered and
 *            unordered lists (nested by indentation), > block quotes, --- rules
 *   inline:  `code`, **bold** / __bold__, *italic* / _italic_, ~~strike~~, [text](url), <url>, bare URLs,
 *            backslash escapes
 * Links: only http: and https: URLs become <a>, always with target=_blank and rel="noopener noreferrer
 * nofollow"; anything else (javascript:, data:, relative paths) stays literal text. Images are never loaded
 * (the page makes no request off its own origin): ![alt](url) becomes a link labelled "image: alt".
 *
 * API (a global, no build step): RaychatMarkdown.render(src) -> DocumentFragment,
 * RaychatMarkdown.renderInto(element, src), RaychatMarkdown.safeUrl(href) -> string | null.
 */
(function (global) {
  "use strict";

  const FENCE_RE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
  const HEADING_RE = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const HR_RE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE_RE = /^ {0,3}> ?(.*)$/;
  const LIST_RE = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
  const BLANK_RE = /^[ \t]*$/;
  const LANG_RE = /^[\w+#.-]{1,24}$/;
  const URL_RE = /^https?:\/\/[^\s<>"'`]+/i;
  const PUNCT_RE = /[!-/:-@[-`{-~]/;

  function el(tag, cls) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return node;
  }

  /** Returns the URL as a string if it is an absolute http(s) URL, else null. */
  function safeUrl(href) {
    if (typeof href !== "string") return null;
    const trimmed = href.trim();
    if (!/^https?:\/\//i.test(trimmed)) return null;
    try {
      const url = new URL(trimmed);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_err) {
      return null;
    }
  }

  function leadingSpaces(line) {
    const m = /^ */.exec(line);
    return m[0].length;
  }

  function isBlockStart(line) {
    return FENCE_RE.test(line) || HEADING_RE.test(line) || HR_RE.test(line) || QUOTE_RE.test(line) ||
      (LIST_RE.test(line) && LIST_RE.exec(line)[3] !== undefined);
  }

  // ---------------------------------------------------------------- blocks

  /** Parses lines into block objects: {type, ...}. Pure data, so rendering stays one small switch. */
  function parseBlocks(lines) {
    const blocks = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK_RE.test(line)) { i++; continue; }
      let m = FENCE_RE.exec(line);
      if (m) {
        const fence = m[1];
        const lang = LANG_RE.test(m[2] || "") ? m[2] : "";
        const indent = leadingSpaces(line);
        const body = [];
        let closed = false;
        i++;
        while (i < lines.length) {
          const l = lines[i];
          const close = new RegExp("^ {0,3}" + (fence[0] === "`" ? "`" : "~") + "{" + fence.length + ",}[ \\t]*$");
          if (close.test(l)) { closed = true; i++; break; }
          // Strip up to the fence's own indentation from content lines (CommonMark does the same).
          body.push(l.slice(Math.min(indent, leadingSpaces(l))));
          i++;
        }
        blocks.push({ type: "code", lang, text: body.join("\n"), open: !closed });
        continue;
      }
      m = HEADING_RE.exec(line);
      if (m) {
        blocks.push({ type: "heading", level: m[1].length, text: m[2] || "" });
        i++;
        continue;
      }
      if (HR_RE.test(line)) { blocks.push({ type: "hr" }); i++; continue; }
      if (QUOTE_RE.test(line)) {
        const inner = [];
        while (i < lines.length && !BLANK_RE.test(lines[i])) {
          const q = QUOTE_RE.exec(lines[i]);
          if (q) inner.push(q[1]);
          else if (isBlockStart(lines[i])) break;
          else inner.push(lines[i]); // lazy continuation
          i++;
        }
        blocks.push({ type: "quote", children: parseBlocks(inner) });
        continue;
      }
      m = LIST_RE.exec(line);
      if (m) {
        const res = parseList(lines, i);
        blocks.push(res.block);
        i = res.next;
        continue;
      }
      const para = [line];
      i++;
      while (i < lines.length && !BLANK_RE.test(lines[i]) && !isBlockStart(lines[i])) {
        para.push(lines[i]);
        i++;
      }
      blocks.push({ type: "para", text: para.map((l) => l.replace(/^[ \t]+/, "")).join("\n") });
    }
    return blocks;
  }

  function parseList(lines, start) {
    const first = LIST_RE.exec(lines[start]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const delim = first[2].slice(-1);
    const block = { type: "list", ordered, start: ordered ? parseInt(first[2], 10) : 1, items: [], loose: false };
    let item = null;
    let contentIndent = 0;
    let i = start;
    let sawBlank = false;
    while (i < lines.length) {
      const line = lines[i];
      const m = LIST_RE.exec(line);
      const sameList = m && m[1].length >= indent && m[1].length < indent + 2 &&
        (ordered ? /\d/.test(m[2]) && m[2].slice(-1) === delim : !/\d/.test(m[2]) && m[2] === first[2]);
      if (sameList) {
        if (sawBlank && item) block.loose = true;
        item = [m[3] || ""];
        block.items.push(item);
        contentIndent = m[1].length + m[2].length + 1;
        sawBlank = false;
        i++;
        continue;
      }
      if (BLANK_RE.test(line)) {
        // A blank line ends the list unless the next non-blank line continues it (indented or a new item).
        let j = i + 1;
        while (j < lines.length && BLANK_RE.test(lines[j])) j++;
        if (j >= lines.length) break;
        const nxt = LIST_RE.exec(lines[j]);
        const continues = leadingSpaces(lines[j]) > indent ||
          (nxt && nxt[1].length === indent && (/\d/.test(nxt[2]) === ordered));
        if (!continues) break;
        item.push("");
        sawBlank = true;
        i++;
        continue;
      }
      const lead = leadingSpaces(line);
      if (lead > indent) {
        item.push(line.slice(Math.min(lead, contentIndent)));
        i++;
        continue;
      }
      // Lazy continuation: an unindented plain line right after item text belongs to that item's paragraph.
      if (!sawBlank && !isBlockStart(line) && item.length && !BLANK_RE.test(item[item.length - 1])) {
        item.push(line);
        i++;
        continue;
      }
      break;
    }
    block.items = block.items.map((lns) => parseBlocks(lns));
    return { block, next: i };
  }

  function renderBlocks(blocks, parent, tight) {
    for (const b of blocks) {
      switch (b.type) {
        case "code": parent.appendChild(renderCode(b)); break;
        case "heading": {
          // h1/h2 inside a chat bubble are too loud; shift everything down two levels (h3..h6).
          const h = el("h" + Math.min(6, b.level + 2), "md-h" + b.level);
          renderInline(b.text, h);
          parent.appendChild(h);
          break;
        }
        case "hr": parent.appendChild(el("hr")); break;
        case "quote": {
          const q = el("blockquote");
          renderBlocks(b.children, q, false);
          parent.appendChild(q);
          break;
        }
        case "list": {
          const list = el(b.ordered ? "ol" : "ul");
          if (b.ordered && b.start !== 1) list.start = b.start;
          for (const itemBlocks of b.items) {
            const li = el("li");
            renderBlocks(itemBlocks, li, !b.loose);
            list.appendChild(li);
          }
          parent.appendChild(list);
          break;
        }
        case "para": {
          if (tight) {
            renderInline(b.text, parent);
          } else {
            const p = el("p");
            renderInline(b.text, p);
            parent.appendChild(p);
          }
          break;
        }
      }
    }
  }

  function renderCode(b) {
    const wrap = el("div", "code-block" + (b.open ? " code-open" : ""));
    const head = el("div", "code-head");
    const lang = el("span", "code-lang");
    lang.textContent = b.lang || "text";
    const copy = el("button", "copy-code");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    head.append(lang, copy);
    const pre = el("pre");
    const code = el("code");
    if (b.lang) code.className = "language-" + b.lang;
    code.textContent = b.text;
    pre.appendChild(code);
    wrap.append(head, pre);
    return wrap;
  }

  // ---------------------------------------------------------------- inline

  /** Finds `delim` closing an emphasis span opened at `from`; null if none (then the delimiter is literal). */
  function findCloser(text, delim, from) {
    let j = from;
    while (true) {
      j = text.indexOf(delim, j);
      if (j < 0) return null;
      const before = text[j - 1];
      const after = text[j + delim.length];
      const okBefore = before !== undefined && !/\s/.test(before);
      // Intraword delimiters never close emphasis: snake_case, and 2*3*4 (arithmetic is common in chat; this
      // is stricter than CommonMark, which would italicise the 3).
      const okAfter = (delim[0] !== "_" && delim.length === 2) || after === undefined || !/[\p{L}\p{N}]/u.test(after);
      // "**" must not be read as the closer of "*".
      const notLonger = delim.length === 2 || (text[j + 1] !== delim[0] && before !== delim[0]);
      if (j > from && okBefore && okAfter && notLonger) return j;
      j += delim.length;
    }
  }

  /** Parses "[label](url)" at text[i] ('[' position); returns {label, href, end} or null. */
  function parseLink(text, i) {
    let depth = 0;
    let j = i;
    for (; j < text.length; j++) {
      const c = text[j];
      if (c === "\\") { j++; continue; }
      if (c === "[") depth++;
      else if (c === "]" && --depth === 0) break;
      else if (c === "\n" && text[j + 1] === "\n") return null;
    }
    if (j >= text.length || text[j + 1] !== "(") return null;
    const m = /^\(\s*<?([^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/.exec(text.slice(j + 1));
    if (!m) return null;
    return { label: text.slice(i + 1, j), href: m[1], end: j + 1 + m[0].length };
  }

  function trimUrl(url) {
    // Trailing punctuation is sentence punctuation, and a ")" only belongs to the URL when it is balanced.
    while (url.length) {
      const last = url[url.length - 1];
      if (".,;:!?'\"*_".includes(last)) { url = url.slice(0, -1); continue; }
      if (last === ")" && (url.split("(").length - 1) < (url.split(")").length - 1)) { url = url.slice(0, -1); continue; }
      break;
    }
    return url;
  }

  function appendLink(parent, href, labelText, renderLabel) {
    const a = el("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    if (renderLabel) renderInline(labelText, a, true);
    else a.textContent = labelText;
    parent.appendChild(a);
  }

  /** Appends inline nodes for `text` to `parent`. `inLink` stops links nesting inside links. */
  function renderInline(text, parent, inLink) {
    let buf = "";
    const flush = () => {
      if (!buf) return;
      const parts = buf.split("\n");
      parts.forEach((part, k) => {
        if (k > 0) parent.appendChild(el("br"));
        if (part) parent.appendChild(document.createTextNode(part));
      });
      buf = "";
    };
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      const rest = text.slice(i);
      if (c === "\\" && i + 1 < text.length && PUNCT_RE.test(text[i + 1])) {
        buf += text[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        const run = /^`+/.exec(rest)[0];
        const close = text.indexOf(run, i + run.length);
        if (close > 0 && text[close + run.length] !== "`") {
          flush();
          const code = el("code");
          let inner = text.slice(i + run.length, close).replace(/\n/g, " ");
          if (/^ .* $/.test(inner) && inner.trim()) inner = inner.slice(1, -1);
          code.textContent = inner;
          parent.appendChild(code);
          i = close + run.length;
          continue;
        }
        buf += run;
        i += run.length;
        continue;
      }
      if (!inLink && (c === "[" || (c === "!" && text[i + 1] === "["))) {
        const isImage = c === "!";
        const link = parseLink(text, isImage ? i + 1 : i);
        if (link) {
          const href = safeUrl(link.href);
          if (href) {
            flush();
            if (isImage) appendLink(parent, href, "image: " + (link.label || href), false);
            else appendLink(parent, href, link.label || href, true);
          } else {
            buf += text.slice(i, link.end); // unsafe or relative target: show the source, link nothing
          }
          i = link.end;
          continue;
        }
      }
      if (!inLink && c === "<") {
        const m = /^<(https?:\/\/[^\s<>]+)>/i.exec(rest);
        if (m && safeUrl(m[1])) {
          flush();
          appendLink(parent, safeUrl(m[1]), m[1], false);
          i += m[0].length;
          continue;
        }
      }
      if (!inLink && (c === "h" || c === "H") && (i === 0 || !/[\p{L}\p{N}]/u.test(text[i - 1]))) {
        const m = URL_RE.exec(rest);
        if (m) {
          const url = trimUrl(m[0]);
          const href = safeUrl(url);
          if (href && url.length > 8) {
            flush();
            appendLink(parent, href, url, false);
            i += url.length;
            continue;
          }
        }
      }
      if (c === "*" || c === "_" || c === "~") {
        const dbl = text[i + 1] === c;
        if (c === "~" && !dbl) { buf += c; i++; continue; }
        const delim = dbl ? c + c : c;
        const next = text[i + delim.length];
        // Opening delimiter: must be followed by non-space, and "_" / single "*" must not sit inside a word.
        const leftOk = next !== undefined && !/\s/.test(next) &&
          ((c !== "_" && dbl) || i === 0 || !/[\p{L}\p{N}]/u.test(text[i - 1]));
        const close = leftOk ? findCloser(text, delim, i + delim.length) : null;
        if (close !== null) {
          flush();
          const tag = c === "~" ? "del" : dbl ? "strong" : "em";
          const node = el(tag);
          renderInline(text.slice(i + delim.length, close), node, inLink);
          parent.appendChild(node);
          i = close + delim.length;
          continue;
        }
        buf += delim;
        i += delim.length;
        continue;
      }
      buf += c;
      i++;
    }
    flush();
  }

  function render(src) {
    const frag = document.createDocumentFragment();
    const text = String(src == null ? "" : src).replace(/\r\n?/g, "\n");
    renderBlocks(parseBlocks(text.split("\n")), frag, false);
    return frag;
  }

  function renderInto(target, src) {
    target.replaceChildren(render(src));
  }

  global.RaychatMarkdown = { render, renderInto, safeUrl };
})(window);
