// A cell: editor, controls, output; kernels are started on demand
// (a fresh one-shot kernel per evaluation, or one shared kernel for
// linked cells).

import { createEditor } from './editor.js';
import { Kernel } from './kernel.js';
import { SAGE_CELL_LANGUAGES, choicesOf, findChoice, missingChoice, offeredChoices, runsThroughSage } from './languages.js';
import { OutputArea } from './output.js';
import qrcode from 'qrcode-generator';
import { getPermalink, isResult, renderResult, storedNote } from './stored.js';
import { el, resolveElement, shareURL, zlibEncode } from './util.js';
import { WidgetManager } from './widget-views.js';

const DETACH_QUIET_MS = 2500; // a finished one-shot kernel is released after this quiet time
const LINKED_TIMEOUT = 1800; // idle timeout (s) asked for shared kernels; the server caps it

const liveKernels = new Set();
const linkedKernels = new Map(); // key → Kernel
const specsCache = new Map(); // server → Promise<{default, kernels, sage_languages}>

let unloadHooked = false;
function hookUnload() {
  if (unloadHooked) return;
  unloadHooked = true;
  window.addEventListener('pagehide', () => {
    for (const k of liveKernels) k.shutdownBeacon();
  });
}

/** kernelSpecs fetches the server's kernels and Sage-cell languages (GET /kernelspecs), once. */
export function kernelSpecs(server) {
  if (!specsCache.has(server)) {
    const p = fetch(`${server}kernelspecs`)
      .then((r) => (r.ok ? r.json() : { default: '', kernels: [], sage_languages: [] }))
      .catch(() => ({ default: '', kernels: [], sage_languages: [] }));
    specsCache.set(server, p);
  }
  return specsCache.get(server);
}

/** dedent removes blank edge lines and common indentation (HTML-indented code). */
export function dedent(text) {
  const lines = String(text).replace(/\r\n?/g, '\n').split('\n');
  while (lines.length && !lines[0].trim()) lines.shift();
  while (lines.length && !lines[lines.length - 1].trim()) lines.pop();
  let indent = Infinity;
  for (const l of lines) if (l.trim()) indent = Math.min(indent, l.match(/^[ \t]*/)[0].length);
  if (!isFinite(indent) || indent === 0) return lines.join('\n');
  return lines.map((l) => l.slice(indent)).join('\n');
}

/** codeFrom reads a cell's code from the element that holds it. */
function codeFrom(node) {
  if (!node) return '';
  if (node.tagName === 'TEXTAREA') return node.value;
  if (node.tagName === 'SCRIPT') return node.textContent;
  const script = node.querySelector('script[type^="text/x-"], script[type="text/plain"]');
  if (script) return script.textContent;
  const ta = node.querySelector('textarea');
  if (ta) return ta.value;
  return node.textContent;
}

// Names the Sage cell uses in "hide", mapped to ours.
const HIDE_ALIASES = {
  editor: 'editor',
  editortoggle: null,
  evalbutton: 'evalButton',
  language: 'language',
  permalink: 'share',
  share: 'share',
  output: 'output',
  messages: 'status',
  status: 'status',
  sessionfiles: 'files',
  files: 'files',
  done: null,
  sessiontitle: null,
  fullscreen: null,
  stop: 'stop',
  interrupt: 'stop',
};

function normalizeHide(hide) {
  const out = new Set();
  for (const h of hide || []) {
    const k = HIDE_ALIASES[String(h).toLowerCase()];
    if (k) out.add(k);
  }
  return out;
}

/** qrImage is a QR code of url, or null when the url is too long for one. */
function qrImage(url) {
  try {
    const qr = qrcode(0, 'M');
    qr.addData(url, 'Byte');
    qr.make();
    if (qr.getModuleCount() > 81) return null; // too dense to scan from a screen
    const img = el('img', { class: 'cg-qr', src: qr.createDataURL(3, 4), alt: `QR code of ${url}`, title: 'Scan to open the link' });
    return el('div', { class: 'cg-share-row cg-share-qr' }, el('span', { class: 'cg-share-label', text: 'QR code' }), img);
  } catch {
    return null; // longer than a QR code holds
  }
}

/** parseInteracts reads interact state given as an array or as its JSON text. */
function parseInteracts(x) {
  if (typeof x === 'string') {
    try {
      x = JSON.parse(x);
    } catch {
      return null;
    }
  }
  return Array.isArray(x) && x.length ? x : null;
}

let cellSeq = 0;

export class Cell {
  constructor(opts) {
    this.opts = opts;
    this.id = `cg${++cellSeq}`;
    this.server = opts.server;
    this.hide = normalizeHide(opts.hide);
    this.kernel = null;
    this.state = 'idle';
    this.kernelName = opts.kernel || opts.kernelName || '';
    this.language = opts.language || '';
    this.permalink = null; // {id, code} from the last execute_reply
    this.callbacks = opts.callbacks || {};
    // The stored result shown in place of live output (showStoredResult):
    // {id, code, result, area, widgets, languageChanged}, until the next evaluation.
    this.stored = null;
    // Interact state to restore once the first evaluation has shown its
    // interacts (a permalink's, in the Sage cell's form).
    this._restore = parseInteracts(opts.interacts);
    hookUnload();
    this._build();
  }

  _build() {
    const opts = this.opts;
    let input = resolveElement(opts.inputLocation);
    if (!input) throw new Error(`cellgate: inputLocation ${opts.inputLocation} not found`);
    /** inputElement and outputElement are the page's elements the cell was made in. */
    this.inputElement = input;
    const code = dedent(opts.code !== undefined && opts.code !== null ? opts.code : codeFrom(input));
    if (input.tagName === 'SCRIPT' || input.tagName === 'TEXTAREA') {
      const holder = el('div');
      input.after(holder);
      input.style.display = 'none';
      input = holder;
    } else {
      input.textContent = '';
    }
    this.host = input;

    const root = (this.root = el('div', { class: 'cellgate cg-cell', 'data-state': 'idle', 'data-cell': this.id }));
    const editorBox = el('div', { class: 'cg-editor' });
    const editorKind = String(opts.editor || 'codemirror');
    this.editor = createEditor(editorBox, {
      code,
      language: this.language || this.kernelName || 'python',
      kind: editorKind.startsWith('textarea') ? 'textarea' : 'codemirror',
      readOnly: editorKind.endsWith('readonly') || opts.readOnly,
      onEvaluate: () => this.evaluate(),
      placeholder: opts.placeholder,
    });
    if (this.hide.has('editor')) editorBox.hidden = true;

    this.evalButton = el('button', { type: 'button', class: 'cg-btn cg-btn-primary cg-eval', text: opts.evalButtonText || 'Evaluate', title: 'Evaluate (Shift+Enter)' });
    this.evalButton.addEventListener('click', () => this.evaluate());
    if (this.hide.has('evalButton')) this.evalButton.hidden = true;

    this.stopButton = el('button', { type: 'button', class: 'cg-btn cg-stop', text: 'Stop', title: 'Interrupt the computation', hidden: true });
    this.stopButton.addEventListener('click', () => this.interrupt());

    this.languageSelect = el('select', { class: 'cg-language', 'aria-label': 'language', hidden: true });
    this.languageSelect.addEventListener('change', () => {
      if (this.stored) this.stored.languageChanged = true;
      const c = findChoice(this.choices || [], this.languageSelect.value);
      this._choose(c || { name: this.languageSelect.value, language: this.languageSelect.value });
      this.callbacks.onLanguage?.(this.kernelName, this);
    });

    this.statusText = el('span', { class: 'cg-status-text', 'aria-live': 'polite' });
    this.status = el('span', { class: 'cg-status' }, el('span', { class: 'cg-spinner', 'aria-hidden': 'true' }), this.statusText);
    if (this.hide.has('status')) this.status.hidden = true;

    this.shareButton = el('button', { type: 'button', class: 'cg-btn cg-share', text: 'Share', title: 'Make a link to this code' });
    this.shareButton.addEventListener('click', () => this.share());
    if (this.hide.has('share')) this.shareButton.hidden = true;

    const controls = el(
      'div',
      { class: 'cg-controls' },
      this.evalButton,
      this.stopButton,
      this.languageSelect,
      this.status,
      el('span', { class: 'cg-spacer' }),
      this.shareButton,
    );
    this.sharePanel = el('div', { class: 'cg-share-panel', hidden: true });
    this.banner = el('div', { class: 'cg-banner', hidden: true, role: 'status' });

    const outputRoot = el('div', { class: 'cg-output-root' });
    this.output = new OutputArea(outputRoot, { hideFiles: this.hide.has('files') });
    const outLoc = resolveElement(opts.outputLocation);
    this.outputElement = outLoc;
    root.append(editorBox, controls, this.sharePanel, this.banner);
    if (outLoc) {
      outLoc.classList.add('cellgate', 'cg-output-host');
      outLoc.append(outputRoot);
    } else root.append(outputRoot);
    if (this.hide.has('output')) outputRoot.hidden = true;
    input.append(root);
    /**
     * loaded resolves once the cell's permalink (option permalink) is loaded,
     * at once without one: {ok, stored} (stored: a stored result is shown).
     */
    this.loaded = this._load();
    /** ready resolves once the language list is in (and the kernel chosen) and the permalink loaded. */
    this.ready = this._setupLanguages();
  }

  // _load shows the result given (option result), or loads the permalink
  // (option permalink: GET /permalink/ID) into the cell: its code, language
  // and interact state, and its stored result when it has one. No kernel
  // is asked for.
  async _load() {
    const opts = this.opts;
    const show = (result, id) => {
      try {
        this.showStoredResult(result, { id });
        return true;
      } catch (err) {
        this.output.note(`Could not show the stored result: ${err.message}`, 'problem');
        return false;
      }
    };
    if (opts.permalink === undefined || opts.permalink === null || opts.permalink === '') {
      return { ok: true, stored: isResult(opts.result) ? show(opts.result, null) : false };
    }
    const id = String(opts.permalink);
    this._setState('idle', 'Loading…');
    let p;
    try {
      p = await getPermalink(this.server, id);
    } catch (err) {
      if (this._run) return { ok: false, stored: false };
      this._setState('idle', '');
      this.output.note(`Could not load permalink ${id}: ${err.message}`, 'problem');
      this.callbacks.onError?.(err, this);
      return { ok: false, stored: false };
    }
    // Evaluated meanwhile: what the reader runs wins.
    if (this._run) return { ok: true, stored: false };
    this._setState('idle', '');
    if (typeof p.code === 'string') this.editor.setCode(p.code);
    const lang = p.language || p.kernel_name;
    if (lang && !opts.kernel && !opts.kernelName) {
      this.kernelName = String(lang);
      this.language = String(lang);
      this.editor.setLanguage(this.language);
    }
    if (opts.interacts === undefined || opts.interacts === null) this._restore = parseInteracts(p.interacts);
    const result = isResult(p.result) ? p.result : isResult(opts.result) ? opts.result : null;
    return { ok: true, stored: result ? show(result, id) : false };
  }

  /**
   * showStoredResult shows a stored result (what GET /permalink/ID/outputs
   * answers: {outputs, widgets, files, created, truncated}) in place of the
   * cell's output, marked as stored with its date, without a kernel: the
   * outputs are rendered as live ones are, widgets from their saved state
   * (read-only), files as links. The next evaluation replaces it. info.id is
   * the permalink it belongs to (Share then answers that permalink while the
   * code is unchanged).
   */
  showStoredResult(result, info = {}) {
    if (typeof result === 'string') result = JSON.parse(result);
    if (!isResult(result)) throw new TypeError('not a stored result (want {outputs: [...]})');
    this.banner.hidden = true;
    this.output.clear();
    const evalText = this.hide.has('evalButton') ? '' : this.opts.evalButtonText || 'Evaluate';
    this.output.root.append(storedNote(result, evalText));
    const { area, widgets } = renderResult(this.output.root, result, { server: this.server, hideFiles: this.hide.has('files') });
    this.stored = { id: info.id ?? null, code: this.code, result, area, widgets, languageChanged: false };
    this.root.dataset.stored = 'true';
  }

  _clearStored() {
    this.stored = null;
    delete this.root.dataset.stored;
  }

  // _setupLanguages fills the language picker (the server's kernelspecs and
  // the Sage-cell languages it runs; or the page's `languages`) and chooses
  // what the cell asks the server for. A Sage-cell language (gp, html, ...)
  // is asked for by its name even when the server does not run it, so the
  // cell shows the server's answer rather than running the code as another
  // language; other names the server does not know fall back to its
  // default kernel (unless languageFallback is false).
  async _setupLanguages() {
    const [specs] = await Promise.all([kernelSpecs(this.server), this.loaded]);
    const choices = choicesOf(specs);
    const offered = (this.choices = offeredChoices(choices, this.opts.languages));
    const asked = (this.kernelName || this.language || '').toLowerCase();
    // (With no list from the server, nothing is known to be missing.)
    const unknown = (name) => (choices.length ? missingChoice(name) : { name, display: SAGE_CELL_LANGUAGES[name] || name, language: name });
    let pick = findChoice(offered, asked) || findChoice(choices, asked);
    if (!pick && asked && (runsThroughSage(asked) || this.opts.languageFallback === false)) pick = unknown(asked);
    if (!pick) pick = findChoice(offered, specs.default) || offered.find((c) => !c.missing) || findChoice(choices, specs.default) || choices[0];
    // Still nothing (the server's list could not be read): ask for it by name.
    if (!pick && asked) pick = unknown(asked);
    if (pick && !offered.some((c) => c.name === pick.name)) offered.push(pick);
    this.languageSelect.replaceChildren(...offered.map((c) => this._option(c)));
    if (pick) this._choose(pick);
    this.languageSelect.hidden = this.hide.has('language') || offered.length < 2;
  }

  _option(c) {
    const o = el('option', { value: c.name, text: c.display });
    o.dataset.language = c.language;
    if (c.missing) o.dataset.missing = 'true';
    return o;
  }

  // _choose makes c the cell's language: the picker shows it, the editor
  // highlights for it (plain text for what it has no mode for).
  _choose(c) {
    this.kernelName = c.name;
    this.language = c.language || c.name;
    this.languageSelect.value = c.name;
    this.root.dataset.language = c.name;
    this.editor.setLanguage(this.language);
  }

  /** code returns the editor's code. */
  get code() {
    return this.editor.getCode();
  }

  setCode(code) {
    this.editor.setCode(code);
  }

  /** setKernel makes the cell run a kernelspec or language (one the picker does not offer is added). */
  setKernel(name) {
    if (this.stored) this.stored.languageChanged = true;
    const offered = this.choices || [];
    let c = findChoice(offered, name);
    if (!c) {
      c = runsThroughSage(name) ? missingChoice(name) : { name, display: name, language: name };
      offered.push(c);
      this.languageSelect.append(this._option(c));
    }
    this._choose(c);
  }

  _setState(state, text) {
    this.state = state;
    this.root.dataset.state = state;
    this.statusText.textContent = text || '';
    this.stopButton.hidden = this.hide.has('stop') || !(state === 'busy' || state === 'stopping');
    this.root.classList.toggle('cg-busy', state === 'busy' || state === 'starting' || state === 'stopping');
  }

  _setTransport(name) {
    this.root.dataset.transport = name || '';
    const titles = { polling: 'connected by long-polling', websocket: 'connected by websocket', reconnecting: 'connection lost; reconnecting' };
    this.status.title = titles[name] || '';
  }

  _linkKey() {
    const o = this.opts;
    return `${this.server}|${o.linkKey || 'default'}|${this.kernelName}`;
  }

  async _kernel() {
    if (this.opts.linked) {
      const key = this._linkKey();
      let k = linkedKernels.get(key);
      if (!k || k.ended) {
        k = this._newKernel(this.opts.timeout ?? LINKED_TIMEOUT);
        linkedKernels.set(key, k);
      }
      this._attach(k);
      await k.start();
      return k;
    }
    if (this.kernel) {
      const old = this.kernel;
      this._release();
      if (!old.ended) old.shutdown();
    }
    const k = this._newKernel(this.opts.timeout ?? 0);
    this._attach(k);
    await k.start();
    return k;
  }

  _newKernel(timeout) {
    const k = new Kernel(this.server, { kernelName: this.kernelName, timeout, transport: this.opts.transport });
    k.widgets = new WidgetManager(k);
    liveKernels.add(k);
    k.on('ended', () => liveKernels.delete(k));
    return k;
  }

  _release() {
    if (this._unsubscribe) this._unsubscribe.forEach((f) => f());
    this._unsubscribe = null;
    this.kernel = null;
  }

  _attach(k) {
    if (this.kernel === k) return;
    this._release();
    this.kernel = k;
    this.output.ctx.kernel = k;
    this.output.ctx.widgets = k.widgets;
    this._setTransport(k.transport);
    this._unsubscribe = [
      k.on('transport', (t) => this._setTransport(t)),
      k.on('ended', (reason, quiet) => this._kernelEnded(k, reason, quiet)),
      k.on('problem', (text) => this.output.note(`[cellgate] ${text}`, 'problem')),
      k.on('waiting', (w) => this._waiting(k, w)),
      k.on('orphan', (msg) => {
        // Output of an earlier request of this cell (e.g. a background thread).
        if (msg.header.msg_type === 'update_display_data') this.output.handle(msg);
      }),
    ];
  }

  // _waiting says that the server is busy and when the kernel is asked for again.
  _waiting(k, { seconds, message }) {
    if (k !== this.kernel || this.state !== 'starting') return;
    this.root.dataset.waited = String(Number(this.root.dataset.waited || 0) + 1);
    this._setState('starting', `Server busy (${message}): waiting for a kernel, trying again in ${seconds} s…`);
    this.stopButton.hidden = this.hide.has('stop');
  }

  _kernelEnded(k, reason, quiet) {
    if (k !== this.kernel) return;
    clearTimeout(this._detachTimer);
    this.output.cancelPrompts();
    const hadWidgets = k.widgets.models.size > 0;
    k.widgets.disableAll();
    const wasRunning = this.state === 'busy' || this.state === 'starting' || this.state === 'stopping';
    if (hadWidgets || wasRunning || (this.opts.linked && !quiet)) this._showEnded(reason);
    else this._setState('idle', '');
    this.callbacks.onSessionEnd?.(reason, this);
  }

  _showEnded(reason) {
    this._setState('ended', 'Session ended');
    const restart = el('button', { type: 'button', class: 'cg-btn cg-btn-small cg-restart', text: 'Restart' });
    restart.addEventListener('click', () => this.evaluate());
    this.banner.replaceChildren(
      el('span', { class: 'cg-banner-icon', 'aria-hidden': 'true', text: '⏻' }),
      el('span', { class: 'cg-banner-text', text: `Session ended${reason ? ` (${reason})` : ''}. Controls no longer respond; ` }),
      restart,
      el('span', { text: ' runs the code again in a new session.' }),
    );
    this.banner.hidden = false;
  }

  /** evaluate runs the editor's code. */
  async evaluate() {
    const code = this.editor.getCode();
    clearTimeout(this._detachTimer);
    this.banner.hidden = true;
    this.sharePanel.hidden = true;
    this.permalink = null;
    this._clearStored();
    this.output.clear();
    this._setState('starting', 'Starting…');
    this.callbacks.onEvaluate?.(code, this);
    const run = (this._run = {});
    // The language list decides what the server is asked for: a cell asked
    // for gp must never start the server's default kernel meanwhile.
    await this.ready;
    if (this._run !== run) return;
    run.kernel = this.kernelName;
    let k;
    try {
      k = await this._kernel();
    } catch (err) {
      if (this._run !== run) return;
      this._setState('idle', '');
      if (err.cancelled) {
        this.output.note('Stopped before a kernel was free.', 'problem');
        return;
      }
      // A 400 is the server's own word on what it cannot run (a language
      // whose program is not installed): shown as it says it.
      if (err.status === 400) this.output.note(`The server cannot run this cell: ${err.message}`, 'problem');
      else this.output.note(`Could not start a kernel: ${err.message}.`, 'problem');
      this.callbacks.onError?.(err, this);
      return;
    }
    if (this._run !== run) return;
    if (k.ended) {
      this._showEnded(k.endReason);
      return;
    }
    this._setState('busy', 'Running…');
    run.replied = false;
    run.idle = false;
    run.msgId = k.execute(code, (msg) => this._onMessage(k, run, msg, code));
  }

  _onMessage(k, run, msg, code) {
    const type = msg.header.msg_type;
    if (msg.channel === 'iopub') {
      if (type === 'status') {
        if (msg.content.execution_state === 'idle') {
          run.idle = true;
          this._maybeDone(k, run);
        }
        return;
      }
      if (type === 'execute_input') return;
      if (this.output.handle(msg)) {
        this.callbacks.onOutput?.(msg, this);
        this._bumpDetach(k, run);
      }
      return;
    }
    if (msg.channel === 'shell' && type === 'execute_reply') {
      run.replied = true;
      run.reply = msg.content;
      const pl = msg.metadata?.cellgate?.permalink;
      // (what the cell asked for: the server names the kernel that runs it, sagemath for gp)
      if (pl) this.permalink = { id: pl, code, kernel: run.kernel };
      for (const p of msg.content.payload || []) {
        if (p.source === 'page' && p.data) this.output.display(p.data, {});
      }
      this._maybeDone(k, run);
      return;
    }
    if (msg.channel === 'stdin' && type === 'input_request') {
      this.output.prompt(msg.content.prompt, msg.content.password).then((value) => {
        if (k.ended) return;
        k.send(k.message('stdin', 'input_reply', { value }, { parent: msg.header }));
      });
    }
  }

  _maybeDone(k, run) {
    if (!run.replied || !run.idle || run.done) return;
    run.done = true;
    if (this._run === run && this.state !== 'ended') {
      const st = run.reply?.status;
      this._setState('idle', st === 'error' ? '' : st === 'aborted' ? 'Aborted' : '');
      this.root.dataset.done = String(Number(this.root.dataset.done || 0) + 1);
      if (this._restore) {
        // As the Sage cell: the saved state is put back once the code has run.
        const states = this._restore;
        this._restore = null;
        if (k.widgets.setInteractState(this.output, states)) this.root.dataset.restored = 'true';
      }
    }
    this.callbacks.onDone?.(run.reply, this);
    this._bumpDetach(k, run);
  }

  // A one-shot kernel with no live widgets is released once it is quiet.
  _bumpDetach(k, run) {
    if (this.opts.linked || !run.done || k.ended || this.opts.keepAlive) return;
    clearTimeout(this._detachTimer);
    this._detachTimer = setTimeout(() => {
      if (k.ended || this.kernel !== k || this._run !== run) return;
      if (k.widgets.openCount > 0) return; // an interact keeps its kernel
      k.detach();
    }, DETACH_QUIET_MS);
  }

  /** interrupt stops the running computation. */
  async interrupt() {
    if (!this.kernel || this.kernel.ended) return;
    if (this.state === 'starting' && !this.kernel.id) {
      // Still waiting for the server: stop asking.
      this._setState('idle', '');
      this.kernel.shutdown();
      return;
    }
    this._setState('stopping', 'Stopping…');
    this.output.cancelPrompts();
    try {
      await this.kernel.interrupt();
    } catch (err) {
      this.output.note(`Could not interrupt: ${err.message}`, 'problem');
      if (this.state === 'stopping') this._setState('busy', 'Running…');
    }
  }

  /** interactState is the state of this cell's interacts, in the Sage cell's permalink form. */
  interactState() {
    if (this.stored) return this.stored.widgets.interactState(this.stored.area);
    const w = this.kernel?.widgets;
    return w ? w.interactState(this.output) : [];
  }

  /** share makes a permalink (?q=) and a stateless link (?z=), with a QR code. */
  async share() {
    const code = this.editor.getCode();
    const kernel = this.kernelName || '';
    const page = this.opts.sharePage || this.server;
    const panel = this.sharePanel;
    const interacts = this.interactState();
    panel.hidden = false;
    panel.replaceChildren(el('span', { class: 'cg-note', text: 'Making links…' }));
    let zip = null;
    let query = null;
    let zipInteracts = null;
    let problem = '';
    // The stored result shown is the permalink's, for this code: share that permalink.
    if (this.stored && this.stored.id && this.stored.code === code && !this.stored.languageChanged) query = this.stored.id;
    // The server stored a permalink (without interact state) for the last evaluation of this code.
    else if (!interacts.length && this.permalink && this.permalink.code === code && this.permalink.kernel === kernel) query = this.permalink.id;
    if (!query) {
      const body = { code, language: kernel, interacts: JSON.stringify(interacts), n: 0 };
      // The live session, if any: the server then keeps with the permalink
      // what this cell shows (its last result, if it ran this code, with the
      // interacts as they are now), so the link opens with it.
      const k = this.kernel;
      if (!this.stored && k && k.id && !k.ended) body.kernel_id = k.id;
      try {
        const resp = await fetch(`${this.server}permalink`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        if (resp.ok) {
          const j = await resp.json();
          query = j.query || null;
          zip = j.zip || null;
          // The interacts, compressed as the Sage cell does it.
          if (interacts.length && typeof j.interacts === 'string') zipInteracts = j.interacts;
        } else if (resp.status === 404) {
          problem = 'this server keeps no permalinks';
        } else {
          problem = `permalink not stored (${resp.status})`;
        }
      } catch (err) {
        problem = `permalink not stored (${err.message})`;
      }
    }
    if (!zip) zip = await zlibEncode(code);
    if (interacts.length && !zipInteracts) zipInteracts = await zlibEncode(JSON.stringify(interacts));
    const links = [];
    if (query) links.push(['Permalink', shareURL(page, [['q', query]]), 'cg-link-q']);
    const zParams = [['z', zip], ['lang', kernel]];
    if (interacts.length) zParams.push(['interacts', zipInteracts]);
    links.push(['Link with the code', shareURL(page, zParams), 'cg-link-z']);
    const rows = [
      ...links.map(([label, url, cls]) => {
        const input = el('input', { class: `cg-link ${cls}`, value: url, readonly: true, 'aria-label': label });
        input.addEventListener('focus', () => input.select());
        const copy = el('button', { type: 'button', class: 'cg-btn cg-btn-small', text: 'Copy' });
        copy.addEventListener('click', async () => {
          try {
            await navigator.clipboard.writeText(url);
            copy.textContent = 'Copied';
          } catch {
            input.select();
            document.execCommand?.('copy');
            copy.textContent = 'Copied';
          }
          setTimeout(() => (copy.textContent = 'Copy'), 1500);
        });
        return el('div', { class: 'cg-share-row' }, el('span', { class: 'cg-share-label', text: label }), input, copy, el('a', { href: url, target: '_blank', rel: 'noopener', class: 'cg-btn cg-btn-small', text: 'Open' }));
      }),
      qrImage(links[0][1]),
      problem ? el('div', { class: 'cg-note', text: `(${problem})` }) : null,
    ];
    panel.replaceChildren(...rows.filter(Boolean));
    this.callbacks.onShare?.({ query, zip, interacts, links: links.map((l) => l[1]) }, this);
    return { query, zip };
  }

  /** destroy ends the cell's kernel (unless shared) and removes it. */
  destroy() {
    if (this.kernel && !this.opts.linked) this.kernel.shutdown();
    this.root.remove();
  }
}
