// An output area: renders the iopub output of requests (streams, rich
// results, errors, clear_output, input prompts, files the kernel wrote).

import { ansiToNodes, applyTerminalControls } from './ansi.js';
import { plainText, renderBundle } from './mime.js';
import { el, formatBytes } from './util.js';

const MAX_STREAM = 1 << 20; // characters kept per stream block

// ipywidgets 6 warns on stderr when no front end answered its version
// check; this client speaks the protocol, so the warning is noise.
const WIDGET_WARNING = /^Widget Javascript not detected\.\s+It may not be installed or enabled properly\.(?: Reconnecting the current kernel may help\.)?\n?/m;

/** displays maps display_id → nodes showing it, per kernel. */
function displayRegistry(kernel) {
  if (!kernel.displays) kernel.displays = new Map();
  return kernel.displays;
}

export class OutputArea {
  /**
   * @param {HTMLElement} root where output goes
   * @param {{kernel?: object, widgets?: object, hideFiles?: boolean}} ctx
   *   hideFiles leaves out the list of files the kernel wrote (hide: ['files'])
   */
  constructor(root, ctx = {}) {
    this.root = root;
    this.ctx = ctx;
    this.pendingClear = false;
    this.lastStream = null;
    this.root.classList.add('cg-output');
  }

  get empty() {
    return !this.root.childElementCount;
  }

  clear(wait = false) {
    if (wait) {
      this.pendingClear = true;
      return;
    }
    this.pendingClear = false;
    this.lastStream = null;
    for (const child of [...this.root.children]) child.remove();
    this.root.dispatchEvent(new CustomEvent('cellgate:cleared', { bubbles: true }));
  }

  _beforeOutput() {
    if (this.pendingClear) this.clear(false);
  }

  _append(node, kind) {
    this._beforeOutput();
    const wrap = el('div', { class: `cg-out cg-out-${kind}` }, node);
    this.root.append(wrap);
    if (kind !== 'stream') this.lastStream = null;
    return wrap;
  }

  /** handle renders one iopub message; it returns false for other types. */
  handle(msg) {
    const c = msg.content || {};
    switch (msg.header.msg_type) {
      case 'stream':
        this.stream(c.name || 'stdout', c.text || '');
        return true;
      case 'display_data':
      case 'execute_result':
        this.display(c.data || {}, c.metadata || {}, c.transient?.display_id, msg.header.msg_type);
        return true;
      case 'update_display_data':
        updateDisplay(this.ctx.kernel, c);
        return true;
      case 'error':
        this.error(c);
        return true;
      case 'clear_output':
        this.clear(!!c.wait);
        return true;
      case 'cellgate.files':
        this.files(c.files || []);
        return true;
    }
    return false;
  }

  stream(name, text) {
    if (name === 'stderr') {
      text = text.replace(WIDGET_WARNING, '');
      if (!text) return;
    }
    this._beforeOutput();
    let block = this.lastStream;
    if (!block || block.name !== name || !block.wrap.isConnected) {
      const pre = el('pre', { class: `cg-stream cg-${name === 'stderr' ? 'stderr' : 'stdout'}` });
      const wrap = el('div', { class: 'cg-out cg-out-stream' }, pre);
      this.root.append(wrap);
      block = this.lastStream = { name, text: '', pre, wrap };
    }
    block.text += text;
    if (block.text.length > MAX_STREAM) {
      block.text = `[… output truncated …]\n${block.text.slice(block.text.length - MAX_STREAM)}`;
    }
    block.pre.textContent = '';
    ansiToNodes(applyTerminalControls(block.text), block.pre);
  }

  display(data, metadata, displayId, kind = 'display_data') {
    const node = renderBundle(data, metadata, { widgets: this.ctx.widgets, area: this, kernel: this.ctx.kernel });
    if (!node) return null;
    const wrap = this._append(node, kind === 'execute_result' ? 'result' : 'display');
    if (displayId && this.ctx.kernel) {
      const reg = displayRegistry(this.ctx.kernel);
      if (!reg.has(displayId)) reg.set(displayId, new Set());
      reg.get(displayId).add({ wrap, area: this });
    }
    return wrap;
  }

  error(c) {
    const tb = (c.traceback && c.traceback.length ? c.traceback.join('\n') : `${c.ename}: ${c.evalue}`) || 'Error';
    const pre = el('pre', { class: 'cg-error' });
    ansiToNodes(tb, pre);
    this._append(pre, 'error');
  }

  note(text, kind = 'note') {
    return this._append(el('div', { class: `cg-note cg-note-${kind}`, text }), 'note');
  }

  /** files shows links to files the kernel wrote, images inline. */
  files(files) {
    if (!files.length || this.ctx.hideFiles) return;
    const list = el('div', { class: 'cg-files' }, el('div', { class: 'cg-files-title', text: files.length === 1 ? 'File written:' : 'Files written:' }));
    for (const f of files) {
      const url = f.url;
      // Only http(s) links: a file list must never carry javascript: URLs.
      if (!url || !/^https?:\/\//i.test(url)) continue;
      const item = el(
        'div',
        { class: 'cg-file' },
        el('a', { href: url, target: '_blank', rel: 'noopener', download: f.name?.split('/').pop() || '', text: f.name || url }),
        f.size >= 0 ? el('span', { class: 'cg-file-size', text: ` (${formatBytes(f.size)})` }) : null,
      );
      if (/^image\/(png|jpeg|gif|webp|svg\+xml)$/.test(f.content_type || '')) {
        item.append(el('div', {}, el('img', { class: 'cg-image', src: url, alt: f.name || 'image', loading: 'lazy' })));
      }
      list.append(item);
    }
    this._append(list, 'files');
  }

  /** prompt asks for input (input_request) and resolves with the answer. */
  prompt(text, password) {
    return new Promise((resolve) => {
      const input = el('input', {
        class: 'cg-input-field',
        type: password ? 'password' : 'text',
        autocomplete: 'off',
        spellcheck: 'false',
        'aria-label': text || 'input',
      });
      const label = el('span', { class: 'cg-input-prompt', text: text || '' });
      const form = el('form', { class: 'cg-input' }, label, input, el('button', { type: 'submit', class: 'cg-btn cg-btn-small', text: 'Send' }));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const value = input.value;
        form.replaceWith(el('pre', { class: 'cg-stream cg-stdout cg-input-echo', text: `${text || ''}${password ? '••••••' : value}` }));
        this.lastStream = null;
        resolve(value);
      });
      this._append(form, 'input');
      setTimeout(() => input.focus({ preventScroll: true }), 0);
    });
  }

  /** cancelPrompts removes unanswered prompts (after an interrupt). */
  cancelPrompts() {
    for (const f of this.root.querySelectorAll('form.cg-input')) f.closest('.cg-out')?.remove();
  }
}

/** updateDisplay re-renders every node showing a display_id. */
export function updateDisplay(kernel, c) {
  const id = c.transient?.display_id;
  if (!kernel || !id) return;
  const reg = displayRegistry(kernel);
  const set = reg.get(id);
  if (!set) return;
  for (const entry of [...set]) {
    if (!entry.wrap.isConnected) {
      set.delete(entry);
      continue;
    }
    const node = renderBundle(c.data || {}, c.metadata || {}, { widgets: entry.area.ctx.widgets, area: entry.area, kernel });
    entry.wrap.replaceChildren(node || plainText(''));
  }
}
