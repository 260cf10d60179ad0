// shoal web view: a column per node, a card per live task, kept current by
// the manager's server-sent events (/v1/ui/stream: a `snapshot`, then
// `patch`es). Plain JS, no build step, nothing loaded from elsewhere.
//
// The DOM is changed in place: a patch touches only the cards it names and
// re-sorts only the columns it changed. The columns wrap into rows (the page
// scrolls down, never sideways). Past COMPACT_NODES nodes or COMPACT_TASKS
// tasks the page turns compact by itself: a node is a small tile and a task a
// coloured square (its name on hover), so 5,000 nodes and 100,000 tasks stay
// usable; `?view=cards|compact` or the header's button chooses. The header's
// filters show only the nodes whose hostname, id or labels hold the text, and
// only one service's tasks (and the nodes that run it); `?node=` and
// `?service=` set them from the address.
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
  const fNode = document.getElementById('f-node');
  const fService = document.getElementById('f-service');
  const viewBtn = document.getElementById('view');
  const shown = document.getElementById('shown');
  const serviceRule = document.getElementById('service-rule');

  /** Past either, the page turns compact unless `?view=` says otherwise. */
  const COMPACT_NODES = 60;
  const COMPACT_TASKS = 1500;
  /** Services named in the header's legend; the filter lists them all. */
  const LEGEND_MAX = 12;
  const params = new URLSearchParams(location.search);
  /** 'cards', 'compact' or null (by size). */
  let viewChoice = params.get('view') === 'compact' || params.get('view') === 'cards' ? params.get('view') : null;
  let compact = viewChoice === 'compact';
  const filter = { node: (params.get('node') || '').toLowerCase(), service: params.get('service') || '' };

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
    const col = { id, info: null, infoKey: '', el: el('section', 'col'), head: el('div', 'col-head'), list: el('div', 'cards'), count: 0, svc: new Map() };
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
      // A node list comes whole; only the heads that changed are redrawn.
      const key = JSON.stringify(n);
      if (key !== col.infoKey) {
        col.infoKey = key;
        drawHead(col, n);
        col.match = nodeMatches(col);
        col.el.hidden = !visible(col);
      }
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
    if (compact) {
      // One element: no text to draw, its title is made on hover.
      const e = el('i', 'card dot');
      e.dataset.taskId = t.id;
      return { t: null, el: e, col: null, name: null, age: null, ageText: '' };
    }
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

  /** What the header counts, kept as cards come and go (not recounted:
   * 100,000 cards). Tasks meant to run by service; those shutting down
   * are counted apart. */
  const tally = { services: new Map(), running: 0, stopping: 0 };
  function count(t, by) {
    if (t.desired !== 'running') {
      tally.stopping += by;
      return;
    }
    const n = (tally.services.get(t.service) || 0) + by;
    if (n > 0) tally.services.set(t.service, n);
    else tally.services.delete(t.service);
    if (t.state === 'running') tally.running += by;
  }

  function countService(col, service, by) {
    if (!col) return;
    const n = (col.svc.get(service) || 0) + by;
    if (n > 0) col.svc.set(service, n);
    else col.svc.delete(service);
  }

  function place(c, col) {
    if (c.col === col) return;
    const from = c.col;
    c.col = col;
    col.list.append(c.el);
    countService(from, c.t.service, -1);
    countService(col, c.t.service, 1);
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
    if (old && old.service !== t.service && c.col) {
      countService(c.col, old.service, -1);
      countService(c.col, t.service, 1);
      dirty.add(c.col);
    }
    if (old) count(old, -1);
    count(t, 1);
    c.t = t;
    c.key = sortKey(t);
    const d = c.el.dataset;
    if (!old || old.service !== t.service) {
      d.service = t.service;
      c.el.style.setProperty('--hue', hue(t.service));
    }
    // Only what changed is written: a write restyles the element.
    const slot = String(t.slot);
    const node = t.node_id || '';
    if (!old || old.slot !== t.slot) d.slot = slot;
    if (!old || old.state !== t.state) d.state = t.state;
    if (!old || old.desired !== t.desired) d.desired = t.desired;
    if (!old || (old.node_id || '') !== node) d.node = node;
    if (compact) {
      c.el.title = '';
      place(c, (t.node_id && columns.get(t.node_id)) || ensureUnassigned());
      if (old && (old.state !== t.state || old.desired !== t.desired)) dirty.add(c.col);
      return;
    }
    if (!old || old.name !== t.name) c.name.textContent = t.name;
    c.state.textContent = t.state + (t.desired !== 'running' ? ' → ' + t.desired : '');
    c.image.textContent = shortImage(t.image);
    const addrs = (t.addresses || []).map((a) => a.split(' ')[1]).join(' ');
    if (c.addr.textContent !== addrs) c.addr.textContent = addrs;
    c.el.title = cardTitle(t);
    drawAge(c, Date.now() + clockOffset);
    place(c, (t.node_id && columns.get(t.node_id)) || ensureUnassigned());
    if (old && (old.state !== t.state || old.desired !== t.desired)) dirty.add(c.col);
  }

  function cardTitle(t) {
    return t.name + ' ' + t.id + '\n' + t.image + '\n' + t.state + ' (desired ' + t.desired + ')' + (t.error ? '\n' + t.error : '') + ((t.addresses || []).length ? '\n' + t.addresses.join('\n') : '');
  }

  function remove(id) {
    const c = cards.get(id);
    if (!c) return;
    cards.delete(id);
    c.el.remove();
    count(c.t, -1);
    if (c.col) {
      countService(c.col, c.t.service, -1);
      dirty.add(c.col);
    }
  }

  function drawAge(c, now) {
    if (!c.age) return;
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
      const keyed = kids.map((k) => [cards.get(k.dataset.taskId).key, k]);
      keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      if (keyed.some(([, k], i) => kids[i] !== k)) col.list.append(...keyed.map(([, k]) => k));
      const empty = col.list.querySelector(':scope > .empty');
      if (empty && kids.length) empty.remove();
      drawCount(col);
      col.el.hidden = !visible(col);
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
    const { services, running, stopping } = tally;
    let down = 0;
    let hidden = 0;
    for (const col of columns.values()) {
      if (col.info.status !== 'ready') down++;
      if (col.el.hidden) hidden++;
    }
    const many = (n, what) => n + ' ' + what + (n === 1 ? '' : 's');
    summary.textContent =
      many(columns.size, 'node') + (down ? ' (' + down + ' down)' : '') + ' · ' +
      many(cards.size - stopping, 'task') + ', ' + running + ' running' + (stopping ? ', ' + stopping + ' shutting down' : '') + ' · ' +
      many(services.size, 'service');
    shown.textContent = hidden ? 'showing ' + (columns.size - hidden) + ' of ' + columns.size + ' nodes' : '';
    const names = Array.from(services.keys()).sort();
    drawServiceOptions(names);
    // The legend names the biggest services; the filter lists every one.
    const named = names.length > LEGEND_MAX ? names.slice().sort((a, b) => services.get(b) - services.get(a) || (a < b ? -1 : 1)).slice(0, LEGEND_MAX).sort() : names;
    const more = names.length - named.length;
    const have = Array.from(legend.children).map((s) => s.dataset.service + ':' + s.textContent);
    const want = named.map((n) => n + ':' + n + ' ' + services.get(n));
    if (more) want.push('undefined:+' + more + ' more');
    if (have.join('\n') === want.join('\n')) return;
    const spans = named.map((n) => {
      const s = el('span', 'svc', n + ' ' + services.get(n));
      s.dataset.service = n;
      s.style.setProperty('--hue', hue(n));
      return s;
    });
    if (more) spans.push(el('span', 'more', '+' + more + ' more'));
    legend.replaceChildren(...spans);
  }

  let optionsKey = '';
  function drawServiceOptions(names) {
    // The filtered service stays listed while it has no task.
    const list = filter.service && !names.includes(filter.service) ? names.concat([filter.service]).sort() : names;
    const key = list.join('\n');
    if (key === optionsKey) return;
    optionsKey = key;
    const all = el('option', '', 'all services');
    all.value = '';
    fService.replaceChildren(
      all,
      ...list.map((n) => {
        const o = el('option', '', n);
        o.value = n;
        return o;
      }),
    );
    fService.value = filter.service;
  }

  // -- filters and the compact view ----------------------------------------

  function nodeMatches(col) {
    if (!filter.node) return true;
    const n = col.info;
    if (!n) return false;
    const labels = Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v);
    return [n.hostname, n.id, n.addr].concat(labels).some((x) => String(x).toLowerCase().includes(filter.node));
  }

  /** A column shows when its node matches the text and, with a service
   * chosen, it holds a task of that service. */
  function visible(col) {
    if (col !== unassigned && col.match === false) return false;
    if (filter.service && !col.svc.has(filter.service)) return false;
    return true;
  }

  function applyFilter() {
    // Only the chosen service's cards: one rule, not a pass over every card.
    serviceRule.textContent = filter.service ? '#board .card:not([data-service="' + CSS.escape(filter.service) + '"]) { display: none; }' : '';
    for (const col of columns.values()) {
      col.match = nodeMatches(col);
      col.el.hidden = !visible(col);
    }
    if (unassigned) unassigned.el.hidden = !visible(unassigned);
    const q = new URLSearchParams(location.search);
    for (const [k, v] of [['node', filter.node], ['service', filter.service]]) {
      if (v) q.set(k, v);
      else q.delete(k);
    }
    const search = q.toString();
    history.replaceState(null, '', location.pathname + (search ? '?' + search : ''));
    drawSummary();
  }

  fNode.value = filter.node;
  fNode.addEventListener('input', () => {
    filter.node = fNode.value.trim().toLowerCase();
    applyFilter();
  });
  fService.addEventListener('change', () => {
    filter.service = fService.value;
    applyFilter();
  });

  /** Turns compact (or back) and redraws every card in the new shape. */
  function setCompact(on) {
    viewBtn.textContent = on ? 'cards' : 'compact';
    viewBtn.title = on ? 'show a card per task' : 'show a square per task';
    if (on === compact) return;
    compact = on;
    board.classList.toggle('compact', on);
    const all = Array.from(cards.values());
    for (const c of all) {
      c.el.remove();
      count(c.t, -1);
      if (c.col) countService(c.col, c.t.service, -1);
    }
    cards.clear();
    for (const c of all) upsert(c.t);
    for (const col of columns.values()) dirty.add(col);
    settle();
  }

  /** With no choice made, the size decides. */
  function autoCompact(nodes, tasks) {
    if (viewChoice === null) setCompact(nodes > COMPACT_NODES || tasks > COMPACT_TASKS);
  }

  viewBtn.addEventListener('click', () => {
    viewChoice = compact ? 'cards' : 'compact';
    setCompact(!compact);
  });
  board.classList.toggle('compact', compact);
  setCompact(compact);
  applyFilter();

  // A square's title is made when the pointer reaches it.
  board.addEventListener('mouseover', (e) => {
    const k = e.target;
    if (!k.classList || !k.classList.contains('dot') || k.title) return;
    const c = cards.get(k.dataset.taskId);
    if (c) k.title = cardTitle(c.t);
  });

  // -- applying what the server sends -------------------------------------

  function applySnapshot(s) {
    clockOffset = s.now - Date.now();
    autoCompact(s.nodes.length, s.tasks.length);
    // A big picture is built off the page and put back whole: the browser
    // styles it once, not once a card.
    const off = s.tasks.length > 1000 && board.isConnected ? { parent: board.parentNode, next: board.nextSibling } : null;
    if (off) board.remove();
    applyNodes(s.nodes);
    const keep = new Set(s.tasks.map((t) => t.id));
    for (const id of Array.from(cards.keys())) if (!keep.has(id)) remove(id);
    // In display order, so that the columns need no re-sorting after.
    const sorted = s.tasks.map((t) => [sortKey(t), t]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    for (const [, t] of sorted) upsert(t);
    settle();
    if (off) off.parent.insertBefore(board, off.next);
    updates++;
  }

  function applyPatch(p) {
    clockOffset = p.now - Date.now();
    if (p.nodes) applyNodes(p.nodes);
    for (const id of p.remove || []) remove(id);
    for (const t of p.upsert || []) upsert(t);
    settle();
    // Grown past the threshold (never back by itself: no flapping).
    if (viewChoice === null && !compact && (columns.size > COMPACT_NODES || cards.size > COMPACT_TASKS)) setCompact(true);
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
    // A hundred tasks a service at size, as the million-task issue's 1,000 services.
    const svcNames =
      nTasks > 1200
        ? Array.from({ length: Math.ceil(nTasks / 100) }, (_, i) => 'svc' + String(i + 1).padStart(4, '0'))
        : ['api', 'web', 'worker', 'cache', 'db-proxy', 'search', 'metrics', 'auth', 'mail', 'queue', 'cron', 'static'];
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
    const at = new Map(tasks.map((t, i) => [t.id, i]));
    let t0 = performance.now();
    applySnapshot({ now, nodes, tasks });
    layout();
    const first = performance.now() - t0;
    t0 = performance.now();
    const rounds = 100;
    let bytes = 0;
    for (let r = 0; r < rounds; r++) {
      const upsert = [];
      for (let j = 0; j < 5; j++) {
        const t = Object.assign({}, tasks[(r * 5 + j * 97) % tasks.length]);
        t.state = t.state === 'running' ? 'starting' : 'running';
        t.since = Date.now();
        if (j === 0) t.node_id = usable[(r + 1) % usable.length].id;
        tasks[at.get(t.id)] = t;
        upsert.push(t);
      }
      const p = { now: Date.now(), upsert, remove: [] };
      bytes += JSON.stringify(p).length;
      applyPatch(p);
      layout();
    }
    const patch = (performance.now() - t0) / rounds;
    t0 = performance.now();
    const tnow = Date.now() + 5000;
    for (const c of cards.values()) drawAge(c, tnow);
    layout();
    const tick = performance.now() - t0;
    // The filters: one service, then a node's name, then none.
    const f0 = { ...filter };
    t0 = performance.now();
    filter.service = svcNames[1];
    applyFilter();
    layout();
    const byService = performance.now() - t0;
    const serviceNodes = Array.from(columns.values()).filter((c) => !c.el.hidden).length;
    t0 = performance.now();
    filter.service = '';
    filter.node = nodes[nNodes - 1].hostname;
    applyFilter();
    layout();
    const byNode = performance.now() - t0;
    const nodeNodes = Array.from(columns.values()).filter((c) => !c.el.hidden).length;
    Object.assign(filter, f0);
    applyFilter();
    // Leave the made-up picture as it was drawn first.
    applySnapshot({ now: Date.now(), nodes, tasks: original });
    layout();
    const bench = {
      nodes: nNodes,
      tasks: nTasks,
      firstRenderMs: first,
      patchMs: patch,
      patchBytes: bytes / rounds,
      ageTickMs: tick,
      filterServiceMs: byService,
      filterServiceNodes: serviceNodes,
      filterNodeMs: byNode,
      filterNodeNodes: nodeNodes,
      compact,
      cards: cards.size,
      columns: columns.size,
      domNodes: document.getElementsByTagName('*').length,
    };
    setConn('synthetic');
    showNotice(
      'synthetic data: ' + nNodes + ' nodes × ' + nTasks + ' tasks' + (compact ? ' (compact)' : '') + '; first render ' + first.toFixed(1) + ' ms, a patch ' + patch.toFixed(2) + ' ms, an age tick ' + tick.toFixed(1) + ' ms, a filter ' + byService.toFixed(1) + ' ms',
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
