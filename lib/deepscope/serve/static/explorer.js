// The explorer's pages: plain JS, no build step. The URL's query string holds the whole view
// (view=gallery|image|units|unit|map|search and its filters), so any view can be shared.
'use strict';
const main = document.getElementById('main'), errBox = document.getElementById('err');
let INFO = null;
const enc = encodeURIComponent;
const thumbUrl = id => '/api/thumb?id=' + enc(id);

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e[k] = v; else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function fmt(v) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number' && !Number.isInteger(v)) return v.toPrecision(3);
  return String(v);
}
async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) { errBox.textContent = body.detail || r.statusText; throw new Error(body.detail); }
  errBox.textContent = '';
  return body;
}
function params() { return new URLSearchParams(location.search); }
function go(p, replace) {  // p: URLSearchParams or object
  const q = p instanceof URLSearchParams ? p : new URLSearchParams(p);
  history[replace ? 'replaceState' : 'pushState'](null, '', '?' + q.toString());
  route();
}
function link(p, text, cls) {
  const q = new URLSearchParams(p);
  return el('a', {href: '?' + q.toString(), class: cls, onclick: e => { e.preventDefault(); go(q); }}, text);
}
// an image that failed to decode has no picture: a grey square instead of a request that 404s
const NO_PICTURE = 'data:image/svg+xml,' + enc('<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128">' +
  '<rect width="128" height="128" fill="#ddd"/><text x="64" y="70" font-size="14" text-anchor="middle" fill="#777">' +
  'no picture</text></svg>');
function tile(id, caption, cls, noPicture) {
  return el('figure', {class: 'tile ' + (cls || ''), title: id, 'data-id': id, onclick: () => go({view: 'image', id})},
            el('img', {src: noPicture ? NO_PICTURE : thumbUrl(id), loading: 'lazy', alt: id}), el('figcaption', {}, caption));
}

// -- gallery --------------------------------------------------------------------------------
const SKIP = new Set(['view', 'page', 'per', 'sort']);
async function gallery(p) {
  const fields = INFO.fields;
  const form = el('div', {class: 'filters'});
  const setParam = (key, value) => {
    const q = params(); q.delete(key); q.delete('page');
    if (value !== '' && value !== null) q.set(key, value);
    q.set('view', 'gallery'); go(q);
  };
  form.append(el('label', {}, 'id or path contains ',
    el('input', {type: 'search', value: p.get('q') || '', onchange: e => setParam('q', e.target.value)})));
  for (const f of fields) {
    if (f.name === 'id' || f.name === 'map_x' || f.name === 'map_y') continue;
    const fs = el('fieldset', {}, el('legend', {}, f.name));
    if (f.kind === 'bool') {
      const s = el('select', {name: f.name, onchange: e => setParam(f.name, e.target.value)},
                   ...['', 'true', 'false'].map(v => el('option', {value: v}, v || 'any')));
      s.value = p.get(f.name) || ''; fs.append(s);
    } else if (f.kind === 'number') {
      for (const op of ['min', 'max']) {
        const key = f.name + '.' + op;
        fs.append(el('label', {style: 'display:inline'}, op + ' ',
          el('input', {type: 'number', step: 'any', name: key, value: p.get(key) || '',
                       onchange: e => setParam(key, e.target.value)})), ' ');
      }
    } else if (f.values) {
      const s = el('select', {name: f.name, onchange: e => setParam(f.name, e.target.value)},
                   el('option', {value: ''}, 'any'), ...f.values.map(v => el('option', {value: v}, v)));
      s.value = p.get(f.name) || ''; fs.append(s);
    }
    const nk = f.name + '.null';
    const s = el('select', {name: nk, onchange: e => setParam(nk, e.target.value)},
                 el('option', {value: ''}, 'with or without'), el('option', {value: 'false'}, 'present'),
                 el('option', {value: 'true'}, 'missing'));
    s.value = p.get(nk) || ''; fs.append(' ', s);
    form.append(fs);
  }
  const sort = el('select', {id: 'sort', onchange: e => setParam('sort', e.target.value)},
                  el('option', {value: ''}, 'id'),
                  ...fields.filter(f => f.name !== 'id').flatMap(f => [el('option', {value: '-' + f.name}, f.name + ' ↓'),
                                                                        el('option', {value: f.name}, f.name + ' ↑')]));
  sort.value = p.get('sort') || '';
  const chips = el('span', {});
  for (const [k, v] of p) {
    if (SKIP.has(k)) continue;
    const text = k === 'lasso' ? `lasso of ${v.split(',').length / 2} vertices` :
                 k + (k.endsWith('.min') ? ' ≥ ' : k.endsWith('.max') ? ' ≤ ' : ' = ') + v;
    chips.append(el('span', {class: 'chip'}, text,
      k === 'box' || k === 'lasso' ? ' · ' : null, k === 'box' || k === 'lasso' ? link({view: 'map', [k]: v}, 'on the map') : null,
      el('button', {title: 'remove', onclick: () => { const q = params(); q.delete(k); q.delete('page'); go(q); }}, '×')));
  }
  const count = el('span', {id: 'count'}, '…'), grid = el('div', {class: 'grid', id: 'grid'}), pager = el('div', {class: 'bar'});
  main.replaceChildren(el('div', {class: 'gallery'}, form,
    el('div', {}, el('div', {class: 'bar'}, count, el('label', {}, 'sort ', sort), chips), grid, pager)));
  const q = new URLSearchParams(p); q.delete('view'); if (!q.get('per')) q.set('per', '60');
  const body = await api('/api/images?' + q.toString());
  const page = body.page, pages = Math.max(1, Math.ceil(body.total / body.per));
  count.textContent = body.total.toLocaleString() + ' images';
  for (const r of body.rows) {
    const cap = (r.label || '') + (r.label_flagged ? ' ⚑ ' + (r.majority_label || '') : '') +
                (r.uniqueness !== undefined && r.uniqueness !== null ? ' · u ' + fmt(r.uniqueness) : '') +
                (r.error ? ' · error' : '');
    grid.append(tile(r.id, cap, (r.label_flagged ? 'flag' : '') + (r.error ? ' err' : ''), r.error && !r.width));
  }
  const to = n => { const q2 = params(); q2.set('page', n); return q2; };
  if (page > 0) pager.append(link(to(page - 1), '← previous'));
  pager.append(` page ${page + 1} of ${pages} `);
  if (page + 1 < pages) pager.append(link(to(page + 1), 'next →', 'next'));
}

// -- one image ----------------------------------------------------------------------------
async function image(p) {
  const id = p.get('id');
  const d = await api('/api/image?id=' + enc(id));
  const kv = el('table', {class: 'kv'});
  for (const [k, v] of Object.entries(d)) {
    if (['neighbors', 'duplicates', 'units', 'saliency', 'row'].includes(k)) continue;
    kv.append(el('tr', {}, el('td', {}, k), el('td', {}, fmt(v))));
  }
  const more = el('button', {id: 'more', onclick: () => go({view: 'search', id})}, 'more like this');
  const copiesOf = INFO.thumbs && INFO.index_spaces.length ?
    el('button', {id: 'copies-of', onclick: () => go({view: 'search', id, copies: '1'})}, 'copies of this') : null;
  const parts = [el('h2', {id: 'title'}, id),
    el('div', {class: 'image-head'}, el('img', {class: 'big', alt: id, src: d.error ? NO_PICTURE : '/api/original?id=' + enc(id),
                                              onerror: e => { if (!e.target.src.includes('/api/thumb')) e.target.src = thumbUrl(id); }}),
        el('div', {}, more, ' ', copiesOf, kv))];
  const maps = el('div', {class: 'maps'});
  for (const m of d.saliency) maps.append(el('figure', {}, el('img', {src: `/api/saliency?id=${enc(id)}&method=${enc(m)}`}),
                                          el('figcaption', {}, 'saliency: ' + m)));
  if (d.adversarial) maps.append(el('figure', {}, el('img', {src: '/api/adversarial?id=' + enc(id)}),
                                   el('figcaption', {}, `adversarial at eps ${fmt(d.min_eps)}: ${fmt(d.pred)} → ${fmt(d.adv_pred)}`)));
  if (maps.children.length) parts.push(el('h2', {}, 'Saliency and robustness'), maps);
  for (const [space, list] of Object.entries(d.neighbors)) {
    const g = el('div', {class: 'grid', id: 'nb-' + space});
    for (const n of list) g.append(tile(n.id, `${fmt(n.distance)} ${n.label || ''}`));
    parts.push(el('h2', {}, `Nearest in ${space} space`), g);
  }
  if (d.duplicates.length) {
    const g = el('div', {class: 'grid', id: 'dups'});
    for (const n of d.duplicates) g.append(tile(n.id, 'duplicate ' + fmt(n.distance)));
    const verdict = d.duplicate_of ? `a copy of ${d.duplicate_of}, which is kept`
      : d.group_chosen ? 'kept' : 'none chosen (no thumbnails: no sizes)';
    parts.push(el('h2', {}, `Near-duplicates (group of ${d.group_size}; this image: ${verdict})`), g);
  }
  if (d.units.length) {
    const g = el('div', {class: 'grid', id: 'units'});
    for (const u of d.units) {
      const f = el('figure', {class: 'tile unit', title: `${u.layer} unit ${u.unit}`,
                              onclick: () => go({view: 'unit', layer: u.layer, unit: u.unit})},
        el('img', {src: `/api/patch?layer=${enc(u.layer)}&unit=${u.unit}&rank=${u.rank}`}),
        el('figcaption', {}, `${u.layer}:${u.unit} #${u.rank + 1}` + (u.concept ? ' ' + u.concept : '')));
      g.append(f);
    }
    parts.push(el('h2', {}, 'Units it drives hardest (its patch among their top images)'), g);
  }
  main.replaceChildren(...parts);
}

// -- units ----------------------------------------------------------------------------------
async function units(p) {
  const q = new URLSearchParams(p); q.delete('view');
  const d = await api('/api/units?' + q.toString());
  const layerSel = el('select', {id: 'layer', onchange: e => go({view: 'units', layer: e.target.value})},
                      ...d.layers.map(l => el('option', {value: l}, l)));
  layerSel.value = d.layer || '';
  const cols = ['unit', 'concept', 'category', 'iou', 'top_score', 'patches'];
  const cur = p.get('sort') || 'unit';
  const head = el('tr', {}, ...cols.map(c => el('th', {onclick: () => {
    const q2 = params(); q2.set('sort', cur === '-' + c ? c : (cur === c ? '-' + c : (c === 'iou' || c === 'top_score' ? '-' + c : c))); go(q2);
  }}, c + (cur === c ? ' ↑' : cur === '-' + c ? ' ↓' : ''))), el('th', {}, 'picture'), el('th', {}, 'top patches'));
  const t = el('table', {class: 'units', id: 'unit-table'}, head);
  for (const u of d.units) {
    const pic = u.picture ? el('img', {src: `/api/picture?layer=${enc(d.layer)}&unit=${u.unit}`}) : '';
    const tops = el('td', {}, ...u.top.map(x => el('img', {src: `/api/patch?layer=${enc(d.layer)}&unit=${u.unit}&rank=${x.rank}`, title: x.id})));
    t.append(el('tr', {'data-unit': u.unit, onclick: () => go({view: 'unit', layer: d.layer, unit: u.unit})},
      ...cols.map(c => el('td', {}, fmt(u[c]))), el('td', {}, pic), tops));
  }
  main.replaceChildren(el('div', {class: 'bar'}, el('label', {}, 'layer ', layerSel), `${d.units.length} units`), t);
}

async function unit(p) {
  const layer = p.get('layer'), u = p.get('unit');
  const d = await api(`/api/unit?layer=${enc(layer)}&unit=${enc(u)}`);
  const parts = [el('h2', {id: 'title'}, `${layer} unit ${u}` + (d.concept ? ` — ${d.concept} (IoU ${fmt(d.iou)})` : '')),
                 link({view: 'units', layer}, '← all units of ' + layer)];
  if (d.picture) parts.push(el('div', {class: 'maps'}, el('figure', {}, el('img', {src: `/api/picture?layer=${enc(layer)}&unit=${u}`}),
                                                          el('figcaption', {}, 'its picture (gradient ascent)'))));
  const g = el('div', {class: 'grid', id: 'drivers'});
  for (const x of d.patches) {
    const f = tile(x.id, `#${x.rank + 1} ${fmt(x.score)} ${x.label || ''}`);
    f.querySelector('img').src = `/api/patch?layer=${enc(layer)}&unit=${u}&rank=${x.rank}`;
    g.append(f);
  }
  parts.push(el('h2', {}, 'The images that drive it hardest (their patches)'), g);
  if (d.dissection_top.length) {
    const g2 = el('div', {class: 'grid'});
    for (const x of d.dissection_top) g2.append(tile(x.id, `#${x.rank + 1} ${fmt(x.score)}`));
    parts.push(el('h2', {}, 'Top images of the dissection pass'), g2);
  }
  if (d.concepts.length) {
    const t = el('table', {class: 'kv'});
    for (const c of d.concepts) t.append(el('tr', {}, el('td', {}, c.rank), el('td', {}, c.concept), el('td', {}, c.category), el('td', {}, fmt(c.iou))));
    parts.push(el('h2', {}, 'Concepts (network dissection)'), t);
  }
  main.replaceChildren(...parts);
}

// -- map ------------------------------------------------------------------------------------
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
                 '#17becf', '#aec7e8', '#ffbb78', '#98df8a', '#ff9896', '#c5b0d5', '#c49c94', '#f7b6d2', '#dbdb8d'];
let MAP = null;  // {meta, x, y, c}: fetched once per page load
async function mapView(p) {
  const W = Math.min(1100, window.innerWidth - 40), H = Math.min(760, window.innerHeight - 130);
  const canvas = el('canvas', {id: 'map', width: W, height: H});
  const help = el('div', {id: 'maphelp'}, 'Drag to pan, wheel to zoom (thumbnails appear when few points are in view); ' +
                  'select with a box (shift-drag) or a lasso (alt-drag) to show those images in the gallery. Drag: ');
  const tool = el('select', {id: 'tool'}, ...['pan', 'box', 'lasso'].map(t => el('option', {value: t}, t)));
  help.append(tool);
  const legend = el('div', {class: 'legend'});
  main.replaceChildren(help, el('div', {id: 'mapwrap'}, canvas), legend);
  if (!MAP) {
    const meta = await api('/api/map');
    if (!meta.n) { help.textContent = 'This folder has no map: run `deepscope map OUT`.'; return; }
    const buf = await (await fetch('/api/map/points')).arrayBuffer();
    MAP = {meta, x: new Float32Array(buf, 0, meta.n), y: new Float32Array(buf, 4 * meta.n, meta.n),
           c: new Uint16Array(buf, 8 * meta.n, meta.n)};
  }
  const {meta} = MAP;
  meta.labels.slice(0, 18).forEach((l, i) => legend.append(el('span', {}, el('i', {style: 'background:' + PALETTE[i]}), l)));
  const [bx0, by0, bx1, by1] = meta.bounds;
  // the view: data coordinates of the canvas centre and pixels per unit (from the URL if there)
  const v = {cx: +(p.get('cx') || (bx0 + bx1) / 2), cy: +(p.get('cy') || (by0 + by1) / 2),
             s: +(p.get('s') || 0.95 * Math.min(W / (bx1 - bx0 || 1), H / (by1 - by0 || 1)))};
  // the gallery's map selection, drawn as an outline: a lasso's vertices or a box's corners
  const sel = (p.get('lasso') || p.get('box') || '').split(',').filter(t => t !== '').map(Number), shown = [];
  if (p.get('lasso')) for (let i = 0; i + 1 < sel.length; i += 2) shown.push([sel[i], sel[i + 1]]);
  else if (sel.length === 4) shown.push([sel[0], sel[1]], [sel[2], sel[1]], [sel[2], sel[3]], [sel[0], sel[3]]);
  const rgb = PALETTE.map(h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)));
  const ctx = canvas.getContext('2d');
  const toPx = (x, y) => [(x - v.cx) * v.s + W / 2, H / 2 - (y - v.cy) * v.s];
  const toData = (px, py) => [(px - W / 2) / v.s + v.cx, (H / 2 - py) / v.s + v.cy];
  let thumbs = [], pending = 0;
  function draw() {
    const img = ctx.createImageData(W, H), d = img.data;
    d.fill(255);
    const {x, y, c} = MAP, n = x.length, r = n < 20000 ? 2 : n < 200000 ? 1 : 0;  // dot radius, pixels
    for (let i = 0; i < n; i++) {
      const px = ((x[i] - v.cx) * v.s + W / 2) | 0, py = (H / 2 - (y[i] - v.cy) * v.s) | 0;
      if (px < r || py < r || px >= W - r || py >= H - r) continue;
      const col = c[i] ? rgb[(c[i] - 1) % rgb.length] : [120, 120, 120];
      for (let oy = -r; oy <= r; oy++) for (let ox = -r; ox <= r; ox++) {
        const k = 4 * ((py + oy) * W + px + ox);
        d[k] = col[0]; d[k + 1] = col[1]; d[k + 2] = col[2];
      }
    }
    ctx.putImageData(img, 0, 0);
    if (shown.length > 2) {  // the selection the gallery came from
      ctx.strokeStyle = '#000'; ctx.setLineDash([4, 3]); ctx.beginPath();
      shown.forEach(([x, y], i) => { const [px, py] = toPx(x, y); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
      ctx.closePath(); ctx.stroke(); ctx.setLineDash([]);
    }
    for (const t of thumbs) {
      if (!t.img.complete || !t.img.naturalWidth) continue;
      const [px, py] = toPx(t.x, t.y), side = 48;
      ctx.drawImage(t.img, px - side / 2, py - side / 2, side, side);
    }
  }
  function visibleBox() { const [x0, y0] = toData(0, H), [x1, y1] = toData(W, 0); return [x0, y0, x1, y1]; }
  async function loadThumbs() {  // zoomed in: the points in view, as thumbnails
    const [x0, y0, x1, y1] = visibleBox(), {x, y} = MAP;
    let inView = 0;
    for (let i = 0; i < x.length && inView <= 150; i++) if (x[i] >= x0 && x[i] <= x1 && y[i] >= y0 && y[i] <= y1) inView++;
    if (inView > 150) { thumbs = []; return; }
    const ticket = ++pending;
    const got = await api(`/api/map/near?box=${[x0, y0, x1, y1].join(',')}&limit=150`);
    if (ticket !== pending) return;
    thumbs = got.map(g => { const img = new Image(); img.onload = draw; img.src = thumbUrl(g.id); return {...g, img}; });
  }
  function remember() {
    const q = params(); q.set('view', 'map'); q.set('cx', v.cx.toPrecision(6)); q.set('cy', v.cy.toPrecision(6));
    q.set('s', v.s.toPrecision(6)); history.replaceState(null, '', '?' + q.toString());
  }
  let drag = null;
  canvas.onmousedown = e => {
    const mode = e.shiftKey ? 'box' : e.altKey ? 'lasso' : tool.value;
    drag = {x: e.offsetX, y: e.offsetY, cx: v.cx, cy: v.cy, mode, pts: [[e.offsetX, e.offsetY]]};
    if (mode !== 'pan') e.preventDefault();
  };
  canvas.onmousemove = e => {
    if (!drag) return;
    if (drag.mode === 'box') {
      draw(); ctx.strokeStyle = '#000'; ctx.setLineDash([4, 3]);
      ctx.strokeRect(drag.x, drag.y, e.offsetX - drag.x, e.offsetY - drag.y); ctx.setLineDash([]);
    } else if (drag.mode === 'lasso') {
      const [lx, ly] = drag.pts[drag.pts.length - 1];
      if (Math.hypot(e.offsetX - lx, e.offsetY - ly) < 3) return;
      drag.pts.push([e.offsetX, e.offsetY]);
      draw(); ctx.strokeStyle = '#000'; ctx.setLineDash([4, 3]); ctx.beginPath();
      drag.pts.forEach(([px, py], i) => i ? ctx.lineTo(px, py) : ctx.moveTo(px, py));
      ctx.closePath(); ctx.stroke(); ctx.setLineDash([]);
    } else { v.cx = drag.cx - (e.offsetX - drag.x) / v.s; v.cy = drag.cy + (e.offsetY - drag.y) / v.s; draw(); }
  };
  canvas.onmouseup = e => {
    const d0 = drag; drag = null;
    if (!d0) return;
    if (d0.mode === 'box' && Math.abs(e.offsetX - d0.x) > 3 && Math.abs(e.offsetY - d0.y) > 3) {
      const [x0, y0] = toData(d0.x, d0.y), [x1, y1] = toData(e.offsetX, e.offsetY);
      selectBox(x0, y0, x1, y1); return;
    }
    if (d0.mode === 'lasso' && d0.pts.length >= 3) { selectLasso(d0.pts.map(([px, py]) => toData(px, py))); return; }
    if (d0.mode !== 'pan') { draw(); return; }
    remember(); loadThumbs();
  };
  canvas.onwheel = e => {
    e.preventDefault();
    const [dx, dy] = toData(e.offsetX, e.offsetY), f = Math.exp(-e.deltaY * 0.0015);
    v.s *= f; v.cx = dx - (e.offsetX - W / 2) / v.s; v.cy = dy + (e.offsetY - H / 2) / v.s;
    draw(); remember(); loadThumbs();
  };
  canvas.ondblclick = e => {  // open the image under the pointer
    const hit = thumbs.find(t => { const [px, py] = toPx(t.x, t.y); return Math.abs(px - e.offsetX) < 24 && Math.abs(py - e.offsetY) < 24; });
    if (hit) go({view: 'image', id: hit.id});
  };
  window.selectBox = (x0, y0, x1, y1) =>
    go({view: 'gallery', box: [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map(t => t.toPrecision(6)).join(',')});
  window.selectLasso = pts => {  // at most 256 vertices: every k-th point of the stroke
    const k = Math.ceil(pts.length / 256);
    go({view: 'gallery', lasso: pts.filter((_, i) => i % k === 0).flat().map(t => t.toPrecision(6)).join(',')});
  };
  draw(); loadThumbs();
}

// -- search ---------------------------------------------------------------------------------
// Neighbours of an upload or an id, or its copies (each candidate verified on the thumbnails as `deepscope knn` does).
async function search(p) {
  const spaces = INFO.index_spaces, copies = p.get('copies') === '1';
  const kind = () => el('select', {name: 'what', title: 'copies: the k nearest in every space, each verified on the thumbnails',
      onchange: e => { const sp = e.target.form.querySelector('[name=space]'); if (sp) sp.disabled = e.target.value === 'copies'; }},
    el('option', {value: 'neighbors'}, 'nearest neighbours'),
    el('option', {value: 'copies', selected: copies || null, disabled: INFO.thumbs ? null : true}, 'copies of it'));
  const form = el('form', {id: 'upload'}, el('input', {type: 'file', name: 'image', accept: 'image/*', required: true}),
    ' k ', el('input', {name: 'k', type: 'number', value: p.get('k') || (copies ? 5 : 20), min: 1, max: 1000, style: 'width:5em'}),
    ' space ', el('select', {name: 'space', disabled: copies || null}, ...spaces.map(s => el('option', {}, s))), ' ', kind(), ' ',
    el('button', {}, 'search by upload'));
  const byId = el('form', {id: 'byid'}, 'or by id ', el('input', {name: 'id', value: p.get('id') || '', size: 40}), ' ', kind(), ' ',
                  el('button', {}, 'search'));
  const out = el('div', {class: 'grid', id: 'results'}), said = el('p', {id: 'said'});
  main.replaceChildren(spaces.length ? form : el('p', {}, 'This folder has no index: run `deepscope index OUT` to search it.'),
                       spaces.length ? byId : '', el('h2', {}, 'Results'), said, out);
  const show = body => {
    said.textContent = '';
    out.replaceChildren(...body.neighbors.map(n => tile(n.id, `${n.rank}: ${fmt(n.distance)} ${n.label || ''}`)));
  };
  const showCopies = body => {  // copies first, framed; every other candidate says why it is not one
    said.textContent = `${body.copies} of ${body.candidates} candidates are copies (verified in ${body.seconds} s)`;
    out.replaceChildren(...body.results.map(r => {
      const t = tile(r.id, r.copy ? `copy, ${r.tier}: ${r.why}` : `not a copy: ${r.why}`, r.copy ? 'copy' : 'other');
      t.title = `${r.id}\n${t.querySelector('figcaption').textContent}`;
      return t;
    }));
  };
  form.onsubmit = async e => {
    e.preventDefault();
    const fd = new FormData(form), what = fd.get('what');
    fd.delete('what');
    const body = await api('/api/' + what, {method: 'POST', body: fd});
    (what === 'copies' ? showCopies : show)(body);
  };
  byId.onsubmit = e => {
    e.preventDefault(); const fd = new FormData(byId), q = params();
    q.set('view', 'search'); q.set('id', fd.get('id'));
    if (fd.get('what') === 'copies') q.set('copies', '1'); else q.delete('copies');
    go(q);
  };
  if (p.get('id') && spaces.length) {
    const what = copies ? 'copies' : 'neighbors';
    const body = await api('/api/' + what, {method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({id: p.get('id'), k: +(p.get('k') || (copies ? 5 : 20)), space: p.get('space') || spaces[0]})});
    (copies ? showCopies : show)(body);
  }
}

// -- routing ----------------------------------------------------------------------------------
const VIEWS = {gallery, image, units, unit, map: mapView, search};
async function route() {
  const p = params(), view = p.get('view') || 'gallery';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('on', a.dataset.view === view);
  document.body.dataset.view = view;
  document.body.dataset.ready = '';
  try {
    if (!INFO) {
      INFO = await api('/api/info');
      document.getElementById('where').textContent = `${INFO.out}: ${INFO.images.toLocaleString()} images`;
    }
    await (VIEWS[view] || gallery)(p);
  } catch (e) {
    if (!errBox.textContent) errBox.textContent = String(e);
  }
  document.body.dataset.ready = view;  // tests wait for this
}
for (const a of document.querySelectorAll('nav a')) a.onclick = e => { e.preventDefault(); go({view: a.dataset.view}); };
window.onpopstate = route;
route();
