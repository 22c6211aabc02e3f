// The ipywidgets protocol over Jupyter comms (target "jupyter.widget"):
// widget models kept in sync with the kernel's in both directions. This
// module knows nothing of the DOM; the views (widget-views.js) import it,
// never the reverse. Two protocols are spoken:
//  - ipywidgets 6 (Debian's; _model_module "jupyter-js-widgets"): comm_open
//    data is the state itself; the front end sends {method: "backbone",
//    sync_data}; the kernel checks the front end over the
//    "jupyter.widget.version" comm.
//  - protocol 2.x (ipywidgets 7 and 8): comm_open data {state, buffer_paths}
//    with metadata {version: "2.x"}; the front end sends {method: "update",
//    state, buffer_paths}; the kernel may answer with "echo_update".

import { Emitter } from './util.js';

const OLD_FRONTEND_VERSION = '2.1.4';

function isOldProtocol(data, metadata) {
  const v = metadata && metadata.version;
  if (v && /^2\./.test(String(v))) return false;
  if (data && typeof data.state === 'object' && data.state !== null && ('_model_name' in data.state || 'buffer_paths' in data)) return false;
  return true;
}

function setAtPath(obj, path, value) {
  let o = obj;
  for (let i = 0; i < path.length - 1; i++) {
    if (o[path[i]] === undefined) o[path[i]] = typeof path[i + 1] === 'number' ? [] : {};
    o = o[path[i]];
  }
  o[path[path.length - 1]] = value;
}

/** A widget model, in sync with the kernel's. */
export class WidgetModel extends Emitter {
  constructor(manager, id, state, protocol) {
    super();
    this.manager = manager;
    this.id = id;
    this.state = state;
    this.protocol = protocol; // 'old' | '2'
    this.closed = false;
    this._inFlight = false;
    this._pending = null;
    this._pendingArea = null;
  }

  get(key) {
    return this.state[key];
  }

  /** ref resolves a model reference ("IPY_MODEL_<id>"). */
  ref(value) {
    return this.manager.resolve(value);
  }

  get viewName() {
    return String(this.state._view_name || '').replace(/View$/, '');
  }

  get modelName() {
    return String(this.state._model_name || '').replace(/Model$/, '');
  }

  applyState(patch) {
    Object.assign(this.state, patch);
    this.emit('change', patch);
  }

  /** set changes keys from the user's side and syncs them to the kernel. */
  set(patch, area) {
    Object.assign(this.state, patch);
    this.emit('change', patch, true);
    this.sync(patch, area);
  }

  sync(patch, area) {
    if (this.closed || this.manager.readOnly) return;
    if (this._inFlight) {
      this._pending = { ...(this._pending || {}), ...patch };
      this._pendingArea = area || this._pendingArea;
      return;
    }
    this._send(patch, area);
  }

  _send(patch, area) {
    const data =
      this.protocol === 'old' ? { method: 'backbone', sync_data: patch, buffer_keys: [] } : { method: 'update', state: patch, buffer_paths: [] };
    this._inFlight = true;
    const release = () => {
      if (!this._inFlight) return;
      this._inFlight = false;
      clearTimeout(timer);
      if (this._pending) {
        const next = this._pending;
        const nextArea = this._pendingArea;
        this._pending = null;
        this._pendingArea = null;
        this._send(next, nextArea);
      }
    };
    // Never wait for ever on a kernel that lost the reply.
    const timer = setTimeout(release, 30000);
    this.manager.commSend(this.id, data, area, (msg) => {
      if (msg.header.msg_type === 'status' && msg.content.execution_state === 'idle') release();
    });
  }

  /** custom sends a custom message (e.g. a button click). */
  custom(content, area) {
    if (this.closed || this.manager.readOnly) return;
    this.manager.commSend(this.id, { method: 'custom', content }, area);
  }

  handleMsg(data, buffers) {
    const method = data.method;
    if (method === 'update' || method === 'echo_update') {
      const state = { ...(data.state || {}) };
      if (Array.isArray(data.buffer_paths)) data.buffer_paths.forEach((p, i) => setAtPath(state, p, buffers[i]));
      if (Array.isArray(data.buffers) && this.protocol === 'old') data.buffers.forEach((k, i) => (state[k] = buffers[i]));
      // Our own echo: skip keys we still have pending changes for.
      if (method === 'echo_update' && this._pending) for (const k of Object.keys(this._pending)) delete state[k];
      this.applyState(state);
    } else if (method === 'custom') {
      this.emit('custom', data.content, buffers);
    }
    // "display" (ipywidgets 6) is ignored: the display_data that follows it shows the view.
  }

  close() {
    this.closed = true;
    this.emit('close');
  }
}

/**
 * ModelManager keeps the widget models of one kernel: it answers the
 * kernel's comms, and captures the output of Output widgets for the output
 * areas their views attach (model.areas). WidgetManager (widget-views.js)
 * adds the views.
 */
export class ModelManager {
  constructor(kernel) {
    this.kernel = kernel;
    this.models = new Map();
    this.waiting = new Map(); // model id → callbacks waiting for it
    this.versionComm = null;
    this.disabled = false;
    this.readOnly = false; // models loaded from saved state (loadState): nothing is ever sent

    kernel.commHandler = (msg) => this.handleComm(msg);
  }

  get openCount() {
    let n = 0;
    for (const m of this.models.values()) if (!m.closed) n++;
    return n;
  }

  resolve(value) {
    if (typeof value === 'string' && value.startsWith('IPY_MODEL_')) return this.models.get(value.slice(10)) || null;
    return value;
  }

  /**
   * loadState builds models from ipywidgets' saved widget state (the
   * application/vnd.jupyter.widget-state+json form a stored result carries:
   * {state: {MODEL_ID: {model_name, model_module, model_module_version,
   * state}}}), with no kernel behind them: the manager becomes read-only
   * (nothing is ever sent) and disabled. References between models
   * ("IPY_MODEL_<id>") resolve among the loaded models; an Output model's
   * captured outputs are its state's "outputs". Buffers are not part of the
   * saved state. It answers how many models were loaded.
   */
  loadState(widgetState) {
    this.readOnly = true;
    this.disabled = true;
    const all = widgetState && typeof widgetState === 'object' ? widgetState.state : null;
    if (!all || typeof all !== 'object') return 0;
    let n = 0;
    for (const [id, entry] of Object.entries(all)) {
      if (!entry || typeof entry !== 'object') continue;
      const state = { ...(entry.state && typeof entry.state === 'object' ? entry.state : {}) };
      if (!state._model_name && entry.model_name) state._model_name = String(entry.model_name);
      if (!state._model_module && entry.model_module) state._model_module = String(entry.model_module);
      if (!state._model_module_version && entry.model_module_version) state._model_module_version = String(entry.model_module_version);
      if (!state._view_name && /Model$/.test(state._model_name || '')) state._view_name = state._model_name.replace(/Model$/, 'View');
      const model = new WidgetModel(this, id, state, '2');
      this.models.set(id, model);
      if (state._model_name === 'OutputModel') this._watchOutput(model);
      n++;
    }
    return n;
  }

  handleComm(msg) {
    if (this.readOnly) return;
    const c = msg.content || {};
    const type = msg.header.msg_type;
    if (type === 'comm_open') {
      if (c.target_name !== 'jupyter.widget') {
        if (c.target_name) this.commClose(c.comm_id);
        return;
      }
      const old = isOldProtocol(c.data, msg.metadata);
      const state = old ? { ...(c.data || {}) } : { ...((c.data && c.data.state) || {}) };
      if (!old && Array.isArray(c.data?.buffer_paths)) c.data.buffer_paths.forEach((p, i) => setAtPath(state, p, (msg.buffers || [])[i]));
      const model = new WidgetModel(this, c.comm_id, state, old ? 'old' : '2');
      this.models.set(c.comm_id, model);
      if (state._model_name === 'OutputModel') this._watchOutput(model);
      if (old && !this.versionComm) this._openVersionComm();
      return;
    }
    if (type === 'comm_msg') {
      if (this.versionComm && c.comm_id === this.versionComm) {
        if (c.data && 'version' in c.data) {
          this.commSend(this.versionComm, { validated: true, frontend_version: OLD_FRONTEND_VERSION });
        }
        return;
      }
      const model = this.models.get(c.comm_id);
      if (model) model.handleMsg(c.data || {}, msg.buffers || []);
      return;
    }
    if (type === 'comm_close') {
      const model = this.models.get(c.comm_id);
      if (model) {
        this.models.delete(c.comm_id);
        model.close();
      }
    }
  }

  _openVersionComm() {
    if (this.readOnly) return;
    this.versionComm = `cgver-${Math.random().toString(36).slice(2)}`;
    const msg = this.kernel.message('shell', 'comm_open', { comm_id: this.versionComm, target_name: 'jupyter.widget.version', data: {} });
    this.kernel.send(msg);
  }

  commSend(commId, data, area, onReply) {
    if (this.readOnly) return;
    const msg = this.kernel.message('shell', 'comm_msg', { comm_id: commId, data }, { metadata: { version: '2.1.0' } });
    this.kernel.send(msg, (reply) => {
      if (onReply) onReply(reply);
      // Output a callback prints outside any Output widget goes to the
      // output area of the view the user touched.
      if (area && reply.channel === 'iopub') area.handle(reply);
    });
  }

  commClose(commId) {
    if (this.readOnly) return;
    const msg = this.kernel.message('shell', 'comm_close', { comm_id: commId, data: {} });
    this.kernel.send(msg);
  }

  // Output widgets capture the output of the request whose msg_id they hold,
  // and pass it to the output areas of their views (model.areas).
  _watchOutput(model) {
    model.outputs = [];
    model.areas = new Set();
    let captured = '';
    const capture = (msg) => {
      const t = msg.header.msg_type;
      if (!['stream', 'display_data', 'execute_result', 'error', 'clear_output', 'update_display_data'].includes(t)) return false;
      for (const area of model.areas) {
        if (area.root.isConnected) area.handle(msg);
        else model.areas.delete(area);
      }
      if (t === 'clear_output') model.outputs = msg.content.wait ? model.outputs.concat([msg]) : [];
      else model.outputs.push(msg);
      return true;
    };
    const update = () => {
      if (this.readOnly) return; // no kernel: nothing to capture
      const id = model.get('msg_id') || '';
      if (id === captured) return;
      if (captured) this.kernel.captures.delete(captured);
      captured = id;
      if (id) this.kernel.captures.set(id, capture);
    };
    model.on('change', (patch) => {
      if ('msg_id' in patch) update();
      // Outputs the kernel sets replace those captured; the views show them.
      if ('outputs' in patch && Array.isArray(patch.outputs) && patch.outputs.length) model.outputs = [];
    });
    model.on('close', () => {
      if (captured) this.kernel.captures.delete(captured);
    });
    update();
  }

  /** disableAll greys out every view once the kernel is gone. */
  disableAll() {
    this.disabled = true;
    for (const m of this.models.values()) m.emit('dead');
  }
}

/** options lists the labels of a selection widget's options. */
export function options(model) {
  const labels = model.get('_options_labels');
  if (Array.isArray(labels)) return labels.map(String);
  const opts = model.get('options');
  if (Array.isArray(opts)) return opts.map((o) => (Array.isArray(o) ? String(o[0]) : String(o)));
  return [];
}

// selectedIndex reads a selection: "index" (protocol 2) or the label value (ipywidgets 6).
export function selectedIndex(model) {
  const idx = model.get('index');
  if (typeof idx === 'number') return idx;
  if (Array.isArray(idx)) return idx;
  const v = model.get('value');
  if (v === null || v === undefined) return -1;
  return options(model).indexOf(String(v));
}

// selectIndex selects option i, the way the model's protocol says.
export function selectIndex(model, i, area) {
  if ('index' in model.state || model.protocol !== 'old') model.set({ index: i }, area);
  else model.set({ value: options(model)[i] }, area);
}
