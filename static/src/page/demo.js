// The demo page at /: one cell, with code from ?q= (permalink, with the
// state of its interacts, and its stored result, shown at once without a
// kernel when it has one), ?z= (compressed code, and &interacts= their
// compressed state), or ?c= (plain code).
(async function () {
  'use strict';
  const params = new URLSearchParams(location.search);
  const server = new URL('./', location.href).href;
  const holder = document.getElementById('cell');
  let code;
  let interacts = null; // the state of the shared code's interacts
  const lang = params.get('lang') || params.get('language') || '';
  const permalink = params.get('q') || null;
  let loaded = false;
  let problem = '';
  try {
    if (permalink) {
      // The cell loads the permalink itself (code, language, interacts, and
      // its stored result, shown without a kernel), so the page is drawn at
      // once; the example's code is not shown meanwhile.
      code = '';
      loaded = true;
    } else if (params.get('z')) {
      code = await cellgate.zlibDecode(params.get('z'));
      if (params.get('interacts')) interacts = await cellgate.zlibDecode(params.get('interacts'));
      loaded = true;
    } else if (params.has('c')) {
      code = params.get('c');
      loaded = true;
    }
  } catch (err) {
    problem = `Could not load the shared code: ${err.message}`;
  }
  // A permalink with a stored result is not evaluated: Evaluate runs it live.
  const autoeval = loaded && !/^(0|false|no)$/i.test(params.get('autoeval') || '');
  const cell = cellgate.makeCell({
    inputLocation: holder,
    code,
    kernel: lang,
    interacts,
    permalink,
    autoeval,
    server,
    sharePage: server,
    callbacks: {
      onLanguage(name) {
        const u = new URL(location.href);
        if (u.searchParams.has('lang')) {
          u.searchParams.set('lang', name);
          history.replaceState(null, '', u);
        }
      },
    },
  });
  window.demoCell = cell;
  if (problem) cell.output.note(problem, 'problem');
  if (!loaded) cell.editor.focus();

  const snippet = document.getElementById('snippet');
  snippet.textContent = [
    `<script src="${server}static/embed.js"></` + 'script>',
    '<div id="mycell">print(1 + 1)</div>',
    '<script>cellgate.makeCell({inputLocation: "#mycell"});</' + 'script>',
  ].join('\n');
  try {
    const specs = await fetch(`${server}kernelspecs`).then((r) => r.json());
    // The Sage cell's languages it runs through Sage (the picker offers them too).
    const names = cellgate.sageCellLanguages || {};
    const through = (specs.sage_languages || []).map((l) => names[l] || l);
    document.getElementById('server-info').textContent =
      `Kernels on this server: ${specs.kernels.map((k) => k.display_name).join(', ')}` +
      `${through.length ? `; through Sage: ${through.join(', ')}` : ''} · cellgate ${cellgate.version || ''}`;
  } catch {
    // the footer is optional
  }
})();
