// Small helpers shared by the client's modules.

/** uuid returns a random RFC 4122 version 4 id; it works outside secure contexts too. */
export function uuid() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** el creates an element: el('div', {class: 'x', onclick: f}, child, 'text'). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'style' && typeof v === 'object') Object.assign(e.style, v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** resolveElement accepts an element or a selector. */
export function resolveElement(x, root = document) {
  if (!x) return null;
  if (typeof x === 'string') return root.querySelector(x);
  return x;
}

/** Emitter is a minimal event emitter. */
export class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name)?.delete(fn);
  }
  emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error('cellgate: listener for', name, 'failed:', err);
      }
    }
  }
}

/** base64 of a Uint8Array, urlsafe when asked, without padding then. */
export function bytesToBase64(bytes, urlsafe = false) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  const b = btoa(s);
  return urlsafe ? b.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '') : b;
}

export function base64ToBytes(s) {
  s = s.replace(/-/g, '+').replace(/_/g, '/').replace(/\s+/g, '');
  while (s.length % 4) s += '=';
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function streamBytes(bytes, transform) {
  const stream = new Blob([bytes]).stream().pipeThrough(transform);
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** zlibEncode compresses text as zlib (the Sage cell's ?z= format), urlsafe base64. */
export async function zlibEncode(text) {
  const bytes = await streamBytes(new TextEncoder().encode(text), new CompressionStream('deflate'));
  return bytesToBase64(bytes, true);
}

/** zlibDecode reverses zlibEncode. */
export async function zlibDecode(z) {
  const bytes = await streamBytes(base64ToBytes(z), new DecompressionStream('deflate'));
  return new TextDecoder().decode(bytes);
}

/** formatBytes renders a size for humans. */
export function formatBytes(n) {
  if (!(n >= 0)) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let u = -1;
  do {
    n /= 1024;
    u++;
  } while (n >= 1024 && u < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[u]}`;
}

// Query parameters of a share link; those already on the page are replaced.
const SHARE_PARAMS = ['q', 'z', 'c', 'lang', 'language', 'interacts', 'autoeval'];

/**
 * shareURL adds params ([name, value] pairs, values already URL-safe or
 * encoded here) to page, which may have a query and a fragment of its own:
 * shareURL('https://b.example/ch1?x=1#cell', [['q', 'ID']]) is
 * 'https://b.example/ch1?x=1&q=ID#cell'.
 */
export function shareURL(page, params) {
  const u = new URL(page, typeof location !== 'undefined' ? location.href : undefined);
  if (SHARE_PARAMS.some((k) => u.searchParams.has(k))) for (const k of SHARE_PARAMS) u.searchParams.delete(k);
  const add = params
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${/^[\w.~=-]*$/.test(v) ? v : encodeURIComponent(v)}`)
    .join('&');
  const q = u.search.replace(/^\?/, '');
  u.search = q ? `${q}${add ? `&${add}` : ''}` : add;
  return u.href;
}
