// shoal web view: a column per node, a card per live task, kept current by
// the manager's server-sent events (/v1/ui/stream: a `snapshot`, then
// `patch`es). Plain JS, no build step, nothing loaded from elsewhere.
//
// The DOM is changed in place: a patch touches only the cards it names and
// re-sorts only the columns it changed, so 50 nodes and 500 tasks stay smooth.
// Elements carry data attributes for tests and scripts:
//   column [data-node-id][data-hostname][data-role][data-status][data-availability][data-leader][data-disk-alarm]
//   card   [data-task-id][data-service][data-slot][data-state][data-desired][data-node] (its node's id)
// `?synthetic=50x500` draws made-up data instead (and times it): see synthetic().
'use strict';
(function () {
  const board = document.getElementById('board');
  const summary = document.getElementById('summary');
  const legend = document.getElementById('legend');
  const conn = document.getElementById('conn');
  const notice = document.getElementById('notice');

  /** node id → {info, el, head, list, count} */
  const columns = new Map();
  /** task id → {t, el, col, age} */
  const cards = new Map();
  /** The column for tasks with no (known) node; created when needed. */
  let unassigned = null;
  /** Server clock minus ours: ages count from the manager's clock. */
  let clockOffset = 0;
  let updates = 0;

  // -- helpers -------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A stable hue per service name (FNV-1a). */
  const hues = new Map();
  function hue(name) {
    let h = hues.get(name);
    if (h === undefined) {
      let x = 0x811c9dc5;
      for (let i = 0; i < name.length; i++) {
        x ^= name.charCodeAt(i);
        x = Math.imul(x, 0x01000193) >>> 0;
      }
      // Spread neighbouring hashes around the wheel (golden angle).
      h = Math.round((x % 360) * 137.508) % 360;
      hues.set(name, h);
    }
    return h;
  }

  /** `registry:5000/shoal/busybox:latest@sha256:…` → `busybox:latest`. */
  function shortImage(image) {
    const noDigest = image.split('@')[0];
    return noDigest.slice(noDigest.lastIndexOf('/') + 1) || image;
  }

  function ageText(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm' + (m < 10 ? ' ' + (s % 60) + 's' : '');
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h' + (h < 10 ? ' ' + (m % 60) + 'm' : '');
    return Math.floor(h / 24) + 'd';
  }

  function sortKey(t) {
    return t.service + '\u0000' + String(t.slot).padStart(8, '0') + '\u0000' + t.name + '\u0000' + t.id;
  }

  // -- columns -------------------------------------------------------------

  function makeColumn(id) {
    const col = { id, info: null, el: el('section', 'col'), head: el('div', 'col-head'), list: el('div', 'cards'), count: 0 };
    col.el.append(col.head, col.list);
    col.el.dataset.nodeId = id;
    return col;
  }

  function ensureUnassigned() {
    if (!unassigned) {
      unassigned = makeColumn('');
      unassigned.el.classList.add('unassigned');
      delete unassigned.el.dataset.nodeId;
      unassigned.el.dataset.unassigned = '';
      unassigned.head.append(titleRow('not on a node', unassigned));
      board.prepend(unassigned.el);
    }
    return unassigned;
  }

  function titleRow(text, col) {
    const row = el('div', 'col-title');
    row.append(el('span', 'host', text));
    col.countEl = el('span', 'count');
    row.append(col.countEl);
    return row;
  }

  function drawHead(col, n) {
    const leader = n.manager_status === 'Leader';
    const d = col.el.dataset;
    d.hostname = n.hostname;
    d.role = n.role;
    d.status = n.status;
    d.availability = n.availability;
    d.leader = String(leader);
    col.el.title = n.hostname + ' — ' + n.id + ' — ' + n.addr;
    const badges = el('div', 'badges');
    if (leader) badges.append(el('span', 'badge leader', '★ leader'));
    badges.append(el('span', 'badge', n.role));
    if (n.manager_status && !leader) badges.append(el('span', 'badge', n.manager_status));
    badges.append(el('span', 'badge ' + (n.status === 'ready' ? 'ready' : 'down'), n.status));
    if (n.availability !== 'active') badges.append(el('span', 'badge ' + n.availability, n.availability));
    d.diskAlarm = String(!!n.disk_alarm);
    if (n.disk_alarm) {
      const b = el('span', 'badge disk-alarm', 'disk full');
      b.title = n.disk_alarm + ' (writes are refused until space is freed)';
      badges.append(b);
    }
    for (const [k, v] of Object.entries(n.labels || {})) {
      const b = el('span', 'badge label', k + '=' + v);
      b.title = k + '=' + v;
      badges.append(b);
    }
    col.head.replaceChildren(titleRow(n.hostname + (n.is_self ? ' *' : ''), col), badges);
    drawCount(col);
  }

  function drawCount(col) {
    if (!col.countEl) return;
    let running = 0;
    let total = 0;
    for (const c of col.list.children) {
      if (!c.dataset.taskId) continue;
      total++;
      if (c.dataset.state === 'running' && c.dataset.desired === 'running') running++;
    }
    col.countEl.textContent = total ? running + '/' + total : '';
    col.countEl.title = running + ' running (and meant to) of ' + total + ' tasks here';
    const empty = col.list.querySelector(':scope > .empty');
    if (total === 0 && !empty && col !== unassigned) col.list.append(el('div', 'empty', 'no tasks'));
  }

  function applyNodes(list) {
    const seen = new Set();
    let prev = unassigned ? unassigned.el : null;
    for (const n of list) {
      seen.add(n.id);
      let col = columns.get(n.id);
      if (!col) {
        col = makeColumn(n.id);
        columns.set(n.id, col);
      }
      col.info = n;
      drawHead(col, n);
      // Keep the server's order (managers first, then by hostname).
      const want = prev ? prev.nextSibling : board.firstChild;
      if (want !== col.el) board.insertBefore(col.el, want);
      prev = col.el;
    }
    for (const [id, col] of columns) {
      if (seen.has(id)) continue;
      columns.delete(id);
      col.el.remove();
      // Its tasks (if any are left) wait in the unassigned column.
      for (const c of cards.values()) if (c.col === col) place(c, ensureUnassigned());
    }
  }

  // -- cards ---------------------------------------------------------------

  function makeCard(t) {
    const e = el('div', 'card');
    const r1 = el('div', 'r1');
    const r2 = el('div', 'r2');
    const c = { t: null, el: e, col: null, name: el('span', 'name'), age: el('span', 'age'), state: el('span', 'state'), image: el('span', 'image'), addr: el('span', 'addr'), ageText: '' };
    r1.append(c.name, c.age);
    r2.append(c.state, c.image, c.addr);
    e.append(r1, r2);
    e.dataset.taskId = t.id;
    return c;
  }

  function place(c, col) {
    if (c.col === col) return;
    const from = c.col;
    c.col = col;
    col.list.append(c.el);
    dirty.add(col);
    if (from) dirty.add(from);
  }

  const dirty = new Set();

  function upsert(t) {
    let c = cards.get(t.id);
    if (!c) {
      c = makeCard(t);
      cards.set(t.id, c);
    }
    const old = c.t;
    c.t = t;
    const d = c.el.dataset;
    if (!old || old.service !== t.service) {
      d.service = t.service;
      c.el.style.setProperty('--hue', hue(t.service));
    }
    if (!old || old.name !== t.name) c.name.textContent = t.name;
    d.slot = String(t.slot);
    d.state = t.state;
    d.desired = t.desired;
    d.node = t.node_id || '';
    c.state.textContent = t.state + (t.desired !== 'running' ? ' → ' + t.desired : '');
    c.image.textContent = shortImage(t.image);
    const addrs = (t.addresses || []).map((a) => a.split(' ')[1]).join(' ');
    if (c.addr.textContent !== addrs) c.addr.textContent = addrs;
    c.el.title = t.name + ' ' + t.id + '\n' + t.image + '\n' + t.state + ' (desired ' + t.desired + ')' + (t.error ? '\n' + t.error : '') + ((t.addresses || []).length ? '\n' + t.addresses.join('\n') : '');
    drawAge(c, Date.now() + clockOffset);
    place(c, (t.node_id && columns.get(t.node_id)) || ensureUnassigned());
    if (old && (old.state !== t.state || old.desired !== t.desired)) dirty.add(c.col);
  }

  function remove(id) {
    const c = cards.get(id);
    if (!c) return;
    cards.delete(id);
    c.el.remove();
    if (c.col) dirty.add(c.col);
  }

  function drawAge(c, now) {
    const text = ageText(now - c.t.since);
    if (text !== c.ageText) {
      c.ageText = text;
      c.age.textContent = text;
    }
  }

  /** Sorts the columns a change touched, fixes their counts. */
  function settle() {
    for (const col of dirty) {
      const kids = Array.from(col.list.children).filter((k) => k.dataset.taskId);
      const keyed = kids.map((k) => [sortKey(cards.get(k.dataset.taskId).t), k]);
      keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      if (keyed.some(([, k], i) => kids[i] !== k)) col.list.append(...keyed.map(([, k]) => k));
      const empty = col.list.querySelector(':scope > .empty');
      if (empty && kids.length) empty.remove();
      drawCount(col);
    }
    dirty.clear();
    if (unassigned && unassigned.list.children.length === 0) {
      unassigned.el.remove();
      unassigned = null;
    }
    drawSummary();
  }

  function drawSummary() {
    // Counts are of tasks meant to run; those shutting down are said apart.
    const services = new Map();
    let running = 0;
    let stopping = 0;
    for (const c of cards.values()) {
      if (c.t.desired !== 'running') {
        stopping++;
        continue;
      }
      services.set(c.t.service, (services.get(c.t.service) || 0) + 1);
      if (c.t.state === 'running') running++;
    }
    let down = 0;
    for (const col of columns.values()) if (col.info.status !== 'ready') down++;
    const count = (n, what) => n + ' ' + what + (n === 1 ? '' : 's');
    summary.textContent =
      count(columns.size, 'node') + (down ? ' (' + down + ' down)' : '') + ' · ' +
      count(cards.size - stopping, 'task') + ', ' + running + ' running' + (stopping ? ', ' + stopping + ' shutting down' : '') + ' · ' +
      count(services.size, 'service');
    const names = Array.from(services.keys()).sort();
    const have = Array.from(legend.children).map((s) => s.dataset.service + ':' + s.textContent);
    const want = names.map((n) => n + ':' + n + ' ' + services.get(n));
    if (have.join('\n') === want.join('\n')) return;
    legend.replaceChildren(
      ...names.map((n) => {
        const s = el('span', 'svc', n + ' ' + services.get(n));
        s.dataset.service = n;
        s.style.setProperty('--hue', hue(n));
        return s;
      }),
    );
  }

  // -- applying what the server sends -------------------------------------

  function applySnapshot(s) {
    clockOffset = s.now - Date.now();
    applyNodes(s.nodes);
    const keep = new Set(s.tasks.map((t) => t.id));
    for (const id of Array.from(cards.keys())) if (!keep.has(id)) remove(id);
    for (const t of s.tasks) upsert(t);
    settle();
    updates++;
  }

  function applyPatch(p) {
    clockOffset = p.now - Date.now();
    if (p.nodes) applyNodes(p.nodes);
    for (const id of p.remove || []) remove(id);
    for (const t of p.upsert || []) upsert(t);
    settle();
    updates++;
  }

  setInterval(() => {
    const now = Date.now() + clockOffset;
    for (const c of cards.values()) drawAge(c, now);
  }, 1000);

  function setConn(state, text) {
    conn.dataset.conn = state;
    conn.textContent = text || state;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  // -- the stream ----------------------------------------------------------

  function connect() {
    setConn('connecting', 'connecting…');
    const es = new EventSource('/v1/ui/stream');
    es.addEventListener('snapshot', (e) => {
      applySnapshot(JSON.parse(e.data));
      setConn('live');
      showNotice('');
    });
    es.addEventListener('patch', (e) => applyPatch(JSON.parse(e.data)));
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // Refused outright (e.g. this API is a worker's): say why, retry.
        setConn('error', 'not connected');
        explain();
        setTimeout(connect, 3000);
      } else {
        // The browser reconnects by itself; a new snapshot follows.
        setConn('reconnecting', 'reconnecting…');
      }
    };
  }

  async function explain() {
    try {
      const r = await fetch('/v1/ui/state', { cache: 'no-store' });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        showNotice(body.message || 'the API answered ' + r.status);
      }
    } catch (e) {
      showNotice('the manager does not answer (' + e.message + '); retrying');
    }
  }

  // -- made-up data, to see and time the page at scale --------------------

  /** Draws `nodes` columns and `tasks` cards of made-up data, then applies
   * 100 patches; returns how long each part took (ms, layout included). */
  function synthetic(nNodes, nTasks) {
    const now = Date.now();
    const svcNames = ['api', 'web', 'worker', 'cache', 'db-proxy', 'search', 'metrics', 'auth', 'mail', 'queue', 'cron', 'static'];
    const nodes = [];
    for (let i = 1; i <= nNodes; i++) {
      const manager = i <= 3;
      nodes.push({
        id: 'node' + String(i).padStart(21, '0') + 'xyzw',
        raft_id: i,
        hostname: 'node' + String(i).padStart(2, '0'),
        role: manager ? 'manager' : 'worker',
        availability: i === 5 ? 'drain' : i === 6 ? 'pause' : 'active',
        labels: i % 7 === 0 ? { zone: 'east' } : {},
        addr: '10.0.0.' + i + ':4242',
        created_at: now,
        updated_at: now,
        status: i === 8 ? 'down' : 'ready',
        manager_status: manager ? (i === 1 ? 'Leader' : 'Reachable') : '',
        is_self: i === 1,
      });
    }
    const usable = nodes.filter((n) => n.availability !== 'drain' && n.status === 'ready');
    const tasks = [];
    const perSvc = new Map();
    for (let k = 0; k < nTasks; k++) {
      const service = svcNames[k % svcNames.length];
      const slot = (perSvc.get(service) || 0) + 1;
      perSvc.set(service, slot);
      tasks.push({
        id: 'task' + String(k).padStart(21, '0'),
        service,
        service_id: 'svc-' + service,
        slot,
        name: service + '.' + slot,
        node_id: usable[k % usable.length].id,
        image: 'shoal/busybox:latest',
        state: k % 23 === 0 ? 'starting' : 'running',
        desired: 'running',
        since: now - (k % 300) * 1000,
      });
    }
    const layout = () => board.offsetHeight + board.scrollWidth;
    const original = tasks.slice();
    let t0 = performance.now();
    applySnapshot({ now, nodes, tasks });
    layout();
    const first = performance.now() - t0;
    t0 = performance.now();
    const rounds = 100;
    for (let r = 0; r < rounds; r++) {
      const upsert = [];
      for (let j = 0; j < 5; j++) {
        const t = Object.assign({}, tasks[(r * 5 + j * 97) % tasks.length]);
        t.state = t.state === 'running' ? 'starting' : 'running';
        t.since = Date.now();
        if (j === 0) t.node_id = usable[(r + 1) % usable.length].id;
        tasks[tasks.findIndex((x) => x.id === t.id)] = t;
        upsert.push(t);
      }
      applyPatch({ now: Date.now(), upsert, remove: [] });
      layout();
    }
    const patch = (performance.now() - t0) / rounds;
    t0 = performance.now();
    const tnow = Date.now() + 5000;
    for (const c of cards.values()) drawAge(c, tnow);
    layout();
    const tick = performance.now() - t0;
    // Leave the made-up picture as it was drawn first.
    applySnapshot({ now: Date.now(), nodes, tasks: original });
    const bench = { nodes: nNodes, tasks: nTasks, firstRenderMs: first, patchMs: patch, ageTickMs: tick, cards: cards.size, columns: columns.size };
    setConn('synthetic');
    showNotice(
      'synthetic data: ' + nNodes + ' nodes × ' + nTasks + ' tasks; first render ' + first.toFixed(1) + ' ms, a patch ' + patch.toFixed(2) + ' ms, an age tick ' + tick.toFixed(1) + ' ms',
    );
    return bench;
  }

  window.shoalUI = {
    synthetic,
    /** Snapshots and patches applied so far. */
    updates: () => updates,
  };

  const m = /[?&]synthetic=(\d+)x(\d+)/.exec(location.search);
  if (m) {
    window.shoalUI.bench = synthetic(Number(m[1]), Number(m[2]));
  } else {
    connect();
  }
})();
