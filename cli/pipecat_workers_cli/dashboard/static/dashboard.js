// The dashboard page: draws the snapshots the server pushes over server-sent events.
// Every string shown comes from workers, the bus or span files: it is set with textContent
// or setAttribute only, never parsed as HTML. The DOM is updated in place, keyed by name.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const query = "?token=" + encodeURIComponent(token);
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  // Render times and lags (snapshot made -> drawn) of the last 1000 updates, in ms.
  const stats = { updates: 0, renders: 0, lastMs: 0, totalMs: 0, maxMs: 0, received: 0,
    renderMs: [], lagMs: [] };
  window.dashboardStats = stats;  // read by the tests and the benchmark

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    return node;
  }
  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setAttr(node, name, value) {
    value = String(value);
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }
  function slug(text) { return String(text).replace(/[^a-z0-9]+/gi, "-").toLowerCase(); }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.floor(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  }
  function size(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "K", "M", "G"];
    let v = n, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i < 2 || v >= 100 ? v.toFixed(0) : v.toFixed(1)) + units[i];
  }
  function ms(seconds) {
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
    return seconds.toFixed(2) + " s";
  }
  function clock(epoch) {
    const d = new Date(epoch * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
  }
  function jobsText(jobs) {
    if (!jobs || !Object.keys(jobs).length) return "-";
    const failed = (jobs.failed || 0) + (jobs.errored || 0);
    return (jobs.running || 0) + "/" + (jobs.completed || 0) + "/" + failed;
  }

  // Keeps a container's children in the order of `items`, one per key: new ones are made
  // by `make`, every one is brought up to date by `update`, the rest removed.
  function sync(container, items, keyOf, make, update) {
    const known = container._keyed || (container._keyed = new Map());
    const wanted = new Set();
    let at = container.firstChild;
    for (const item of items) {
      const key = keyOf(item);
      if (wanted.has(key)) continue;
      wanted.add(key);
      let node = known.get(key);
      if (!node) { node = make(item); known.set(key, node); }
      update(node, item);
      if (node !== at) container.insertBefore(node, at); else at = at.nextSibling;
    }
    for (const [key, node] of known) {
      if (!wanted.has(key)) { node.remove(); known.delete(key); }
    }
  }

  // -- workers table ------------------------------------------------------------------
  const COLUMNS = ["name", "state", "pid", "uptime", "restarts", "cpu", "mem", "jobs",
    "in_flight", "rate", "reason"];
  function makeWorkerRow(w) {
    const tr = el("tr");
    tr.cells_ = {};
    for (const c of COLUMNS) {
      const td = el("td", c + (["pid", "restarts", "cpu", "mem", "in_flight", "rate"]
        .includes(c) ? " num" : ""));
      tr.cells_[c] = td;
      tr.appendChild(td);
    }
    tr.setAttribute("data-worker", w.name);
    return tr;
  }
  function updateWorkerRow(tr, w, activeNames) {
    const cell = tr.cells_;
    const restarts = String(w.restarts);
    if (tr.dataset.restarts !== undefined && tr.dataset.restarts !== restarts) {
      tr.classList.remove("changed"); void tr.offsetWidth; tr.classList.add("changed");
    }
    tr.dataset.restarts = restarts;
    setText(cell.name, w.name);
    setText(cell.state, w.state);
    setText(cell.pid, w.pid || "-");
    setText(cell.uptime, duration(w.uptime));
    setText(cell.restarts, restarts);
    setText(cell.cpu, w.cpu === null ? "-" : Math.round(w.cpu) + "%");
    setText(cell.mem, size(w.rss));
    setText(cell.jobs, jobsText(w.jobs));
    setText(cell.in_flight, w.in_flight);
    setText(cell.rate, w.rate.toFixed(1));
    setText(cell.reason, w.reason);
    const active = activeNames.has(w.name);
    setAttr(tr, "class", "state-" + slug(w.state) + (active ? " active" : "") +
      (tr.classList.contains("changed") ? " changed" : ""));
  }

  // -- topology graph -----------------------------------------------------------------
  const graph = { layoutKey: "", pos: new Map(), nodes: new Map(), edges: new Map() };
  const topo = $("topology");
  const groupLayer = svgEl("g", { class: "groups" });
  const edgeLayer = svgEl("g", { class: "edges" });
  const nodeLayer = svgEl("g", { class: "nodes" });
  const defs = svgEl("defs", {});
  const arrow = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 24, refY: 5,
    markerWidth: 5, markerHeight: 5, orient: "auto-start-reverse" });
  arrow.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(arrow);
  topo.append(defs, groupLayer, edgeLayer, nodeLayer);
  const MAX_OUTSIDE = 20;

  // Workers grouped by channel, each group a box: a ring for a few workers, a grid for many.
  // Names met on the bus that are not the project's workers (a `workers call`, a client)
  // go in a last group, "outside".
  function layout(groups) {
    const gap = 16, cell = 74, rowWidth = 1100;  // groups wrap onto rows this wide
    const sized = groups.map(([label, names]) => {
      const n = names.length;
      if (n <= 12) {
        const r = n <= 1 ? 0 : Math.max(60, n * cell / (2 * Math.PI));
        return { label, names, ring: r, w: 2 * r + cell, h: 2 * r + cell };
      }
      const cols = Math.ceil(Math.sqrt(n * 1.6));
      return { label, names, cols, w: cols * cell, h: Math.ceil(n / cols) * cell };
    });
    const pos = new Map();
    const boxes = [];
    let x = gap, y = 4, rowHeight = 0, width = 0;
    for (const g of sized) {
      if (x > gap && x + g.w > rowWidth) { x = gap; y += rowHeight + gap; rowHeight = 0; }
      const top = y + 20;
      if (g.cols === undefined) {
        const n = g.names.length;
        g.names.forEach((name, i) => {
          const a = -Math.PI / 2 + 2 * Math.PI * i / Math.max(n, 1);
          pos.set(name, { x: x + g.w / 2 + g.ring * Math.cos(a),
                          y: top + g.h / 2 + g.ring * Math.sin(a) });
        });
      } else {
        g.names.forEach((name, i) => {
          pos.set(name, { x: x + cell / 2 + (i % g.cols) * cell,
                          y: top + cell / 2 + Math.floor(i / g.cols) * cell });
        });
      }
      boxes.push({ label: g.label, x, y, w: g.w, h: g.h + 24 });
      x += g.w + gap;
      width = Math.max(width, x);
      rowHeight = Math.max(rowHeight, g.h + 24);
    }
    return { pos, boxes, width: Math.max(width, 200), height: Math.max(y + rowHeight + 8, 120) };
  }

  function updateGraph(data, activeNames) {
    const byChannel = new Map();
    for (const c of data.channels) byChannel.set(c.key, []);
    for (const w of data.workers) {
      if (!byChannel.has(w.channel)) byChannel.set(w.channel, []);
      byChannel.get(w.channel).push(w.name);
    }
    const known = new Set(data.workers.map((w) => w.name));
    const outside = [];
    for (const e of data.traffic.edges) {
      for (const name of [e.source, e.target]) {
        if (name !== "*" && !known.has(name) && !outside.includes(name) &&
            outside.length < MAX_OUTSIDE) outside.push(name);
      }
    }
    outside.sort();
    const groups = [...byChannel.entries()].map(([k, names]) => ["channel " + k, names]);
    if (outside.length) groups.push(["outside the project", outside]);
    const key = JSON.stringify(groups);
    if (key !== graph.layoutKey) {
      graph.layoutKey = key;
      const placed = layout(groups);
      graph.pos = placed.pos;
      setAttr(topo, "viewBox", "0 0 " + placed.width + " " + placed.height);
      // Drawn at its natural size, shrunk to fit the panel's width when wider.
      const scale = Math.min(1, (topo.clientWidth || placed.width) / placed.width);
      topo.style.height = Math.ceil(placed.height * scale) + "px";
      groupLayer.replaceChildren(...placed.boxes.map((b) => {
        const g = svgEl("g", { class: "group" });
        g.append(svgEl("rect", { x: b.x, y: b.y, width: b.w, height: b.h, rx: 8 }));
        const t = svgEl("text", { x: b.x + 8, y: b.y + 14 });
        t.textContent = b.label;
        g.append(t);
        return g;
      }));
    }
    const workers = new Map(data.workers.map((w) => [w.name, w]));
    sync(nodeLayer, [...graph.pos.keys()], (n) => n, (name) => {
      const g = svgEl("g", { "data-node": name });
      const title = svgEl("title", {});
      const text = svgEl("text", { dy: 30 });
      g.append(title, svgEl("circle", { r: 14 }), text);
      text.textContent = name.length > 14 ? name.slice(0, 13) + "\u2026" : name;
      return g;
    }, (g, name) => {
      const p = graph.pos.get(name);
      setAttr(g, "transform", "translate(" + p.x.toFixed(1) + "," + p.y.toFixed(1) + ")");
      const w = workers.get(name);
      const active = activeNames.has(name);
      setAttr(g, "class", "node " + (w ? "state-" + slug(w.state) : "outside") +
        (active ? " active" : ""));
      setText(g.firstChild, w ? name + ": " + w.state + (active ? ", active" : "") : name);
    });
    const edges = data.traffic.edges.filter((e) => graph.pos.has(e.source) &&
      (e.target === "*" || graph.pos.has(e.target)) && e.source !== e.target);
    const top = Math.max(1, ...edges.map((e) => e.rate));
    // Many edges: fainter and without arrowheads, so the nodes stay visible.
    topo.classList.toggle("dense", edges.length > 120);
    sync(edgeLayer, edges, (e) => e.source + "\u0000" + e.target, () => {
      const g = svgEl("g", {});
      g.append(svgEl("path", { class: "edge", "marker-end": "url(#arrow)" }),
        svgEl("title", {}));
      return g;
    }, (g, e) => {
      const a = graph.pos.get(e.source);
      const path = g.firstChild;
      let d;
      if (e.target === "*") {  // to everyone: a short stub upwards
        d = "M" + a.x + "," + (a.y - 14) + " l0,-16";
      } else {
        const b = graph.pos.get(e.target);
        // Curved, so that A->B and B->A are two arcs rather than one line.
        const mx = (a.x + b.x) / 2 - (b.y - a.y) * 0.15, my = (a.y + b.y) / 2 + (b.x - a.x) * 0.15;
        d = "M" + a.x.toFixed(1) + "," + a.y.toFixed(1) + " Q" + mx.toFixed(1) + "," +
          my.toFixed(1) + " " + b.x.toFixed(1) + "," + b.y.toFixed(1);
      }
      setAttr(path, "d", d);
      setAttr(path, "stroke-width", (1 + 5 * e.rate / top).toFixed(1));
      setText(g.lastChild, e.source + " \u2192 " + (e.target === "*" ? "everyone" : e.target) +
        ": " + e.count + " messages in " + data.traffic.window + " s");
      setAttr(g, "data-edge", e.source + "->" + e.target);
    });
  }

  // -- hand-offs, sessions, traces --------------------------------------------------
  function updateHandoffs(list) {
    const shown = list.slice(0, 30);
    sync($("handoffs"), shown, (h) => h.time + "\u0000" + h.channel + "\u0000" + h.target, (h) => {
      const li = el("li");
      li.append(el("time", "", clock(h.time)), el("span", "", h.channel + ": "),
        el("b", "", (h.previous || h.source) + " \u2192 " + h.target));
      if (h.previous && h.previous !== h.source) li.append(el("span", "note", " (by " + h.source + ")"));
      return li;
    }, () => {});
    $("handoffs-none").hidden = shown.length > 0;
  }

  function updateSessions(data) {
    // Who holds each session: the worker the last activation seen on its channel named.
    const items = data.channels.map((c) => [c.key, data.traffic.active[c.key] || null]);
    sync($("sessions"), items, (i) => i[0], () => {
      const span = el("span", "session");
      span.append(el("span"), el("b"));
      return span;
    }, (span, i) => {
      setText(span.firstChild, "session " + i[0] + ": ");
      setText(span.lastChild, i[1] || "no activation seen yet");
      setAttr(span.lastChild, "class", i[1] ? "" : "none");
    });
  }

  let openTrace = null;
  function updateTraces(list) {
    sync($("traces-body"), list, (t) => t.trace, (t) => {
      const tr = el("tr");
      for (let i = 0; i < 6; i++) tr.appendChild(el("td"));
      tr.setAttribute("data-trace", t.trace);
      tr.addEventListener("click", () => showTrace(t.trace));
      return tr;
    }, (tr, t) => {
      const c = tr.children;
      setText(c[0], clock(t.start));
      setText(c[1], t.name);
      setText(c[2], t.workers.join(", "));
      setText(c[3], t.spans);
      setText(c[4], ms(t.duration));
      setText(c[5], t.status);
      setAttr(c[5], "class", "status-" + slug(t.status));
      tr.classList.toggle("open", t.trace === openTrace);
    });
    $("traces-none").hidden = list.length > 0;
  }

  async function showTrace(id) {
    openTrace = id;
    for (const tr of $("traces-body").children) {
      tr.classList.toggle("open", tr.getAttribute("data-trace") === id);
    }
    const panel = $("trace-panel"), view = $("trace-view");
    panel.hidden = false;
    setText($("trace-id"), id);
    setText($("trace-note"), "loading\u2026");
    view.replaceChildren();
    let tree;
    try {
      const answer = await fetch("api/trace/" + encodeURIComponent(id) + query);
      tree = await answer.json();
      if (!answer.ok) throw new Error(tree.error || answer.statusText);
    } catch (err) {
      setText($("trace-note"), "cannot load it: " + err.message);
      return;
    }
    if (openTrace !== id) return;
    const total = Math.max(tree.end - tree.start, 1e-6);
    const rows = [];
    const walk = (node, depth) => {
      rows.push(spanRow(node, depth, tree.start, total));
      for (const child of node.children) walk(child, depth + 1);
    };
    for (const root of tree.roots) walk(root, 0);
    view.replaceChildren(...rows);
    setText($("trace-note"), rows.length + " spans over " + ms(total) +
      (tree.truncated ? " (more in the files: not all shown)" : ""));
    panel.scrollIntoView({ block: "nearest" });
  }

  function spanRow(node, depth, start, total) {
    const row = el("div", "span-row status-" + slug(node.status) + (node.orphan ? " orphan" : ""));
    row.setAttribute("data-span", node.span);
    const label = el("div", "span-label");
    label.style.paddingLeft = Math.min(depth, 30) * 1.1 + "em";
    label.append(el("span", "", (depth ? "\u2514 " : "") + node.name));
    label.title = node.kind + (node.orphan ? " (its parent is not in the files)" : "");
    const track = el("div", "span-track");
    const bar = el("div", "span-bar");
    bar.style.left = (100 * (node.start - start) / total).toFixed(3) + "%";
    bar.style.width = Math.max(100 * node.duration / total, 0.2).toFixed(3) + "%";
    bar.title = node.name + ": " + ms(node.duration) + ", " + node.status;
    track.append(bar);
    // A running span (a session going on) has no duration yet: say so.
    const time = node.status === "running" ? "running" : ms(node.duration);
    row.append(label, el("div", "span-worker", node.worker), el("div", "span-time", time),
      track);
    if (node.error) row.append(el("div", "span-error", node.error));
    return row;
  }
  $("trace-close").addEventListener("click", () => {
    openTrace = null;
    $("trace-panel").hidden = true;
    for (const tr of $("traces-body").children) tr.classList.remove("open");
  });

  // -- the whole page -----------------------------------------------------------------
  function render(data) {
    const t0 = performance.now();
    const activeNames = new Set(Object.values(data.traffic.active));
    setText($("project"), data.project);
    setText($("running"), data.running ? "running" : "not running");
    setAttr($("running"), "class", "badge " + (data.running ? "on" : "off"));
    const total = data.workers.reduce((n, w) => n + w.rate, 0);
    setText($("summary"), data.workers.length + " workers \u00b7 " + data.traffic.in_flight +
      " jobs in flight \u00b7 " + total.toFixed(1) + " jobs/s \u00b7 " +
      data.traffic.messages + " messages seen");
    setText($("window-note"), "(traffic over the last " + data.traffic.window + " s)");
    $("partial-note").hidden = data.channels.every((c) => c.sees_all);
    updateSessions(data);
    updateGraph(data, activeNames);
    sync($("workers-body"), data.workers, (w) => w.name, makeWorkerRow,
      (tr, w) => updateWorkerRow(tr, w, activeNames));
    updateHandoffs(data.traffic.handoffs);
    updateTraces(data.traces);
    const spent = performance.now() - t0;
    stats.renders++; stats.lastMs = spent; stats.totalMs += spent;
    stats.maxMs = Math.max(stats.maxMs, spent);
    stats.lastTime = data.time;
    stats.renderMs.push(spent);
    stats.lagMs.push(Date.now() - data.time * 1000);
    if (stats.renderMs.length > 1000) { stats.renderMs.shift(); stats.lagMs.shift(); }
  }

  let pending = null;
  function schedule(data) {
    const first = pending === null;
    pending = data;
    if (first) requestAnimationFrame(() => { const d = pending; pending = null; render(d); });
  }

  const link = $("link");
  const source = new EventSource("events" + query);
  source.onopen = () => { setText(link, "live"); link.className = "link"; };
  source.onmessage = (event) => {
    stats.received++;
    let data;
    try { data = JSON.parse(event.data); } catch (err) { return; }
    stats.updates++;
    document.body.classList.remove("stale");
    schedule(data);
  };
  source.onerror = () => {
    // What the page shows is no longer live: say so, and grey it out.
    setText(link, "connection lost: the project (or the dashboard) stopped; retrying\u2026");
    link.className = "link lost";
    setText($("running"), "disconnected");
    setAttr($("running"), "class", "badge off");
    document.body.classList.add("stale");
  };
})();
