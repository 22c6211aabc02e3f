// cellgate's embeddable client.
//
//   <script src="https://HOST/static/embed.js"></script>
//   <div id="cell">print(1+1)</div>
//   <script>cellgate.makeCell({inputLocation: '#cell'})</script>
//
// /embedded_sagecell.js is this client plus sagecell.js (sagecell.makeSagecell
// and the rest of the Sage cell's page API, and jQuery as a global), so pages
// written for the Sage Cell Server work.

import { Cell, dedent } from './cell.js';
import { Kernel } from './kernel.js';
import { SAGE_CELL_LANGUAGES } from './languages.js';
import { sanitizedNode } from './mime.js';
import { OutputArea } from './output.js';
import { getPermalink, getResult, renderResult } from './stored.js';
import { zlibDecode, zlibEncode } from './util.js';
import { WidgetManager, storedWidgets } from './widget-views.js';

/* global CELLGATE_VERSION */

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
// loadCSS adds the stylesheet, unless the page links it already (with or
// without a ?v= query, by a relative or an absolute URL).
function loadCSS(server) {
  if (cssLoaded) return;
  cssLoaded = true;
  const base = `${server}static/embed.css`;
  // The Sage cell's stylesheets on this server are the same one.
  const same = [base, `${server}static/sagecell_embed.css`, `${server}static/sagecell.css`];
  for (const l of document.querySelectorAll('link[rel~="stylesheet"][href]')) {
    if (same.includes(l.href.split(/[?#]/)[0])) return;
  }
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = `${base}${CELLGATE_VERSION ? `?v=${CELLGATE_VERSION}` : ''}`;
  (document.head || document.documentElement).append(link);
}

/**
 * makeCell turns an element into a live cell.
 * Options: inputLocation (element or selector, required), outputLocation,
 * code, language, kernel, languages, autoeval, hide [editor, evalButton,
 * language, share/permalink, output, status/messages, files, stop],
 * evalButtonText, editor ('codemirror', 'textarea', '…-readonly'),
 * linked, linkKey, timeout, transport ('auto', 'websocket', 'polling'),
 * server, sharePage, placeholder, interacts (state to restore, the Sage cell's
 * permalink form), permalink (an id: the cell loads its code, language,
 * interacts and stored result), result (a stored result to show at once),
 * callbacks {onReady, onEvaluate, onOutput, onDone, onSessionEnd, onShare,
 * onError, onLanguage}. A cell that shows a stored result is not evaluated
 * by autoeval: its Evaluate button runs it live.
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
    // Wait for the language list (so the right kernel is asked for) and the
    // permalink: a stored result is shown instead, and a permalink that
    // could not be loaded has no code to run.
    Promise.all([cell.ready, cell.loaded]).then(([, loaded]) => {
      if (loaded.ok && !loaded.stored && !cell._run) setTimeout(() => cell.evaluate(), 0);
    });
  }
  opts.callbacks.onReady?.(cell);
  return cell;
}

/** makeCells makes a cell of every element matching selector. */
export function makeCells(selector, options = {}) {
  const nodes = typeof selector === 'string' ? document.querySelectorAll(selector) : selector;
  return Array.from(nodes, (node) => makeCell({ ...options, inputLocation: node }));
}

/** fetchPermalink loads a permalink: {code, language, interacts, result?} (GET /permalink/ID). */
export function fetchPermalink(id, server) {
  return getPermalink(normalizeServer(server), id);
}

/** fetchResult loads a permalink's stored result (GET /permalink/ID/outputs), or null when it has none. */
export function fetchResult(id, server) {
  return getResult(normalizeServer(server), id);
}

const api = {
  version: CELLGATE_VERSION,
  server: defaultServer,
  makeCell,
  makeCells,
  fetchPermalink,
  fetchResult,
  zlibEncode,
  zlibDecode,
  dedent,
  Kernel,
  // The Sage cell's languages and the names pickers show them by.
  sageCellLanguages: SAGE_CELL_LANGUAGES,
  // For tests and advanced embedding; not a stable API.
  _internals: { OutputArea, WidgetManager, sanitizedNode, renderResult, storedWidgets },
};

window.cellgate = Object.assign(window.cellgate || {}, api);
