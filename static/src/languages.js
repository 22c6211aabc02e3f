// What a cell can run: the server's installed kernelspecs and the Sage
// cell's languages that the server runs through its Sage kernel
// (GET /kernelspecs: {default, kernels, sage_languages}). A cell asks the
// server for a Sage-cell language by its name (kernel_name=gp); the server
// wraps the code for Sage's interface, so the client never rewrites it and
// never runs it as another language.

/** SAGE_CELL_LANGUAGES are the Sage cell's languages, with the names its picker shows them by. */
export const SAGE_CELL_LANGUAGES = {
  sage: 'Sage',
  gap: 'GAP',
  gp: 'PARI/GP',
  html: 'HTML',
  macaulay2: 'Macaulay2',
  maxima: 'Maxima',
  octave: 'Octave',
  python: 'Python',
  r: 'R',
  singular: 'Singular',
};

/**
 * runsThroughSage reports whether name is one of the Sage cell's languages
 * other than Sage itself: those are asked for by name, never replaced by
 * another kernel.
 */
export function runsThroughSage(name) {
  const n = String(name || '').toLowerCase();
  return n !== 'sage' && Object.prototype.hasOwnProperty.call(SAGE_CELL_LANGUAGES, n);
}

/**
 * A choice is one entry of a cell's language picker: {name (what the
 * server is asked for), display (what the picker shows), language (for the
 * editor's highlighting), missing (the server does not run it)}.
 */

/** choicesOf lists what the server runs: its kernelspecs, then the Sage-cell languages it runs through Sage. */
export function choicesOf(specs) {
  const out = (specs.kernels || []).map((k) => ({ name: k.name, display: k.display_name || k.name, language: k.language || k.name }));
  for (const name of specs.sage_languages || []) {
    // A language an installed kernelspec runs (python: python3) is asked
    // for as that kernel, as the server resolves it.
    if (findChoice(out, name)) continue;
    out.push({ name, display: SAGE_CELL_LANGUAGES[name] || name, language: name });
  }
  return out;
}

/** findChoice is the choice named name (by name first, then by language), or undefined. */
export function findChoice(choices, name) {
  const n = String(name || '').toLowerCase();
  if (!n) return undefined;
  return choices.find((c) => c.name.toLowerCase() === n) || choices.find((c) => String(c.language).toLowerCase() === n);
}

/**
 * missingChoice stands for a Sage-cell language the server does not run:
 * the cell still asks for it by name, and shows the server's answer.
 */
export function missingChoice(name) {
  const n = String(name).toLowerCase();
  return { name: n, display: `${SAGE_CELL_LANGUAGES[n] || n} (not on this server)`, language: n, missing: true };
}

/**
 * offeredChoices is what a cell's picker offers: every choice, or, for a
 * page's list of languages (the Sage cell's `languages` option), the
 * choices for them in the page's order, a Sage-cell language the server
 * does not run marked missing (other names the server does not run are
 * left out).
 */
export function offeredChoices(choices, wanted) {
  if (!Array.isArray(wanted) || !wanted.length) return choices.slice();
  const out = [];
  for (const w of wanted) {
    const c = findChoice(choices, w) || (runsThroughSage(w) ? missingChoice(w) : null);
    if (c && !out.some((o) => o.name === c.name)) out.push(c);
  }
  return out;
}
