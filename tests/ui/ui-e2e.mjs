// End-to-end test of shoal's web view in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core; no browser is downloaded).
// Run by tests/tests/ui.rs against a 3-node cluster it started; by hand:
//
//   SHOAL_UI_URL=http://127.0.0.11:4243/ui SHOAL_HOST=127.0.0.11:4243 \
//   SHOAL_BIN=target/release/shoal SHOAL_UI_DRAIN=node3 node tests/ui/ui-e2e.mjs
//
// It opens the page, expects one column per node, creates a 6-replica
// service with the CLI and watches 6 cards appear, drains a node and watches
// its cards move, times page updates (CLI returned → card on screen) over
// scale rounds, draws 50 nodes × 500 tasks of made-up data, and saves
// screenshots. Exits non-zero with a message on any failed expectation.
//
// Environment: SHOAL_UI_URL (the page), SHOAL_HOST (the manager API, for the
// CLI), SHOAL_BIN (the shoal binary), SHOAL_UI_DRAIN (hostname to drain,
// default node3), SHOAL_UI_IMAGE (default shoal/busybox:latest),
// SHOAL_UI_ARTIFACTS (where screenshots go, default target/ui-artifacts),
// SHOAL_UI_WORKER_URL (optional: a worker's page, which must say it is one),
// CHROMIUM (default /usr/bin/chromium).

import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k, d) => process.env[k] || d;
const URL_ = env('SHOAL_UI_URL');
const HOST = env('SHOAL_HOST');
const BIN = env('SHOAL_BIN', 'target/release/shoal');
const DRAIN = env('SHOAL_UI_DRAIN', 'node3');
const IMAGE = env('SHOAL_UI_IMAGE', 'shoal/busybox:latest');
const ARTIFACTS = env('SHOAL_UI_ARTIFACTS', 'target/ui-artifacts');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const NODES = 3;
const REPLICAS = 6;
const ROUNDS = 5;
const CONVERGE_MS = 90_000; // containers to start, tasks to move
const UPDATE_MS = 10_000; // a page update that is already committed
const TOTAL_MS = 5 * 60_000;

function fail(msg) {
  console.error('ui-e2e: FAILED: ' + msg);
  process.exit(1);
}
if (!URL_ || !HOST) fail('set SHOAL_UI_URL and SHOAL_HOST');
const overall = setTimeout(() => fail(`did not finish within ${TOTAL_MS / 1000} s`), TOTAL_MS);

/** Runs the CLI; resolves with the times it started and returned. */
function shoal(...args) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    execFile(BIN, args, { env: { ...process.env, SHOAL_HOST: HOST }, timeout: 60_000 }, (err, stdout, stderr) => {
      const returned = Date.now();
      if (err) reject(new Error(`shoal ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve({ started, returned, stdout });
    });
  });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (x) => `${Math.round(x)} ms`;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pageErrors = [];
try {
  mkdirSync(ARTIFACTS, { recursive: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && pageErrors.push('console: ' + m.text()));
  // Anything the page loads from elsewhere than the manager is a failure:
  // the page has to work offline.
  const origin = new URL(URL_).origin;
  const foreign = [];
  page.on('request', (r) => !r.url().startsWith(origin) && !r.url().startsWith('data:') && foreign.push(r.url()));

  await page.goto(URL_);
  const cols = (expect, arg, what, timeout = 20_000) =>
    page
      .waitForFunction(expect, arg, { timeout, polling: 50 })
      .catch(async () => fail(`${what}; page shows: ${await describe()}`));
  const describe = () =>
    page.evaluate(() =>
      Array.from(document.querySelectorAll('section.col'))
        .map((c) => {
          const cards = Array.from(c.querySelectorAll('[data-task-id]')).map((k) => `${k.querySelector('.name').textContent}:${k.dataset.state}/${k.dataset.desired}`);
          return `[${c.dataset.hostname || 'unassigned'} ${c.dataset.status || ''} ${c.dataset.availability || ''}: ${cards.join(' ')}]`;
        })
        .join(' ') + ` (connection: ${document.getElementById('conn').dataset.conn})`,
    );

  await cols(
    (n) => document.querySelectorAll('section.col[data-node-id]').length === n && document.getElementById('conn').dataset.conn === 'live',
    NODES,
    `${NODES} node columns, connected`,
  );
  const heads = await page.$$eval('section.col[data-node-id]', (cs) => cs.map((c) => ({ ...c.dataset, text: c.querySelector('.col-head').textContent })));
  if (heads.length !== NODES) fail(`expected ${NODES} columns, got ${JSON.stringify(heads)}`);
  const leaders = heads.filter((h) => h.leader === 'true');
  if (leaders.length !== 1 || leaders[0].hostname !== 'node1' || !leaders[0].text.includes('leader')) fail(`node1 should be marked leader: ${JSON.stringify(heads)}`);
  if (!heads.every((h) => h.status === 'ready' && h.availability === 'active')) fail(`every node should be ready and active: ${JSON.stringify(heads)}`);
  if (!heads.some((h) => h.hostname === DRAIN)) fail(`no column for ${DRAIN}`);

  // Records, at the first frame after a DOM change where it holds, the time
  // each registered condition became true.
  await page.evaluate(() => {
    const watches = new Map();
    const check = () => {
      const now = Date.now();
      for (const w of watches.values()) if (!w.at && w.fn(w.arg)) w.at = now;
    };
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        check();
      });
    }).observe(document.getElementById('board'), { subtree: true, childList: true, attributes: true, characterData: true });
    window.__watch = (name, src, arg) => {
      watches.set(name, { fn: (0, eval)('(' + src + ')'), arg, at: 0 });
      check();
    };
    window.__at = (name) => watches.get(name).at;
  });
  const watch = (name, fn, arg = null) => page.evaluate(([n, s, a]) => window.__watch(n, s, a), [name, fn.toString(), arg]);
  const at = async (name, what, timeout) => {
    try {
      await page.waitForFunction((n) => window.__at(n) > 0, name, { timeout, polling: 50 });
    } catch {
      fail(`${what} (waited ${timeout / 1000} s); page shows: ${await describe()}`);
    }
    return page.evaluate((n) => window.__at(n), name);
  };

  // Live cards of service web meant to run, as [{id, state, node}].
  const webCards = () =>
    Array.from(document.querySelectorAll('[data-task-id][data-service="web"]')).map((k) => ({
      id: k.dataset.taskId,
      state: k.dataset.state,
      desired: k.dataset.desired,
      node: k.closest('section.col').dataset.hostname || '',
    }));
  const running = (n) => Array.from(document.querySelectorAll('section.col[data-node-id] [data-task-id][data-service="web"][data-state="running"][data-desired="running"]')).length === n;

  // 1. A 6-replica service: cards appear across the columns, no reload.
  await watch('first', () => document.querySelector('[data-task-id][data-service="web"]') !== null);
  await watch('six', running, REPLICAS);
  const create = await shoal('service', 'create', '--detach', '--name', 'web', '--replicas', String(REPLICAS), IMAGE, 'sleep', '3600');
  const firstAt = await at('first', 'a card of service web', CONVERGE_MS);
  const sixAt = await at('six', `${REPLICAS} running cards of web`, CONVERGE_MS);
  const spread = await page.evaluate(webCards);
  const perNode = {};
  for (const c of spread) perNode[c.node] = (perNode[c.node] || 0) + 1;
  if (Object.keys(perNode).length !== NODES) fail(`the ${REPLICAS} cards should be spread over the ${NODES} columns: ${JSON.stringify(perNode)}`);
  const styled = await page.$eval('[data-task-id][data-service="web"]', (k) => ({ text: k.textContent, hue: k.style.getPropertyValue('--hue') }));
  if (!/web\.\d/.test(styled.text) || !styled.text.includes('busybox:latest') || !styled.text.includes('running') || styled.hue === '') {
    fail(`a card shows its name, image tag, state and the service's colour: ${JSON.stringify(styled)}`);
  }
  const onDrained = perNode[DRAIN] || 0;
  if (onDrained === 0) fail(`${DRAIN} runs no task of web, nothing to move: ${JSON.stringify(perNode)}`);

  // 2. Drain a node: at once its cards are marked to shut down and their
  // replacements run elsewhere; the column empties once the old containers
  // have stopped (`sleep` ignores SIGTERM: that takes the 10 s grace period).
  await watch(
    'moved',
    ([host, n]) => {
      const col = document.querySelector(`section.col[data-hostname="${host}"]`);
      const meant = col.querySelectorAll('[data-task-id][data-desired="running"]').length;
      const elsewhere = Array.from(document.querySelectorAll(`section.col[data-node-id]:not([data-hostname="${host}"]) [data-task-id][data-service="web"][data-state="running"][data-desired="running"]`)).length;
      return col.dataset.availability === 'drain' && meant === 0 && elsewhere === n;
    },
    [DRAIN, REPLICAS],
  );
  await watch('emptied', (host) => document.querySelector(`section.col[data-hostname="${host}"]`).querySelectorAll('[data-task-id][data-state="running"]').length === 0, DRAIN);
  const drain = await shoal('node', 'update', '--availability', 'drain', DRAIN);
  const movedAt = await at('moved', `${DRAIN}'s cards to move to the other columns`, CONVERGE_MS);
  const drainedHead = await page.$eval(`section.col[data-hostname="${DRAIN}"] .col-head`, (h) => h.textContent);
  if (!drainedHead.includes('drain')) fail(`the drained column's header says drain: ${drainedHead}`);
  const drainShot = path.join(ARTIFACTS, 'ui-drain.png');
  await page.screenshot({ path: drainShot, fullPage: true });
  const emptiedAt = await at('emptied', `no running card left on ${DRAIN}`, CONVERGE_MS);

  console.log(
    `ui latency: create→first card ${ms(firstAt - create.returned)} (${ms(firstAt - create.started)} from the CLI's start), ` +
      `create→${REPLICAS} cards ${ms(sixAt - create.returned)}, drain→cards moved ${ms(movedAt - drain.returned)} ` +
      `(→ old containers stopped, column empty: ${ms(emptiedAt - drain.returned)})`,
  );

  // 3. Page update latency without container start: a committed scale-up
  // is on screen as a new card (any state); a scale-down as a card marked
  // to shut down (or gone).
  const up = [];
  const upFromStart = [];
  const down = [];
  for (let r = 1; r <= ROUNDS; r++) {
    const known = (await page.evaluate(webCards)).map((c) => c.id);
    await watch(`up${r}`, (ids) => Array.from(document.querySelectorAll('[data-task-id][data-service="web"]')).some((k) => !ids.includes(k.dataset.taskId)), known);
    const s = await shoal('service', 'scale', 'web=' + (REPLICAS + 1), '--detach');
    const t = await at(`up${r}`, `round ${r}: the new card of web.${REPLICAS + 1}`, UPDATE_MS);
    up.push(t - s.returned);
    upFromStart.push(t - s.started);
    await watch(`seven${r}`, running, REPLICAS + 1);
    await at(`seven${r}`, `round ${r}: ${REPLICAS + 1} running cards`, CONVERGE_MS);

    await watch(`down${r}`, (n) => Array.from(document.querySelectorAll('[data-task-id][data-service="web"][data-desired="running"]')).length === n, REPLICAS);
    const d = await shoal('service', 'scale', 'web=' + REPLICAS, '--detach');
    down.push((await at(`down${r}`, `round ${r}: a card of web marked to shut down`, UPDATE_MS)) - d.returned);
    const settled = (n) =>
      document.querySelectorAll('[data-task-id][data-service="web"]').length === n &&
      document.querySelectorAll('[data-task-id][data-service="web"][data-state="running"]').length === n;
    await watch(`six${r}`, settled, REPLICAS);
    await at(`six${r}`, `round ${r}: back to ${REPLICAS} cards`, CONVERGE_MS);
  }
  const fmt = (xs) => `median ${ms(median(xs))}, max ${ms(Math.max(...xs))}`;
  console.log(`ui update latency (scale returned → new card on screen), ${ROUNDS} rounds: ${fmt(up)} (from scale started: ${fmt(upFromStart)}); target < 1000 ms`);
  console.log(`ui update latency (scale down returned → card marked shutdown), ${ROUNDS} rounds: ${fmt(down)}`);
  console.log(`ui update latency rounds (ms): up [${up.map(Math.round).join(', ')}], down [${down.map(Math.round).join(', ')}]`);

  const shot = path.join(ARTIFACTS, 'ui.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`ui screenshot: ${shot}`);

  // 4. Made-up 50 nodes × 500 tasks: drawn and patched quickly as cards,
  // the columns wrap (no sideways scrolling). Then 5,000 nodes × 100,000
  // tasks in 1,000 services (the million-task issue's size for the page):
  // compact by itself, no sideways scrolling, small patches, and the filters
  // show one service's nodes and one node.
  for (const [nNodes, nTasks, shotName] of [
    [50, 500, 'ui-50x500.png'],
    [5000, 100000, 'ui-5000x100000.png'],
  ]) {
    const big = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    big.on('pageerror', (e) => pageErrors.push(String(e)));
    await big.goto(URL_ + `?synthetic=${nNodes}x${nTasks}`);
    const bench = await big.waitForFunction(() => window.shoalUI && window.shoalUI.bench, null, { timeout: 120_000 }).then((h) => h.jsonValue());
    const label = `${nNodes} nodes × ${nTasks} tasks`;
    if (bench.columns !== nNodes || bench.cards !== nTasks) fail(`synthetic page should show ${nNodes} columns and ${nTasks} cards: ${JSON.stringify(bench)}`);
    const sideways = await big.$eval('#board', (b) => b.scrollWidth > b.clientWidth);
    if (sideways) fail(`${label}: the columns should wrap, not scroll sideways`);
    const big1 = nNodes > 100;
    if (bench.compact !== big1) fail(`${label}: the page should ${big1 ? '' : 'not '}turn compact by itself: ${JSON.stringify(bench)}`);
    const dots = await big.$$eval('[data-task-id].dot', (ks) => ks.length);
    if (big1 && dots !== nTasks) fail(`${label}: every task should be a square in the compact view, found ${dots}`);
    if (bench.filterNodeNodes !== 1) fail(`${label}: filtering by a hostname should leave one node, left ${bench.filterNodeNodes}`);
    const perService = big1 ? 100 : 8;
    if (bench.filterServiceNodes !== perService) fail(`${label}: one service's filter should leave its ${perService} nodes, left ${bench.filterServiceNodes}`);
    if (bench.patchBytes > 4096) fail(`${label}: a 5-task patch should stay small, it was ${bench.patchBytes} bytes`);
    const shot = path.join(ARTIFACTS, shotName);
    await big.screenshot({ path: shot });
    console.log(
      `ui synthetic ${label}${bench.compact ? ' (compact)' : ''}: first render ${bench.firstRenderMs.toFixed(1)} ms, one patch (5 cards, ${Math.round(bench.patchBytes)} B) ${bench.patchMs.toFixed(2)} ms, ` +
        `age tick ${bench.ageTickMs.toFixed(1)} ms, filter by service ${bench.filterServiceMs.toFixed(1)} ms, by node ${bench.filterNodeMs.toFixed(1)} ms; ${bench.domNodes} DOM elements; screenshot ${shot}`,
    );
    await big.close();
  }

  // 4b. The filters in the live page: the drained node's hostname leaves
  // its column alone, and the address keeps the filter.
  await page.fill('#f-node', DRAIN);
  await page
    .waitForFunction((host) => Array.from(document.querySelectorAll('section.col[data-node-id]')).filter((c) => !c.hidden).map((c) => c.dataset.hostname).join(',') === host, DRAIN, { timeout: 5_000 })
    .catch(async () => fail(`filtering by ${DRAIN} should leave its column alone; page shows: ${await describe()}`));
  if (!(await page.evaluate(() => location.search)).includes('node=')) fail('the node filter should be kept in the address');
  await page.fill('#f-node', '');
  await page.selectOption('#f-service', 'web');
  const webOnly = await page.$$eval('[data-task-id]', (ks) => ks.filter((k) => k.offsetParent !== null).every((k) => k.dataset.service === 'web'));
  if (!webOnly) fail('with service web chosen, only its cards should show');
  await page.selectOption('#f-service', '');

  // 5. A worker's API serves the page too, and it says where to look.
  const workerUrl = process.env.SHOAL_UI_WORKER_URL;
  if (workerUrl) {
    const w = await browser.newPage();
    await w.goto(workerUrl);
    await w
      .waitForFunction(() => /is a worker, not a manager/.test(document.getElementById('notice').textContent), null, { timeout: 20_000, polling: 100 })
      .catch(async () => fail(`a worker's page should say it is a worker; notice: ${await w.textContent('#notice')}`));
    await w.close();
  }

  if (foreign.length) fail(`the page loaded from elsewhere: ${foreign.join(', ')}`);
  if (pageErrors.length) fail(`errors in the page: ${pageErrors.join('; ')}`);
  if (median(up) >= 1000) fail(`median update latency ${ms(median(up))} is over the 1 s target`);
  if (Math.max(...up) >= 1000) console.log(`ui-e2e: warning: a round took ${ms(Math.max(...up))} (over 1 s)`);
  console.log('ui-e2e: ok');
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
} finally {
  clearTimeout(overall);
  await browser.close().catch(() => {});
}
