// Stored results: what a permalink's execution produced, kept by the server
// with the permalink (GET /permalink/ID answers it as "result", GET
// /permalink/ID/outputs alone), shown without a kernel:
//
//   {outputs: [nbformat v4 outputs], widgets: {state: {...}}, files: [{name, url}],
//    created: RFC 3339 time of the execution, truncated: bool}
//
// The outputs go through the same OutputArea and MIME renderers as live
// output (so stored HTML is sanitised exactly as live HTML is), widgets are
// views of their saved state with no kernel behind them (widget-views.js
// storedWidgets), and files are the same links as a live file list.

import { OutputArea } from './output.js';
import { el } from './util.js';
import { storedWidgets } from './widget-views.js';

/** isResult tells a stored result ({outputs: [...]}) from anything else. */
export function isResult(r) {
  return !!r && typeof r === 'object' && Array.isArray(r.outputs);
}

/** textOf joins nbformat's multiline strings (a string or a list of strings). */
function textOf(x) {
  if (Array.isArray(x)) return x.join('');
  return x === undefined || x === null ? '' : String(x);
}

/**
 * renderResult renders a stored result into root (a cell's output element),
 * after what root already shows. server resolves relative file links;
 * hideFiles leaves out the file list. It answers the OutputArea that
 * rendered it and the read-only widget manager of its widgets.
 */
export function renderResult(root, result, { server = '', hideFiles = false } = {}) {
  const widgets = storedWidgets(result.widgets);
  const area = new OutputArea(root, { widgets, kernel: null, hideFiles });
  for (const o of result.outputs) {
    if (!o || typeof o !== 'object') continue;
    switch (o.output_type) {
      case 'stream':
        area.stream(o.name || 'stdout', textOf(o.text));
        break;
      case 'display_data':
      case 'execute_result':
        area.display(o.data && typeof o.data === 'object' ? o.data : {}, o.metadata || {}, undefined, o.output_type);
        break;
      case 'error':
        area.error({ ename: textOf(o.ename), evalue: textOf(o.evalue), traceback: Array.isArray(o.traceback) ? o.traceback.map(textOf) : [] });
        break;
    }
  }
  if (Array.isArray(result.files) && result.files.length) {
    const files = [];
    for (const f of result.files) {
      if (!f || typeof f.url !== 'string') continue;
      let url;
      try {
        url = new URL(f.url, server || location.href).href;
      } catch {
        continue;
      }
      files.push({ ...f, url });
    }
    area.files(files);
  }
  return { area, widgets };
}

/** formatDate shows an RFC 3339 time as "7 Dec 2026, 12:40" in the reader's locale, or '' when it is not a time. */
export function formatDate(created) {
  const d = created ? new Date(created) : null;
  if (!d || isNaN(d.getTime())) return '';
  try {
    return new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' }).format(d);
  } catch {
    return d.toISOString();
  }
}

/**
 * storedNote is the line above a stored result: when it was computed, and
 * (unless evalText is empty: no Evaluate button) how to run it live.
 */
export function storedNote(result, evalText) {
  const when = formatDate(result.created);
  const note = el('div', { class: 'cg-stored-note', role: 'note' }, 'Stored result');
  if (when) note.append(' from ', el('time', { datetime: String(result.created), title: String(result.created), text: when }));
  if (result.truncated) note.append(' (truncated)');
  if (evalText) note.append(` — ${evalText} to run it live`);
  return el('div', { class: 'cg-out cg-out-stored' }, note);
}

/**
 * getPermalink loads a permalink from server (a base URL ending in '/'):
 * {code, language, interacts, result?} (GET /permalink/ID).
 */
export async function getPermalink(server, id) {
  const r = await fetch(`${server}permalink/${encodeURIComponent(id)}`);
  if (!r.ok) throw new Error(await problemOf(r));
  return r.json();
}

/** getResult loads a permalink's stored result (GET /permalink/ID/outputs), or null when it has none. */
export async function getResult(server, id) {
  const r = await fetch(`${server}permalink/${encodeURIComponent(id)}/outputs`);
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(await problemOf(r));
  return r.json();
}

async function problemOf(r) {
  let message = `${r.status} ${r.statusText}`;
  try {
    message = (await r.json()).message || message;
  } catch {
    // not JSON
  }
  return message;
}
