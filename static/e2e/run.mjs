// End-to-end tests of the browser client in headless Debian Chromium,
// driven by playwright-core. Run by e2e_test.go, which starts cellgate and
// passes its address; each test prints one "RESULT {json}" line.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.CELLGATE_URL;
const OTHER = process.env.OTHER_URL;
const BLOCKED = process.env.BLOCKED_URL; // cellgate behind a proxy that refuses websockets
const CAPPED = process.env.CAPPED_URL || ''; // a cellgate with room for two Sage kernels
const SHOTS = process.env.SCREENSHOTS || '';
const KERNELS = (process.env.KERNELS || 'python3').split(',');
const ONLY = process.env.ONLY || '';
const TEST_TIMEOUT = 60000;

if (!BASE) {
  console.error('CELLGATE_URL is not set: run this through go test ./static/e2e');
  process.exit(2);
}
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  chromiumSandbox: false,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

class Skip extends Error {}

const tests = [];
function test(name, fn, { timeout = TEST_TIMEOUT } = {}) {
  tests.push({ name, fn, timeout });
}

// page opens a fresh browser context (no shared cache or storage).
async function page(t, { viewport = { width: 1000, height: 760 }, init } = {}) {
  const ctx = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  t.cleanup.push(() => ctx.close());
  if (init) await ctx.addInitScript(init);
  const p = await ctx.newPage();
  t.page = t.page || p;
  p.setDefaultTimeout(30000);
  p.on('pageerror', (e) => {
    if (!(t.ignoreErrors && t.ignoreErrors.test(e.message))) t.errors.push(`page error: ${e.message}`);
  });
  p.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') t.log.push(`console: ${m.text()}`);
  });
  return p;
}

// demo opens the demo page, puts code in the cell and evaluates it.
async function demo(p, code, { kernel, evaluate = true, query = '', base = BASE } = {}) {
  await p.goto(base + query);
  await p.waitForFunction(() => window.demoCell && document.querySelector('.cg-language option'));
  if (kernel) await p.selectOption('.cg-language', kernel);
  if (code !== undefined) await p.evaluate((c) => window.demoCell.setCode(c), code);
  if (evaluate) await p.click('.cg-eval');
}

async function outputContains(p, text, { root = '.cg-output-root', timeout = 30000 } = {}) {
  try {
    await p.waitForFunction(
      ([r, t]) => [...document.querySelectorAll(r)].some((e) => e.innerText.includes(t)),
      [root, text],
      { timeout },
    );
  } catch {
    const got = await p.evaluate((r) => [...document.querySelectorAll(r)].map((e) => e.innerText).join('\n---\n'), root);
    throw new Error(`output never showed ${JSON.stringify(text)}; it shows: ${JSON.stringify(got.slice(0, 800))}`);
  }
}

async function cellState(p, sel = '.cg-cell') {
  return p.$eval(sel, (e) => ({ state: e.dataset.state, transport: e.dataset.transport, done: e.dataset.done }));
}

async function waitDone(p, sel = '.cg-cell', n = 1) {
  await p.waitForFunction(([s, n]) => Number(document.querySelector(s)?.dataset.done || 0) >= n, [sel, n], { timeout: 20000 });
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

async function shot(p, name, opts = {}) {
  if (!SHOTS) return;
  await p.screenshot({ path: join(SHOTS, name), ...opts });
}

// ------------------------------------------------------------------ tests

test('print', async (t) => {
  const p = await page(t);
  await demo(p, 'print(1+1)', { evaluate: false });
  // Shift+Enter in the editor evaluates.
  await p.click('.cm-content');
  await p.keyboard.press('Shift+Enter');
  await outputContains(p, '2');
  await waitDone(p);
  const st = await cellState(p);
  expect(st.transport === 'websocket', `transport is ${st.transport}, want websocket`);
  expect(st.state === 'idle', `state is ${st.state} after the run`);
  const text = await p.$eval('.cg-output-root', (e) => e.innerText.trim());
  expect(text === '2', `output is ${JSON.stringify(text)}, want "2"`);
  // The demo page links embed.css; the script does not add a second copy.
  const sheets = await p.$$eval('link[rel=stylesheet]', (ls) => ls.filter((l) => l.href.includes('/static/embed.css')).map((l) => l.href));
  expect(sheets.length === 1, `embed.css is linked ${sheets.length} times: ${sheets.join(' ')}`);
  // A finished one-shot kernel is released: the client leaves and the server ends the session.
  await p.waitForFunction(() => window.demoCell.kernel.ended, null, { timeout: 8000 });
  const gone = await p.evaluate(async () => {
    const k = window.demoCell.kernel;
    for (let i = 0; i < 20; i++) {
      // (interrupt, unlike a poll, does not count as a client attaching)
      const r = await fetch(`${k.server}kernel/${k.id}/interrupt`, { method: 'POST' });
      if (r.status === 404) return true;
      await new Promise((res) => setTimeout(res, 250));
    }
    return false;
  });
  expect(gone, 'the server kept the finished one-shot session');
  expect(!(await p.isVisible('.cg-banner')), 'a released kernel showed the session-ended banner');
  expect((await cellState(p)).state === 'idle', 'state changed when the kernel was released');
});

test('matplotlib image', async (t) => {
  const p = await page(t);
  await demo(
    p,
    [
      'import matplotlib.pyplot as plt',
      'import numpy as np',
      'x = np.linspace(0, 2*np.pi, 200)',
      'plt.figure(figsize=(6, 3.2))',
      'plt.plot(x, np.sin(x), label="sin")',
      'plt.plot(x, np.cos(x), label="cos")',
      'plt.legend(); plt.title("matplotlib in a cell")',
      'plt.show()',
      'print("plotted")',
    ].join('\n'),
  );
  await outputContains(p, 'plotted');
  await p.waitForFunction(() => {
    const img = document.querySelector('.cg-output-root img.cg-image');
    return img && img.complete && img.naturalWidth > 100;
  });
  const src = await p.$eval('.cg-output-root img.cg-image', (i) => i.src.slice(0, 22));
  expect(src === 'data:image/png;base64,', `image src starts ${src}`);
  await shot(p, 'demo-matplotlib.png', { fullPage: true });
});

test('rich output is rendered and kernel HTML cannot script the page', async (t) => {
  // The sandboxed frames' attempts to reach the page fail, as they must.
  t.ignoreErrors = /Blocked a frame with origin "null"/;
  const p = await page(t);
  await demo(
    p,
    [
      'from IPython.display import display, HTML, Markdown, Latex, SVG',
      'display(Markdown("**bold** and $x^2$"))',
      'display(Latex(r"$$\\int_0^1 x\\,dx = \\frac{1}{2}$$"))',
      'display(HTML("<b id=safe>safe html</b><style>body { display: none }</style>"))',
      'display(HTML("<img src=x onerror=\\"window.parent.pwned=1\\">"))',
      'display(HTML("<p>framed</p><script>document.body.append(\' ran inside\'); window.parent.pwned=2</script>"))',
      'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="teal"/><script>alert(1)</script></svg>\'))',
      'import sys; print("\\x1b[31mred\\x1b[0m", file=sys.stdout)',
      'h = display(Markdown("version one"), display_id=True)',
      'h.update(Markdown("version two"))',
    ].join('\n'),
  );
  await waitDone(p);
  await outputContains(p, 'bold');
  await outputContains(p, 'version two');
  expect(!(await p.$eval('.cg-output-root', (e) => e.innerText.includes('version one'))), 'update_display_data did not replace the display');
  expect(await p.$('.cg-output-root .katex'), 'no KaTeX math rendered');
  expect(await p.$('.cg-output-root .katex-display'), 'no display math rendered');
  expect(await p.$('.cg-output-root span.cg-ansi-fg-red'), 'ANSI red not rendered');
  expect(await p.$('.cg-output-root img[src^="data:image/svg+xml"]'), 'SVG not shown as an image');
  expect(await p.$('.cg-output-root .cg-html b#user-content-safe'), 'plain HTML not rendered inline (with its id prefixed)');
  expect(!(await p.$('.cg-output-root style')), 'a <style> from the kernel reached the page');
  const sandboxes = await p.$$eval('.cg-output-root iframe.cg-frame', (fs) => fs.map((f) => f.getAttribute('sandbox')));
  expect(sandboxes.length === 2, `want 2 sandboxed frames, got ${sandboxes.length}`);
  expect(sandboxes.every((s) => s === 'allow-scripts allow-popups'), `iframe sandbox is ${JSON.stringify(sandboxes)}, want "allow-scripts allow-popups"`);
  let ran = false;
  for (let i = 0; i < 50 && !ran; i++) {
    for (const f of p.frames()) {
      if (f === p.mainFrame()) continue;
      ran = ran || (await f.evaluate(() => document.body && document.body.innerText.includes('ran inside')).catch(() => false));
    }
    if (!ran) await p.waitForTimeout(100);
  }
  expect(ran, 'script in the sandboxed frame did not run');
  await p.waitForTimeout(300);
  const pwned = await p.evaluate(() => window.pwned);
  expect(pwned === undefined, `kernel HTML ran script in the page (pwned=${pwned})`);
});

// A point of the page at the middle of sel's box (which must be in view).
function probeScript() {
  window.__probe = (sel) => {
    const e = document.querySelector(sel);
    if (!e) return { inside: false, hit: `no ${sel}` };
    e.scrollIntoView({ block: 'center' });
    const b = e.getBoundingClientRect();
    const hit = document.elementFromPoint(b.left + b.width / 2, b.top + Math.min(b.height / 2, 12));
    return { inside: !!hit && e.contains(hit), hit: hit ? `${hit.tagName.toLowerCase()}.${hit.className}: ${hit.textContent.slice(0, 40)}` : 'nothing' };
  };
}

test('kernel HTML cannot cover the page, clobber its globals or run script', async (t) => {
  t.ignoreErrors = /Blocked a frame with origin "null"/;
  const p = await page(t, { init: probeScript });
  await demo(
    p,
    [
      'from IPython.display import display, HTML',
      String.raw`display(HTML('<a class=overlay href="https://example.invalid/" style="position:fixed;inset:0;z-index:1000000;display:block;background:rgba(255,0,0,.4)">You won a prize</a>'))`,
      String.raw`display(HTML('<div class=abscover style="position:absolute;top:-3000px;left:-3000px;width:9000px;height:9000px;z-index:999999;background:rgba(0,0,255,.3)">cover</div>'))`,
      // No whitespace before onerror: inline HTML, so DOMPurify must strip the handler.
      String.raw`display(HTML('<b id=cgHostId>named</b><img name=cgHostImg alt=i><img src="x"/onerror="window.pwned=1">'))`,
      String.raw`display(HTML('<img src=x onerror="window.parent.pwned=2"><script>window.parent.pwned=3</script>'))`,
      'print("shown")',
    ].join('\n'),
  );
  await outputContains(p, 'shown');
  await waitDone(p);
  const probes = ['.demo-header', '.cg-editor', '.cg-eval', '.demo-help'];
  const r = await p.evaluate((probes) => {
    const out = { probes: {} };
    for (const sel of probes) out.probes[sel] = window.__probe(sel);
    const a = document.querySelector('.cg-output-root a.overlay');
    out.overlayPosition = a && getComputedStyle(a).position;
    out.clobbered = [typeof window.cgHostId, typeof window.cgHostImg, typeof document.cgHostImg];
    out.prefixed = !!document.getElementById('user-content-cgHostId');
    out.handlers = [...document.querySelectorAll('.cg-output-root .cg-html *')].filter((e) => [...e.attributes].some((at) => /^on/i.test(at.name))).length;
    return out;
  }, probes);
  const j = JSON.stringify(r);
  for (const sel of probes) expect(r.probes[sel].inside, `kernel HTML covers ${sel}: elementFromPoint is ${r.probes[sel].hit}`);
  expect(r.overlayPosition && r.overlayPosition !== 'fixed', `position:fixed kept on kernel HTML: ${j}`);
  expect(r.clobbered.every((x) => x === 'undefined'), `kernel HTML clobbered page globals: ${j}`);
  expect(r.prefixed, `id not prefixed with user-content-: ${j}`);
  expect(r.handlers === 0, `event handler attributes reached the page: ${j}`);
  // The containment alone (without the sanitizer's help) keeps a fixed
  // element inside the output box.
  const contained = await p.evaluate((probes) => {
    const box = document.querySelector('.cg-output-root .cg-untrusted');
    const a = document.createElement('a');
    a.href = '#';
    a.textContent = 'injected';
    a.style.cssText = 'position:fixed;inset:0;z-index:2147483647;display:block;background:rgba(0,128,0,.4)';
    box.append(a);
    const res = probes.map((sel) => [sel, window.__probe(sel)]);
    a.remove();
    return res;
  }, probes);
  for (const [sel, pr] of contained) expect(pr.inside, `a fixed element inside .cg-untrusted covers ${sel}: ${pr.hit}`);
  // Script in HTML rendered inline never runs; in a frame it cannot reach the page.
  const inline = await p.evaluate(async () => {
    const n = window.cellgate._internals.sanitizedNode('<script>window.pwnedInline=1<\/script><img src=x onerror="window.pwnedInline=2"><svg><script>window.pwnedInline=3<\/script><a xlink:href="javascript:window.pwnedInline=4">x</a></svg>');
    document.querySelector('.cg-output-root').append(n);
    n.querySelector('a')?.dispatchEvent(new MouseEvent('click', { bubbles: true, cancelable: true }));
    await new Promise((r) => setTimeout(r, 300));
    return { pwned: window.pwnedInline, scripts: n.querySelectorAll('script').length };
  });
  expect(inline.pwned === undefined && inline.scripts === 0, `inline HTML ran script: ${JSON.stringify(inline)}`);
  await p.waitForTimeout(300);
  const pwned = await p.evaluate(() => window.pwned);
  expect(pwned === undefined, `kernel HTML ran script in the page (pwned=${pwned})`);
});

test('interact slider re-runs the function', async (t) => {
  const p = await page(t);
  await demo(
    p,
    [
      'from ipywidgets import interact',
      '@interact(x=(0, 10))',
      'def square(x=3):',
      '    print("x squared is", x * x)',
    ].join('\n'),
  );
  await outputContains(p, 'x squared is 9');
  const slider = await p.waitForSelector('.cg-output-root input[type=range]');
  await slider.focus();
  for (let i = 0; i < 4; i++) await p.keyboard.press('ArrowRight');
  await outputContains(p, 'x squared is 49');
  // The old output was replaced, not appended to.
  const text = await p.$eval('.cg-output-root', (e) => e.innerText);
  expect((text.match(/x squared is/g) || []).length === 1, `output was not replaced: ${JSON.stringify(text)}`);
  expect(!/Widget Javascript not detected/.test(text), 'ipywidgets warned that the front end is missing');
  // Share sends the interact's state with the permalink, and shows a QR code.
  const [req] = await Promise.all([p.waitForRequest((r) => r.url().endsWith('/permalink') && r.method() === 'POST'), p.click('.cg-share')]);
  const body = JSON.parse(req.postData() || '{}');
  const interacts = JSON.parse(body.interacts || 'null');
  expect(Array.isArray(interacts) && interacts.length === 1 && interacts[0].state.x === 7, `permalink sent interacts ${body.interacts}`);
  const q = await (await p.waitForSelector('.cg-share-panel input.cg-link-q')).inputValue();
  const stored = await p.evaluate(async (id) => (await fetch(`permalink/${encodeURIComponent(id)}`)).json(), new URL(q).searchParams.get('q'));
  expect(JSON.parse(stored.interacts || '[]')[0]?.state?.x === 7, `stored permalink has interacts ${stored.interacts}`);
  const z = await (await p.waitForSelector('.cg-share-panel input.cg-link-z')).inputValue();
  expect(new URL(z).searchParams.get('interacts'), `the ?z= link has no interacts: ${z}`);
  const panelText = await p.$eval('.cg-share-panel', (e) => e.innerText);
  expect(!/\bnull\b/.test(panelText), `share panel shows ${JSON.stringify(panelText)}`);
  const qr = await p.waitForSelector('.cg-share-panel img.cg-qr');
  expect(await qr.evaluate((i) => i.complete && i.naturalWidth >= 21 && i.naturalWidth === i.naturalHeight), 'QR code image did not load');
  await p.waitForTimeout(300);
  await shot(p, 'interact.png', { clip: await p.$eval('main', (m) => { const r = m.getBoundingClientRect(); return { x: r.x, y: r.y, width: r.width, height: Math.min(r.height, 520) }; }) });
});

test('widgets: dropdown, checkbox, text, button, toggle buttons', async (t) => {
  const p = await page(t);
  await demo(
    p,
    [
      'import ipywidgets as w',
      'from IPython.display import display',
      'from ipywidgets import interact',
      '@interact(color=["red", "green", "blue"], loud=False, name="Ada", size=w.ToggleButtons(options=["S", "M", "L"]))',
      'def show(color, loud, name, size):',
      '    msg = f"{name} likes {color} size {size}"',
      '    print(msg.upper() if loud else msg)',
      '@interact(f=w.FloatSlider(value=1.5, min=0, max=3, step=0.25, description="f"), notes=w.Textarea(value="first", description="notes"))',
      'def more(f, notes):',
      '    print(f"f={f:.2f} notes={notes}")',
      'b = w.Button(description="Press me", style=w.ButtonStyle(button_color="#a7f3d0"))',
      'out = w.Output()',
      'def on_click(_):',
      '    with out:',
      '        print("button pressed")',
      'b.on_click(on_click)',
      'display(w.VBox([w.HTML("<b>A button:</b>"), w.HBox([b, w.Label("next to a label")]), out]))',
    ].join('\n'),
  );
  await outputContains(p, 'Ada likes red size S');
  await p.selectOption('.cg-output-root select', { label: 'blue' });
  await outputContains(p, 'Ada likes blue size S');
  await p.check('.cg-output-root input[type=checkbox]');
  await outputContains(p, 'ADA LIKES BLUE SIZE S');
  await p.click('.cg-output-root .cg-w-togglebuttons button:has-text("L")');
  await outputContains(p, 'ADA LIKES BLUE SIZE L');
  await p.fill('.cg-output-root input.cg-w-text', 'Grace');
  await outputContains(p, 'GRACE LIKES BLUE SIZE L');
  await p.click('.cg-output-root button:has-text("Press me")');
  await outputContains(p, 'button pressed');
  // A float slider and a textarea.
  await outputContains(p, 'f=1.50 notes=first');
  const float = await p.waitForSelector('.cg-output-root .cg-view-floatslider input[type=range]');
  await float.focus();
  await p.keyboard.press('ArrowRight');
  await outputContains(p, 'f=1.75 notes=first');
  const readout = await p.$eval('.cg-output-root .cg-view-floatslider .cg-w-readout', (e) => e.textContent);
  expect(readout === '1.75', `float slider readout is ${readout}`);
  await p.fill('.cg-output-root textarea.cg-w-textarea', 'second try');
  await outputContains(p, 'f=1.75 notes=second try');
  // ButtonStyle(button_color=...) is applied.
  const bg = await p.$eval('.cg-output-root button:has-text("Press me")', (b) => getComputedStyle(b).backgroundColor);
  expect(bg === 'rgb(167, 243, 208)', `button_color not applied: ${bg}`);
  await shot(p, 'widgets.png', { fullPage: true });
});

// ipywidgets 7/8 (protocol 2.x) are not installed here: their messages are
// played to the client's widget manager, and what it sends back is checked.
test('widget protocol 2.x (ipywidgets 7/8 messages)', async (t) => {
  const p = await page(t);
  await p.goto(BASE);
  await p.waitForFunction(() => window.cellgate && window.cellgate._internals);
  const r = await p.evaluate(async () => {
    const { Kernel, _internals } = window.cellgate;
    const k = new Kernel('http://127.0.0.1:9/', {});
    const sent = [];
    k.send = (msg, handler) => {
      if (handler) k.handlers.set(msg.header.msg_id, handler);
      sent.push(msg);
      return msg.header.msg_id;
    };
    const wm = new _internals.WidgetManager(k);
    const host = document.createElement('div');
    host.className = 'cellgate';
    document.body.append(host);
    const area = new _internals.OutputArea(host, { kernel: k, widgets: wm });
    let n = 0;
    const recv = (type, content, { parent = {}, buffers = [], channel = 'iopub' } = {}) =>
      k._receive({ channel, header: { msg_id: `k${++n}`, msg_type: type }, parent_header: parent, metadata: type === 'comm_open' ? { version: '2.1.0' } : {}, content, buffers });
    const open = (id, state, bufferPaths = [], buffers = []) =>
      recv('comm_open', { comm_id: id, target_name: 'jupyter.widget', data: { state, buffer_paths: bufferPaths } }, { buffers });
    const ctl = { _model_module: '@jupyter-widgets/controls', _model_module_version: '2.0.0', _view_module: '@jupyter-widgets/controls' };
    open('L', { _model_name: 'LayoutModel', _model_module: '@jupyter-widgets/base', width: '321px' });
    open('SS', { ...ctl, _model_name: 'SliderStyleModel', _view_name: 'StyleView', description_width: '150px', handle_color: 'rgb(200, 0, 0)' });
    open('BS', { ...ctl, _model_name: 'ButtonStyleModel', _view_name: 'StyleView', button_color: 'rgb(0, 0, 200)', font_weight: 'bold' });
    open('S', { ...ctl, _model_name: 'IntSliderModel', _view_name: 'IntSliderView', value: 5, min: 0, max: 10, step: 1, description: 'speed', layout: 'IPY_MODEL_L', style: 'IPY_MODEL_SS', continuous_update: true, readout: true, readout_format: 'd' });
    open('BT', { ...ctl, _model_name: 'ButtonModel', _view_name: 'ButtonView', description: 'go', style: 'IPY_MODEL_BS' });
    open('D', { ...ctl, _model_name: 'DropdownModel', _view_name: 'DropdownView', _options_labels: ['a', 'b', 'c'], index: 1, description: 'pick' });
    open('O', { _model_name: 'OutputModel', _view_name: 'OutputView', _model_module: '@jupyter-widgets/output', msg_id: '', outputs: [] });
    const png = Uint8Array.from(atob('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='), (c) => c.charCodeAt(0));
    open('I', { ...ctl, _model_name: 'ImageModel', _view_name: 'ImageView', format: 'png', width: '10' }, [['value']], [new DataView(png.buffer)]);
    open('B', { ...ctl, _model_name: 'VBoxModel', _view_name: 'VBoxView', children: ['IPY_MODEL_S', 'IPY_MODEL_D', 'IPY_MODEL_I', 'IPY_MODEL_O', 'IPY_MODEL_BT'] });
    area.handle({ header: { msg_type: 'display_data' }, content: { data: { 'application/vnd.jupyter.widget-view+json': { model_id: 'B', version_major: 2, version_minor: 0 }, 'text/plain': 'VBox()' }, metadata: {} } });
    const out = {};
    const slider = host.querySelector('input[type=range]');
    out.slider = slider && slider.value;
    out.label = host.querySelector('.cg-w-label')?.textContent;
    out.width = host.querySelector('.cg-view-intslider')?.style.width;
    out.select = host.querySelector('select')?.value;
    out.image = !!host.querySelector('img.cg-image[src^="blob:"]');
    const label = host.querySelector('.cg-view-intslider .cg-w-label');
    out.labelWidth = label && getComputedStyle(label).width;
    out.handle = host.querySelector('.cg-view-intslider input[type=range]')?.style.accentColor;
    const btn = host.querySelector('.cg-view-button button');
    out.button = btn && [getComputedStyle(btn).backgroundColor, getComputedStyle(btn).fontWeight];
    // A style changed by the kernel is applied at once.
    recv('comm_msg', { comm_id: 'SS', data: { method: 'update', state: { description_width: '90px' }, buffer_paths: [] } });
    out.labelWidth2 = label && getComputedStyle(label).width;
    slider.value = '7';
    slider.dispatchEvent(new Event('input'));
    out.first = sent.at(-1).content;
    // A second move while the first is unanswered waits (throttling) ...
    slider.value = '8';
    slider.dispatchEvent(new Event('input'));
    out.sentBeforeIdle = sent.length;
    // ... and goes once the kernel is idle for the first.
    recv('status', { execution_state: 'idle' }, { parent: sent.at(-1).header });
    out.sentAfterIdle = sent.length;
    out.second = sent.at(-1).content.data;
    recv('comm_msg', { comm_id: 'S', data: { method: 'echo_update', state: { value: 8 }, buffer_paths: [] } });
    recv('comm_msg', { comm_id: 'S', data: { method: 'update', state: { value: 3 }, buffer_paths: [] } });
    out.sliderAfterKernel = slider.value;
    const sel = host.querySelector('select');
    sel.value = '2';
    sel.dispatchEvent(new Event('change'));
    out.dropdown = sent.at(-1).content.data;
    // Output widgets capture output of the request whose msg_id they hold.
    recv('comm_msg', { comm_id: 'O', data: { method: 'update', state: { msg_id: 'REQ' }, buffer_paths: [] } });
    recv('stream', { name: 'stdout', text: 'captured!' }, { parent: { msg_id: 'REQ' } });
    out.captured = host.querySelector('.cg-w-output')?.innerText;
    recv('comm_msg', { comm_id: 'O', data: { method: 'update', state: { msg_id: '' }, buffer_paths: [] } });
    recv('comm_close', { comm_id: 'D' });
    out.selectAfterClose = !!host.querySelector('select');
    out.modelAfterClose = wm.models.has('D');
    out.openCount = wm.openCount;
    return out;
  });
  const j = JSON.stringify(r);
  expect(r.slider === '5' && r.label === 'speed' && r.width === '321px', `initial view wrong: ${j}`);
  expect(r.select === '1', `dropdown index not shown: ${j}`);
  expect(r.image, `binary Image buffer not shown: ${j}`);
  expect(r.first.comm_id === 'S' && r.first.data.method === 'update' && r.first.data.state.value === 7, `slider sent ${JSON.stringify(r.first)}`);
  expect(r.sentAfterIdle === r.sentBeforeIdle + 1 && r.second.state.value === 8, `throttling wrong: ${j}`);
  expect(r.sliderAfterKernel === '3', `kernel update not shown: ${j}`);
  expect(r.dropdown.method === 'update' && r.dropdown.state.index === 2, `dropdown sent ${JSON.stringify(r.dropdown)}`);
  expect(r.captured === 'captured!', `Output widget did not capture: ${j}`);
  expect(!r.selectAfterClose, 'comm_close did not remove the view');
  expect(!r.modelAfterClose, `comm_close left the model in the manager: ${j}`);
  expect(r.labelWidth === '150px' && r.labelWidth2 === '90px', `description_width not applied: ${j}`);
  expect(r.handle === 'rgb(200, 0, 0)', `handle_color not applied: ${j}`);
  expect(r.button && r.button[0] === 'rgb(0, 0, 200)' && r.button[1] === '700', `button style not applied: ${j}`);
});

test('input() prompt answered', async (t) => {
  const p = await page(t);
  await demo(p, 'name = input("Your name? ")\nprint("Hello,", name)');
  const field = await p.waitForSelector('.cg-output-root input.cg-input-field');
  await outputContains(p, 'Your name?');
  await field.type('Ada');
  await field.press('Enter');
  await outputContains(p, 'Hello, Ada');
  await waitDone(p);
});

test('interrupt stops while True', async (t) => {
  const p = await page(t);
  await demo(p, 'print("looping", flush=True)\nwhile True:\n    pass');
  await outputContains(p, 'looping');
  const stop = await p.waitForSelector('.cg-stop:visible');
  expect((await cellState(p)).state === 'busy', 'cell is not busy while looping');
  await stop.click();
  await outputContains(p, 'KeyboardInterrupt');
  await waitDone(p);
  expect((await cellState(p)).state === 'idle', 'cell did not become idle after the interrupt');
  expect(!(await p.isVisible('.cg-stop')), 'stop button still visible');
});

test('session ended shows a restart button', async (t) => {
  const p = await page(t);
  await demo(p, 'from ipywidgets import interact\ninteract(lambda k=2: print("k is", k), k=(0, 5))');
  await outputContains(p, 'k is 2');
  // The server ends the session (as an idle timeout would).
  await p.evaluate(async () => {
    const k = window.demoCell.kernel;
    await fetch(`${k.server}kernel/${k.id}`, { method: 'DELETE' });
  });
  await p.waitForSelector('.cg-banner:visible');
  const st = await cellState(p);
  expect(st.state === 'ended', `state is ${st.state}, want ended`);
  const banner = await p.$eval('.cg-banner', (e) => e.innerText);
  expect(/Session ended/.test(banner), `banner says ${banner}`);
  expect(await p.$eval('.cg-output-root input[type=range]', (i) => i.disabled), 'slider still enabled after the session ended');
  await p.click('.cg-restart');
  await outputContains(p, 'k is 2');
  await p.waitForFunction(() => document.querySelector('.cg-cell').dataset.state !== 'ended');
  expect(!(await p.isVisible('.cg-banner')), 'banner still visible after restart');
});

test('cell embedded in a page on another origin', async (t) => {
  const p = await page(t);
  await p.goto(`${OTHER}embed.html`);
  await outputContains(p, '42', { root: '#c1 .cg-output-root' });
  const origin = await p.evaluate(() => location.origin);
  expect(!BASE.startsWith(origin), 'the embedding page is on the same origin');
  // Linked cells share one kernel.
  await p.evaluate(() => window.many[0].setCode('x = 1\nprint("first")'));
  await p.evaluate(() => window.many[1].setCode('print("second", "x" in dir())'));
  await p.locator('.many').nth(0).locator('.cg-eval').click();
  await p.waitForFunction(() => window.many[0].output.root.innerText.includes('first') && window.many[0].root.dataset.done);
  await p.locator('.many').nth(1).locator('.cg-eval').click();
  await p.waitForFunction(() => window.many[1].output.root.innerText.includes('second True'));
  const same = await p.evaluate(() => window.many[0].kernel.id === window.many[1].kernel.id);
  expect(same, 'linked cells do not share a kernel');
  // KaTeX fonts load cross-origin.
  const sheets = await p.evaluate(() => [...document.styleSheets].filter((s) => (s.href || '').includes('/static/embed.css')).length);
  expect(sheets === 1, `embed.css was loaded ${sheets} times`);
});

test('credentialed requests from another origin are answered', async (t) => {
  // As the Sage cell's front end makes them: credentials included, which
  // browsers refuse unless the answer names the page's origin and allows them.
  const p = await page(t);
  await p.goto(`${OTHER}embed.html`);
  const r = await p.evaluate(async (base) => {
    const out = {};
    const opts = { credentials: 'include' };
    try {
      out.specs = (await (await fetch(`${base}kernelspecs`, opts)).json()).kernels.length;
      out.tos = (await fetch(`${base}tos.html`, { ...opts, method: 'POST' })).status;
      const form = new URLSearchParams({ code: 'print(1)', language: 'python3' });
      out.permalink = (await (await fetch(`${base}permalink`, { ...opts, method: 'POST', body: form })).json()).query;
      out.css = (await fetch(`${base}static/sagecell_embed.css`, opts)).status;
      // A kernel, by XMLHttpRequest withCredentials as the Sage cell asks for it.
      const kernel = await new Promise((resolve, reject) => {
        const x = new XMLHttpRequest();
        x.open('POST', `${base}kernel`);
        x.withCredentials = true;
        x.onload = () => resolve({ status: x.status, id: JSON.parse(x.responseText).id, header: x.getResponseHeader('Jupyter-Kernel-ID') });
        x.onerror = () => reject(new Error('XMLHttpRequest refused'));
        x.send(new URLSearchParams({ timeout: '0', accepted_tos: 'true' }));
      });
      out.kernel = kernel.status === 200 && kernel.id && kernel.header === kernel.id;
      out.deleted = (await fetch(`${base}kernel/${kernel.id}`, { ...opts, method: 'DELETE' })).status;
    } catch (err) {
      out.error = err.message;
    }
    return out;
  }, BASE);
  const j = JSON.stringify(r);
  expect(!r.error, `a credentialed request was refused: ${j}`);
  expect(r.specs > 0 && r.tos === 204 && r.permalink && r.css === 200 && r.kernel && r.deleted === 204, `answers: ${j}`);
});

test('embedded_sagecell.js makeSagecell alias', async (t) => {
  const p = await page(t);
  await p.goto(`${OTHER}sagecell.html`);
  await outputContains(p, 'via makeSagecell');
  const btn = await p.$eval('.cg-eval', (b) => b.textContent);
  expect(btn === 'Run', `evalButtonText not applied: ${btn}`);
  // cellgate's own options pass through makeSagecell.
  const r = await p.evaluate(async () => {
    const got = {};
    const d = document.createElement('div');
    document.body.append(d);
    const cell = sagecell.makeSagecell({
      inputLocation: d,
      code: '',
      kernel: 'python3',
      placeholder: 'Type Python here',
      sharePage: 'https://book.example/ch1.html?sec=2#cell',
      onShare: (s) => (got.share = s.links),
      onLanguage: (k) => (got.language = k),
      hide: ['files'],
    });
    await cell.ready;
    got.kernel = cell.kernelName;
    got.placeholder = d.querySelector('.cm-placeholder')?.textContent;
    got.hideFiles = cell.output.ctx.hideFiles;
    cell.languageSelect.dispatchEvent(new Event('change'));
    cell.setCode('print(1)');
    await cell.share();
    const bad = document.createElement('div');
    document.body.append(bad);
    const broken = sagecell.makeSagecell({ inputLocation: bad, code: '1', server: 'http://127.0.0.1:9/', onError: (e) => (got.error = e.message) });
    await broken.evaluate();
    return got;
  });
  const j = JSON.stringify(r);
  expect(r.kernel === 'python3', `kernel option dropped: ${j}`);
  expect(r.placeholder === 'Type Python here', `placeholder dropped: ${j}`);
  expect(r.hideFiles === true, `hide: ['files'] dropped: ${j}`);
  expect(r.language === 'python3', `onLanguage not called: ${j}`);
  expect(Array.isArray(r.share) && r.share.length >= 1, `onShare not called: ${j}`);
  for (const link of r.share) {
    expect(/^https:\/\/book\.example\/ch1\.html\?sec=2&(q|z)=[\w=-]+(&lang=python3)?#cell$/.test(link), `share link on a sharePage with a query: ${link}`);
  }
  expect(r.error && /reach/.test(r.error), `onError not called: ${j}`);
});

test('makeSagecell in <head>, before the elements exist', async (t) => {
  const p = await page(t);
  await p.goto(`${OTHER}sagehead.html`);
  await outputContains(p, 'made in head 42', { root: '#mycell .cg-output-root' });
  const early = await p.evaluate(async () => {
    const cell = await window.early.ready;
    return { made: window.early.made, same: cell === window.early.cell, code: window.early.code };
  });
  expect(early.made && early.same, `makeSagecell's answer does not stand for the cell: ${JSON.stringify(early)}`);
  expect(early.code === 'print("made in head", 6 * 7)', `code is ${JSON.stringify(early.code)}`);
  // Linked cells made in <head> share their kernel.
  await p.locator('.linked').nth(0).locator('.cg-eval').click();
  await waitDone(p, '.linked .cg-cell');
  await p.locator('.linked').nth(1).locator('.cg-eval').click();
  await outputContains(p, 'linked sees 5', { root: '.linked .cg-output-root' });
  // The Sage cell's old names.
  const old = await p.evaluate(() => ({
    alias: window.singlecell === window.sagecell && sagecell.makeSinglecell === sagecell.makeSagecell,
    button: document.querySelector('#old .cg-eval')?.textContent,
  }));
  expect(old.alias, 'singlecell.makeSinglecell is not makeSagecell');
  expect(old.button === 'Go', `the singlecell's button says ${old.button}`);
  // The page links sagecell_embed.css: it styles the cells and the script adds no second sheet.
  const css = await p.evaluate(() => ({
    links: [...document.querySelectorAll('link[rel=stylesheet]')].map((l) => l.href).filter((h) => /\/static\/(embed|sagecell_embed|sagecell)\.css/.test(h)),
    radius: getComputedStyle(document.querySelector('#mycell .cg-editor')).borderTopLeftRadius,
  }));
  expect(css.links.length === 1 && css.links[0].includes('sagecell_embed.css'), `stylesheets: ${JSON.stringify(css.links)}`);
  expect(css.radius === '6px', `the cell is not styled by sagecell_embed.css: ${JSON.stringify(css)}`);
});

test('jQuery ready, a page\'s own jQuery, and the Sage cell helpers', async (t) => {
  const p = await page(t);
  await p.goto(`${OTHER}jquery.html`);
  await outputContains(p, 'jQuery ready', { root: '#jq .cg-output-root' });
  const jq = await p.evaluate(() => ({ ran: window.readyRan, version: window.jQuery?.fn?.jquery, same: window.$ === window.jQuery }));
  expect(jq.ran && jq.version === '3.7.1' && jq.same, `jQuery global: ${JSON.stringify(jq)}`);
  expect(await p.$eval('#spin', (i) => i.complete && i.naturalWidth === 24), '/static/spinner.gif did not load');
  // deleteSagecell ends the cell's kernel and removes its elements.
  const del = await p.evaluate(async () => {
    const cell = sagecell.makeSagecell({ inputLocation: '#gone', languages: ['python'] });
    await cell.ready;
    await cell.evaluate();
    await new Promise((r) => { const t = setInterval(() => { if (cell.root.dataset.done) { clearInterval(t); r(); } }, 50); });
    sagecell.deleteSagecell(cell);
    return { gone: !document.getElementById('gone') && !document.querySelector('[data-cell="' + cell.id + '"]'), ended: cell.kernel === null || cell.kernel.ended };
  });
  expect(del.gone, 'deleteSagecell left the cell in the page');
  expect(del.ended, 'deleteSagecell left the kernel running');
  // moveInputForm takes the form out of the page; restoreInputForm puts it back, working.
  const moved = await p.evaluate(() => {
    window.form = sagecell.makeSagecell({ inputLocation: '#form', languages: ['python'] });
    sagecell.moveInputForm(window.form);
    const holder = document.getElementById('sagecell_moved');
    const r = { emptied: document.getElementById('form').children.length === 0, held: !!holder?.querySelector('.cg-cell'), hidden: holder && getComputedStyle(holder).display === 'none' };
    sagecell.restoreInputForm(window.form);
    r.back = !!document.querySelector('#form .cg-cell') && !document.getElementById('sagecell_moved');
    return r;
  });
  expect(moved.emptied && moved.held && moved.hidden && moved.back, `moveInputForm/restoreInputForm: ${JSON.stringify(moved)}`);
  await p.locator('#form .cg-eval').click();
  await outputContains(p, 'moved and back', { root: '#form .cg-output-root' });
  // A page that has its own jQuery keeps it.
  const p2 = await page(t);
  await p2.goto(`${OTHER}ownjquery.html`);
  await outputContains(p2, 'own jQuery kept');
  expect(await p2.evaluate(() => window.jQuery.pagesOwn === true && window.$ === window.jQuery), "the page's own jQuery was replaced");
  // embed.js defines no jQuery.
  const p3 = await page(t);
  await p3.goto(`${OTHER}embed.html`);
  await p3.waitForFunction(() => window.cellgate && window.many);
  expect(await p3.evaluate(() => typeof window.jQuery === 'undefined' && typeof window.$ === 'undefined' && typeof window.sagecell === 'undefined'), 'embed.js defines jQuery or sagecell');
});

test("the Sage cell's languages: gp and html run through Sage, octave says it is not installed", async (t) => {
  if (!KERNELS.includes('sagemath')) throw new Skip('the sagemath kernel is not installed');
  const specs = await (await fetch(`${BASE}kernelspecs`)).json();
  const runs = specs.sage_languages || [];
  for (const l of ['gp', 'html']) if (!runs.includes(l)) throw new Skip(`this server does not run ${l} (sage_languages: ${runs.join(', ')})`);
  const sage = specs.kernels.find((k) => k.language === 'sage');
  const p = await page(t);
  const asked = [];
  p.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname === '/kernel') asked.push(new URLSearchParams(r.postData() || '').get('kernel_name'));
  });
  await p.goto(`${OTHER}languages.html`);
  await outputContains(p, '1267650600228229401496703205376', { root: '#gp .cg-output-root', timeout: 150000 });
  await p.waitForSelector('#html .cg-output-root b', { timeout: 150000 });
  await waitDone(p, '#gp .cg-cell');
  await waitDone(p, '#html .cg-cell');
  const r = await p.evaluate(() => {
    const cell = (id) => document.querySelector(`#${id} .cg-cell`);
    const picker = (id) => [...cell(id).querySelectorAll('.cg-language option')].map((o) => [o.value, o.textContent]);
    return {
      gp: { out: cell('gp').querySelector('.cg-output-root').innerText.trim(), language: cell('gp').dataset.language, picker: picker('gp'), shown: !cell('gp').querySelector('.cg-language').hidden },
      html: { bold: [...cell('html').querySelectorAll('.cg-output-root b')].map((b) => b.innerText), text: cell('html').querySelector('.cg-output-root').innerText.trim(), language: cell('html').dataset.language },
      permalink: window.cells.gp.cell.permalink,
    };
  });
  const j = JSON.stringify(r);
  expect(r.gp.out === '1267650600228229401496703205376', `gp output: ${j}`);
  expect(r.gp.language === 'gp' && r.html.language === 'html', `languages: ${j}`);
  expect(r.html.bold.length === 1 && r.html.bold[0] === 'hi' && r.html.text === 'hi', `html output: ${j}`);
  // The picker: the page's languages, in its order, by the Sage cell's names.
  expect(JSON.stringify(r.gp.picker) === JSON.stringify([[sage.name, sage.display_name], ['gp', 'PARI/GP'], ['html', 'HTML']]) && r.gp.shown, `picker: ${j}`);
  // The octave cell shows the server's own answer: its program is not installed.
  if (!runs.includes('octave')) {
    await outputContains(p, 'not installed', { root: '#octave .cg-output-root' });
    const o = await p.$eval('#octave .cg-cell', (c) => ({ out: c.querySelector('.cg-output-root').innerText, state: c.dataset.state, option: c.querySelector('.cg-language option[value=octave]')?.textContent }));
    expect(/octave-cli, which is not installed/.test(o.out) && o.state === 'idle', `octave: ${JSON.stringify(o)}`);
    expect(o.option === 'Octave (not on this server)', `octave's picker entry: ${JSON.stringify(o)}`);
  } else {
    t.log.push('octave is installed here: its "not installed" answer is not checked');
  }
  // Each cell asked for its language by name: nothing was run as Sage.
  expect(asked.filter((k) => k === 'gp').length === 1 && asked.filter((k) => k === 'html').length === 1 && asked.every((k) => ['gp', 'html', 'octave'].includes(k)), `POST /kernel asked for ${JSON.stringify(asked)}`);
  // Share keeps the language: the evaluation's own permalink, stored as gp,
  // and the ?z= link says lang=gp.
  expect(r.permalink && r.permalink.id, `the gp evaluation has no permalink: ${j}`);
  await p.click('#gp .cg-share');
  await p.waitForSelector('#gp .cg-link-q');
  const links = await p.$eval('#gp', (c) => ({ q: c.querySelector('.cg-link-q').value, z: c.querySelector('.cg-link-z').value }));
  expect(new URL(links.q).searchParams.get('q') === r.permalink.id, `Share made a new permalink rather than the evaluation's: ${JSON.stringify(links)} ${j}`);
  expect(new URL(links.z).searchParams.get('lang') === 'gp', `?z= link: ${links.z}`);
  const stored = await (await fetch(`${BASE}permalink/${r.permalink.id}`)).json();
  expect(stored.code === '2^100' && stored.language === 'gp', `GET /permalink/ID: ${JSON.stringify(stored).slice(0, 300)}`);
  // The permalink and the ?z= link open in gp on the demo page.
  let result = false;
  for (let i = 0; i < 40 && !result; i++) {
    result = (await fetch(`${BASE}permalink/${r.permalink.id}/outputs`)).ok;
    if (!result) await new Promise((res) => setTimeout(res, 250));
  }
  expect(result, `GET /permalink/${r.permalink.id}/outputs never answered a result`);
  const p2 = await page(t);
  await p2.goto(`${BASE}?q=${r.permalink.id}`);
  await p2.waitForSelector('.cg-cell[data-stored="true"] .cg-stored-note');
  const q = await p2.$eval('.cg-cell', (c) => ({ language: c.dataset.language, picked: c.querySelector('.cg-language').value, out: c.querySelector('.cg-output-root').innerText }));
  expect(q.language === 'gp' && q.picked === 'gp' && q.out.includes('1267650600228229401496703205376'), `?q= of the gp permalink: ${JSON.stringify(q)}`);
  await p2.goto(`${links.z.replace(/^.*?\?/, `${BASE}?`)}&autoeval=0`);
  await p2.waitForFunction(() => window.demoCell && document.querySelector('.cg-language option'));
  await p2.evaluate(() => window.demoCell.ready);
  const z = await p2.evaluate(() => ({ language: window.demoCell.kernelName, code: window.demoCell.code }));
  expect(z.language === 'gp' && z.code === '2^100', `?z=&lang=gp: ${JSON.stringify(z)}`);
  await shot(p, 'sagecell-languages.png', { fullPage: true });
}, { timeout: 240000 });

test('sockjs-client in the browser: the Sage cell\'s transport on websocket and xhr-polling', async (t) => {
  for (const transport of ['websocket', 'xhr-polling']) {
    const p = await page(t);
    const sockets = [];
    const polls = [];
    p.on('websocket', (ws) => sockets.push(new URL(ws.url()).pathname));
    p.on('request', (r) => {
      if (/\/sockjs\/[^/]+\/[^/]+\/xhr(_send)?$/.test(new URL(r.url()).pathname)) polls.push(new URL(r.url()).pathname.split('/').pop());
    });
    await p.goto(`${OTHER}sockjs.html?transport=${transport}`);
    await p.waitForFunction(() => document.body.dataset.done, null, { timeout: 60000 });
    const r = await p.evaluate(() => ({ done: document.body.dataset.done, state: document.getElementById('state').textContent, transport: document.body.dataset.transport, shown: document.getElementById('transport').textContent, out: document.getElementById('out').textContent, status: document.body.dataset.status }));
    const j = JSON.stringify({ transport, ...r, sockets, polls });
    expect(r.done === 'ok' && r.status === 'ok', `the execution over ${transport}: ${j}`);
    expect(r.out === 'over sockjs 42\nline 0\nline 1\nline 2\n', `stdout over ${transport}: ${j}`);
    expect(r.transport === transport && r.shown === transport, `sockjs-client used ${r.transport}, asked for ${transport}: ${j}`);
    if (transport === 'websocket') {
      expect(sockets.length === 1 && /^\/sockjs\/[^/]+\/[^/]+\/websocket$/.test(sockets[0]) && polls.length === 0, `websocket transport's traffic: ${j}`);
    } else {
      expect(sockets.length === 0 && polls.includes('xhr') && polls.includes('xhr_send'), `xhr-polling transport's traffic: ${j}`);
    }
  }
});

test('eight autoeval Sage cells on one page all evaluate', async (t) => {
  if (!CAPPED) throw new Skip('the sagemath kernel is not installed');
  // Every status the cells show is kept, to see that they said they were waiting.
  const p = await page(t, {
    init: () => {
      window.statuses = [];
      new MutationObserver(() => {
        for (const s of document.querySelectorAll('.cg-status-text')) if (s.textContent && !window.statuses.includes(s.textContent)) window.statuses.push(s.textContent);
      }).observe(document, { subtree: true, childList: true, characterData: true });
    },
  });
  await p.goto(`${OTHER}eight.html`);
  await p.waitForFunction(
    () => {
      const cells = [...document.querySelectorAll('div.sage')];
      return cells.length === 8 && cells.every((c, i) => c.querySelector('.cg-output-root')?.innerText.includes(`cell ${i + 1}:`) && c.querySelector('.cg-cell').dataset.done);
    },
    null,
    { timeout: 280000, polling: 500 },
  );
  const r = await p.evaluate(() => ({
    waited: [...document.querySelectorAll('.cg-cell')].filter((c) => Number(c.dataset.waited) > 0).length,
    said: window.statuses.filter((s) => /waiting for a kernel/.test(s)),
    problems: [...document.querySelectorAll('.cg-output-root')].map((o) => o.innerText).filter((x) => /Could not start/.test(x)),
  }));
  expect(r.waited > 0, 'no cell had to wait: the test did not reach the server at capacity');
  expect(r.said.length > 0, `no cell said it was waiting: ${JSON.stringify(r)}`);
  expect(r.problems.length === 0, `cells gave up: ${JSON.stringify(r.problems)}`);
  // Each cell shows its own result: cell 1 is 1025 = 5^2 * 41.
  const first = await p.$eval('div.sage .cg-output-root', (e) => e.innerText);
  expect(first.includes('5^2 * 41'), `cell 1 shows ${JSON.stringify(first)}`);
}, { timeout: 300000 });

test('websocket blocked falls back to long-polling', async (t) => {
  // The page is served through a proxy that refuses websocket upgrades.
  const p = await page(t);
  const sockets = [];
  p.on('websocket', (ws) => sockets.push(ws.url()));
  // Some POSTs of messages fail, as on a flaky network: the client keeps
  // what it could not send and sends it again.
  let failPosts = 0;
  let failed = 0;
  await p.route(/\/kernel\/[^/]+\/poll\?/, (route) => {
    if (route.request().method() === 'POST' && failPosts > 0) {
      failPosts--;
      failed++;
      return route.abort('connectionreset');
    }
    return route.continue();
  });
  await demo(p, 'for i in range(3):\n    print("line", i)\nname = input("who? ")\nprint("hi", name)', { base: BLOCKED });
  const field = await p.waitForSelector('.cg-output-root input.cg-input-field');
  const st = await cellState(p);
  expect(st.transport === 'polling', `transport is ${st.transport}, want polling`);
  expect(sockets.length >= 1 && sockets.every((u) => u.startsWith(BLOCKED.replace(/^http/, 'ws'))), `websockets tried: ${JSON.stringify(sockets)}`);
  failPosts = 3;
  await field.type('poller');
  await field.press('Enter');
  await outputContains(p, 'hi poller');
  expect(failed === 3, `${failed} POSTs failed, want 3`);
  const text = await p.$eval('.cg-output-root', (e) => e.innerText);
  expect((text.match(/line 1/g) || []).length === 1, `messages lost or repeated: ${JSON.stringify(text)}`);
  expect((text.match(/hi poller/g) || []).length === 1, `input_reply repeated: ${JSON.stringify(text)}`);
  // Interacts work over polling too.
  await p.evaluate(() => window.demoCell.setCode('from ipywidgets import interact\ninteract(lambda v=1: print("v =", v), v=(0, 9))'));
  await p.click('.cg-eval');
  await outputContains(p, 'v = 1');
  const slider = await p.waitForSelector('.cg-output-root input[type=range]');
  await slider.focus();
  await p.keyboard.press('ArrowRight');
  await outputContains(p, 'v = 2');
  expect((await cellState(p)).transport === 'polling', 'the interact did not run over polling');
});

test('messages sent while the websocket reconnects are delivered', async (t) => {
  // A linked cell: its session outlives a dropped connection. (A one-shot
  // session ends as soon as no client is attached and it is idle.)
  const p = await page(t);
  await p.goto(BASE);
  await p.waitForFunction(() => window.cellgate && window.demoCell);
  await p.evaluate(() => {
    const d = document.createElement('div');
    d.id = 'linked';
    d.textContent = 'from ipywidgets import interact\ninteract(lambda v=1: print("v is", v), v=(0, 9))';
    document.querySelector('main').prepend(d);
    window.linkedCell = cellgate.makeCell({ inputLocation: d, linked: true, linkKey: 'reconnect-test' });
    window.linkedCell.evaluate();
  });
  const root = '#linked .cg-output-root';
  await outputContains(p, 'v is 1', { root });
  const slider = await p.waitForSelector(`${root} input[type=range]`);
  await slider.focus();
  // Drop the connection and move the slider before it is back.
  const state = await p.evaluate(async () => {
    const k = window.linkedCell.kernel;
    const closed = new Promise((r) => k._ws.addEventListener('close', r));
    k._ws.close();
    await closed;
    return { transport: window.linkedCell.root.dataset.transport, ws: k._ws };
  });
  expect(state.transport === 'reconnecting' && state.ws === null, `while reconnecting: ${JSON.stringify(state)}`);
  await p.keyboard.press('ArrowRight');
  await outputContains(p, 'v is 2', { root });
  expect((await cellState(p, '#linked .cg-cell')).transport === 'websocket', 'did not reconnect by websocket');
  // An input() answer too.
  await p.evaluate(() => {
    window.linkedCell.setCode('print("Hello,", input("name? "))');
    window.linkedCell.evaluate();
  });
  const field = await p.waitForSelector(`${root} input.cg-input-field`);
  await p.evaluate(() => window.linkedCell.kernel._ws.close());
  await field.type('Grace');
  await field.press('Enter');
  await outputContains(p, 'Hello, Grace', { root });
  const text = await p.$eval(root, (e) => e.innerText);
  expect((text.match(/Hello, Grace/g) || []).length === 1, `output repeated: ${JSON.stringify(text)}`);
  await p.evaluate(() => window.linkedCell.kernel.shutdown());
});

test('dropped websocket resumes with nothing lost or repeated', async (t) => {
  const p = await page(t);
  await demo(p, 'import time\nfor i in range(40):\n    print(f"n{i}.", flush=True)\n    time.sleep(0.03)\nprint("end")');
  await outputContains(p, 'n5.');
  // Drop the connection as a flaky network would.
  await p.evaluate(() => window.demoCell.kernel._ws.close());
  await outputContains(p, 'end');
  const text = await p.$eval('.cg-output-root', (e) => e.innerText);
  for (let i = 0; i < 40; i++) {
    const n = text.split(`n${i}.`).length - 1;
    expect(n === 1, `line n${i} appears ${n} times`);
  }
  expect((await cellState(p)).transport === 'websocket', 'did not reconnect by websocket');
});

test('sage @interact', async (t) => {
  if (!KERNELS.includes('sagemath')) throw new Skip('the sagemath kernel is not installed');
  const p = await page(t);
  await demo(p, '@interact\ndef f(n=slider(1, 10, 1, 3)):\n    print("n^2 =", n^2)\n    show(n/2)', { kernel: 'sagemath' });
  await outputContains(p, 'n^2 = 9', { timeout: 40000 });
  const slider = await p.waitForSelector('.cg-output-root input[type=range]');
  await slider.focus();
  await p.keyboard.press('ArrowRight');
  await outputContains(p, 'n^2 = 16');
  await p.waitForSelector('.cg-output-root .katex', { timeout: 10000 }).catch(() => {
    throw new Error('Sage show() math was not typeset');
  });
  await shot(p, 'sage-interact.png', { fullPage: true });
});

test('share: ?z= link round trip', async (t) => {
  const p = await page(t);
  await demo(p, 'print("shared", 3*5)', { evaluate: false });
  await p.click('.cg-share');
  const z = await p.waitForSelector('.cg-share-panel input.cg-link-z');
  const url = await z.inputValue();
  expect(url.startsWith(BASE) && url.includes('?z='), `bad ?z= link ${url}`);
  const p2 = await page(t);
  await p2.goto(url);
  await outputContains(p2, 'shared 15');
  const code = await p2.evaluate(() => window.demoCell.code);
  expect(code === 'print("shared", 3*5)', `code loaded from ?z= is ${JSON.stringify(code)}`);
  const p3 = await page(t);
  await p3.goto(`${BASE}?c=${encodeURIComponent('print(7*6)')}&autoeval=0`);
  await p3.waitForFunction(() => window.demoCell && window.demoCell.code === 'print(7*6)');
  expect((await cellState(p3)).done === undefined, 'autoeval=0 evaluated');
});

test('permalink round trip through ?q=', async (t) => {
  const p = await page(t);
  await demo(p, 'print("permalinked", 2**10)', { evaluate: false });
  await p.click('.cg-share');
  const q = await p.waitForSelector('.cg-share-panel input.cg-link-q', { timeout: 10000 });
  const url = await q.inputValue();
  expect(/\?q=[\w-]+/.test(url), `bad ?q= link ${url}`);
  const p2 = await page(t);
  await p2.goto(url);
  await outputContains(p2, 'permalinked 1024');
});

test('a permalink restores the state of its interacts (?q= and ?z=&interacts=)', async (t) => {
  const p = await page(t);
  await p.goto(BASE);
  // Code of its own: permalinks are named by their content, and the same
  // cell shared by another test (Share sends its session) has a stored
  // result, which ?q= would show instead of running the code.
  const code = ['# restored from the permalink', 'from ipywidgets import interact', '@interact(x=(0, 10))', 'def square(x=3):', '    print("x squared is", x * x)'].join('\n');
  // A cell saved with x = 7, as the Sage cell's front end and cellgate's Share save it.
  const made = await p.evaluate(async (code) => {
    const body = new URLSearchParams({ code, language: 'python3', interacts: JSON.stringify([{ state: { x: 7 }, bookmarks: [] }]) });
    const r = await fetch('permalink', { method: 'POST', body });
    return r.json();
  }, code);
  expect(made.query && made.zip && made.interacts && made.n === undefined, `POST /permalink answered ${JSON.stringify(made)}`);
  const links = [`${BASE}?q=${made.query}`, `${BASE}?z=${made.zip}&lang=python3&interacts=${made.interacts}`];
  for (const link of links) {
    const q = await page(t);
    await q.goto(link);
    await outputContains(q, 'x squared is 49');
    await q.waitForFunction(() => document.querySelector('.cg-cell').dataset.restored === 'true');
    const value = await q.$eval('.cg-output-root input[type=range]', (i) => i.value);
    expect(value === '7', `${link}: the slider shows ${value}, want 7`);
    const text = await q.$eval('.cg-output-root', (e) => e.innerText);
    expect(!text.includes('x squared is 9'), `${link}: the default's output was left: ${JSON.stringify(text)}`);
  }
  // A Sage @interact saved with x = 7 shows 7, not its default 1.
  if (!KERNELS.includes('sagemath')) return;
  const sage = await p.evaluate(async () => {
    const code = '@interact\ndef f(x=slider(1, 10, 1, 1)):\n    print("x is", x)';
    const body = new URLSearchParams({ code, language: 'sagemath', interacts: JSON.stringify([{ state: { x: 7 }, bookmarks: [] }]) });
    return (await fetch('permalink', { method: 'POST', body })).json();
  });
  const s = await page(t);
  await s.goto(`${BASE}?q=${sage.query}`);
  await outputContains(s, 'x is 7', { timeout: 45000 });
  await s.waitForFunction(() => document.querySelector('.cg-cell').dataset.restored === 'true');
});

test('file written by the kernel is a link with the same bytes', async (t) => {
  const p = await page(t);
  await demo(
    p,
    [
      'data = bytes(range(256)) * 4',
      'open("bytes.bin", "wb").write(data)',
      'import matplotlib.pyplot as plt',
      'plt.plot([1, 2]); plt.savefig("fig.png")',
      'print("wrote files")',
    ].join('\n'),
  );
  await outputContains(p, 'wrote files');
  const link = await p.waitForSelector('.cg-files a:has-text("bytes.bin")', { timeout: 20000 });
  const [download] = await Promise.all([p.waitForEvent('download'), link.click()]);
  expect(download.suggestedFilename() === 'bytes.bin', `downloaded as ${download.suggestedFilename()}`);
  const failure = await download.failure();
  expect(!failure, `download failed: ${failure}`);
  const got = readFileSync(await download.path());
  const want = Buffer.alloc(1024, 0).map((_, i) => i % 256);
  expect(got.equals(want), `downloaded ${got.length} bytes that differ from the ${want.length} written`);
  await p.waitForSelector('.cg-files img[src]');
  // hide: ['files'] leaves the list out.
  await p.evaluate(() => {
    const d = document.createElement('div');
    d.id = 'nofiles';
    d.textContent = 'open("quiet.txt", "w").write("x"); print("no list")';
    document.querySelector('main').append(d);
    window.nofilesSeen = [];
    cellgate.makeCell({ inputLocation: d, hide: ['files'], onOutput: (m) => window.nofilesSeen.push(m.header.msg_type) }).evaluate();
  });
  await outputContains(p, 'no list', { root: '#nofiles .cg-output-root' });
  await p.waitForFunction(() => window.nofilesSeen.includes('cellgate.files'), null, { timeout: 20000 });
  expect(!(await p.$('#nofiles .cg-files')), "hide: ['files'] still shows the file list");
});

test('stderr and an error traceback', async (t) => {
  const p = await page(t);
  await demo(
    p,
    ['import sys', 'print("to stdout", flush=True)', 'print("to stderr", file=sys.stderr, flush=True)', 'def inner(x):', '    return 1 / x', 'def outer():', '    return inner(0)', 'outer()'].join('\n'),
  );
  await waitDone(p);
  await outputContains(p, 'ZeroDivisionError');
  const r = await p.evaluate(() => {
    const root = document.querySelector('.cg-output-root');
    const err = root.querySelector('pre.cg-error');
    return {
      stdout: [...root.querySelectorAll('pre.cg-stdout')].map((e) => e.innerText).join('|'),
      stderr: [...root.querySelectorAll('pre.cg-stderr')].map((e) => e.innerText).join('|'),
      stderrColor: root.querySelector('pre.cg-stderr') && getComputedStyle(root.querySelector('pre.cg-stderr')).color,
      stdoutColor: root.querySelector('pre.cg-stdout') && getComputedStyle(root.querySelector('pre.cg-stdout')).color,
      error: err ? err.innerText : '',
      rawEscapes: /\x1b\[|\[0;3\dm/.test(root.innerText),
      coloured: err ? err.querySelectorAll('span[class*="cg-ansi-"]').length : 0,
      state: document.querySelector('.cg-cell').dataset.state,
    };
  });
  const j = JSON.stringify(r);
  expect(r.stdout.includes('to stdout') && !r.stdout.includes('to stderr'), `stdout block: ${j}`);
  expect(r.stderr.includes('to stderr') && !r.stderr.includes('to stdout'), `stderr block: ${j}`);
  expect(r.stderrColor !== r.stdoutColor, `stderr looks like stdout: ${j}`);
  expect(/Traceback|ZeroDivisionError/.test(r.error) && r.error.includes('inner') && r.error.includes('outer') && r.error.includes('division by zero'), `traceback: ${j}`);
  expect(!r.rawEscapes && r.coloured > 0, `ANSI colours of the traceback not rendered: ${j}`);
  expect(r.state === 'idle' && !(await p.isVisible('.cg-stop')), `cell not idle after an error: ${j}`);
});

test('clear_output(wait=True) keeps the output until the next one', async (t) => {
  const p = await page(t);
  await demo(
    p,
    ['import time', 'from IPython.display import clear_output', 'print("before", flush=True)', 'time.sleep(0.3)', 'clear_output(wait=True)', 'time.sleep(1.0)', 'print("after")', 'clear_output()', 'print("final")'].join('\n'),
    { evaluate: false },
  );
  await p.evaluate(() => {
    window.atClear = [];
    window.demoCell.callbacks.onOutput = (msg, cell) => {
      if (msg.header.msg_type === 'clear_output') window.atClear.push([msg.content.wait, cell.output.root.innerText.trim()]);
      if (msg.header.msg_type === 'stream') window.atClear.push(['stream', cell.output.root.innerText.trim()]);
    };
  });
  await p.click('.cg-eval');
  await waitDone(p);
  const seen = await p.evaluate(() => window.atClear);
  const text = await p.$eval('.cg-output-root', (e) => e.innerText.trim());
  const j = JSON.stringify(seen);
  const waitClear = seen.find((e) => e[0] === true);
  expect(waitClear && waitClear[1] === 'before', `after clear_output(wait=True) the output was ${j}`);
  expect(seen.some((e) => e[0] === 'stream' && e[1] === 'after'), `"after" did not replace "before": ${j}`);
  const nowait = seen.find((e) => e[0] === false);
  expect(nowait && nowait[1] === '', `clear_output() did not clear at once: ${j}`);
  expect(text === 'final', `output is ${JSON.stringify(text)}, want "final"`);
});

// ---------------------------------------------- stored results (issue 15)

// A 48×24 teal PNG, as nbformat stores image/png (base64).
const TEAL_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAADAAAAAYCAIAAAAzn+mLAAAALElEQVR42u3OAQkAAAgDsBewtwEMbA3BwQIsNX1KhISEhISEhISEhISEfoUW/k04zHJoRCMAAAAASUVORK5CYII=';

// storedResult is a stored result as the server keeps it with a permalink
// (GET /permalink/ID/outputs): text, an image, HTML (inline, and with a
// script), a result, an error, an interact (a slider saved at 7 and an
// Output widget with its captured output) and a file.
function storedResult() {
  const controls = '@jupyter-widgets/controls';
  return {
    created: '2026-12-07T12:40:00Z',
    truncated: false,
    outputs: [
      { output_type: 'stream', name: 'stdout', text: ['hello from ', 'the stored run\n'] },
      { output_type: 'display_data', data: { 'image/png': TEAL_PNG, 'text/plain': '<Figure size 480x240>' }, metadata: {} },
      { output_type: 'display_data', data: { 'text/html': '<b id="kept">stored html</b><style>body { display: none }</style>' }, metadata: {} },
      { output_type: 'display_data', data: { 'text/html': '<p>framed</p><img src=x onerror="window.parent.storedPwned = 1"><script>document.body.append(" ran inside"); window.parent.storedPwned = 2</script>' }, metadata: {} },
      { output_type: 'execute_result', data: { 'text/plain': '6 * 7 = 42' }, metadata: {}, execution_count: 1 },
      {
        output_type: 'error',
        ename: 'ZeroDivisionError',
        evalue: 'division by zero',
        traceback: ['\u001b[0;31mZeroDivisionError\u001b[0m                         Traceback (most recent call last)', '\u001b[0;31mZeroDivisionError\u001b[0m: division by zero'],
      },
      { output_type: 'display_data', data: { 'application/vnd.jupyter.widget-view+json': { model_id: 'box1', version_major: 2, version_minor: 0 }, 'text/plain': 'interactive(children=(IntSlider(value=7, ...' }, metadata: {} },
    ],
    widgets: {
      state: {
        box1: { model_name: 'VBoxModel', model_module: controls, model_module_version: '1.5.0', state: { _model_name: 'VBoxModel', _view_name: 'VBoxView', _dom_classes: ['widget-interact'], children: ['IPY_MODEL_slider1', 'IPY_MODEL_out1'], layout: 'IPY_MODEL_layout1' } },
        // No _view_name: it follows from the model's name.
        slider1: { model_name: 'IntSliderModel', model_module: controls, model_module_version: '1.5.0', state: { value: 7, min: 0, max: 10, step: 1, description: 'x', continuous_update: true, readout: true, layout: 'IPY_MODEL_layout1', style: 'IPY_MODEL_style1' } },
        out1: { model_name: 'OutputModel', model_module: '@jupyter-widgets/output', model_module_version: '1.0.0', state: { _view_name: 'OutputView', msg_id: '', layout: 'IPY_MODEL_layout1', outputs: [{ output_type: 'stream', name: 'stdout', text: 'x squared is 49\n' }] } },
        layout1: { model_name: 'LayoutModel', model_module: '@jupyter-widgets/base', model_module_version: '1.2.0', state: {} },
        style1: { model_name: 'SliderStyleModel', model_module: controls, model_module_version: '1.5.0', state: { description_width: '' } },
      },
    },
    files: [{ name: 'data.csv', url: 'files/stored-test/data.csv' }],
  };
}

// watchKernels records every request for a kernel (POST /kernel, POST
// /api/kernels) and every websocket a page opens.
function watchKernels(p) {
  const seen = [];
  p.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() === 'POST' && /\/(kernel|api\/kernels)\/?$/.test(path)) seen.push(`${r.method()} ${path}`);
  });
  p.on('websocket', (ws) => seen.push(`websocket ${ws.url()}`));
  return seen;
}

// checkStoredResult asserts what a cell showing storedResult() shows: live
// is the end of its note, runs the number of live evaluations before it.
async function checkStoredResult(p, cell, { live, runs }) {
  await p.waitForSelector(`${cell}[data-stored="true"] .cg-output-root .cg-stored-note`);
  const r = await p.$eval(cell, (c) => {
    const out = c.querySelector('.cg-output-root') || document.querySelector('.cg-output-root');
    const slider = out.querySelector('input[type=range]');
    const img = out.querySelector('img.cg-image');
    return {
      note: out.querySelector('.cg-stored-note')?.innerText || '',
      noteFirst: out.firstElementChild?.classList.contains('cg-out-stored'),
      time: out.querySelector('.cg-stored-note time')?.getAttribute('datetime'),
      stdout: [...out.querySelectorAll('pre.cg-stdout')].map((e) => e.innerText).join('|'),
      img: img && img.src.startsWith('data:image/png;base64,') && img.complete ? img.naturalWidth : 0,
      inline: !!out.querySelector('.cg-html b#user-content-kept'),
      style: !!out.querySelector('style'),
      scripts: out.querySelectorAll('script').length,
      onerror: !!out.querySelector('[onerror]'),
      frames: [...out.querySelectorAll('iframe.cg-frame')].map((f) => f.getAttribute('sandbox')),
      result: out.innerText.includes('6 * 7 = 42'),
      error: out.querySelector('pre.cg-error')?.innerText || '',
      ansi: !!out.querySelector('pre.cg-error span[class*="cg-ansi-"]'),
      slider: slider && { value: slider.value, disabled: slider.disabled, readout: slider.closest('.cg-widget').querySelector('.cg-w-readout')?.innerText },
      stored: !!out.querySelector('.cg-widget-area .cg-w-stored'),
      outputWidget: out.querySelector('.cg-w-output')?.innerText || '',
      files: [...out.querySelectorAll('.cg-files a')].map((a) => a.href),
      done: c.dataset.done,
    };
  });
  const j = JSON.stringify(r);
  expect(r.note.startsWith('Stored result from ') && r.note.includes('2026') && r.note.includes(live), `stored note: ${j}`);
  expect(r.noteFirst && r.time === '2026-12-07T12:40:00Z', `the note is not first, or its time is wrong: ${j}`);
  expect(r.stdout.includes('hello from the stored run'), `stream output: ${j}`);
  expect(r.img === 48, `PNG image: ${j}`);
  expect(r.inline && !r.style && !r.onerror, `inline HTML not rendered or not sanitised: ${j}`);
  expect(r.scripts === 0, `a <script> of the stored HTML is in the page: ${j}`);
  expect(r.frames.length === 1 && r.frames[0] === 'allow-scripts allow-popups', `HTML with a script is not in a sandboxed frame: ${j}`);
  expect(r.result, `execute_result: ${j}`);
  expect(r.error.includes('ZeroDivisionError') && r.error.includes('division by zero') && r.ansi, `error: ${j}`);
  expect(r.slider && r.slider.value === '7' && r.slider.readout === '7' && r.slider.disabled, `the slider saved at 7: ${j}`);
  expect(r.stored, `the widget is not marked as stored: ${j}`);
  expect(r.outputWidget.includes('x squared is 49'), `the Output widget's stored outputs: ${j}`);
  expect(r.files.length === 1 && r.files[0] === `${BASE}files/stored-test/data.csv`, `file links: ${j}`);
  expect(r.done === (runs ? String(runs) : undefined), `the cell was evaluated: ${j}`);
  expect((await p.evaluate(() => window.storedPwned)) === undefined, 'stored HTML ran script in the page');
}

test('a stored result given to makeCell is shown without a kernel, and Evaluate runs live', async (t) => {
  t.ignoreErrors = /Blocked a frame with origin "null"/;
  const p = await page(t);
  const kernels = watchKernels(p);
  // A page on another origin that has the result already (makeCell's result option).
  await p.goto(`${OTHER}stored.html`);
  await p.evaluate((result) => {
    window.given = cellgate.makeCell({ inputLocation: '#given', result, autoeval: true, evalButtonText: 'Run' });
  }, storedResult());
  await checkStoredResult(p, '#given .cg-cell', { live: 'Run to run it live' });
  // The stored interact's state is what Share would send.
  const state = await p.evaluate(() => JSON.stringify(window.given.interactState()));
  expect(state === '[{"state":{"x":7},"bookmarks":[]}]', `interactState of the stored interact is ${state}`);
  // Its controls send nothing, even forced.
  const sent = [];
  p.on('request', (r) => r.url().startsWith(BASE) && sent.push(`${r.method()} ${r.url()}`));
  await p.evaluate(() => {
    const s = document.querySelector('#given input[type=range]');
    s.disabled = false;
    s.value = '3';
    s.dispatchEvent(new Event('input'));
    s.dispatchEvent(new Event('change'));
  });
  await p.waitForTimeout(1000); // autoeval would have started by now
  expect(kernels.length === 0 && sent.length === 0, `requests made: ${[...kernels, ...sent].join(', ')}`);
  await shot(p, 'stored-result.png', { fullPage: true });
  // Evaluate runs the code live, in place of the stored result.
  await p.click('#given .cg-eval');
  await outputContains(p, 'live 42', { root: '#given .cg-output-root' });
  await waitDone(p, '#given .cg-cell');
  const after = await p.$eval('#given .cg-cell', (c) => ({ stored: c.dataset.stored, text: c.innerText }));
  expect(after.stored === undefined && !after.text.includes('Stored result') && !after.text.includes('hello from'), `the stored result is still shown: ${JSON.stringify(after)}`);
  expect(kernels.some((k) => k.startsWith('POST')), 'Evaluate did not ask for a kernel');
  // showStoredResult puts a result back, without a kernel.
  const before = kernels.length;
  await p.evaluate((r) => window.given.showStoredResult(r), storedResult());
  await checkStoredResult(p, '#given .cg-cell', { live: 'Run to run it live', runs: 1 });
  expect(kernels.length === before, `showStoredResult asked for a kernel: ${kernels.slice(before).join(', ')}`);
});

test('?q= of a permalink with a stored result shows it at once; Evaluate runs live (server answer mocked)', async (t) => {
  t.ignoreErrors = /Blocked a frame with origin "null"/;
  const p = await page(t);
  const kernels = watchKernels(p);
  const id = 'stored-mock';
  const code = 'print("now live", 6 * 7)';
  // GET /permalink/ID as the server answers it for a permalink with a stored result.
  await p.route(`${BASE}permalink/${id}`, (r) => r.fulfill({ json: { code, language: 'python3', interacts: '[{"state": {"x": 7}, "bookmarks": []}]', result: storedResult() } }));
  const posts = [];
  p.on('request', (r) => r.method() === 'POST' && posts.push(new URL(r.url()).pathname));
  await p.goto(`${BASE}?q=${id}`);
  await checkStoredResult(p, '.cg-cell', { live: 'Evaluate to run it live' });
  expect((await p.evaluate(() => window.demoCell.code)) === code, 'the editor does not hold the permalink\'s code');
  // Share of the unchanged cell is the same permalink (nothing posted).
  await p.click('.cg-share');
  const q = await (await p.waitForSelector('.cg-share-panel input.cg-link-q')).inputValue();
  expect(q === `${BASE}?q=${id}`, `Share answered ${q}, want the permalink ${id}`);
  await p.waitForTimeout(1000); // autoeval would have started by now
  expect(kernels.length === 0 && posts.length === 0, `requests made: ${[...kernels, ...posts].join(', ')}`);
  await shot(p, 'stored-demo.png', { fullPage: true });
  await p.click('.cg-eval');
  await outputContains(p, 'now live 42');
  await waitDone(p);
  const after = await p.$eval('.cg-cell', (c) => ({ stored: c.dataset.stored, text: c.querySelector('.cg-output-root').innerText.trim() }));
  expect(after.stored === undefined && after.text === 'now live 42', `after Evaluate: ${JSON.stringify(after)}`);
  expect(kernels.some((k) => k.startsWith('POST')), 'Evaluate did not ask for a kernel');
  // A permalink without a stored result is evaluated at once, as before.
  const p2 = await page(t);
  await p2.route(`${BASE}permalink/plain-mock`, (r) => r.fulfill({ json: { code: 'print("ran at once")', language: 'python3', interacts: '[]' } }));
  await p2.goto(`${BASE}?q=plain-mock`);
  await outputContains(p2, 'ran at once');
  expect((await p2.$eval('.cg-cell', (c) => c.dataset.stored)) === undefined, 'a permalink without a result is marked stored');
  // A permalink that cannot be loaded says so and runs nothing.
  const p3 = await page(t);
  const k3 = watchKernels(p3);
  await p3.goto(`${BASE}?q=no-such-permalink`);
  await outputContains(p3, 'Could not load permalink no-such-permalink');
  await p3.waitForTimeout(500);
  expect(k3.length === 0, `a missing permalink asked for a kernel: ${k3.join(', ')}`);
});

// waitStored waits until the server has the stored result of permalink id
// (it is written once the execution is recorded).
async function waitStored(p, id) {
  const ok = await p.evaluate(async (id) => {
    for (let i = 0; i < 40; i++) {
      const r = await fetch(`permalink/${encodeURIComponent(id)}/outputs`);
      if (r.ok) return true;
      await new Promise((res) => setTimeout(res, 250));
    }
    return false;
  }, id);
  expect(ok, `GET /permalink/${id}/outputs never answered a result`);
}

test('a cell that ran opens from ?q= with its stored result before any kernel, and Evaluate re-runs it', async (t) => {
  const p = await page(t);
  const code = [
    'import matplotlib.pyplot as plt',
    'plt.figure(figsize=(4, 2))',
    'plt.plot([0, 1, 2], [0, 1, 4])',
    'plt.title("stored plot")',
    'plt.show()',
    'print("stored", 6 * 7)',
  ].join('\n');
  await demo(p, code);
  await outputContains(p, 'stored 42');
  await waitDone(p);
  // The execution's permalink (execute_reply's metadata.cellgate.permalink).
  const id = await p.evaluate(() => window.demoCell.permalink?.id);
  expect(id, 'the execute_reply carried no permalink');
  await waitStored(p, id);
  const p2 = await page(t);
  const kernels = watchKernels(p2);
  const started = Date.now();
  await p2.goto(`${BASE}?q=${id}`);
  await p2.waitForSelector('.cg-cell[data-stored="true"] .cg-stored-note');
  const shown = Date.now() - started;
  await p2.waitForFunction(() => {
    const img = document.querySelector('.cg-output-root img.cg-image');
    return img && img.complete && img.naturalWidth > 100;
  });
  const r = await p2.evaluate(() => ({
    note: document.querySelector('.cg-stored-note').innerText,
    text: document.querySelector('.cg-output-root').innerText,
    code: window.demoCell.code,
    done: document.querySelector('.cg-cell').dataset.done,
    year: String(new Date().getFullYear()),
  }));
  const j = JSON.stringify(r);
  expect(r.note.startsWith('Stored result from ') && r.note.includes(r.year) && r.note.includes('Evaluate to run it live'), `note: ${j}`);
  expect(r.text.includes('stored 42') && r.code === code && r.done === undefined, `stored result: ${j}`);
  expect(kernels.length === 0, `a kernel was asked for before Evaluate: ${kernels.join(', ')}`);
  t.log.push(`stored result visible ${shown} ms after navigation`);
  await p2.waitForTimeout(800);
  expect(kernels.length === 0, `a kernel was asked for: ${kernels.join(', ')}`);
  await shot(p2, 'stored-permalink.png', { fullPage: true });
  // A cell embedded on another origin, given the permalink's id, shows the same.
  const p3 = await page(t);
  const k3 = watchKernels(p3);
  await p3.goto(`${OTHER}stored.html`);
  await p3.evaluate((id) => {
    window.embedded = cellgate.makeCell({ inputLocation: '#given', permalink: id, autoeval: true });
  }, id);
  await p3.waitForSelector('#given .cg-cell[data-stored="true"] .cg-stored-note');
  await outputContains(p3, 'stored 42', { root: '#given .cg-output-root' });
  await p3.waitForSelector('#given .cg-output-root img.cg-image');
  expect((await p3.evaluate(() => window.embedded.code)) === code, 'the embedded cell does not hold the permalink\'s code');
  await p3.waitForTimeout(800);
  expect(k3.length === 0, `the embedded cell asked for a kernel: ${k3.join(', ')}`);
  // Evaluate runs it live, in place of the stored result.
  await p2.click('.cg-eval');
  await waitDone(p2);
  await outputContains(p2, 'stored 42');
  const after = await p2.evaluate(() => ({
    stored: document.querySelector('.cg-cell').dataset.stored,
    note: !!document.querySelector('.cg-stored-note'),
    images: document.querySelectorAll('.cg-output-root img.cg-image').length,
    text: document.querySelector('.cg-output-root').innerText,
  }));
  expect(after.stored === undefined && !after.note && after.images === 1 && (after.text.match(/stored 42/g) || []).length === 1, `after Evaluate: ${JSON.stringify(after)}`);
  expect(kernels.length >= 1 && kernels[0].startsWith('POST'), `Evaluate did not ask for a kernel: ${kernels.join(', ')}`);
});

test('an interact shared at x=7 opens from ?q= at 7 without a kernel', async (t) => {
  const p = await page(t);
  await demo(p, ['from ipywidgets import interact', '@interact(x=(0, 10))', 'def square(x=3):', '    print("x squared is", x * x)'].join('\n'));
  await outputContains(p, 'x squared is 9');
  const slider = await p.waitForSelector('.cg-output-root input[type=range]');
  await slider.focus();
  for (let i = 0; i < 4; i++) await p.keyboard.press('ArrowRight');
  await outputContains(p, 'x squared is 49');
  await p.waitForFunction(() => window.demoCell.state === 'idle' && window.demoCell.kernel.widgets.models.size > 0);
  // Share sends the live session: the server keeps the result as the cell shows it.
  const [req] = await Promise.all([p.waitForRequest((r) => r.url().endsWith('/permalink') && r.method() === 'POST'), p.click('.cg-share')]);
  const body = JSON.parse(req.postData() || '{}');
  expect(body.kernel_id && body.kernel_id === (await p.evaluate(() => window.demoCell.kernel.id)), `Share sent kernel_id ${body.kernel_id}`);
  const link = await (await p.waitForSelector('.cg-share-panel input.cg-link-q')).inputValue();
  await waitStored(p, new URL(link).searchParams.get('q'));
  const p2 = await page(t);
  const kernels = watchKernels(p2);
  await p2.goto(link);
  await p2.waitForSelector('.cg-cell[data-stored="true"] .cg-output-root input[type=range]');
  const r = await p2.evaluate(() => {
    const s = document.querySelector('.cg-output-root input[type=range]');
    return { value: s.value, disabled: s.disabled, text: document.querySelector('.cg-output-root').innerText, interacts: window.demoCell.interactState() };
  });
  const j = JSON.stringify(r);
  expect(r.value === '7' && r.disabled, `the stored slider: ${j}`);
  expect(r.text.includes('x squared is 49') && !r.text.includes('x squared is 9\n'), `the stored output: ${j}`);
  expect(r.interacts[0]?.state?.x === 7, `interact state: ${j}`);
  await p2.waitForTimeout(800);
  expect(kernels.length === 0, `a kernel was asked for: ${kernels.join(', ')}`);
  // Evaluate runs it live, and the interact is put back at 7.
  await p2.click('.cg-eval');
  await p2.waitForFunction(() => document.querySelector('.cg-cell').dataset.restored === 'true', null, { timeout: 30000 });
  await outputContains(p2, 'x squared is 49');
  const live = await p2.evaluate(() => ({ value: document.querySelector('.cg-output-root input[type=range]').value, disabled: document.querySelector('.cg-output-root input[type=range]').disabled, stored: document.querySelector('.cg-cell').dataset.stored }));
  expect(live.value === '7' && !live.disabled && live.stored === undefined, `live interact: ${JSON.stringify(live)}`);
});

test('a result over the server\'s budget opens from ?q= truncated, with a notice', async (t) => {
  const p = await page(t);
  // 1.2 MB of output: over the 1 MiB a stored result keeps inline.
  await demo(p, 'print("a" * 600_000)\nprint("b" * 600_000)\nprint("the end")');
  await outputContains(p, 'the end');
  await waitDone(p);
  const id = await p.evaluate(() => window.demoCell.permalink?.id);
  expect(id, 'the execute_reply carried no permalink');
  await waitStored(p, id);
  const p2 = await page(t);
  const kernels = watchKernels(p2);
  await p2.goto(`${BASE}?q=${id}`);
  await p2.waitForSelector('.cg-cell[data-stored="true"] .cg-stored-note');
  const r = await p2.evaluate(() => {
    const out = document.querySelector('.cg-output-root');
    return { note: out.querySelector('.cg-stored-note').innerText, notice: out.innerText.includes('[cellgate] output truncated'), end: out.innerText.includes('the end'), length: out.innerText.length };
  });
  expect(r.note.includes('(truncated)') && r.notice && !r.end && r.length < 1100000, `truncated result: ${JSON.stringify(r)}`);
  expect(kernels.length === 0, `a kernel was asked for: ${kernels.join(', ')}`);
});

test('demo page screenshot', async (t) => {
  const p = await page(t, { viewport: { width: 1000, height: 900 } });
  await demo(
    p,
    [
      'from ipywidgets import interact',
      'import matplotlib.pyplot as plt, numpy as np',
      '',
      '@interact(frequency=(1, 10), amplitude=(0.5, 2.0), kind=["sin", "cos"])',
      'def wave(frequency=3, amplitude=1.0, kind="sin"):',
      '    x = np.linspace(0, 2*np.pi, 400)',
      '    f = np.sin if kind == "sin" else np.cos',
      '    plt.figure(figsize=(6.5, 2.6))',
      '    plt.plot(x, amplitude * f(frequency * x), color="#2563eb")',
      '    plt.ylim(-2.1, 2.1); plt.grid(alpha=.3)',
      '    plt.show()',
      '    print(f"{kind}({frequency}x) scaled by {amplitude}")',
    ].join('\n'),
  );
  await outputContains(p, 'sin(3x) scaled by 1.0', { timeout: 30000 });
  await p.waitForFunction(() => document.querySelector('.cg-output-root img.cg-image')?.complete);
  await p.waitForTimeout(300);
  await shot(p, 'demo.png', { fullPage: true });
});

// ------------------------------------------------------------------ runner

let failed = 0;
for (const { name, fn, timeout } of tests) {
  if (ONLY && !ONLY.split('|').some((w) => name.includes(w))) continue;
  const t = { cleanup: [], errors: [], log: [] };
  const started = Date.now();
  let status = 'pass';
  let error = '';
  let timer;
  try {
    await Promise.race([
      fn(t),
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out after ${timeout} ms`)), timeout);
      }),
    ]);
    if (t.errors.length) throw new Error(t.errors.join('; '));
  } catch (err) {
    if (err instanceof Skip) {
      status = 'skip';
      error = err.message;
    } else {
      status = 'fail';
      if (t.page) {
        const state = await t.page
          .evaluate(() => [...document.querySelectorAll('.cg-cell')].map((c) => `[state=${c.dataset.state} transport=${c.dataset.transport} done=${c.dataset.done}] ${c.innerText.slice(-600)}`).join('\n'))
          .catch(() => '');
        if (state) t.log.push(`page: ${state}`);
      }
      error = `${err.message}${t.log.length ? `\n${t.log.join('\n')}` : ''}`;
      failed++;
    }
  } finally {
    clearTimeout(timer);
  }
  for (const c of t.cleanup.reverse()) await c().catch(() => {});
  console.log(`RESULT ${JSON.stringify({ name, status, error, ms: Date.now() - started })}`);
}
await browser.close();
process.exit(failed ? 1 : 0);
