// Bundles the browser client into dist/ (run by scripts/web-build.sh).
// The output depends only on src/ and package-lock.json, so builds are
// reproducible; files are rewritten only when their bytes change.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, 'src');
const dist = join(root, 'dist');

function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

// The version is a hash of the inputs: it busts caches of embed.css.
const h = createHash('sha256');
for (const f of [...walk(src).sort(), join(root, 'package-lock.json'), join(root, 'build.mjs')]) {
  h.update(relative(root, f));
  h.update(readFileSync(f));
}
const version = h.digest('hex').slice(0, 12);

// KaTeX's CSS lists woff2, woff and ttf fonts; every browser we target
// reads woff2, so the others are left out of the bundle.
const katexWoff2Only = {
  name: 'katex-woff2-only',
  setup(build) {
    build.onLoad({ filter: /katex(\.min)?\.css$/ }, (args) => {
      const css = readFileSync(args.path, 'utf8').replace(/,url\([^)]*\.(woff|ttf)\) format\("(woff|truetype)"\)/g, '');
      return { contents: css, loader: 'css' };
    });
  },
};

const common = {
  bundle: true,
  minify: true,
  write: false,
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  legalComments: 'eof',
  logLevel: 'warning',
  absWorkingDir: root,
};

const results = await Promise.all([
  esbuild.build({ ...common, entryPoints: { embed: 'src/index.js' }, format: 'iife', outdir: 'dist', define: { CELLGATE_VERSION: JSON.stringify(version) } }),
  // The same client plus the Sage cell's page API and jQuery (sagecell.js).
  esbuild.build({ ...common, entryPoints: { embedded_sagecell: 'src/sagecell.js' }, format: 'iife', outdir: 'dist', define: { CELLGATE_VERSION: JSON.stringify(version) } }),
  esbuild.build({ ...common, entryPoints: { embed: 'src/embed.css' }, outdir: 'dist', loader: { '.woff2': 'file' }, assetNames: 'fonts/[name]-[hash]', plugins: [katexWoff2Only] }),
  esbuild.build({ ...common, bundle: false, entryPoints: { demo: 'src/page/demo.js' }, outdir: 'dist' }),
  esbuild.build({ ...common, bundle: false, entryPoints: { demo: 'src/page/demo.css' }, outdir: 'dist' }),
]);

const want = new Map();
for (const r of results) for (const f of r.outputFiles) want.set(relative(dist, f.path), Buffer.from(f.contents));
want.set('index.html', readFileSync(join(src, 'page', 'index.html')));
want.set('help.html', readFileSync(join(src, 'page', 'help.html')));
// Files pages written for the Sage cell link to: jQuery as npm ships it, and
// the spinner (src/assets/spinner.gif, made by src/assets/spinner.go).
want.set('jquery.min.js', readFileSync(join(root, 'node_modules', 'jquery', 'dist', 'jquery.min.js')));
want.set('spinner.gif', readFileSync(join(src, 'assets', 'spinner.gif')));
want.set('VERSION', Buffer.from(`${version}\n`));

mkdirSync(dist, { recursive: true });
let changed = 0;
for (const [name, bytes] of want) {
  const p = join(dist, name);
  if (existsSync(p) && readFileSync(p).equals(bytes)) continue;
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, bytes);
  changed++;
}
// Remove what the build no longer makes (keep the placeholder).
for (const p of walk(dist)) {
  const name = relative(dist, p);
  if (!want.has(name) && name !== 'README') {
    rmSync(p);
    changed++;
  }
}
const size = (n) => `${(want.get(n).length / 1024).toFixed(0)} KiB`;
console.log(`web-build: ${version}: embed.js ${size('embed.js')}, embed.css ${size('embed.css')}; ${changed} file(s) updated`);
