// sightline console. It reads the HTTP API and nothing else; the status
// stream (GET /v1/projections/events) keeps every page live, without
// polling. The API token, once given, is kept in this tab's
// sessionStorage and sent as a Bearer token: no cookie is ever set.
// Every node is built with the DOM, never from HTML strings, so that
// nothing the server sends (event data, errors) can become markup.

const TOKEN_KEY = 'sightline.token';
const page = document.body.dataset.page;
const auth = document.body.dataset.auth; // open | actions | reads
const $ = (sel) => document.querySelector(sel);

// ---- the token ----------------------------------------------------------

const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set(v) {
    if (v) sessionStorage.setItem(TOKEN_KEY, v);
    else sessionStorage.removeItem(TOKEN_KEY);
    showToken();
    document.dispatchEvent(new Event('sightline:token'));
  },
};

function showToken() {
  const b = $('#token-button');
  b.hidden = auth === 'open';
  b.textContent = token.get() ? 'API token ✓' : 'API token';
}

let tokenWaiters = [];
function settleToken(given) {
  const waiters = tokenWaiters;
  tokenWaiters = [];
  for (const w of waiters) w(given);
}

// askToken opens the token dialog; it resolves true once a token is given.
function askToken() {
  const d = $('#token-dialog');
  if (!d.open) {
    $('#token-input').value = token.get();
    d.showModal();
    $('#token-input').focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function setUpToken() {
  const d = $('#token-dialog');
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token.set($('#token-input').value.trim());
    d.close();
    settleToken(token.get() !== '');
  });
  $('#token-cancel').addEventListener('click', () => { d.close(); settleToken(false); });
  $('#token-forget').addEventListener('click', () => { token.set(''); d.close(); settleToken(false); });
  d.addEventListener('cancel', () => settleToken(false));
  $('#token-button').addEventListener('click', () => askToken());
  showToken();
}

// ---- the API ------------------------------------------------------------

class ApiError extends Error {
  constructor(status, title, detail) {
    super(`${status} ${title}${detail ? ': ' + detail : ''}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

function authHeaders(h = new Headers()) {
  const t = token.get();
  if (t) h.set('Authorization', 'Bearer ' + t);
  return h;
}

// api sends a request and returns its JSON; an answer other than 2xx
// throws an ApiError from its problem document.
async function api(method, path) {
  const res = await fetch(path, { method, headers: authHeaders(new Headers({ Accept: 'application/json' })), cache: 'no-store' });
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch { body = text; }
  }
  if (!res.ok) {
    const p = body && typeof body === 'object' ? body : {};
    throw new ApiError(res.status, p.title || res.statusText, p.detail || (typeof body === 'string' ? body.trim() : ''));
  }
  return body;
}

// act runs an action and says how it went: done(answer) is what to say
// when it succeeds. A refusal for want of the token says so, asks for it,
// and tries again with it.
async function act(label, method, path, done) {
  try {
    const out = await api(method, path);
    message('ok', done(out));
    return out;
  } catch (e) {
    const shown = message('error', `${label} failed: ${e.message}`);
    if (e.status === 401 && await askToken()) {
      shown.remove();
      return act(label, method, path, done);
    }
    return null;
  }
}

// ---- the status stream --------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function setConnection(state) {
  const c = $('#connection');
  c.className = 'conn conn-' + state;
  c.textContent = state;
}

// follow reads a status stream and calls onStatus with each status. It
// reconnects on its own, resuming after the last event it had.
async function follow(path, onStatus) {
  let lastId = '';
  let retry = 2000;
  for (;;) {
    try {
      const headers = authHeaders(new Headers({ Accept: 'text/event-stream' }));
      if (lastId) headers.set('Last-Event-ID', lastId);
      const res = await fetch(path, { headers, cache: 'no-store' });
      if (res.status === 401) {
        setConnection('unauthorized');
        if (!(await askToken())) await sleep(5000);
        continue;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setConnection('live');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue; // a comment: the server is alive
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let v = colon < 0 ? '' : line.slice(colon + 1);
            if (v.startsWith(' ')) v = v.slice(1);
            if (field === 'id') lastId = v;
            else if (field === 'event') event = v;
            else if (field === 'data') data.push(v);
            else if (field === 'retry' && /^\d+$/.test(v)) retry = Number(v);
          }
          if (event === 'status' && data.length) onStatus(JSON.parse(data.join('\n')));
        }
      }
    } catch {
      // the server went away or the network dropped: reconnect below
    }
    setConnection('reconnecting');
    await sleep(retry);
  }
}

// ---- building the page --------------------------------------------------

// el makes an element: attrs are attributes (class as "class"), children
// nodes or text.
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function message(kind, text) {
  const close = el('button', { type: 'button', class: 'quiet' }, 'Dismiss');
  const m = el('div', { class: `message message-${kind}` }, el('span', { class: 'text' }, text), close);
  close.addEventListener('click', () => m.remove());
  $('#messages').prepend(m);
  if (kind === 'ok') setTimeout(() => m.remove(), 8000);
  return m;
}

function badge(status, reason) {
  return el('span', { class: `badge status-${status}`, title: reason || null }, status);
}

function lagText(ms) {
  if (!ms) return '0';
  if (ms < 1000) return `${ms} ms`;
  return durationText(ms / 1000);
}

function durationText(s) {
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function rateText(r) {
  if (!r) return '0';
  if (r >= 1000) return `${(r / 1000).toFixed(1)} k`;
  return r >= 10 ? r.toFixed(0) : r.toFixed(1);
}

function ownerText(st) {
  if (st.owner) return `${st.owner.host}:${st.owner.pid}${st.owned ? ' (this process)' : ''}`;
  if (st.segments && st.segments.some((s) => s.owner)) return 'several';
  return 'none';
}

// rebuildText says how far a rebuild is, how fast it goes and how long
// it has left.
function rebuildText(rb) {
  if (!rb.building) return `generation ${rb.generation}: waiting for a process to build it`;
  const parts = [`${rb.percent.toFixed(1)} %`, `${rateText(rb.positions_per_second)}/s`];
  if (rb.eta_seconds !== null && rb.eta_seconds !== undefined) parts.push(`${durationText(rb.eta_seconds)} left`);
  if (rb.last_error) parts.push(`last error: ${rb.last_error}`);
  return parts.join(' · ');
}

function rebuildNodes(rb) {
  if (!rb) return ['–'];
  const text = el('span', { class: 'rebuild-text' }, rebuildText(rb));
  if (!rb.building) return [text];
  return [el('progress', { max: 1, value: rb.progress, title: `generation ${rb.generation}, version ${rb.version} (${rb.reason})` }), ' ', text];
}

function fill(node, ...children) {
  node.replaceChildren(...children.flat());
}

// ---- the overview -------------------------------------------------------

function overview() {
  const tbody = $('#projections tbody');
  const rows = new Map(); // projection → its row and its segments' rows

  function rowOf(name) {
    let row = rows.get(name);
    if (row) return row;
    tbody.querySelector('tr.placeholder')?.remove();
    const tr = el('tr', { 'data-projection': name });
    const cells = {};
    for (const k of ['name', 'status', 'version', 'position', 'head', 'lag', 'rate', 'parked', 'owner', 'rebuild']) {
      cells[k] = el('td', { class: ['version', 'position', 'head', 'lag', 'rate', 'parked'].includes(k) ? `num ${k}` : k });
      tr.append(cells[k]);
    }
    fill(cells.name, el('a', { href: `/ui/projections/${encodeURIComponent(name)}` }, name));
    row = { tr, cells, segments: [] };
    rows.set(name, row);
    const after = [...rows.keys()].sort().filter((n) => n > name).map((n) => rows.get(n).tr)[0];
    tbody.insertBefore(tr, after || null);
    return row;
  }

  function show(st) {
    const { tr, cells } = rowOf(st.name);
    tr.dataset.status = st.status;
    fill(cells.status, badge(st.status, st.reason || st.last_error));
    cells.version.textContent = st.version;
    cells.position.textContent = st.position;
    cells.head.textContent = st.head;
    cells.lag.textContent = lagText(st.lag_ms);
    cells.rate.textContent = rateText(st.events_per_second);
    fill(cells.parked, st.parked > 0
      ? el('a', { class: 'warn', href: `/ui/projections/${encodeURIComponent(st.name)}#parked-section` }, String(st.parked))
      : '0');
    cells.owner.textContent = ownerText(st);
    fill(cells.rebuild, rebuildNodes(st.rebuild));

    const row = rows.get(st.name);
    for (const r of row.segments) r.remove();
    row.segments = (st.segments || []).map((seg) => el('tr', { class: 'segment', 'data-segment': seg.segment },
      el('td', {}, `segment ${seg.segment}`), el('td', {}, badge(seg.status, seg.reason)), el('td'),
      el('td', { class: 'num' }, seg.position), el('td'), el('td', { class: 'num' }, lagText(seg.lag_ms)),
      el('td', { class: 'num' }, rateText(seg.events_per_second)), el('td'),
      el('td', {}, seg.owner ? `${seg.owner.host}:${seg.owner.pid}${seg.owned ? ' (this process)' : ''}` : 'none'), el('td')));
    tr.after(...row.segments);
  }

  api('GET', '/v1/projections').then((list) => {
    for (const st of list.projections) show(st);
    if (!list.projections.length) fill(tbody, el('tr', { class: 'placeholder' }, el('td', { colspan: 10 }, 'No projections run here.')));
  }).catch((e) => message('error', `Could not read the projections: ${e.message}`));
  follow('/v1/projections/events', show);
}

// ---- a projection's page ------------------------------------------------

const WINDOW_MS = 10 * 60 * 1000;

// spark draws samples' key over the last WINDOW_MS into svg, its value
// carried on to now.
function spark(svg, samples, key, fmt, peakNode) {
  const W = 600;
  const H = 60;
  const now = Date.now();
  const from = now - WINDOW_MS;
  const pts = samples.filter((s) => s.t >= from);
  const ns = 'http://www.w3.org/2000/svg';
  svg.replaceChildren();
  if (!pts.length) return;
  const max = Math.max(...pts.map((p) => p[key]));
  const scale = max > 0 ? max : 1;
  const xy = pts.map((p) => [((p.t - from) / WINDOW_MS) * W, H - 2 - (p[key] / scale) * (H - 6)]);
  xy.push([W, xy[xy.length - 1][1]]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
  const area = document.createElementNS(ns, 'polygon');
  area.setAttribute('points', `${xy[0][0].toFixed(1)},${H} ${line} ${W},${H}`);
  const poly = document.createElementNS(ns, 'polyline');
  poly.setAttribute('points', line);
  svg.append(area, poly);
  peakNode.textContent = `now ${fmt(pts[pts.length - 1][key])} · peak ${fmt(max)}`;
}

function projectionPage() {
  const name = document.body.dataset.projection;
  const base = `/v1/projections/${encodeURIComponent(name)}`;
  const samples = [];
  let last = null;

  const draw = () => {
    while (samples.length && samples[0].t < Date.now() - WINDOW_MS) samples.shift();
    spark($('#lag-chart'), samples, 'lag', lagText, $('#lag-peak'));
    spark($('#rate-chart'), samples, 'rate', (r) => `${rateText(r)}/s`, $('#rate-peak'));
  };

  function show(st) {
    fill($('#status'), st.status);
    $('#status').className = `badge status-${st.status}`;
    const why = st.reason || st.last_error || '';
    $('#reason').hidden = !why;
    $('#reason').textContent = why;
    $('#version').textContent = st.version;
    $('#position').textContent = st.position;
    $('#head').textContent = st.head;
    $('#lag').textContent = lagText(st.lag_ms);
    $('#rate').textContent = rateText(st.events_per_second);
    $('#parked-total').textContent = st.parked;
    $('#parked-total').className = st.parked > 0 ? 'warn' : '';
    $('#owner').textContent = ownerText(st);

    $('#segments-section').hidden = !st.segments;
    fill($('#segments tbody'), (st.segments || []).map((seg) => el('tr', {},
      el('td', { class: 'num' }, seg.segment), el('td', {}, badge(seg.status, seg.reason)), el('td', { class: 'num' }, seg.position),
      el('td', { class: 'num' }, lagText(seg.lag_ms)), el('td', { class: 'num' }, rateText(seg.events_per_second)),
      el('td', {}, seg.owner ? `${seg.owner.host}:${seg.owner.pid}` : 'none'))));

    $('#rebuild-idle').hidden = !!st.rebuild;
    $('#rebuild-running').hidden = !st.rebuild;
    if (st.rebuild) {
      $('#rebuild-progress').value = st.rebuild.progress;
      $('#rebuild-text').textContent = rebuildText(st.rebuild);
    } else if (last && last.rebuild) {
      message('ok', `Rebuild of ${name}: generation ${last.rebuild.generation} took over (version ${st.version}).`);
    }

    if (!last || last.parked !== st.parked) loadParked(st.parked);
    samples.push({ t: Date.now(), lag: st.lag_ms, rate: st.events_per_second });
    last = st;
    draw();
  }

  async function loadParked(count) {
    $('#parked-count').textContent = count ? `(${count})` : '';
    const locked = auth !== 'open' && !token.get();
    $('#parked-locked').hidden = !locked;
    if (locked) {
      $('#parked').hidden = true;
      $('#parked-none').hidden = true;
      return;
    }
    let list;
    try {
      list = await api('GET', `${base}/parked`);
    } catch (e) {
      if (e.status === 401) {
        $('#parked-locked').hidden = false;
        message('error', `Parked events: ${e.message}`);
      } else {
        message('error', `Could not read the parked events: ${e.message}`);
      }
      return;
    }
    $('#parked-none').hidden = list.parked.length > 0;
    $('#parked').hidden = list.parked.length === 0;
    fill($('#parked tbody'), list.parked.map(parkedRow));
  }

  // releaseText says what a retry or a skip did.
  function releaseText(rel) {
    const held = rel.applied - (rel.skipped ? 0 : 1);
    let text = rel.skipped ? `Parked event ${rel.event.id} skipped` : `Parked event ${rel.event.id} applied`;
    if (held > 0) text += `, and the ${held} held behind it`;
    if (rel.parked) text += `; event ${rel.parked.id} of the stream failed in turn and holds it now`;
    return text + '.';
  }

  function parkedRow(p) {
    const actions = el('td', { class: 'actions' });
    if (p.state === 'parked') {
      for (const [label, verb] of [['Retry', 'retry'], ['Skip', 'skip']]) {
        const b = el('button', { type: 'button', class: verb === 'skip' ? 'danger' : null, 'data-action': verb }, label);
        b.addEventListener('click', async () => {
          b.disabled = true;
          const out = await act(`${label} parked event ${p.id}`, 'POST', `${base}/parked/${p.id}/${verb}`, releaseText);
          b.disabled = false;
          if (out) loadParked(last ? last.parked : 0);
        });
        actions.append(b);
      }
    } else {
      actions.append(el('span', { class: 'muted' }, 'held behind the one before'));
    }
    const data = p.data !== undefined ? JSON.stringify(p.data, null, 2) : (p.data_base64 ? `(not JSON) base64: ${p.data_base64}` : '(none)');
    return el('tr', { 'data-parked': p.id },
      el('td', { class: 'num' }, p.id), el('td', {}, p.state), el('td', { class: 'mono' }, p.stream_id),
      el('td', { class: 'num' }, p.revision), el('td', {}, p.type), el('td', { class: 'num' }, p.attempts),
      el('td', { class: 'error' }, p.error || ''),
      el('td', {}, el('details', {}, el('summary', {}, 'data'), el('pre', {}, data))),
      actions);
  }

  async function loadVerify() {
    const box = $('#verify');
    let v;
    try {
      v = await api('GET', `${base}/verify`);
    } catch (e) {
      fill(box, el('p', { class: 'muted' }, e.status === 404
        ? `No verify yet. sightline verify ${name} replays the store into a scratch copy and compares it with the read model.`
        : `Could not read the last verify: ${e.message}`));
      return;
    }
    const when = new Date(v.finished_at || v.started_at).toLocaleString();
    const head = v.error
      ? el('p', { class: 'verify-drift' }, `Failed ${when}: ${v.error}`)
      : el('p', {}, el('span', { class: v.drifted ? 'verify-drift' : 'verify-ok' }, v.drifted ? `${v.drifted} rows drifted` : 'No drift'),
        ` · ${when} · generation ${v.generation} at position ${v.position} · `,
        Object.entries(v.rows || {}).map(([t, n]) => `${t}: ${n} rows`).join(', '));
    const drift = (v.drift || []).map((d) => el('tr', {},
      el('td', {}, d.table), el('td', {}, d.kind), el('td', { class: 'mono' }, JSON.stringify(d.key)),
      el('td', { class: 'mono' }, (d.columns || []).join(', '))));
    fill(box, head, drift.length
      ? el('table', { class: 'grid' }, el('thead', {}, el('tr', {}, el('th', {}, 'Table'), el('th', {}, 'Kind'), el('th', {}, 'Key'), el('th', {}, 'Columns'))), el('tbody', {}, drift))
      : []);
  }

  async function loadQueries() {
    const box = $('#queries');
    let list;
    try {
      list = await api('GET', `${base}/queries`);
    } catch (e) {
      fill(box, el('p', {}, `Could not read the queries: ${e.message}`));
      return;
    }
    if (!list.queries.length) {
      fill(box, el('p', { class: 'muted' }, 'This projection declares no queries.'));
      return;
    }
    fill(box, list.queries.map(queryBox));
  }

  function queryBox(q) {
    const inputs = q.params.map((p) => {
      const type = p.type === 'date' ? 'date' : 'text';
      const input = el('input', { name: p.name, type, required: p.required, placeholder: p.default ?? (p.enum ? p.enum.join(' | ') : p.type),
        inputmode: ['integer', 'bigint', 'numeric'].includes(p.type) ? 'numeric' : null });
      return el('label', { title: p.description || null }, `${p.name}${p.required ? ' *' : ''} (${p.type})`, input);
    });
    if (!q.one) inputs.push(el('label', {}, 'limit', el('input', { name: 'limit', inputmode: 'numeric', placeholder: '50' })));
    const result = el('div', { class: 'result', hidden: true });
    const form = el('form', { 'data-query': q.name }, inputs, el('button', { type: 'submit' }, 'Try it'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const params = new URLSearchParams();
      for (const input of form.querySelectorAll('input')) if (input.value !== '') params.set(input.name, input.value);
      const url = q.path + (params.size ? `?${params}` : '');
      const started = performance.now();
      let res;
      let text;
      try {
        res = await fetch(url, { headers: authHeaders(new Headers({ Accept: 'application/json' })), cache: 'no-store' });
        text = await res.text();
      } catch (err) {
        fill(result, el('p', { class: 'warn' }, `The request failed: ${err.message}`));
        result.hidden = false;
        return;
      }
      const ms = Math.round(performance.now() - started);
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: as it came */ }
      const headers = ['Projection-Position', 'Projection-Head', 'Projection-Lag-Ms', 'Projection-Status', 'Projection-Stream-Parked', 'Content-Type']
        .filter((h) => res.headers.has(h))
        .map((h) => el('span', { 'data-header': h }, el('code', {}, `${h}: ${res.headers.get(h)}`)));
      fill(result,
        el('p', {}, el('strong', { class: res.ok ? '' : 'warn' }, `${res.status} ${res.statusText}`), ` · ${ms} ms · `, el('code', {}, `GET ${url}`)),
        el('div', { class: 'headers' }, headers),
        el('pre', { class: 'body' }, shown));
      result.hidden = false;
    });
    return el('div', { class: 'query', 'data-query': q.name },
      el('h3', {}, q.name, ' ', el('span', { class: 'muted' }, q.one ? 'one row' : `rows, by ${(q.page_by || []).join(', ') || 'page'}`)),
      q.description ? el('p', {}, q.description) : null,
      el('p', {}, el('code', {}, q.path), q.route ? [' · also ', el('code', {}, q.route)] : null),
      form, result);
  }

  $('#rebuild-button').addEventListener('click', async () => {
    const b = $('#rebuild-button');
    b.disabled = true;
    await act(`Rebuild ${name}`, 'POST', `${base}/rebuild`, (rb) =>
      `Rebuild of ${name} ${rb.created ? 'started' : 'under way already'}: generation ${rb.generation} is built while the active one serves, and takes over once caught up.`);
    b.disabled = false;
  });
  $('#parked-unlock').addEventListener('click', () => askToken());
  document.addEventListener('sightline:token', () => loadParked(last ? last.parked : 0));

  api('GET', `${base}/history`).then((h) => {
    const seen = h.samples.map((s) => ({ t: Date.parse(s.at), lag: s.lag_ms, rate: s.events_per_second }));
    samples.unshift(...seen.filter((s) => !samples.length || s.t < samples[0].t));
    draw();
  }).catch((e) => message('error', `Could not read the history: ${e.message}`));
  setInterval(draw, 1000);
  follow(`/v1/projections/events?projection=${encodeURIComponent(name)}`, show);
  loadVerify();
  loadQueries();
}

async function start() {
  setUpToken();
  // Where every read needs a token, ask for it before the first.
  if (auth === 'reads' && !token.get()) await askToken();
  if (page === 'overview') overview();
  else if (page === 'projection') projectionPage();
  else $('#connection').hidden = true; // a page that follows nothing
}

start();
