// Drives cellgate's /sockjs as the Sage cell's front end (its
// multisockjs.js) does, with the unchanged sockjs-client: one connection,
// "<kernel id>/channels,<frame>" for a kernel's messages both ways and
// "complete,<frame>" for completions.
//
//   node client.js BASE_URL KERNEL_ID TRANSPORT
//
// Prints one JSON line: what the page saw.
'use strict';
const SockJS = require('sockjs-client');

const [base, kernel, transport] = process.argv.slice(2);
const session = 'sockjs-test-' + process.pid;
const sock = new SockJS(`${base}sockjs?CellSessionID=${session}`, null, { transports: [transport] });
const seen = { transport: '', stdout: '', status: '', idle: false, matches: null, errors: [], early: '' };
let execId = '';
let completeId = '';

function frame(msgType, content) {
  const id = `${msgType}-${Math.random().toString(16).slice(2)}`;
  return [id, JSON.stringify({ channel: 'shell', header: { msg_id: id, msg_type: msgType, session, username: '', version: '5.3' }, parent_header: {}, metadata: {}, content })];
}

function done() {
  if (seen.status && seen.idle && seen.matches) {
    console.log(JSON.stringify(seen));
    sock.close();
    process.exit(0);
  }
}

sock.onopen = () => {
  seen.transport = sock.transport;
  let f = frame('execute_request', { code: 'import sys\nfor i in range(3): print("line", i)\nlongname_for_completion = 1', silent: false, user_expressions: {}, allow_stdin: false });
  execId = f[0];
  sock.send(`${kernel}/channels,${f[1]}`);
  f = frame('complete_request', { code: 'longname_for', cursor_pos: 12 });
  completeId = f[0];
  // After the execution, so the name exists in the kernel.
  setTimeout(() => sock.send(`complete,${f[1]}`), 1500);
};

sock.onmessage = (e) => {
  const comma = e.data.indexOf(',');
  const prefix = e.data.slice(0, comma);
  const msg = JSON.parse(e.data.slice(comma + 1));
  if (msg.error) {
    seen.errors.push(`${prefix}: ${msg.message}`);
    return;
  }
  if (prefix === 'complete') {
    if (msg.parent_header.msg_id === completeId) seen.matches = msg.content.matches;
    return done();
  }
  if (prefix !== `${kernel}/channels`) {
    seen.errors.push(`unexpected stream ${prefix}`);
    return;
  }
  if (msg.parent_header.msg_id !== execId) {
    if (msg.msg_type === 'stream' || msg.header.msg_type === 'stream') seen.early += msg.content.text;
    return;
  }
  const type = msg.header.msg_type;
  if (type === 'stream' && msg.content.name === 'stdout') seen.stdout += msg.content.text;
  if (type === 'execute_reply') seen.status = msg.content.status;
  if (type === 'status' && msg.content.execution_state === 'idle') seen.idle = true;
  done();
};

sock.onclose = (e) => {
  seen.errors.push(`closed: ${e.code} ${e.reason}`);
  console.log(JSON.stringify(seen));
  process.exit(1);
};

setTimeout(() => {
  seen.errors.push('timed out');
  console.log(JSON.stringify(seen));
  process.exit(1);
}, 60000);
