"use strict";
// patchlens patch explorer: cosine-similarity maps and PCA colours of compressed patch features.
// Data: the JSON in <script id="explorer-data"> (patchlens/report/explorer.py documents the
// encoding). Plain DOM and canvas 2D only. The last result of each panel is exposed on
// window.patchExplorer for tests: patchExplorer.result(panel) -> {sims, topk, ms, ...}.
(function () {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const EPS = 1e-12;
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  const $ = (id) => document.getElementById(id);
  const cache = new Map();
  const state = {dataset: null, variant: null, view: "sim", follow: false, opacity: 0.65,
                 topk: DATA.top_k, query: null};
  const panels = [0, 1].map((i) => ({index: i, model: null, layer: 0, cards: [], result: null}));

  function option(sel, value, text) {
    const o = document.createElement("option");
    o.value = value; o.textContent = text; sel.appendChild(o);
  }

  function decoded(dataset, model, variant, li) {
    // unit-length rows (Float64Array, N x D) and PCA scores of one (model, variant, layer)
    const key = [dataset, model, variant, li].join("|");
    if (cache.has(key)) return cache.get(key);
    const m = DATA.datasets[dataset].models[model];
    const e = m.variants[variant][li];
    const bin = atob(e.codes), bin4 = atob(e.codes4);
    const D8 = e.scale.length, D4 = e.scale4.length, B4 = Math.ceil(D4 / 2), D = D8 + D4;
    const N = bin.length / D8;
    const unit = new Float64Array(N * D), pca = new Float64Array(N * 3);
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let d = 0; d < D8; d++) {  // int8: leading components, then the mean coordinate
        const v = ((bin.charCodeAt(n * D8 + d) << 24) >> 24) * e.scale[d];
        unit[n * D + d] = v; s += v * v;
        if (d < 3 && d < D8 - 1) pca[n * 3 + d] = v - e.shift[d];
      }
      for (let d = 0; d < D4; d++) {  // 4-bit: code + 8, two per byte, low nibble first
        const byte = bin4.charCodeAt(n * B4 + (d >> 1));
        const v = (((d & 1) ? byte >> 4 : byte & 15) - 8) * e.scale4[d];
        unit[n * D + D8 + d] = v; s += v * v;
      }
      const norm = Math.sqrt(s);
      for (let d = 0; d < D; d++) unit[n * D + d] = norm > EPS ? unit[n * D + d] / norm : 0;
    }
    const out = {unit, pca, N, D};
    cache.set(key, out);
    return out;
  }

  function color(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  }

  function modelOf(p) { return p.model ? DATA.datasets[state.dataset].models[p.model] : null; }

  function buildPanel(p) {
    const root = $("panel" + p.index);
    const grid = root.querySelector(".cards");
    grid.textContent = "";
    p.cards = [];
    const m = modelOf(p);
    root.style.display = m ? "" : "none";
    if (!m) return;
    const slider = root.querySelector("input.layer");
    slider.max = String(m.layers.length - 1);
    p.layer = Math.min(p.layer, m.layers.length - 1);
    slider.value = String(p.layer);
    DATA.datasets[state.dataset].images.forEach((img, i) => {
      const card = document.createElement("figure");
      card.className = "card";
      const cv = document.createElement("canvas");
      cv.width = 140; cv.height = Math.round(140 * m.grid[0] / m.grid[1]);
      cv.dataset.image = String(i); cv.dataset.panel = String(p.index);
      cv.title = img.id;
      const cap = document.createElement("figcaption");
      cap.textContent = img.id;
      card.appendChild(cv); card.appendChild(cap); grid.appendChild(card);
      cv.addEventListener("click", (ev) => pick(ev, i, cv));
      cv.addEventListener("mousemove", (ev) => { if (state.follow) pick(ev, i, cv); });
      p.cards.push(cv);
    });
  }

  function pick(ev, image, cv) {
    const r = cv.getBoundingClientRect();
    const u = (ev.clientX - r.left) / r.width, v = (ev.clientY - r.top) / r.height;
    state.query = {image, u: Math.min(0.9999, Math.max(0, u)), v: Math.min(0.9999, Math.max(0, v))};
    render();
  }

  function similarity(p) {
    const m = modelOf(p), q = state.query;
    const [h, w] = m.grid;
    const row = Math.floor(q.v * h), col = Math.floor(q.u * w);
    const dec = decoded(state.dataset, p.model, state.variant, p.layer);
    const qi = (q.image * h + row) * w + col, D = dec.D, U = dec.unit;
    const sims = new Float64Array(dec.N);
    for (let n = 0; n < dec.N; n++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += U[n * D + d] * U[qi * D + d];
      sims[n] = s;
    }
    const order = Array.from(sims.keys()).filter((n) => n !== qi).sort((a, b) => sims[b] - sims[a]);
    return {model: p.model, variant: state.variant, layer: m.layers[p.layer],
            layer_name: m.layer_names[p.layer], image: q.image, row, col, query: qi,
            sims, topk: order.slice(0, state.topk)};
  }

  function paint(p, colours, outlines) {
    // colours: Uint8ClampedArray (N x 4) over every image's grid; outlines: [[index, style]]
    const m = modelOf(p), [h, w] = m.grid, imgs = DATA.datasets[state.dataset].images;
    const tmp = document.createElement("canvas");
    tmp.width = w; tmp.height = h;
    const tctx = tmp.getContext("2d");
    p.cards.forEach((cv, i) => {
      const ctx = cv.getContext("2d");
      ctx.globalAlpha = 1;
      ctx.drawImage(imgs[i].el, 0, 0, cv.width, cv.height);
      if (colours) {
        tctx.putImageData(new ImageData(colours.slice(i * h * w * 4, (i + 1) * h * w * 4), w, h), 0, 0);
        ctx.imageSmoothingEnabled = false;
        ctx.globalAlpha = state.opacity;
        ctx.drawImage(tmp, 0, 0, cv.width, cv.height);
        ctx.globalAlpha = 1;
      }
      const cw = cv.width / w, ch = cv.height / h;
      for (const [n, style] of outlines) {
        if (Math.floor(n / (h * w)) !== i) continue;
        const r = Math.floor((n % (h * w)) / w), c = n % w;
        ctx.lineWidth = 2; ctx.strokeStyle = style;
        ctx.strokeRect(c * cw + 1, r * ch + 1, cw - 2, ch - 2);
      }
    });
  }

  function renderPanel(p) {
    const m = modelOf(p);
    if (!m) { p.result = null; return; }
    const root = $("panel" + p.index);
    root.querySelector(".layer-name").textContent = m.layer_names[p.layer];
    const info = root.querySelector(".info");
    if (!m.variants[state.variant]) {
      info.textContent = "variant " + state.variant + " not available for this model";
      paint(p, null, []); p.result = null; return;
    }
    if (state.view === "pca") {
      const dec = decoded(state.dataset, p.model, state.variant, p.layer);
      const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
      for (let n = 0; n < dec.N; n++) for (let k = 0; k < 3; k++) {
        lo[k] = Math.min(lo[k], dec.pca[n * 3 + k]); hi[k] = Math.max(hi[k], dec.pca[n * 3 + k]);
      }
      const col = new Uint8ClampedArray(dec.N * 4), rgb = new Float64Array(dec.N * 3);
      for (let n = 0; n < dec.N; n++) {
        for (let k = 0; k < 3; k++) {
          const span = hi[k] - lo[k];
          rgb[n * 3 + k] = span > 0 ? (dec.pca[n * 3 + k] - lo[k]) / span : 0.5;
          col[n * 4 + k] = Math.round(255 * rgb[n * 3 + k]);
        }
        col[n * 4 + 3] = 255;
      }
      info.textContent = "first three principal components as RGB (fitted on these images)";
      paint(p, col, []);
      p.result = {view: "pca", model: p.model, variant: state.variant, layer: m.layers[p.layer], rgb};
      return;
    }
    if (!state.query) {
      info.textContent = "click a patch of any image";
      paint(p, null, []); p.result = null; return;
    }
    const t0 = performance.now();
    const res = similarity(p);
    let lo = Infinity, hi = -Infinity;
    for (const s of res.sims) { lo = Math.min(lo, s); hi = Math.max(hi, s); }
    const col = new Uint8ClampedArray(res.sims.length * 4);
    res.sims.forEach((s, n) => {
      const c = color(hi > lo ? (s - lo) / (hi - lo) : 1);
      col[n * 4] = c[0]; col[n * 4 + 1] = c[1]; col[n * 4 + 2] = c[2]; col[n * 4 + 3] = 255;
    });
    paint(p, col, [[res.query, "#ff2d2d"], ...res.topk.map((n) => [n, "#ffffff"])]);
    res.ms = performance.now() - t0;
    info.textContent = `patch (row ${res.row}, col ${res.col}) of ${DATA.datasets[state.dataset].images[res.image].id}: ` +
      `cosine ${lo.toFixed(3)} (dark) to ${hi.toFixed(3)} (yellow); red: the patch, white: the ${res.topk.length} most similar`;
    p.result = res;
  }

  function render() {
    const t0 = performance.now();
    panels.forEach(renderPanel);
    window.patchExplorer.lastMs = performance.now() - t0;
  }

  function fillModels() {
    const models = Object.keys(DATA.datasets[state.dataset].models);
    panels.forEach((p) => {
      const sel = $("panel" + p.index).querySelector("select.model");
      sel.textContent = "";
      if (p.index === 1) option(sel, "", "(none)");
      models.forEach((m) => option(sel, m, DATA.datasets[state.dataset].models[m].label));
      if (!models.includes(p.model)) p.model = p.index === 0 ? models[0] : (models[1] || "");
      sel.value = p.model;
    });
  }

  function setDataset(name) {
    state.dataset = name; state.query = null;
    fillModels();
    const imgs = DATA.datasets[name].images;
    let waiting = imgs.length;
    const done = () => { panels.forEach(buildPanel); render(); };
    imgs.forEach((img) => {
      if (img.el) { if (--waiting === 0) done(); return; }
      img.el = new Image();
      img.el.onload = () => { if (--waiting === 0) done(); };
      img.el.src = img.src;
    });
  }

  function init() {
    const ds = $("dataset"), vs = $("variant");
    Object.keys(DATA.datasets).forEach((d) => option(ds, d, d));
    DATA.variants.forEach((v) => option(vs, v, v));
    state.variant = DATA.variants[0];
    ds.addEventListener("change", () => setDataset(ds.value));
    vs.addEventListener("change", () => { state.variant = vs.value; render(); });
    $("view").addEventListener("change", (e) => { state.view = e.target.value; render(); });
    $("follow").addEventListener("change", (e) => { state.follow = e.target.checked; });
    $("opacity").addEventListener("input", (e) => { state.opacity = Number(e.target.value); render(); });
    $("topk").addEventListener("input", (e) => { state.topk = Math.max(0, Number(e.target.value) | 0); render(); });
    panels.forEach((p) => {
      const root = $("panel" + p.index);
      root.querySelector("select.model").addEventListener("change", (e) => {
        p.model = e.target.value; buildPanel(p); render();
      });
      root.querySelector("input.layer").addEventListener("input", (e) => {
        p.layer = Number(e.target.value); render();
      });
    });
    setDataset(Object.keys(DATA.datasets)[0]);
  }

  window.patchExplorer = {
    data: DATA, state, panels, lastMs: null,
    ready: () => panels[0].cards.length > 0,
    result: (i) => {  // plain arrays, so that tests can read them back
      const r = panels[i].result;
      if (!r) return r;
      return Object.assign({}, r, r.sims ? {sims: Array.from(r.sims)} : {},
                           r.rgb ? {rgb: Array.from(r.rgb)} : {});
    },
  };
  init();
})();
