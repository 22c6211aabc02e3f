// cellgate's embeddable client.
//
//   <script src="https://HOST/static/embed.js"></script>
//   <div id="cell">print(1+1)</div>
//   <script>cellgate.makeCell({inputLocation: '#cell'})</script>
//
// /embedded_sagecell.js is the same client that also defines
// sagecell.makeSagecell, so pages written for the Sage Cell Server work.

import { Cell, dedent, kernelSpecs } from './cell.js';
import { Kernel } from './kernel.js';
import { FRAME_SANDBOX, sanitizedNode } from './mime.js';
import { OutputArea } from './output.js';
import { zlibDecode, zlibEncode } from './util.js';
import { WidgetManager } from './widgets.js';

/* global SAGECELL_ALIAS, CELLGATE_VERSION */

const script = document.currentScript;

// The server is where this script came from: .../static/embed.js or .../embedded_sagecell.js.
function detectServer() {
  const src = script && script.src;
  if (!src) return new URL('/', location.href).href;
  const u = new URL(src, location.href);
  u.search = '';
  u.hash = '';
  u.pathname = u.pathname.replace(/(static\/)?[^/]*$/, '');
  return u.href;
}

const defaultServer = detectServer();

function normalizeServer(s) {
  if (!s) return defaultServer;
  const u = new URL(s, location.href).href;
  return u.endsWith('/') ? u : `${u}/`;
}

let cssLoaded = false;
function loadCSS(server) {
  if (cssLoaded) return;
  cssLoaded = true;
  const href = `${server}static/embed.css${CELLGATE_VERSION ? `?v=${CELLGATE_VERSION}` : ''}`;
  if (document.querySelector(`link[href="${href}"]`)) return;
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = href;
  (document.head || document.documentElement).append(link);
}

/**
 * makeCell turns an element into a live cell.
 * Options: inputLocation (element or selector, required), outputLocation,
 * code, language, kernel, languages, autoeval, hide [editor, evalButton,
 * language, share/permalink, output, status/messages, files, stop],
 * evalButtonText, editor ('codemirror', 'textarea', '…-readonly'),
 * linked, linkKey, timeout, transport ('auto', 'websocket', 'polling'),
 * server, sharePage, callbacks {onReady, onEvaluate, onOutput, onDone,
 * onSessionEnd, onShare, onError, onLanguage}.
 */
export function makeCell(options = {}) {
  const opts = { ...options };
  opts.server = normalizeServer(opts.server || opts.serverURL);
  opts.callbacks = { ...(opts.callbacks || {}) };
  for (const name of ['onReady', 'onEvaluate', 'onOutput', 'onDone', 'onSessionEnd', 'onShare', 'onError', 'onLanguage']) {
    if (typeof opts[name] === 'function') opts.callbacks[name] = opts[name];
  }
  loadCSS(opts.server);
  const cell = new Cell(opts);
  if (opts.autoeval) {
    // Wait for the language list so the right kernel is asked for.
    kernelSpecs(opts.server).then(() => setTimeout(() => cell.evaluate(), 0));
  }
  opts.callbacks.onReady?.(cell);
  return cell;
}

/** makeCells makes a cell of every element matching selector. */
export function makeCells(selector, options = {}) {
  const nodes = typeof selector === 'string' ? document.querySelectorAll(selector) : selector;
  return Array.from(nodes, (node) => makeCell({ ...options, inputLocation: node }));
}

/** fetchPermalink loads the code of a permalink (GET /permalink?q=ID). */
export async function fetchPermalink(id, server) {
  const s = normalizeServer(server);
  const r = await fetch(`${s}permalink?q=${encodeURIComponent(id)}`);
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try {
      message = (await r.json()).message || message;
    } catch {
      // not JSON
    }
    throw new Error(message);
  }
  return r.json();
}

// ------------------------------------------------ Sage cell compatibility

const allLanguages = ['sage', 'gap', 'gp', 'html', 'macaulay2', 'maxima', 'octave', 'python', 'r', 'singular'];
const templates = {
  minimal: { hide: ['editor', 'files', 'permalink'] },
  restricted: { hide: ['editor', 'files', 'permalink', 'language'], editor: 'codemirror-readonly' },
};

/** makeSagecell accepts the Sage cell's options. */
export function makeSagecell(args = {}) {
  const a = { ...(args.template || {}), ...args };
  if (args.template && args.template.hide && args.hide) a.hide = [...args.template.hide, ...args.hide];
  const language = a.language || (Array.isArray(a.languages) && a.languages[0]) || 'sage';
  const common = {
    server: a.server || a.serverURL,
    code: a.code,
    language,
    languages: a.languages,
    autoeval: a.autoeval,
    hide: a.hide,
    evalButtonText: a.evalButtonText,
    editor: a.editor,
    linked: a.linked,
    linkKey: a.linkKey,
    outputLocation: a.outputLocation,
    transport: a.transport,
    timeout: a.timeout,
    callbacks: a.callbacks,
    onReady: a.onReady,
    onEvaluate: a.onEvaluate,
    onDone: a.onDone,
    onOutput: a.onOutput,
    onSessionEnd: a.onSessionEnd,
  };
  const loc = a.inputLocation;
  const nodes = typeof loc === 'string' ? Array.from(document.querySelectorAll(loc)) : loc ? [loc] : [];
  if (!nodes.length) throw new Error(`sagecell: inputLocation ${loc} not found`);
  const cells = nodes.map((node) => makeCell({ ...common, inputLocation: node }));
  if (typeof a.callback === 'function') a.callback(cells[0]);
  return cells.length === 1 ? cells[0] : cells;
}

const api = {
  version: CELLGATE_VERSION,
  server: defaultServer,
  makeCell,
  makeCells,
  fetchPermalink,
  zlibEncode,
  zlibDecode,
  dedent,
  Kernel,
  // For tests and advanced embedding; not a stable API.
  _internals: { OutputArea, WidgetManager, sanitizedNode, FRAME_SANDBOX },
};

window.cellgate = Object.assign(window.cellgate || {}, api);

if (SAGECELL_ALIAS) {
  window.sagecell = Object.assign(window.sagecell || {}, {
    makeSagecell,
    allLanguages,
    templates,
    cellgate: window.cellgate,
  });
}
