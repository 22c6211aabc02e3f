// The code editor: CodeMirror 6 with Python highlighting (Python and
// Sage), Shift+Enter to evaluate; or a plain textarea.

import { closeBrackets, closeBracketsKeymap } from '@codemirror/autocomplete';
import { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
import { python } from '@codemirror/lang-python';
import { bracketMatching, defaultHighlightStyle, indentOnInput, indentUnit, syntaxHighlighting } from '@codemirror/language';
import { Compartment, EditorState, Prec } from '@codemirror/state';
import { drawSelection, EditorView, highlightActiveLine, highlightSpecialChars, keymap, lineNumbers, placeholder } from '@codemirror/view';
import { el } from './util.js';

const PYTHONIC = /^(python|sage|sagemath|python3|ipython)/i;

function languageExtension(language) {
  return PYTHONIC.test(language || '') ? python() : [];
}

const theme = EditorView.theme({
  '&': { fontSize: '14px', backgroundColor: '#fff' },
  '.cm-content': { fontFamily: 'var(--cg-mono)', padding: '6px 0' },
  '.cm-gutters': { backgroundColor: '#f6f7f9', color: '#9aa0a6', border: 'none', borderRight: '1px solid #e3e6ea' },
  '.cm-activeLine': { backgroundColor: '#f5f8ff' },
  '&.cm-focused': { outline: 'none' },
  '.cm-scroller': { fontFamily: 'var(--cg-mono)', lineHeight: '1.5' },
});

/**
 * createEditor makes an editor in parent.
 * opts: {code, language, kind: 'codemirror'|'textarea', readOnly, onEvaluate, onChange}
 */
export function createEditor(parent, opts) {
  if (opts.kind === 'textarea') return textareaEditor(parent, opts);
  const lang = new Compartment();
  const ro = new Compartment();
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: opts.code || '',
      extensions: [
        Prec.highest(
          keymap.of([
            {
              key: 'Shift-Enter',
              run: () => {
                opts.onEvaluate?.();
                return true;
              },
            },
            {
              key: 'Mod-Enter',
              run: () => {
                opts.onEvaluate?.();
                return true;
              },
            },
          ]),
        ),
        lineNumbers(),
        highlightSpecialChars(),
        history(),
        drawSelection(),
        indentOnInput(),
        indentUnit.of('    '),
        bracketMatching(),
        closeBrackets(),
        highlightActiveLine(),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap, indentWithTab]),
        placeholder(opts.placeholder || 'Type code here; Shift+Enter evaluates'),
        lang.of(languageExtension(opts.language)),
        ro.of([EditorState.readOnly.of(!!opts.readOnly), EditorView.editable.of(!opts.readOnly)]),
        EditorView.lineWrapping,
        theme,
        EditorView.contentAttributes.of({ 'aria-label': 'code editor' }),
        EditorView.updateListener.of((u) => {
          if (u.docChanged) opts.onChange?.();
        }),
      ],
    }),
  });
  return {
    kind: 'codemirror',
    view,
    dom: view.dom,
    getCode: () => view.state.doc.toString(),
    setCode: (code) => view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: code } }),
    setLanguage: (language) => view.dispatch({ effects: lang.reconfigure(languageExtension(language)) }),
    setReadOnly: (r) => view.dispatch({ effects: ro.reconfigure([EditorState.readOnly.of(r), EditorView.editable.of(!r)]) }),
    focus: () => view.focus(),
  };
}

function textareaEditor(parent, opts) {
  const ta = el('textarea', { class: 'cg-textarea', spellcheck: 'false', rows: String(Math.max(3, (opts.code || '').split('\n').length + 1)), 'aria-label': 'code editor' });
  ta.value = opts.code || '';
  ta.readOnly = !!opts.readOnly;
  ta.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.shiftKey || ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      opts.onEvaluate?.();
    }
  });
  ta.addEventListener('input', () => opts.onChange?.());
  parent.append(ta);
  return {
    kind: 'textarea',
    dom: ta,
    getCode: () => ta.value,
    setCode: (c) => (ta.value = c),
    setLanguage: () => {},
    setReadOnly: (r) => (ta.readOnly = r),
    focus: () => ta.focus(),
  };
}
