// Kernel sessions over the Sage-cell API: POST /kernel, then a websocket
// (/kernel/{id}/channels) or, when a websocket cannot connect, long-polling
// (/kernel/{id}/poll). Both carry the same frames with the same sequence
// numbers, so switching transports loses and repeats nothing.

import { base64ToBytes, Emitter, sleep, uuid } from './util.js';

const WS_OPEN_TIMEOUT = 6000;
const POLL_WAIT = 25;
// Messages kept for the kernel while no transport can take them (a
// reconnecting websocket, a failing POST); past this the oldest go, and the
// cell is told.
const MAX_QUEUE = 500;
// A busy server (503, 429) is asked again after its Retry-After, within
// these bounds (seconds), for as long as it takes: a page of many cells must
// not lose one to a moment of full capacity.
const RETRY_MIN = 1;
const RETRY_MAX = 60;
const RETRY_DEFAULT = 3;

/** KernelError is a failed request to the server, with its answer. */
export class KernelError extends Error {
  constructor(message, status, retryAfter, cancelled = false) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
    this.cancelled = cancelled;
  }
}

/** abortableSleep waits ms, or less if signal aborts. */
function abortableSleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

async function errorFrom(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const j = await resp.json();
    if (j && j.message) message = j.message;
  } catch {
    // not JSON
  }
  const retry = Number(resp.headers.get('Retry-After')) || 0;
  return new KernelError(message, resp.status, retry);
}

/** parseBinaryFrame decodes a legacy binary websocket frame (buffers). */
export function parseBinaryFrame(buf) {
  const dv = new DataView(buf);
  const n = dv.getUint32(0);
  const offsets = [];
  for (let i = 0; i < n; i++) offsets.push(dv.getUint32(4 * (i + 1)));
  offsets.push(buf.byteLength);
  const json = new TextDecoder().decode(new Uint8Array(buf, offsets[0], offsets[1] - offsets[0]));
  const msg = JSON.parse(json);
  msg.buffers = [];
  for (let i = 1; i < n; i++) msg.buffers.push(new DataView(buf, offsets[i], offsets[i + 1] - offsets[i]));
  return msg;
}

/**
 * Kernel is one session on the server. Events:
 *  - 'message' (msg): every message, after routing to handlers
 *  - 'status' (state): kernel execution_state (busy/idle/...)
 *  - 'transport' (name): websocket or polling
 *  - 'ended' (reason): the session is over
 *  - 'problem' (text): the gateway refused something we sent
 *  - 'waiting' ({seconds, message, status, attempt}): the server is busy;
 *    the kernel is asked for again in seconds
 */
export class Kernel extends Emitter {
  /**
   * @param {string} server base URL ending in '/'
   * @param {{kernelName?: string, timeout?: number, transport?: string}} opts
   */
  constructor(server, opts = {}) {
    super();
    this.server = server;
    this.opts = opts;
    this.session = uuid();
    this.id = null;
    // kernelName is the kernelspec that runs the session (the server says
    // which: sagemath for the Sage cell's gp), language what its code is run
    // as (gp); both start as what was asked for.
    this.kernelName = opts.kernelName || '';
    this.language = this.kernelName;
    this.transport = null; // 'websocket' | 'polling'
    this.lastSeq = 0;
    this.ended = false;
    this.endReason = '';
    this.handlers = new Map(); // parent msg_id → fn(msg)
    this.captures = new Map(); // parent msg_id → fn(msg) (output widgets)
    this.commHandler = null; // fn(msg) for comm_open/comm_msg/comm_close
    this.queue = []; // messages not yet handed to a transport
    this._dropped = 0; // messages dropped from a full queue, not yet reported
    this._ws = null;
    this._polling = false;
    this._posting = false;
    this._abort = new AbortController();
    this._started = null;
  }

  /** start asks the server for a kernel and connects to it. */
  start() {
    if (!this._started) this._started = this._start();
    return this._started;
  }

  async _start() {
    const form = new URLSearchParams();
    form.set('timeout', String(this.opts.timeout ?? 0));
    form.set('accepted_tos', 'true');
    if (this.kernelName) form.set('kernel_name', this.kernelName);
    let resp;
    for (let attempt = 1; ; attempt++) {
      try {
        resp = await fetch(this.server + 'kernel', { method: 'POST', body: form, signal: this._abort.signal });
      } catch (err) {
        if (this._abort.signal.aborted) throw new KernelError('cancelled', 0, 0, true);
        throw new KernelError(`cannot reach the server (${err.message})`, 0, 0);
      }
      if (resp.ok) break;
      const err = await errorFrom(resp);
      if (resp.status !== 503 && resp.status !== 429) throw err;
      // The server is at capacity: wait as it says (a little more, so that
      // the cells of one page do not all come back at once) and ask again.
      const base = Math.min(RETRY_MAX, Math.max(RETRY_MIN, err.retryAfter || RETRY_DEFAULT));
      const seconds = Math.round(base * (1 + Math.random() * 0.3));
      this.emit('waiting', { seconds, message: err.message, status: resp.status, attempt });
      await abortableSleep(seconds * 1000, this._abort.signal);
      if (this._abort.signal.aborted) throw new KernelError('cancelled', 0, 0, true);
    }
    const j = await resp.json();
    this.id = j.id;
    this.kernelName = j.kernel_name || this.kernelName;
    this.language = j.language || this.kernelName;
    this.wsURL = j.ws_url || this.server.replace(/^http/, 'ws');
    if (!this.wsURL.endsWith('/')) this.wsURL += '/';
    if (this.opts.transport !== 'polling' && typeof WebSocket !== 'undefined' && (await this._openWS(null))) {
      return this;
    }
    if (this.ended) return this;
    this._startPolling();
    return this;
  }

  _setTransport(name) {
    if (this.transport === name) return;
    this.transport = name;
    this.emit('transport', name);
  }

  // _openWS resolves true once a websocket is open, false if it cannot be.
  _openWS(since) {
    return new Promise((resolve) => {
      let url = `${this.wsURL}kernel/${encodeURIComponent(this.id)}/channels?session_id=${encodeURIComponent(this.session)}`;
      if (since !== null) url += `&since=${since}`;
      let ws;
      try {
        ws = new WebSocket(url);
      } catch {
        resolve(false);
        return;
      }
      ws.binaryType = 'arraybuffer';
      let opened = false;
      const timer = setTimeout(() => {
        if (!opened) {
          try {
            ws.close();
          } catch {
            // already closing
          }
          resolve(false);
        }
      }, WS_OPEN_TIMEOUT);
      ws.onopen = () => {
        opened = true;
        clearTimeout(timer);
        this._ws = ws;
        this._setTransport('websocket');
        resolve(true);
        this._flush();
      };
      ws.onmessage = (ev) => this._receiveFrame(ev.data);
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (!opened) {
          resolve(false);
          return;
        }
        if (this._ws === ws) this._ws = null;
        this._wsClosed(ev);
      };
    });
  }

  async _wsClosed(ev) {
    if (this.ended || this._detached) return;
    const reason = ev.reason || '';
    if (reason.startsWith('session ended')) {
      this._end(reason.replace(/^session ended:\s*/, '') || 'session ended');
      return;
    }
    // A dropped connection: resume where we were, else fall back to polling.
    // Meanwhile messages wait in the queue.
    this._setTransport('reconnecting');
    for (const delay of [200, 1000]) {
      await sleep(delay);
      if (this.ended || this._detached) return;
      if (await this._openWS(this.lastSeq)) return;
    }
    if (!this.ended && !this._detached) this._startPolling();
  }

  _startPolling() {
    if (this._polling || this.ended) return;
    this._polling = true;
    this._setTransport('polling');
    this._pollLoop();
    this._flush();
  }

  async _pollLoop() {
    let backoff = 250;
    while (!this.ended && !this._detached) {
      let resp;
      try {
        resp = await fetch(
          `${this.server}kernel/${encodeURIComponent(this.id)}/poll?client=${encodeURIComponent(this.session)}&since=${this.lastSeq}&wait=${POLL_WAIT}`,
          { signal: this._abort.signal, cache: 'no-store' },
        );
      } catch {
        if (this.ended || this._detached) return;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
        continue;
      }
      if (resp.status === 404 || resp.status === 410) {
        this._end('session ended');
        return;
      }
      if (!resp.ok) {
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
        continue;
      }
      backoff = 250;
      let j;
      try {
        j = await resp.json();
      } catch {
        continue;
      }
      if (j.missed) this.emit('problem', `${j.missed} messages were dropped because this client fell behind`);
      for (const m of j.messages || []) this._receive(m);
      if (typeof j.next === 'number' && j.next > this.lastSeq) this.lastSeq = j.next;
      if (j.ended) {
        this._end(j.reason || 'session ended');
        return;
      }
    }
  }

  _receiveFrame(data) {
    let msg;
    try {
      msg = typeof data === 'string' ? JSON.parse(data) : parseBinaryFrame(data);
    } catch (err) {
      console.warn('cellgate: bad frame', err);
      return;
    }
    this._receive(msg);
  }

  _receive(msg) {
    // Buffers in a JSON frame (long-polling) come as base64 strings.
    if (Array.isArray(msg.buffers) && msg.buffers.some((b) => typeof b === 'string')) {
      msg.buffers = msg.buffers.map((b) => (typeof b === 'string' ? new DataView(base64ToBytes(b).buffer) : b));
    }
    if (typeof msg.seq === 'number') {
      if (msg.seq <= this.lastSeq) return; // already seen
      this.lastSeq = msg.seq;
    }
    if (msg.channel === 'gateway') {
      this.emit('problem', msg.message || msg.error || 'gateway error');
      return;
    }
    const type = msg.header?.msg_type;
    const parent = msg.parent_header?.msg_id;
    if (type === 'status' && msg.channel === 'iopub') {
      const st = msg.content?.execution_state;
      if (st === 'dead') {
        if (parent && this.handlers.has(parent)) this.handlers.get(parent)(msg);
        this._end(msg.content?.reason || 'kernel died');
        return;
      }
      this.emit('status', st, msg);
    }
    if (type === 'comm_open' || type === 'comm_msg' || type === 'comm_close') {
      if (this.commHandler) this.commHandler(msg);
    }
    const capture = parent && msg.channel === 'iopub' && this.captures.get(parent);
    if (capture && capture(msg)) {
      this.emit('message', msg);
      return;
    }
    const h = parent && this.handlers.get(parent);
    if (h) h(msg);
    else if (type === 'update_display_data' || type === 'cellgate.files') this.emit('orphan', msg);
    this.emit('message', msg);
  }

  /** message builds a Jupyter message for channel. */
  message(channel, msgType, content, { parent = {}, metadata = {}, buffers } = {}) {
    const msg = {
      header: {
        msg_id: uuid(),
        msg_type: msgType,
        session: this.session,
        username: '',
        date: new Date().toISOString(),
        version: '5.3',
      },
      parent_header: parent,
      metadata,
      content,
      channel,
    };
    if (buffers && buffers.length) msg.buffers = buffers;
    return msg;
  }

  /** _trimQueue drops the oldest queued messages beyond MAX_QUEUE and says how many. */
  _trimQueue() {
    const n = Math.max(0, this.queue.length - MAX_QUEUE);
    if (n) this.queue.splice(0, n);
    return n;
  }

  /** send queues msg for the kernel, and returns its msg_id. */
  send(msg, handler) {
    if (handler) this.handlers.set(msg.header.msg_id, handler);
    if (this.ended) {
      this.emit('problem', `cannot send ${msg.header.msg_type}: the session has ended`);
      return msg.header.msg_id;
    }
    this.queue.push(msg);
    if (this._trimQueue()) {
      if (!this._dropped++) {
        setTimeout(() => {
          const n = this._dropped;
          this._dropped = 0;
          if (n) this.emit('problem', `${n} message(s) to the kernel were dropped while the connection was down`);
        }, 0);
      }
    }
    this._flush();
    return msg.header.msg_id;
  }

  _flush() {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      while (this.queue.length) {
        const m = this.queue.shift();
        this._ws.send(JSON.stringify(m));
      }
      return;
    }
    if (this._polling) this._postQueue();
    // Otherwise the websocket is (re)connecting: its onopen, or the
    // fallback to polling, flushes the queue.
  }

  // _postQueue sends the queue by POST. A batch that could not be sent goes
  // back to the front of the queue and is tried again (the cell is told
  // once that the server cannot be reached); one the server refuses is
  // reported.
  async _postQueue() {
    if (this._posting || !this.queue.length) return;
    this._posting = true;
    let backoff = 500;
    let told = false;
    try {
      while (this.queue.length && !this.ended) {
        const batch = this.queue.splice(0, this.queue.length);
        let resp = null;
        let failure = '';
        try {
          resp = await fetch(`${this.server}kernel/${encodeURIComponent(this.id)}/poll?client=${encodeURIComponent(this.session)}`, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify(batch),
            signal: this._abort.signal,
          });
        } catch (err) {
          failure = err.message;
        }
        if (this.ended) {
          if (!resp) this.emit('problem', `${batch.length} message(s) were not sent: the session ended`);
          return;
        }
        if (resp && (resp.status === 410 || resp.status === 404)) {
          this.queue.unshift(...batch);
          this._end('session ended');
          return;
        }
        if (resp && (resp.ok || (resp.status >= 400 && resp.status < 500 && resp.status !== 408 && resp.status !== 429))) {
          if (!resp.ok) this.emit('problem', `the server refused ${batch.map((m) => m.header?.msg_type).join(', ')}: ${(await errorFrom(resp)).message}`);
          backoff = 500;
          continue;
        }
        // Not sent: keep the batch (bounded), wait, try again.
        this.queue.unshift(...batch);
        const n = this._trimQueue();
        if (n) this.emit('problem', `${n} message(s) to the kernel were dropped: the server cannot be reached`);
        if (!told && backoff >= 2000) {
          told = true;
          this.emit('problem', `could not send to the kernel (${failure || `${resp.status} ${resp.statusText}`}); retrying`);
        }
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
      }
    } finally {
      this._posting = false;
    }
  }

  /** execute runs code; handler gets every message whose parent is the request. */
  execute(code, handler, { silent = false, allowStdin = true, storeHistory = true } = {}) {
    const msg = this.message('shell', 'execute_request', {
      code,
      silent,
      store_history: storeHistory,
      user_expressions: {},
      allow_stdin: allowStdin,
      stop_on_error: true,
    });
    return this.send(msg, handler);
  }

  /** interrupt stops the running computation (POST /kernel/{id}/interrupt). */
  async interrupt() {
    if (!this.id || this.ended) return;
    const resp = await fetch(`${this.server}kernel/${encodeURIComponent(this.id)}/interrupt`, { method: 'POST' });
    if (!resp.ok && resp.status !== 204) throw await errorFrom(resp);
  }

  /** detach leaves the session to the server (a one-shot session then ends). */
  detach() {
    if (this.ended) return;
    this._detached = true;
    this._abort.abort();
    if (this._ws) {
      try {
        this._ws.close(1000, 'done');
      } catch {
        // closing already
      }
    }
    this._end('finished', true);
  }

  /** shutdown ends the session on the server. */
  shutdown() {
    const id = this.id;
    if (id && !this.ended) {
      const url = `${this.server}kernel/${encodeURIComponent(id)}`;
      fetch(url, { method: 'DELETE', keepalive: true }).catch(() => {});
    }
    this.detach();
    this._end('deleted by client', true);
  }

  /** shutdownBeacon ends the session while the page unloads. */
  shutdownBeacon() {
    if (!this.id || this.ended) return;
    const body = new URLSearchParams({ method: 'DELETE' });
    try {
      navigator.sendBeacon(`${this.server}kernel/${encodeURIComponent(this.id)}`, body);
    } catch {
      // best effort
    }
  }

  _end(reason, quiet = false) {
    if (this.ended) return;
    this.ended = true;
    this.endReason = reason;
    if (this.queue.length) {
      const types = [...new Set(this.queue.map((m) => m.header?.msg_type))].join(', ');
      this.emit('problem', `${this.queue.length} message(s) (${types}) were not sent: the session ended (${reason})`);
      this.queue = [];
    }
    this._abort.abort();
    if (this._ws) {
      try {
        this._ws.close();
      } catch {
        // closing already
      }
    }
    this.emit('ended', reason, quiet);
  }
}
