// Times the unchanged @jupyterlab/services client (what JupyterLab and Thebe
// use) against one or more Jupyter Server API endpoints, alternating between
// them kernel by kernel so that a noisy machine hurts them alike. Run by
// cmd/cellbench (make bench):
//
//   NODE_PATH=gateway/testdata/jupyterlab/node_modules \
//   JSBENCH_TARGETS='[{"name":"cellgate","url":"http://127.0.0.1:P/","token":"T"}, ...]' \
//   JSBENCH_KERNELS=5 JSBENCH_EXECUTES=40 JSBENCH_PAUSE_MS=1500 node bench/jsbench.js
//
// Per target it measures, for each of KERNELS kernels:
//   ready: KernelManager.startNew({name: 'python3'}) until the kernel is
//          idle and its websocket connected (start-to-ready);
//   exec:  requestExecute('1+1') until future.done (execute_reply and the
//          idle status), EXECUTES times after one untimed warm-up;
// then shuts the kernel down and pauses PAUSE_MS (a prewarmed pool refills).
// Prints one JSON object on stdout: {"targets": {name: {"ready_ms": [...],
// "exec_ms": [...], "errors": [...]}}}.
'use strict';

const WebSocket = require('ws');
const { KernelManager, ServerConnection } = require('@jupyterlab/services');

console.debug = () => {};

const targets = JSON.parse(process.env.JSBENCH_TARGETS || '[]');
const kernels = Number(process.env.JSBENCH_KERNELS || 5);
const executes = Number(process.env.JSBENCH_EXECUTES || 40);
const pauseMs = Number(process.env.JSBENCH_PAUSE_MS || 1500);
const stepTimeoutMs = 60000;

function now() {
  return Number(process.hrtime.bigint()) / 1e6;
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), stepTimeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function waitReady(kernel) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (kernel.status === 'idle' && kernel.connectionStatus === 'connected') {
        kernel.statusChanged.disconnect(check);
        kernel.connectionStatusChanged.disconnect(check);
        resolve();
      } else if (kernel.status === 'dead') {
        reject(new Error('kernel died while starting'));
      }
    };
    kernel.statusChanged.connect(check);
    kernel.connectionStatusChanged.connect(check);
    check();
  });
}

async function execute(kernel) {
  const future = kernel.requestExecute({ code: '1+1' });
  const reply = await future.done;
  if (!reply || reply.content.status !== 'ok') {
    throw new Error(`execute_reply ${JSON.stringify(reply && reply.content)}`);
  }
}

async function oneKernel(target, manager, out) {
  const t0 = now();
  const kernel = await withTimeout(manager.startNew({ name: 'python3' }), 'startNew');
  try {
    await withTimeout(waitReady(kernel), 'kernel ready');
    out.ready_ms.push(now() - t0);
    await withTimeout(execute(kernel), 'warm-up execute');
    for (let i = 0; i < executes; i++) {
      const t = now();
      await withTimeout(execute(kernel), 'execute');
      out.exec_ms.push(now() - t);
    }
  } finally {
    await withTimeout(kernel.shutdown(), 'shutdown').catch(err => out.errors.push(`shutdown: ${err.message}`));
    kernel.dispose();
  }
}

async function main() {
  const results = {};
  const managers = {};
  for (const t of targets) {
    results[t.name] = { ready_ms: [], exec_ms: [], errors: [] };
    const serverSettings = ServerConnection.makeSettings({ baseUrl: t.url, token: t.token, WebSocket });
    managers[t.name] = new KernelManager({ serverSettings });
    await withTimeout(managers[t.name].ready, `${t.name}: KernelManager ready`);
  }
  for (let k = 0; k < kernels; k++) {
    // Alternate the order too, so neither target always goes first.
    const order = k % 2 === 0 ? targets : [...targets].reverse();
    for (const t of order) {
      try {
        await oneKernel(t, managers[t.name], results[t.name]);
      } catch (err) {
        results[t.name].errors.push(err && err.message ? err.message : String(err));
      }
    }
    await sleep(pauseMs);
  }
  for (const m of Object.values(managers)) {
    m.dispose();
  }
  process.stdout.write(JSON.stringify({ targets: results }) + '\n');
  process.exit(0);
}

main().catch(err => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + '\n');
  process.exit(1);
});
