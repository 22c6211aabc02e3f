// /embedded_sagecell.js: cellgate's client plus the page API of the Sage Cell
// Server's embedding script, so pages written for the Sage cell work
// unchanged: sagecell.makeSagecell (callable in <head>, before the elements
// exist), deleteSagecell, moveInputForm, restoreInputForm, the singlecell
// aliases, and jQuery as a global (pages wrap their calls in $(function(){…})).
// embed.js has none of this.

import jQuery from 'jquery';
import { makeCell } from './index.js';

// As the Sage cell's script: a jQuery the page already has is kept.
window.jQuery = window.jQuery || window.$ || jQuery;
window.$ = window.$ || window.jQuery;

const allLanguages = ['sage', 'gap', 'gp', 'html', 'macaulay2', 'maxima', 'octave', 'python', 'r', 'singular'];
const templates = {
  minimal: { hide: ['editor', 'files', 'permalink'] },
  restricted: { hide: ['editor', 'files', 'permalink', 'language'], editor: 'codemirror-readonly' },
};

// Options of makeSagecell that are the Sage cell's own, not makeCell's.
const SAGECELL_ONLY = ['template', 'callback', 'inputLocation', 'serverURL', 'defaultLanguage'];

/** whenLoaded runs fn once the document is parsed (at once if it is). */
function whenLoaded(fn) {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', fn, { once: true });
  else fn();
}

/** nodesOf lists the elements an inputLocation names. */
function nodesOf(loc) {
  if (!loc) return [];
  if (typeof loc === 'string') return Array.from(document.querySelectorAll(loc));
  if (loc.jquery) return loc.toArray();
  if (typeof loc.length === 'number' && !loc.nodeType) return Array.from(loc);
  return [loc];
}

/** makeCells makes the cells of a makeSagecell call, now that the document is loaded. */
function makeCells(args) {
  const a = { ...(args.template || {}), ...args };
  if (args.template && args.template.hide && args.hide) a.hide = [...args.template.hide, ...args.hide];
  const common = { ...a };
  for (const k of SAGECELL_ONLY) delete common[k];
  common.server = a.server || a.serverURL;
  if (!a.kernel) {
    // As the Sage cell: languages defaults to ["sage"], defaultLanguage to
    // its first (and is that when the list does not hold it); the cell asks
    // the server for the language by name (gp, html, ...), which runs it
    // through Sage or says it cannot.
    const asked = String(a.defaultLanguage || a.language || '').toLowerCase();
    const languages = Array.isArray(a.languages) && a.languages.length ? a.languages.map((l) => String(l).toLowerCase()) : [asked || 'sage'];
    common.languages = languages;
    common.language = languages.includes(asked) ? asked : languages[0];
  }
  // As the Sage cell: an element already made into a cell is left alone.
  const nodes = nodesOf(a.inputLocation).filter((n) => !n.dataset || !n.dataset.sagecellInitialized);
  return nodes.map((node) => {
    if (node.dataset) node.dataset.sagecellInitialized = 'true';
    return makeCell({ ...common, inputLocation: node });
  });
}

/**
 * CellInfo is what makeSagecell answers before the document is loaded:
 * it stands for the cell (or cells) until they exist, then hands every
 * call on to them. `ready` resolves to the cell (an array for several).
 */
class CellInfo {
  constructor(args) {
    this.inputLocation = args.inputLocation;
    this.outputLocation = args.outputLocation;
    this.cells = [];
    this.cell = null;
    this.made = false;
    this.deleted = false;
    this.ready = new Promise((resolve) => (this._resolve = resolve));
  }

  _done(cells) {
    this.made = true;
    this.cells = cells;
    this.cell = cells[0] || null;
    this.array = cells.length > 1 ? cells : undefined;
    this._resolve(cells.length === 1 ? cells[0] : cells);
  }

  get code() {
    return this.cell ? this.cell.code : undefined;
  }

  get kernel() {
    return this.cell ? this.cell.kernel : null;
  }

  async evaluate() {
    await this.ready;
    return Promise.all(this.cells.map((c) => c.evaluate()));
  }

  async share() {
    await this.ready;
    return this.cell ? this.cell.share() : null;
  }

  async interrupt() {
    await this.ready;
    return Promise.all(this.cells.map((c) => c.interrupt()));
  }

  setCode(code) {
    this.ready.then(() => this.cells.forEach((c) => c.setCode(code)));
  }

  showStoredResult(result, info) {
    this.ready.then(() => this.cells.forEach((c) => c.showStoredResult(result, info)));
  }

  destroy() {
    this.deleted = true;
    this.cells.forEach((c) => c.destroy());
  }
}

/**
 * makeSagecell accepts the Sage cell's options; every makeCell option
 * (kernel, sharePage, placeholder, onShare, onError, onLanguage, ...) passes
 * through unchanged. Called before the document is loaded (in <head>, as the
 * Sage cell's documentation does it), it waits for the document and answers
 * a CellInfo; afterwards it answers the cell (an array for several).
 */
export function makeSagecell(args = {}) {
  if (args.linkKey) args = { ...args, linked: true };
  const make = () => {
    const cells = makeCells(args);
    if (!cells.length) {
      const message = `sagecell: inputLocation ${args.inputLocation} matches no element`;
      console.warn(message);
      if (typeof args.onError === 'function') args.onError(new Error(message));
    }
    if (typeof args.callback === 'function') args.callback(cells[0]);
    return cells;
  };
  if (document.readyState !== 'loading') {
    const cells = make();
    return cells.length === 1 ? cells[0] : cells;
  }
  const info = new CellInfo(args);
  whenLoaded(() => {
    if (!info.deleted) info._done(make());
  });
  return info;
}

/** cellsOf lists the cells behind what makeSagecell answered. */
function cellsOf(x) {
  if (!x) return [];
  if (x instanceof CellInfo) return x.cells;
  if (Array.isArray(x)) return x.flatMap(cellsOf);
  if (Array.isArray(x.array)) return x.array.flatMap(cellsOf);
  return x.root ? [x] : [];
}

/** deleteSagecell ends a cell's kernel (unless linked) and removes its input and output elements. */
export function deleteSagecell(info) {
  if (info instanceof CellInfo && !info.made) info.deleted = true;
  for (const c of cellsOf(info)) {
    c.destroy();
    for (const node of [c.host, c.inputElement, c.outputElement]) {
      if (node && node !== document.body && node !== document.documentElement) node.remove();
    }
  }
}

const MOVED_ID = 'sagecell_moved';

/** moveInputForm takes a cell's input form out of the page, into a hidden holder (as the Sage cell does). */
export function moveInputForm(info) {
  const cells = cellsOf(info);
  if (!cells.length) return;
  let moved = document.getElementById(MOVED_ID);
  if (!moved) {
    moved = document.createElement('div');
    moved.id = MOVED_ID;
    moved.style.display = 'none';
    document.body.append(moved);
  }
  for (const c of cells) moved.append(...c.host.childNodes);
}

/** restoreInputForm puts back what moveInputForm took out. */
export function restoreInputForm(info) {
  const moved = document.getElementById(MOVED_ID);
  const cells = cellsOf(info);
  if (!moved || !cells.length) return;
  cells[0].host.append(...moved.childNodes);
  moved.remove();
}

const sagecell = Object.assign(window.sagecell || {}, {
  makeSagecell,
  deleteSagecell,
  moveInputForm,
  restoreInputForm,
  allLanguages,
  templates,
  cellgate: window.cellgate,
});
window.sagecell = sagecell;
// The Sage cell's older names.
sagecell.makeSinglecell = makeSagecell;
window.singlecell = sagecell;
