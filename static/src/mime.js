// Renderers for Jupyter MIME bundles. Kernel output is untrusted: HTML is
// sanitized (DOMPurify) and rendered inline, or, when it carries scripts,
// rendered inside a sandboxed iframe with an opaque origin, so it can never
// run script in the embedding page. SVG is shown as an <img>, which cannot
// run script either.

import DOMPurify from 'dompurify';
import katex from 'katex';
import renderMathInElement from 'katex/contrib/auto-render';
import { marked } from 'marked';
import { ansiToNodes } from './ansi.js';
import { el } from './util.js';

export const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';

/** The order in which MIME types are preferred. */
export const MIME_ORDER = [
  WIDGET_MIME,
  'text/html',
  'text/markdown',
  'text/latex',
  'image/svg+xml',
  'image/png',
  'image/jpeg',
  'image/gif',
  'image/webp',
  'application/json',
  'text/plain',
];

const MATH_DELIMITERS = [
  { left: '$$', right: '$$', display: true },
  { left: '\\[', right: '\\]', display: true },
  { left: '\\(', right: '\\)', display: false },
  { left: '\\begin{equation}', right: '\\end{equation}', display: true },
  { left: '\\begin{equation*}', right: '\\end{equation*}', display: true },
  { left: '\\begin{align}', right: '\\end{align}', display: true },
  { left: '\\begin{align*}', right: '\\end{align*}', display: true },
  { left: '\\begin{gather}', right: '\\end{gather}', display: true },
  { left: '\\begin{math}', right: '\\end{math}', display: false },
  { left: '\\begin{displaymath}', right: '\\end{displaymath}', display: true },
  { left: '$', right: '$', display: false },
];

const KATEX_OPTIONS = {
  throwOnError: false,
  strict: 'ignore',
  trust: false,
  output: 'htmlAndMathml',
  // Sage's LaTeX macros; Sage sends its own \newcommand{\Bold}, so that one is added only when missing.
  macros: {
    '\\ZZ': '\\mathbf{Z}',
    '\\QQ': '\\mathbf{Q}',
    '\\RR': '\\mathbf{R}',
    '\\CC': '\\mathbf{C}',
    '\\NN': '\\mathbf{N}',
    '\\FF': '\\mathbf{F}',
    '\\GF': '\\mathbf{F}',
    '\\Zp': '\\mathbf{Z}_{#1}',
    '\\Qp': '\\mathbf{Q}_{#1}',
    '\\Zmod': '\\mathbf{Z}/#1\\mathbf{Z}',
    '\\CDF': '\\mathbf{C}',
    '\\RDF': '\\mathbf{R}',
  },
};

/** renderTex typesets one formula into el. */
export function renderTex(tex, target, display) {
  if (/\\Bold\b/.test(tex) && !/\\(new|provide)command\s*\{?\\Bold/.test(tex)) tex = `\\newcommand{\\Bold}[1]{\\mathbf{#1}}${tex}`;
  try {
    katex.render(tex, target, { ...KATEX_OPTIONS, macros: { ...KATEX_OPTIONS.macros }, displayMode: display });
  } catch (err) {
    target.textContent = tex;
    target.title = String(err.message || err);
  }
}

/** typeset renders math delimited in the text of root, and placeholders. */
export function typeset(root) {
  for (const span of root.querySelectorAll('span.cg-math[data-tex]')) {
    renderTex(span.getAttribute('data-tex'), span, span.getAttribute('data-display') === '1');
    span.removeAttribute('data-tex');
  }
  try {
    renderMathInElement(root, {
      ...KATEX_OPTIONS,
      macros: { ...KATEX_OPTIONS.macros },
      delimiters: MATH_DELIMITERS,
      ignoredTags: ['script', 'noscript', 'style', 'textarea', 'pre', 'code', 'option'],
      ignoredClasses: ['katex'],
    });
  } catch {
    // leave the text as it is
  }
}

function escapeAttr(s) {
  return s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function mathPlaceholder(tex, display) {
  return `<span class="cg-math" data-display="${display ? 1 : 0}" data-tex="${escapeAttr(tex)}"></span>`;
}

// Positions that take an element out of its output box and over the
// embedding page: stripped from kernel styles (the CSS containment of
// .cg-untrusted also confines what gets through).
const ESCAPING_POSITION = /^(fixed|sticky)$/i;

let purifyHooked = false;
function purify(html) {
  if (!purifyHooked) {
    purifyHooked = true;
    DOMPurify.addHook('afterSanitizeAttributes', (node) => {
      // Links from kernel output open in a new tab, without an opener.
      if (node.tagName === 'A' && node.hasAttribute('href')) {
        node.setAttribute('target', '_blank');
        node.setAttribute('rel', 'noopener noreferrer');
      }
      if (node.hasAttribute && node.hasAttribute('style')) {
        const st = node.style;
        if (!st) node.removeAttribute('style');
        else if (ESCAPING_POSITION.test(st.getPropertyValue('position').trim())) {
          st.removeProperty('position');
          if (!st.cssText.trim()) node.removeAttribute('style');
        }
      }
    });
  }
  return DOMPurify.sanitize(html, {
    FORBID_TAGS: ['style', 'form', 'base', 'meta', 'link'],
    FORBID_ATTR: ['srcset', 'action', 'formaction'],
    ADD_ATTR: ['target'],
    ALLOW_DATA_ATTR: true,
    // id and name become "user-content-…", so kernel HTML cannot clobber
    // the embedding page's globals (window.foo for <b id=foo>).
    SANITIZE_NAMED_PROPS: true,
  });
}

/**
 * sanitizedNode returns a fragment of safe HTML, with math typeset. Its
 * container carries cg-untrusted: CSS containment keeps everything inside
 * it (fixed or absolute children included) from painting over the page.
 */
export function sanitizedNode(html, className = 'cg-html') {
  // Sage wraps LaTeX in <script type="math/tex">: turn those into math first.
  html = String(html).replace(
    /<script\s+type\s*=\s*["']math\/tex(;\s*mode=display)?["']\s*>([\s\S]*?)<\/script>/gi,
    (_, display, tex) => mathPlaceholder(tex, !!display),
  );
  const div = el('div', { class: `${className} cg-untrusted` });
  div.innerHTML = purify(html);
  typeset(div);
  return div;
}

/** needsIframe tells HTML that only works with its scripts. */
function needsIframe(html) {
  return /<script(?![^>]*math\/tex)[\s>]|<iframe[\s>]|<[a-z][^>]*\son[a-z]+\s*=|javascript:/i.test(html);
}

// Scripts run in an opaque origin; links may open new tabs, which stay
// sandboxed (no allow-popups-to-escape-sandbox); no downloads (files the
// kernel writes are offered as cellgate's own links).
export const FRAME_SANDBOX = 'allow-scripts allow-popups';

let frameSeq = 0;
const frames = new Map();
let frameListener = false;

/** sandboxedFrame renders active HTML in an iframe with an opaque origin. */
function sandboxedFrame(html) {
  const id = `cgf${++frameSeq}-${Math.random().toString(36).slice(2)}`;
  const reporter = `<script>(function(){var last=0;function send(){var b=document.body;if(!b)return;var h=Math.ceil(Math.max(b.scrollHeight,b.getBoundingClientRect().height));if(h!==last){last=h;parent.postMessage({cellgateFrame:${JSON.stringify(id)},height:h},'*');}}
addEventListener('load',send);if(window.ResizeObserver){new ResizeObserver(send).observe(document.documentElement);}setTimeout(send,50);setInterval(send,1000);})();<\/script>`;
  const doc = `<!doctype html><html><head><meta charset="utf-8"><style>html,body{margin:0;padding:0;font-family:system-ui,sans-serif;font-size:14px;overflow:hidden}body{display:flow-root}</style></head><body>${html}${reporter}</body></html>`;
  const iframe = el('iframe', {
    class: 'cg-frame',
    sandbox: FRAME_SANDBOX,
    referrerpolicy: 'no-referrer',
    title: 'output',
  });
  iframe.srcdoc = doc;
  iframe.style.height = '24px';
  frames.set(id, iframe);
  if (!frameListener) {
    frameListener = true;
    window.addEventListener('message', (ev) => {
      const d = ev.data;
      if (!d || typeof d.cellgateFrame !== 'string') return;
      const f = frames.get(d.cellgateFrame);
      if (!f) return;
      if (!f.isConnected) {
        frames.delete(d.cellgateFrame);
        return;
      }
      if (ev.source !== f.contentWindow) return;
      const h = Math.min(Math.max(Number(d.height) || 0, 16), 5000);
      f.style.height = `${h}px`;
    });
  }
  return iframe;
}

/** renderHTML renders untrusted HTML safely. */
export function renderHTML(html) {
  if (needsIframe(html)) return sandboxedFrame(html);
  return sanitizedNode(html);
}

/** renderMarkdown renders Markdown with math. */
export function renderMarkdown(md) {
  const parts = [];
  // Protect math from the Markdown parser.
  const protectedMd = String(md).replace(
    /(\$\$[\s\S]+?\$\$|\\\[[\s\S]+?\\\]|\\\([\s\S]+?\\\)|(?<![\\$\w])\$(?!\s)[^$\n]+?(?<!\s)\$(?!\w))/g,
    (m) => {
      let tex = m;
      let display = false;
      if (m.startsWith('$$')) [tex, display] = [m.slice(2, -2), true];
      else if (m.startsWith('\\[')) [tex, display] = [m.slice(2, -2), true];
      else if (m.startsWith('\\(')) tex = m.slice(2, -2);
      else tex = m.slice(1, -1);
      parts.push(mathPlaceholder(tex, display));
      return `CGMATH${parts.length - 1}X`;
    },
  );
  let html = marked.parse(protectedMd, { gfm: true, breaks: false, async: false });
  html = html.replace(/CGMATH(\d+)X/g, (_, i) => parts[Number(i)]);
  return sanitizedNode(html, 'cg-markdown');
}

/** renderLatex renders a text/latex value. */
export function renderLatex(tex) {
  const div = el('div', { class: 'cg-latex' });
  const s = String(tex).trim();
  const hasDelims = MATH_DELIMITERS.some((d) => s.includes(d.left));
  if (!hasDelims) {
    renderTex(s, div, true);
    return div;
  }
  const m = /^\$\$([\s\S]*)\$\$$/.exec(s) || /^\\\[([\s\S]*)\\\]$/.exec(s);
  if (m && !m[1].includes('$$')) {
    renderTex(m[1], div, true);
    return div;
  }
  div.textContent = s;
  typeset(div);
  return div;
}

function imageNode(mime, data, metadata) {
  const md = (metadata && (metadata[mime] || metadata)) || {};
  let src;
  if (mime === 'image/svg+xml') src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(String(data))}`;
  else src = `data:${mime};base64,${String(data).replace(/\s+/g, '')}`;
  const img = el('img', { class: 'cg-image', src, alt: 'output image' });
  if (md.width) img.width = md.width;
  if (md.height) img.height = md.height;
  return img;
}

/** plainText renders text/plain with ANSI colours. */
export function plainText(text, className = 'cg-text') {
  const pre = el('pre', { class: className });
  ansiToNodes(String(text), pre);
  return pre;
}

/**
 * renderBundle renders the richest MIME type of a bundle.
 * ctx.widgets renders widget views.
 */
export function renderBundle(data, metadata, ctx = {}) {
  for (const mime of MIME_ORDER) {
    if (!(mime in data)) continue;
    const value = Array.isArray(data[mime]) && mime !== 'application/json' ? data[mime].join('') : data[mime];
    switch (mime) {
      case WIDGET_MIME: {
        if (!ctx.widgets) continue;
        const view = ctx.widgets.viewFor(value.model_id, ctx);
        if (!view) continue;
        return view;
      }
      case 'text/html':
        return renderHTML(value);
      case 'text/markdown':
        return renderMarkdown(value);
      case 'text/latex':
        return renderLatex(value);
      case 'image/svg+xml':
      case 'image/png':
      case 'image/jpeg':
      case 'image/gif':
      case 'image/webp':
        return imageNode(mime, value, metadata);
      case 'application/json':
        return plainText(JSON.stringify(value, null, 2));
      case 'text/plain':
        return plainText(value);
    }
  }
  const types = Object.keys(data);
  if (!types.length) return null;
  return el('div', { class: 'cg-unsupported', text: `[output of type ${types.join(', ')} cannot be shown here]` });
}
