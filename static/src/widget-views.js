// Views of ipywidgets models: the DOM of the common controls, and the
// widget manager that renders them into output areas. The protocol (comms,
// state sync, protocol versions) is widget-models.js, which this module
// imports and which knows nothing of it.

import { OutputArea } from './output.js';
import { sanitizedNode, typeset } from './mime.js';
import { el } from './util.js';
import { ModelManager, WidgetModel, options, selectIndex, selectedIndex } from './widget-models.js';

/** formatNumber applies a Python format spec such as ".2f", "d", ".3g", ",". */
export function formatNumber(value, spec) {
  if (typeof value !== 'number' || !isFinite(value)) return String(value);
  const m = /^(,)?(?:\.(\d+))?([dfeEgG%s]?)$/.exec(spec || '');
  if (!m) return String(value);
  const [, comma, precStr, type] = m;
  const prec = precStr === undefined ? undefined : Number(precStr);
  let s;
  switch (type) {
    case 'd':
      s = String(Math.round(value));
      break;
    case 'f':
      s = value.toFixed(prec ?? 6);
      break;
    case 'e':
    case 'E':
      s = value.toExponential(prec ?? 6).replace(/e([+-])(\d)$/, 'e$10$2');
      if (type === 'E') s = s.toUpperCase();
      break;
    case 'g':
    case 'G':
      s = String(Number(value.toPrecision(prec || 6)));
      break;
    case '%':
      s = `${(value * 100).toFixed(prec ?? 6)}%`;
      break;
    default:
      s = prec !== undefined ? String(Number(value.toPrecision(prec || 1))) : String(value);
  }
  if (comma) {
    const [int, frac] = s.split('.');
    s = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (frac !== undefined ? `.${frac}` : '');
  }
  return s;
}

/** WidgetManager is the ModelManager of one kernel, with views of its models. */
export class WidgetManager extends ModelManager {
  constructor(kernel) {
    super(kernel);
    this.roots = []; // {model, area, node}: views displayed in output areas
  }

  /** viewFor renders a view of a model, or null if it is unknown. */
  viewFor(modelId, ctx) {
    const model = this.models.get(modelId);
    if (!model) return null;
    const wrap = el('div', { class: 'cg-widget-area' });
    wrap.append(renderView(model, ctx));
    this.roots = this.roots.filter((r) => !r.model.closed && (r.node.isConnected || r.fresh));
    this.roots.forEach((r) => (r.fresh = false));
    this.roots.push({ model, area: ctx.area, node: wrap, fresh: true });
    return wrap;
  }

  /**
   * interactState returns the state of the interacts shown in area, as the
   * Sage cell stores it with a permalink: [{state: {name: value}, bookmarks: []}]
   * for each top-level interact (an ipywidgets or Sage interactive).
   */
  interactState(area) {
    return this._interacts(area).map((controls) => {
      const state = {};
      for (const [name, m] of controls) {
        let value = m.get('value');
        if (value === undefined && typeof m.get('index') === 'number') value = options(m)[m.get('index')];
        if (value === undefined || (value && typeof value === 'object' && !Array.isArray(value))) continue;
        state[name] = value;
      }
      return { state, bookmarks: [] };
    });
  }

  /**
   * setInteractState restores the state interactState made (a permalink's
   * interacts): the i-th top-level interact shown in area gets states[i].state,
   * each control by name, and the kernel is told as if the reader had moved
   * it. It answers how many controls were set.
   */
  setInteractState(area, states) {
    let set = 0;
    const interacts = this._interacts(area);
    (Array.isArray(states) ? states : []).forEach((entry, i) => {
      const controls = interacts[i];
      const state = entry && typeof entry === 'object' ? entry.state : null;
      if (!controls || !state || typeof state !== 'object') return;
      for (const [name, m] of controls) {
        if (!Object.prototype.hasOwnProperty.call(state, name)) continue;
        const value = state[name];
        const labels = options(m);
        let patch;
        if (labels.length) {
          const idx = labels.indexOf(String(value));
          if (idx < 0) continue;
          patch = 'index' in m.state || m.protocol !== 'old' ? { index: idx } : { value: labels[idx] };
        } else {
          if (value === null || typeof value === 'object' || typeof value !== typeof m.get('value')) continue;
          patch = { value };
        }
        // Shown as the kernel's change (the views redraw), sent as the reader's.
        m.applyState(patch);
        m.sync(patch, area);
        set++;
      }
    });
    return set;
  }

  // _interacts lists, for each top-level interact shown in area, its named
  // controls as [name, model] pairs, in order.
  _interacts(area) {
    const out = [];
    for (const r of this.roots) {
      if (r.area !== area || r.model.closed || !r.node.isConnected) continue;
      if (!(r.model.get('_dom_classes') || []).includes('widget-interact')) continue;
      const controls = [];
      for (const ref of r.model.get('children') || []) {
        const m = this.resolve(ref);
        if (!(m instanceof WidgetModel) || m.closed) continue;
        const name = m.get('description');
        if (name) controls.push([name, m]);
      }
      out.push(controls);
    }
    return out;
  }
}

/**
 * storedWidgets is a WidgetManager of saved widget state (a stored result's
 * "widgets", ipywidgets' widget-state form) with no kernel behind it: its
 * views show the saved values, their controls are disabled, and nothing is
 * ever sent anywhere.
 */
export function storedWidgets(widgetState) {
  const manager = new WidgetManager({ captures: new Map(), commHandler: null, stored: true });
  manager.loadState(widgetState);
  return manager;
}

/** renderNbOutputs renders nbformat outputs (Output widget "outputs"). */
function renderNbOutputs(area, outputs) {
  area.clear();
  for (const o of outputs) {
    if (o.output_type === 'stream') area.stream(o.name, Array.isArray(o.text) ? o.text.join('') : o.text);
    else if (o.output_type === 'error') area.error(o);
    else if (o.output_type === 'display_data' || o.output_type === 'execute_result') area.display(o.data || {}, o.metadata || {});
  }
}

// ---------------------------------------------------------------- views

const LAYOUT_KEYS = {
  width: 'width',
  height: 'height',
  min_width: 'minWidth',
  max_width: 'maxWidth',
  min_height: 'minHeight',
  max_height: 'maxHeight',
  margin: 'margin',
  padding: 'padding',
  border: 'border',
  display: 'display',
  visibility: 'visibility',
  flex: 'flex',
  flex_flow: 'flexFlow',
  align_items: 'alignItems',
  align_content: 'alignContent',
  align_self: 'alignSelf',
  justify_content: 'justifyContent',
  overflow: 'overflow',
  overflow_x: 'overflowX',
  overflow_y: 'overflowY',
  order: 'order',
  grid_gap: 'gap',
};

function applyLayout(model, node) {
  const layout = model.ref(model.get('layout'));
  if (!layout || typeof layout !== 'object' || !(layout instanceof WidgetModel)) return;
  const apply = () => {
    for (const [k, css] of Object.entries(LAYOUT_KEYS)) {
      const v = layout.get(k);
      if (v !== undefined && v !== null && v !== '') node.style[css] = String(v);
    }
  };
  apply();
  layout.on('change', apply);
}

function applyClasses(model, node) {
  for (const c of model.get('_dom_classes') || []) if (/^[\w-]+$/.test(c)) node.classList.add(c);
}

function description(model) {
  const d = model.get('description');
  const label = el('label', { class: 'cg-w-label' });
  const set = () => {
    const text = model.get('description') || '';
    if (model.get('description_allow_html')) label.replaceChildren(sanitizedNode(text, 'cg-w-label-html'));
    else {
      label.textContent = text;
      if (/[$\\]/.test(text)) typeset(label);
    }
    label.title = model.get('description_tooltip') || model.get('tooltip') || text;
    label.style.display = text ? '' : 'none';
  };
  set();
  model.on('change', (p) => {
    if ('description' in p) set();
  });
  void d;
  return label;
}

function makeControl(model, ctx, control, { labelled = true } = {}) {
  const root = el('div', { class: `cg-widget cg-view-${model.viewName.toLowerCase() || 'unknown'}` });
  const label = labelled ? description(model) : null;
  if (label) root.append(label);
  root.append(control);
  applyLayout(model, root);
  applyClasses(model, root);
  applyStyle(model, label, control);
  return root;
}

// applyStyle follows the widget's style model (ipywidgets' DescriptionStyle,
// ButtonStyle, SliderStyle, ProgressStyle): description_width, button_color,
// font_weight, text_color, handle_color, bar_color.
function applyStyle(model, label, control) {
  const style = model.ref(model.get('style'));
  if (!(style instanceof WidgetModel)) return;
  const str = (k) => {
    const v = style.get(k);
    return v === undefined || v === null ? '' : String(v);
  };
  const apply = () => {
    if (label) {
      const w = str('description_width');
      label.style.width = w;
      label.style.minWidth = w;
      label.style.maxWidth = w ? 'none' : '';
    }
    const button = control.matches('button') ? control : null;
    if (button) {
      button.style.backgroundColor = str('button_color');
      button.style.fontWeight = str('font_weight');
      button.style.color = str('text_color');
    }
    const accent = str('handle_color') || str('bar_color');
    for (const n of control.querySelectorAll('input[type=range], progress')) n.style.accentColor = accent;
    if (control.matches('progress')) control.style.accentColor = accent;
  };
  apply();
  style.on('change', apply);
}

function setDisabled(model, nodes) {
  const apply = () => {
    const dis = !!model.get('disabled') || model.manager.disabled;
    for (const n of nodes) n.disabled = dis;
  };
  apply();
  model.on('change', (p) => {
    if ('disabled' in p) apply();
  });
  model.on('dead', apply);
}

function sliderView(model, ctx) {
  const isInt = /^Int/.test(model.modelName) || model.get('readout_format') === 'd';
  const isLog = /Log/.test(model.modelName);
  const isRange = /Range/.test(model.modelName) || model.get('_range') === true;
  const vertical = model.get('orientation') === 'vertical';
  const inputs = (isRange ? [0, 1] : [0]).map(() => el('input', { type: 'range', class: 'cg-w-range' }));
  const readout = el('span', { class: 'cg-w-readout' });
  const box = el('div', { class: `cg-w-slider-box${vertical ? ' cg-vertical' : ''}` }, ...inputs, readout);
  const toValue = (x) => {
    let v = Number(x);
    if (isLog) v = Math.pow(model.get('base') || 10, v);
    return isInt ? Math.round(v) : v;
  };
  const fromValue = (v) => (isLog ? Math.log(v) / Math.log(model.get('base') || 10) : v);
  const current = () => {
    const v = model.get('value');
    return isRange ? (Array.isArray(v) ? v : [0, 0]) : [v];
  };
  const render = () => {
    const step = model.get('step');
    for (const inp of inputs) {
      inp.min = String(model.get('min') ?? 0);
      inp.max = String(model.get('max') ?? 100);
      inp.step = step === null || step === undefined ? 'any' : String(step);
    }
    current().forEach((v, i) => {
      if (document.activeElement !== inputs[i] || !inputs[i].matches(':active')) inputs[i].value = String(fromValue(v));
    });
    const fmt = model.get('readout_format') || (isInt ? 'd' : '.2f');
    readout.textContent = current()
      .map((v) => formatNumber(v, fmt))
      .join(' – ');
    readout.style.display = model.get('readout') === false ? 'none' : '';
  };
  const read = () => {
    const vals = inputs.map((i) => toValue(i.value));
    if (isRange) vals.sort((a, b) => a - b);
    return isRange ? vals : vals[0];
  };
  for (const inp of inputs) {
    inp.setAttribute('aria-label', model.get('description') || 'slider');
    inp.addEventListener('input', () => {
      const value = read();
      readout.textContent = (isRange ? value : [value]).map((v) => formatNumber(v, model.get('readout_format') || (isInt ? 'd' : '.2f'))).join(' – ');
      if (model.get('continuous_update') !== false) model.set({ value }, ctx.area);
    });
    inp.addEventListener('change', () => {
      const value = read();
      if (JSON.stringify(value) !== JSON.stringify(model.get('value')) || model.get('continuous_update') === false) model.set({ value }, ctx.area);
    });
  }
  render();
  model.on('change', (p, fromUser) => {
    if (!fromUser) render();
  });
  setDisabled(model, inputs);
  return makeControl(model, ctx, box);
}

function selectionSliderView(model, ctx) {
  const inp = el('input', { type: 'range', class: 'cg-w-range', min: '0', step: '1' });
  const readout = el('span', { class: 'cg-w-readout' });
  const render = () => {
    const opts = options(model);
    inp.max = String(Math.max(0, opts.length - 1));
    const i = selectedIndex(model);
    inp.value = String(Math.max(0, i));
    readout.textContent = opts[i] ?? '';
  };
  inp.addEventListener('input', () => {
    const i = Number(inp.value);
    readout.textContent = options(model)[i] ?? '';
    if (model.get('continuous_update') !== false) selectIndex(model, i, ctx.area);
  });
  inp.addEventListener('change', () => selectIndex(model, Number(inp.value), ctx.area));
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  setDisabled(model, [inp]);
  return makeControl(model, ctx, el('div', { class: 'cg-w-slider-box' }, inp, readout));
}

function dropdownView(model, ctx) {
  const multiple = /Multiple/.test(model.modelName);
  const list = /^Select/.test(model.viewName);
  const sel = el('select', { class: 'cg-w-select' });
  if (multiple) sel.multiple = true;
  if (list || multiple) sel.size = model.get('rows') || Math.min(Math.max(options(model).length, 2), 8);
  const render = () => {
    const opts = options(model);
    sel.replaceChildren(...opts.map((o, i) => el('option', { value: String(i), text: o })));
    const idx = selectedIndex(model);
    if (multiple) {
      const set = new Set(Array.isArray(idx) ? idx : (model.get('value') || []).map((v) => opts.indexOf(String(v))));
      for (const o of sel.options) o.selected = set.has(Number(o.value));
    } else sel.value = String(idx);
  };
  sel.addEventListener('change', () => {
    if (multiple) {
      const idx = [...sel.selectedOptions].map((o) => Number(o.value));
      if ('index' in model.state || model.protocol !== 'old') model.set({ index: idx }, ctx.area);
      else model.set({ value: idx.map((i) => options(model)[i]) }, ctx.area);
    } else selectIndex(model, Number(sel.value), ctx.area);
  });
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  setDisabled(model, [sel]);
  sel.setAttribute('aria-label', model.get('description') || 'choice');
  return makeControl(model, ctx, sel);
}

function radioView(model, ctx) {
  const box = el('div', { class: 'cg-w-radios', role: 'radiogroup' });
  const name = `cgr-${model.id}-${Math.random().toString(36).slice(2, 7)}`;
  let inputs = [];
  const render = () => {
    const opts = options(model);
    const idx = selectedIndex(model);
    inputs = opts.map((o, i) => {
      const r = el('input', { type: 'radio', name, value: String(i) });
      r.checked = i === idx;
      r.disabled = !!model.get('disabled') || model.manager.disabled;
      r.addEventListener('change', () => r.checked && selectIndex(model, i, ctx.area));
      return r;
    });
    box.replaceChildren(...inputs.map((r, i) => el('label', { class: 'cg-w-radio' }, r, ` ${opts[i]}`)));
  };
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  model.on('dead', () => inputs.forEach((i) => (i.disabled = true)));
  return makeControl(model, ctx, box);
}

function toggleButtonsView(model, ctx) {
  const box = el('div', { class: 'cg-w-togglebuttons', role: 'group' });
  let buttons = [];
  const render = () => {
    const opts = options(model);
    const idx = selectedIndex(model);
    const tips = model.get('tooltips') || [];
    buttons = opts.map((o, i) => {
      const b = el('button', { type: 'button', class: `cg-w-button cg-w-toggle${i === idx ? ' cg-active' : ''}`, title: tips[i] || o, text: o });
      b.setAttribute('aria-pressed', String(i === idx));
      b.addEventListener('click', () => {
        selectIndex(model, i, ctx.area);
        render();
      });
      b.disabled = !!model.get('disabled') || model.manager.disabled;
      return b;
    });
    box.replaceChildren(...buttons);
  };
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  model.on('dead', () => buttons.forEach((b) => (b.disabled = true)));
  return makeControl(model, ctx, box);
}

function checkboxView(model, ctx) {
  const cb = el('input', { type: 'checkbox', class: 'cg-w-checkbox' });
  const render = () => (cb.checked = !!model.get('value'));
  cb.addEventListener('change', () => model.set({ value: cb.checked }, ctx.area));
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  setDisabled(model, [cb]);
  const label = el('label', { class: 'cg-w-checkbox-label' }, cb, ` ${model.get('indent') === false ? model.get('description') || '' : ''}`);
  cb.setAttribute('aria-label', model.get('description') || 'checkbox');
  return makeControl(model, ctx, label, { labelled: model.get('indent') !== false });
}

function toggleButtonView(model, ctx) {
  const b = el('button', { type: 'button', class: 'cg-w-button cg-w-toggle' });
  const render = () => {
    b.textContent = model.get('description') || '';
    b.title = model.get('tooltip') || '';
    b.classList.toggle('cg-active', !!model.get('value'));
    b.setAttribute('aria-pressed', String(!!model.get('value')));
  };
  b.addEventListener('click', () => model.set({ value: !model.get('value') }, ctx.area));
  render();
  model.on('change', () => render());
  setDisabled(model, [b]);
  return makeControl(model, ctx, b, { labelled: false });
}

function validView(model, ctx) {
  const s = el('span', { class: 'cg-w-valid' });
  const render = () => {
    const ok = !!model.get('value');
    s.textContent = ok ? '✔' : `✘ ${model.get('readout') || ''}`;
    s.className = `cg-w-valid ${ok ? 'cg-ok' : 'cg-bad'}`;
  };
  render();
  model.on('change', render);
  return makeControl(model, ctx, s);
}

function textView(model, ctx) {
  const area = model.viewName === 'Textarea';
  const numeric = /^(Int|Float|BoundedInt|BoundedFloat)Text$/.test(model.modelName) || /^(Int|Float)Text$/.test(model.viewName);
  const isInt = /Int/.test(model.modelName);
  const input = area
    ? el('textarea', { class: 'cg-w-textarea', rows: String(model.get('rows') || 4) })
    : el('input', { class: 'cg-w-text', type: model.viewName === 'Password' ? 'password' : numeric ? 'number' : 'text' });
  if (numeric) {
    if (model.get('min') !== undefined) input.min = String(model.get('min'));
    if (model.get('max') !== undefined) input.max = String(model.get('max'));
    input.step = String(model.get('step') ?? (isInt ? 1 : 'any'));
  }
  const placeholder = model.get('placeholder');
  if (placeholder && placeholder !== '\u200b') input.placeholder = placeholder;
  const read = () => (numeric ? (isInt ? parseInt(input.value, 10) : parseFloat(input.value)) : input.value);
  const render = () => {
    if (document.activeElement !== input) input.value = model.get('value') ?? '';
  };
  const push = () => {
    const v = read();
    if (numeric && !isFinite(v)) return;
    model.set({ value: v }, ctx.area);
  };
  input.addEventListener('input', () => {
    if (model.get('continuous_update') !== false && !numeric) push();
  });
  input.addEventListener('change', push);
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !area) {
      push();
      // ipywidgets' Text.on_submit.
      model.custom({ event: 'submit' }, ctx.area);
    }
  });
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  // Textarea.scroll_to_bottom()
  model.on('custom', (c) => c && c.method === 'scroll_to_bottom' && (input.scrollTop = input.scrollHeight));
  setDisabled(model, [input]);
  input.setAttribute('aria-label', model.get('description') || 'text');
  return makeControl(model, ctx, input);
}

function buttonView(model, ctx) {
  const b = el('button', { type: 'button', class: 'cg-w-button' });
  const render = () => {
    b.textContent = model.get('description') || '';
    b.title = model.get('tooltip') || '';
    const style = model.get('button_style');
    b.className = `cg-w-button${style ? ` cg-w-style-${style}` : ''}`;
  };
  b.addEventListener('click', () => model.custom({ event: 'click' }, ctx.area));
  render();
  model.on('change', render);
  setDisabled(model, [b]);
  return makeControl(model, ctx, b, { labelled: false });
}

function htmlView(model, ctx) {
  const box = el('div', { class: 'cg-w-html-content' });
  const kind = model.viewName;
  const render = () => {
    const v = model.get('value') || '';
    if (kind === 'Label') {
      box.textContent = v;
      if (/[$\\]/.test(v)) typeset(box);
    } else box.replaceChildren(sanitizedNode(v, 'cg-w-html-body'));
  };
  render();
  model.on('change', render);
  return makeControl(model, ctx, box);
}

function colorView(model, ctx) {
  const input = el('input', { type: 'color', class: 'cg-w-color' });
  const toHex = (c) => {
    if (/^#[0-9a-f]{6}$/i.test(c)) return c;
    if (/^#[0-9a-f]{3}$/i.test(c)) return `#${c[1]}${c[1]}${c[2]}${c[2]}${c[3]}${c[3]}`;
    const probe = document.createElement('canvas').getContext('2d');
    probe.fillStyle = c || '#000';
    return probe.fillStyle;
  };
  const render = () => (input.value = toHex(model.get('value') || '#000000'));
  input.addEventListener('change', () => model.set({ value: input.value }, ctx.area));
  render();
  model.on('change', (p, fromUser) => !fromUser && render());
  setDisabled(model, [input]);
  return makeControl(model, ctx, input);
}

function progressView(model, ctx) {
  const p = el('progress', { class: 'cg-w-progress' });
  const render = () => {
    p.max = (model.get('max') ?? 100) - (model.get('min') ?? 0);
    p.value = (model.get('value') ?? 0) - (model.get('min') ?? 0);
  };
  render();
  model.on('change', render);
  return makeControl(model, ctx, p);
}

function imageView(model, ctx) {
  const img = el('img', { class: 'cg-image' });
  let url = null;
  const render = () => {
    const v = model.get('value');
    if (url) URL.revokeObjectURL(url);
    url = null;
    const b64 = model.get('_b64value'); // ipywidgets 6 sends images as base64
    if (v && v.buffer) {
      url = URL.createObjectURL(new Blob([v], { type: `image/${model.get('format') || 'png'}` }));
      img.src = url;
    } else if (typeof b64 === 'string' && b64) {
      img.src = `data:image/${encodeURIComponent(model.get('format') || 'png')};base64,${b64.replace(/[^A-Za-z0-9+/=]/g, '')}`;
    }
    if (model.get('width')) img.style.width = /^\d+$/.test(model.get('width')) ? `${model.get('width')}px` : model.get('width');
    if (model.get('height')) img.style.height = /^\d+$/.test(model.get('height')) ? `${model.get('height')}px` : model.get('height');
  };
  render();
  model.on('change', render);
  return makeControl(model, ctx, img, { labelled: false });
}

function boxView(model, ctx) {
  const name = model.viewName;
  const horizontal = name === 'HBox' || name === 'Grid';
  const root = el('div', { class: `cg-widget cg-w-box ${horizontal ? 'cg-w-hbox' : name === 'GridBox' ? 'cg-w-gridbox' : 'cg-w-vbox'}` });
  const render = () => {
    const kids = (model.get('children') || []).map((c) => model.ref(c)).filter((m) => m instanceof WidgetModel);
    root.replaceChildren(...kids.map((m) => renderView(m, ctx)));
  };
  render();
  model.on('change', (p) => {
    if ('children' in p) render();
  });
  applyLayout(model, root);
  applyClasses(model, root);
  return root;
}

function tabView(model, ctx) {
  const accordion = model.viewName === 'Accordion';
  const root = el('div', { class: `cg-widget cg-view-${accordion ? 'accordion' : 'tab'}` });
  const render = () => {
    const kids = (model.get('children') || []).map((c) => model.ref(c)).filter((m) => m instanceof WidgetModel);
    const titles = model.get('_titles') || model.get('titles') || {};
    let selected = model.get('selected_index') ?? 0;
    const head = el('div', { class: 'cg-w-tabbar', role: 'tablist' });
    const bodies = kids.map((m) => el('div', { class: 'cg-w-tabbody' }, renderView(m, ctx)));
    const show = (i) => {
      bodies.forEach((b, j) => (b.hidden = j !== i));
      [...head.children].forEach((b, j) => b.classList.toggle('cg-active', j === i));
    };
    kids.forEach((m, i) => {
      const b = el('button', { type: 'button', class: 'cg-w-tab', text: titles[i] ?? titles[String(i)] ?? `Tab ${i + 1}` });
      b.addEventListener('click', () => {
        selected = i;
        show(i);
        model.set({ selected_index: i }, ctx.area);
      });
      head.append(b);
    });
    root.replaceChildren(head, ...bodies);
    show(selected);
  };
  render();
  model.on('change', (p, fromUser) => {
    if (!fromUser && ('children' in p || 'selected_index' in p || '_titles' in p || 'titles' in p)) render();
  });
  applyLayout(model, root);
  return root;
}

function outputView(model, ctx) {
  const root = el('div', { class: 'cg-widget cg-w-output' });
  const area = new OutputArea(root, { kernel: model.manager.kernel, widgets: model.manager });
  model.areas.add(area);
  for (const msg of model.outputs) area.handle(msg);
  if (Array.isArray(model.get('outputs')) && model.get('outputs').length && !model.outputs.length) renderNbOutputs(area, model.get('outputs'));
  // Outputs the kernel sets (nbformat) replace what the area shows.
  model.on('change', (patch) => {
    if ('outputs' in patch && Array.isArray(patch.outputs) && patch.outputs.length && model.areas.has(area)) renderNbOutputs(area, patch.outputs);
  });
  applyLayout(model, root);
  return root;
}

const VIEWS = {
  IntSlider: sliderView,
  FloatSlider: sliderView,
  FloatLogSlider: sliderView,
  IntRangeSlider: sliderView,
  FloatRangeSlider: sliderView,
  SelectionSlider: selectionSliderView,
  SelectionRangeSlider: selectionSliderView,
  Dropdown: dropdownView,
  Select: dropdownView,
  SelectMultiple: dropdownView,
  RadioButtons: radioView,
  ToggleButtons: toggleButtonsView,
  Checkbox: checkboxView,
  ToggleButton: toggleButtonView,
  Valid: validView,
  Text: textView,
  Textarea: textView,
  Password: textView,
  Combobox: textView,
  IntText: textView,
  FloatText: textView,
  BoundedIntText: textView,
  BoundedFloatText: textView,
  Button: buttonView,
  HTML: htmlView,
  HTMLMath: htmlView,
  Label: htmlView,
  ColorPicker: colorView,
  Progress: progressView,
  Image: imageView,
  Box: boxView,
  HBox: boxView,
  VBox: boxView,
  GridBox: boxView,
  Grid: boxView,
  Tab: tabView,
  Accordion: tabView,
  Output: outputView,
};

/** renderView renders a view of model (ctx.area is the cell's output area). */
export function renderView(model, ctx) {
  const make = VIEWS[model.viewName];
  if (!make) {
    return el('div', { class: 'cg-widget cg-w-unsupported', text: `[${model.get('_view_name') || model.get('_model_name') || 'widget'} is not supported here]` });
  }
  const node = make(model, ctx);
  model.on('close', () => node.remove());
  model.on('dead', () => node.classList.add('cg-w-dead'));
  if (model.manager.readOnly) {
    // A stored result's widget: its saved state, with no kernel to talk to.
    node.classList.add('cg-w-stored');
  } else if (model.manager.disabled) node.classList.add('cg-w-dead');
  return node;
}
