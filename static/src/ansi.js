// ANSI escape sequences (SGR colours, bold, underline) to DOM nodes, and
// terminal-style carriage returns and backspaces for streams.

const BASIC = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white'];

function color256(n) {
  if (n < 16) return null; // handled as a class
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  n -= 16;
  const c = [Math.floor(n / 36), Math.floor(n / 6) % 6, n % 6].map((x) => (x ? 55 + x * 40 : 0));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** applyTerminalControls resolves \r (overwrite the line) and \b (erase). */
export function applyTerminalControls(text) {
  if (!/[\r\b]/.test(text)) return text;
  const lines = text.split('\n');
  return lines
    .map((line) => {
      // \r\n was split already; a lone \r returns to the start of the line.
      let out = [];
      let col = 0;
      for (const ch of line) {
        if (ch === '\r') col = 0;
        else if (ch === '\b') col = Math.max(0, col - 1);
        else {
          out[col++] = ch;
        }
      }
      // Text after the last \r overwrites only what it covers, like a terminal.
      return out.join('');
    })
    .join('\n');
}

/**
 * ansiToNodes appends text with ANSI SGR sequences as spans to parent.
 * Unknown escape sequences are dropped.
 */
export function ansiToNodes(text, parent) {
  const re = /\x1b\[([0-9;?]*)([A-Za-z])/g;
  let state = { fg: null, bg: null, bold: false, italic: false, underline: false, inverse: false };
  let last = 0;
  const flush = (s) => {
    if (!s) return;
    const plain = !state.fg && !state.bg && !state.bold && !state.italic && !state.underline && !state.inverse;
    if (plain) {
      parent.append(document.createTextNode(s));
      return;
    }
    const span = document.createElement('span');
    let fg = state.fg;
    let bg = state.bg;
    if (state.inverse) [fg, bg] = [bg || { cls: 'default-bg' }, fg || { cls: 'default-fg' }];
    const classes = [];
    if (fg) fg.cls ? classes.push(`cg-ansi-fg-${fg.cls}`) : (span.style.color = fg.css);
    if (bg) bg.cls ? classes.push(`cg-ansi-bg-${bg.cls}`) : (span.style.backgroundColor = bg.css);
    if (state.bold) classes.push('cg-ansi-bold');
    if (state.italic) classes.push('cg-ansi-italic');
    if (state.underline) classes.push('cg-ansi-underline');
    span.className = classes.join(' ');
    span.textContent = s;
    parent.append(span);
  };
  let m;
  while ((m = re.exec(text))) {
    flush(text.slice(last, m.index));
    last = re.lastIndex;
    if (m[2] !== 'm') continue;
    const codes = m[1] === '' ? [0] : m[1].split(';').map((x) => parseInt(x || '0', 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) state = { fg: null, bg: null, bold: false, italic: false, underline: false, inverse: false };
      else if (c === 1) state.bold = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 7) state.inverse = true;
      else if (c === 22) state.bold = false;
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c === 27) state.inverse = false;
      else if (c >= 30 && c <= 37) state.fg = { cls: BASIC[c - 30] };
      else if (c >= 90 && c <= 97) state.fg = { cls: `bright-${BASIC[c - 90]}` };
      else if (c >= 40 && c <= 47) state.bg = { cls: BASIC[c - 40] };
      else if (c >= 100 && c <= 107) state.bg = { cls: `bright-${BASIC[c - 100]}` };
      else if (c === 39) state.fg = null;
      else if (c === 49) state.bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        const n = codes[i + 2] ?? 0;
        const v = n < 8 ? { cls: BASIC[n] } : n < 16 ? { cls: `bright-${BASIC[n - 8]}` } : { css: color256(n) };
        if (c === 38) state.fg = v;
        else state.bg = v;
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
        const v = { css: `rgb(${codes[i + 2] | 0},${codes[i + 3] | 0},${codes[i + 4] | 0})` };
        if (c === 38) state.fg = v;
        else state.bg = v;
        i += 4;
      }
    }
  }
  flush(text.slice(last));
  // Drop other control characters except newline and tab.
  return parent;
}

/** stripAnsi removes escape sequences. */
export function stripAnsi(text) {
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}
