// Drives cellgate's Jupyter Server kernel API with the unchanged
// @jupyterlab/services package, as JupyterLab and Thebe do, over both kernel
// websocket encodings. Run by gateway/jupyterlab_test.go:
//
//   CELLGATE_URL=http://127.0.0.1:PORT/ CELLGATE_TOKEN=secret node compat.js
//
// Prints one line per check ("ok - ..." / "not ok - ...") and exits non-zero
// when any check failed. CELLGATE_JS_DEBUG=1 shows the library's debug log.
'use strict';

const WebSocket = require('ws');
const {
  KernelAPI,
  KernelManager,
  KernelSpecAPI,
  ServerConnection,
  SessionAPI,
  SessionManager
} = require('@jupyterlab/services');

const V1 = 'v1.kernel.websocket.jupyter.org';
const CHECK_TIMEOUT_MS = 20000;
// The whole run; the Go test has its own, longer limit.
const RUN_TIMEOUT_MS = 60000;

const baseUrl = process.env.CELLGATE_URL;
const token = process.env.CELLGATE_TOKEN || '';
if (!baseUrl) {
  console.log('not ok - CELLGATE_URL is not set');
  process.exit(2);
}

// The library logs every websocket it opens with console.debug.
if (!process.env.CELLGATE_JS_DEBUG) {
  console.debug = () => {};
}
for (const level of ['warn', 'error']) {
  const orig = console[level].bind(console);
  console[level] = (...args) => orig(`# console.${level}:`, ...args);
}

let passed = 0;
let failed = 0;

function ok(name, ms) {
  passed++;
  console.log(`ok - ${name}${ms === undefined ? '' : ` (${ms} ms)`}`);
}

function notOk(name, err, ms) {
  failed++;
  const why = err && err.message ? err.message : String(err);
  console.log(`not ok - ${name}: ${why}${ms === undefined ? '' : ` (${ms} ms)`}`);
}

// A message thrown inside a websocket handler (e.g. the library's
// "Kernel message validation error") must fail the run, not crash it.
process.on('uncaughtException', err => notOk('no uncaught exception', err));
process.on('unhandledRejection', err => notOk('no unhandled rejection', err));

function assert(cond, what) {
  if (!cond) {
    throw new Error(what);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms: ${what}`)),
      ms
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// group runs checks in order and, unless they are independent, stops at
// the first failure: later checks depend on the earlier ones.
async function group(title, checks, { independent = false, onFailure } = {}) {
  console.log(`# ${title}`);
  for (const [name, fn] of checks) {
    const started = Date.now();
    try {
      await withTimeout(Promise.resolve().then(fn), CHECK_TIMEOUT_MS, name);
      ok(`${title}: ${name}`, Date.now() - started);
    } catch (err) {
      notOk(`${title}: ${name}`, err, Date.now() - started);
      if (onFailure) {
        onFailure();
      }
      if (!independent) {
        console.log(`# ${title}: skipping the rest of this group`);
        return;
      }
    }
  }
}

// recordingWebSocket returns a `ws` subclass that remembers its sockets and
// the kinds of frames they receive. With legacy set it drops the
// subprotocols the library offers, so the server must fall back to the
// legacy JSON encoding, as it does for clients that offer none.
function recordingWebSocket(legacy) {
  const stats = { sockets: [], text: 0, binary: 0 };
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols, options) {
      super(url, legacy ? [] : protocols, options);
      stats.sockets.push(this);
      this.on('message', (_data, isBinary) => {
        if (isBinary) {
          stats.binary++;
        } else {
          stats.text++;
        }
      });
    }
  }
  return { WebSocket: RecordingWebSocket, stats };
}

function settingsFor(options) {
  return ServerConnection.makeSettings({
    baseUrl,
    token,
    WebSocket,
    ...options
  });
}

async function expectStatus(promise, status, what) {
  try {
    await promise;
  } catch (err) {
    const got = err && err.response ? err.response.status : undefined;
    assert(got === status, `${what}: want HTTP ${status}, got ${got} (${err})`);
    return;
  }
  throw new Error(`${what}: want HTTP ${status}, the call succeeded`);
}

function waitFor(kernel, pred, what) {
  return new Promise((resolve, reject) => {
    if (pred()) {
      resolve();
      return;
    }
    const check = () => {
      if (pred()) {
        kernel.statusChanged.disconnect(check);
        kernel.connectionStatusChanged.disconnect(check);
        resolve();
      } else if (kernel.status === 'dead') {
        reject(new Error(`kernel died while waiting for ${what}`));
      }
    };
    kernel.statusChanged.connect(check);
    kernel.connectionStatusChanged.connect(check);
  });
}

function waitIdle(kernel) {
  return waitFor(
    kernel,
    () => kernel.status === 'idle' && kernel.connectionStatus === 'connected',
    'idle'
  );
}

// execute runs code and collects its iopub output and reply.
async function execute(kernel, code, options = {}, hooks = {}) {
  const streams = {};
  const results = [];
  const errors = [];
  const future = kernel.requestExecute({
    code,
    allow_stdin: !!options.allowStdin,
    stop_on_error: options.stopOnError !== false
  });
  future.onIOPub = msg => {
    const c = msg.content;
    switch (msg.header.msg_type) {
      case 'stream':
        streams[c.name] = (streams[c.name] || '') + c.text;
        break;
      case 'execute_result':
        results.push(c);
        break;
      case 'error':
        errors.push(c);
        break;
    }
    if (hooks.onIOPub) {
      hooks.onIOPub(msg);
    }
  };
  if (hooks.onStdin) {
    future.onStdin = hooks.onStdin;
  }
  const reply = await future.done;
  return { reply, streams, results, errors };
}

// expectOutput checks that an execution succeeded and printed stdout.
function expectOutput(r, stdout) {
  const c = r.reply.content;
  assert(
    c.status === 'ok' && r.streams.stdout === stdout,
    `want status ok and stdout ${JSON.stringify(stdout)}; got stdout ` +
      `${JSON.stringify(r.streams.stdout)}, reply ${JSON.stringify(c)}`
  );
}

// traceMessages keeps the last messages a kernel connection sent and
// received, to show when a check fails.
function traceMessages(kernel, trace) {
  const started = Date.now();
  kernel.anyMessage.connect((_, { msg, direction }) => {
    let what = `${direction} ${msg.channel} ${msg.header.msg_type}`;
    if (msg.header.msg_type === 'status') {
      what += ` ${msg.content.execution_state}`;
    }
    const parent = msg.parent_header && msg.parent_header.msg_id;
    const ids = `id=${msg.header.msg_id}` + (parent ? ` parent=${parent}` : '');
    trace.push(`${Date.now() - started} ms ${what} ${ids}`);
    if (trace.length > 40) {
      trace.shift();
    }
  });
}

function dumpTrace(trace) {
  for (const line of trace) {
    console.log(`# trace: ${line}`);
  }
}

async function checkKernelLifecycle(title, legacy) {
  const rec = recordingWebSocket(legacy);
  const trace = [];
  const settings = settingsFor({ WebSocket: rec.WebSocket });
  const manager = new KernelManager({ serverSettings: settings });
  let kernel;
  let kernelId;
  try {
    await group(title, [
      [
        'KernelManager is ready',
        async () => {
          await manager.ready;
        }
      ],
      [
        'startNew python3',
        async () => {
          kernel = await manager.startNew({ name: 'python3' });
          kernelId = kernel.id;
          traceMessages(kernel, trace);
          if (process.env.CELLGATE_JS_DEBUG) {
            kernel.statusChanged.connect((_, s) => console.log(`# status ${s}`));
            kernel.connectionStatusChanged.connect((_, s) => console.log(`# connection ${s}`));
          }
          assert(kernel.name === 'python3', `kernel name ${kernel.name}`);
          assert(/^[0-9a-f-]{36}$/.test(kernelId), `kernel id ${kernelId}`);
        }
      ],
      [
        'kernel becomes idle',
        async () => {
          await waitIdle(kernel);
        }
      ],
      [
        `websocket subprotocol is ${legacy ? 'none (legacy)' : V1}`,
        async () => {
          const ws = rec.stats.sockets[rec.stats.sockets.length - 1];
          assert(ws, 'no websocket was opened');
          const want = legacy ? '' : V1;
          assert(ws.protocol === want, `protocol "${ws.protocol}", want "${want}"`);
        }
      ],
      [
        'kernel_info_reply',
        async () => {
          const reply = await kernel.requestKernelInfo();
          const c = reply.content;
          assert(c.status === 'ok', `status ${c.status}`);
          assert(
            c.language_info && c.language_info.name === 'python',
            `language_info ${JSON.stringify(c.language_info)}`
          );
        }
      ],
      [
        'print("hello") streams stdout',
        async () => {
          const r = await execute(kernel, 'print("hello")');
          expectOutput(r, 'hello\n');
        }
      ],
      [
        '1+1 gives execute_result 2',
        async () => {
          const r = await execute(kernel, '1+1');
          const c = r.reply.content;
          assert(c.status === 'ok', `reply ${JSON.stringify(c)}`);
          assert(r.results.length === 1, `${r.results.length} execute_results`);
          const res = r.results[0];
          assert(res.data['text/plain'] === '2', `result ${JSON.stringify(res.data)}`);
          assert(
            res.execution_count === c.execution_count,
            `execution_count ${res.execution_count} vs reply ${c.execution_count}`
          );
        }
      ],
      [
        'input() answered through onStdin/sendInputReply',
        async () => {
          let prompt;
          const r = await execute(
            kernel,
            'x = input("name? ")\nprint("got", x)',
            { allowStdin: true },
            {
              onStdin: msg => {
                if (msg.header.msg_type === 'input_request') {
                  prompt = msg.content.prompt;
                  kernel.sendInputReply({ status: 'ok', value: 'cellgate' }, msg.header);
                }
              }
            }
          );
          assert(prompt === 'name? ', `prompt ${JSON.stringify(prompt)}`);
          expectOutput(r, 'got cellgate\n');
        }
      ],
      [
        'interrupt stops time.sleep(30) with KeyboardInterrupt',
        async () => {
          const started = Date.now();
          let running;
          const seen = new Promise(resolve => {
            running = resolve;
          });
          // stop_on_error false: otherwise ipykernel aborts a request that
          // arrives right after the KeyboardInterrupt.
          const done = execute(
            kernel,
            'import time; time.sleep(30)',
            { stopOnError: false },
            {
              onIOPub: msg => {
                if (msg.header.msg_type === 'execute_input') {
                  running();
                }
              }
            }
          );
          await seen;
          // Give the kernel a moment to enter the sleep.
          await new Promise(resolve => setTimeout(resolve, 300));
          await kernel.interrupt();
          const r = await done;
          const c = r.reply.content;
          assert(c.status === 'error', `reply status ${c.status}`);
          assert(c.ename === 'KeyboardInterrupt', `reply ename ${c.ename}`);
          assert(Date.now() - started < 15000, 'interrupt took too long');
        }
      ],
      [
        'kernel is usable after the interrupt',
        async () => {
          await waitIdle(kernel);
          const r = await execute(kernel, 'print(x)');
          expectOutput(r, 'cellgate\n');
        }
      ],
      [
        'restart',
        async () => {
          const seen = [];
          const record = (_, status) => seen.push(status);
          kernel.statusChanged.connect(record);
          try {
            await kernel.restart();
            await waitIdle(kernel);
          } finally {
            kernel.statusChanged.disconnect(record);
          }
          if (seen.includes('autorestarting')) {
            // Not a failure: the client recovers. jupyter_server sends
            // status "restarting" only for automatic restarts.
            console.log(
              `# note: a requested restart looked automatic to the client (statuses: ${seen.join(' ')})`
            );
          }
        }
      ],
      [
        'execute after restart (fresh namespace)',
        async () => {
          const r = await execute(kernel, "print('x' in globals())\n2+3");
          expectOutput(r, 'False\n');
          assert(
            r.results.length === 1 && r.results[0].data['text/plain'] === '5',
            `results ${JSON.stringify(r.results)}`
          );
        }
      ],
      [
        `every frame was ${legacy ? 'a JSON text frame' : 'binary'}`,
        async () => {
          const { text, binary } = rec.stats;
          if (legacy) {
            assert(text > 0 && binary === 0, `${text} text, ${binary} binary frames`);
          } else {
            assert(binary > 0 && text === 0, `${text} text, ${binary} binary frames`);
          }
        }
      ],
      [
        'shutdown',
        async () => {
          await kernel.shutdown();
          assert(kernel.isDisposed || kernel.status === 'dead', `kernel status ${kernel.status}`);
        }
      ],
      [
        'kernel is gone from GET /api/kernels',
        async () => {
          const running = await KernelAPI.listRunning(settings);
          assert(!running.some(m => m.id === kernelId), `${kernelId} still listed`);
          const model = await KernelAPI.getKernelModel(kernelId, settings);
          assert(model === undefined, `GET /api/kernels/${kernelId}: ${JSON.stringify(model)}`);
        }
      ]
    ], { onFailure: () => dumpTrace(trace) });
  } finally {
    if (kernel && !kernel.isDisposed) {
      kernel.dispose();
    }
    manager.dispose();
  }
}

async function checkRestAndAuth() {
  const settings = settingsFor({});
  const anonymous = settingsFor({ token: '' });
  const wrong = settingsFor({ token: 'not-the-token' });
  await group('REST', [
    [
      'GET /api/kernelspecs lists python3 as default',
      async () => {
        const specs = await KernelSpecAPI.getSpecs(settings);
        assert(specs.default === 'python3', `default ${specs.default}`);
        const py = specs.kernelspecs.python3;
        assert(py, `kernelspecs ${Object.keys(specs.kernelspecs)}`);
        assert(py.language === 'python', `language ${py.language}`);
        assert(py.display_name, 'no display_name');
      }
    ],
    [
      'GET /api/status',
      async () => {
        const resp = await ServerConnection.makeRequest(
          `${settings.baseUrl}api/status`,
          {},
          settings
        );
        assert(resp.status === 200, `status ${resp.status}`);
        const body = await resp.json();
        assert(typeof body.kernels === 'number', `body ${JSON.stringify(body)}`);
      }
    ],
    [
      'no token: 401 on GET /api/kernelspecs',
      () => expectStatus(KernelSpecAPI.getSpecs(anonymous), 401, 'getSpecs')
    ],
    [
      'no token: 401 on GET /api/kernels',
      () => expectStatus(KernelAPI.listRunning(anonymous), 401, 'listRunning')
    ],
    [
      'no token: 401 on POST /api/kernels',
      () => expectStatus(KernelAPI.startNew({ name: 'python3' }, anonymous), 401, 'startNew')
    ],
    [
      'wrong token: 401 on GET /api/sessions',
      () => expectStatus(SessionAPI.listRunning(wrong), 401, 'listRunning')
    ],
    [
      'token as ?token= query parameter is accepted',
      async () => {
        const resp = await fetch(
          `${settings.baseUrl}api/kernels?token=${encodeURIComponent(token)}`
        );
        assert(resp.status === 200, `status ${resp.status}`);
      }
    ],
    [
      'no token: websocket upgrade refused with 401',
      async () => {
        // Any id: the token is checked before the kernel is looked up.
        const url = `${settings.wsUrl}api/kernels/00000000-0000-0000-0000-000000000000/channels`;
        const status = await new Promise((resolve, reject) => {
          const ws = new WebSocket(url, [V1]);
          ws.on('unexpected-response', (_req, res) => {
            resolve(res.statusCode);
            ws.terminate();
          });
          ws.on('open', () => {
            ws.close();
            reject(new Error('websocket opened without a token'));
          });
          ws.on('error', reject); // a no-op once settled
        });
        assert(status === 401, `status ${status}`);
      }
    ]
  ], { independent: true });
}

async function checkSession() {
  const settings = settingsFor({});
  const kernelManager = new KernelManager({ serverSettings: settings });
  const manager = new SessionManager({ kernelManager, serverSettings: settings });
  const trace = [];
  let session;
  let sessionId;
  let kernelId;
  try {
    await group('SessionManager', [
      [
        'SessionManager is ready',
        async () => {
          await manager.ready;
        }
      ],
      [
        'startNew notebook session with python3',
        async () => {
          session = await manager.startNew({
            path: 'compat.ipynb',
            type: 'notebook',
            name: 'compat.ipynb',
            kernel: { name: 'python3' }
          });
          sessionId = session.id;
          assert(session.path === 'compat.ipynb', `path ${session.path}`);
          assert(session.type === 'notebook', `type ${session.type}`);
          assert(session.kernel, 'session has no kernel');
          assert(session.kernel.name === 'python3', `kernel ${session.kernel.name}`);
          kernelId = session.kernel.id;
          traceMessages(session.kernel, trace);
        }
      ],
      [
        'session kernel executes 1+1',
        async () => {
          await waitIdle(session.kernel);
          const r = await execute(session.kernel, '1+1');
          assert(
            r.results.length === 1 && r.results[0].data['text/plain'] === '2',
            `results ${JSON.stringify(r.results)}`
          );
        }
      ],
      [
        'GET /api/sessions lists it',
        async () => {
          const running = await SessionAPI.listRunning(settings);
          const m = running.find(s => s.id === sessionId);
          assert(m, `${sessionId} not listed`);
          assert(m.kernel && m.kernel.id === kernelId, `kernel ${JSON.stringify(m.kernel)}`);
        }
      ],
      [
        'setPath renames it (PATCH)',
        async () => {
          await session.setPath('renamed.ipynb');
          const m = await SessionAPI.getSessionModel(sessionId, settings);
          assert(m.path === 'renamed.ipynb', `path ${m.path}`);
        }
      ],
      [
        'shutdown',
        async () => {
          await session.shutdown();
        }
      ],
      [
        'session and kernel are gone',
        async () => {
          const sessions = await SessionAPI.listRunning(settings);
          assert(!sessions.some(s => s.id === sessionId), `${sessionId} still listed`);
          const kernels = await KernelAPI.listRunning(settings);
          assert(!kernels.some(k => k.id === kernelId), `kernel ${kernelId} still listed`);
        }
      ]
    ], { onFailure: () => dumpTrace(trace) });
  } finally {
    if (session && !session.isDisposed) {
      session.dispose();
    }
    manager.dispose();
    kernelManager.dispose();
  }
}

async function main() {
  const started = Date.now();
  setTimeout(() => {
    notOk('the run finishes', new Error(`timed out after ${RUN_TIMEOUT_MS} ms`));
    process.exit(1);
  }, RUN_TIMEOUT_MS).unref();
  await checkRestAndAuth();
  await checkKernelLifecycle(`kernel over ${V1}`, false);
  await checkKernelLifecycle('kernel over the legacy JSON encoding', true);
  await checkSession();
  console.log(
    `# ${passed} passed, ${failed} failed in ${((Date.now() - started) / 1000).toFixed(1)} s`
  );
  process.exit(failed > 0 || passed === 0 ? 1 : 0);
}

main().catch(err => {
  notOk('script', err);
  process.exit(1);
});
