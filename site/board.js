// Canary deploy board: polls GET /api/stats (same origin, works behind CloudFront) and
// draws, per color, the configured weight next to what the load balancer really did
// (live and new connections), with the health figures the canary gate looks at.
// Contract: docs/architecture.md, "GET /api/stats". No inline code or styles (strict CSP):
// bar widths are set through the CSSOM (a custom property), never a style attribute.
'use strict';

(() => {
  const STATS_URL = '/api/stats';
  const POLL_MS = 1500;
  const STALE_MS = 5000;
  // A request nobody answers (an instance stopped mid-reply, a load balancer waiting out
  // its idle timeout) is a miss like an error, not a board that still says "live".
  const FETCH_TIMEOUT_MS = 4000;
  const MAX_EVENTS = 12;
  const ORDER = ['blue', 'green'];

  const TEXTS = {
    en: {
      title: 'Canary deploy', split: 'Traffic split', configured: 'Configured weight',
      liveShare: 'Live connections', newShare: 'New connections, last 60 s',
      events: 'Canary steps', time: 'Time', action: 'Action', weights: 'Blue / green',
      result: 'Result', gates: 'Gate readings', noEvents: 'No canary steps yet.',
      connections: 'Live connections', newConnections: 'New conn. share (60 s)',
      msgRate: 'Messages / s', errorRate: 'Error rate', p95: 'p95 latency',
      instances: 'Instances', ok: 'passed', failed: 'FAILED', draining: 'draining',
      live: (s) => `live · updated ${s}`, stale: (s) => `STALE · last update ${s}`,
      down: (why) => `no data: ${why}`, waiting: 'waiting for data…',
      noAnswer: `no answer in ${FETCH_TIMEOUT_MS / 1000} s`,
      fromLb: (lb) => `read from ${lb}`, fromEvent: 'from the last canary step',
      lbStale: (lb, s) => `${lb} unreachable · value read ${s} s ago`,
    },
    ko: {
      title: '카나리 배포', split: '트래픽 분배', configured: '설정 가중치',
      liveShare: '현재 연결', newShare: '새 연결 (최근 60초)',
      events: '카나리 단계', time: '시각', action: '동작', weights: '블루 / 그린',
      result: '결과', gates: '게이트 측정값', noEvents: '아직 카나리 단계가 없습니다.',
      connections: '현재 연결', newConnections: '새 연결 비율 (60초)',
      msgRate: '초당 메시지', errorRate: '오류율', p95: 'p95 지연',
      instances: '인스턴스', ok: '통과', failed: '실패', draining: '드레인 중',
      live: (s) => `실시간 · ${s} 갱신`, stale: (s) => `오래됨 · 마지막 갱신 ${s}`,
      down: (why) => `데이터 없음: ${why}`, waiting: '데이터를 기다리는 중…',
      noAnswer: `${FETCH_TIMEOUT_MS / 1000}초 동안 응답 없음`,
      fromLb: (lb) => `${lb}에서 읽음`, fromEvent: '마지막 카나리 단계 기준',
      lbStale: (lb, s) => `${lb} 연결 안 됨 · ${s}초 전에 읽은 값`,
    },
  };
  const LANG = (navigator.language || 'en').toLowerCase().startsWith('ko') ? 'ko' : 'en';
  const T = TEXTS[LANG];

  const $ = (id) => document.getElementById(id);
  const cards = new Map(); // color -> card element
  let lastOk = 0;

  function translate(root) {
    for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = T[el.dataset.i18n];
  }

  // ------------------------------------------------------------------ formatting
  const num = (v, digits = 0) =>
    typeof v === 'number' && Number.isFinite(v)
      ? v.toLocaleString(LANG, { minimumFractionDigits: digits, maximumFractionDigits: digits })
      : '–';
  const pct = (v, digits = 0) => (typeof v === 'number' && Number.isFinite(v) ? `${num(v * 100, digits)}%` : '–');
  const ms = (v) => (typeof v === 'number' && Number.isFinite(v) ? `${num(v, v < 10 ? 1 : 0)} ms` : '–');
  const clock = (ts) =>
    typeof ts === 'number' ? new Date(ts).toLocaleTimeString(LANG, { hour12: false }) : '–';

  function share(a, b) {
    const total = (a || 0) + (b || 0);
    return total > 0 ? (a || 0) / total : null;
  }

  // ------------------------------------------------------------------ split bars
  function drawSplit(testid, blue, green, fmt) {
    const row = document.querySelector(`[data-testid="${testid}"]`);
    const s = share(blue, green);
    const bar = row.querySelector('.bar');
    bar.dataset.empty = s === null ? 'true' : 'false';
    // CSSOM, not a style attribute: allowed by a strict style-src
    bar.style.setProperty('--blue-share', s === null ? '0' : String(s));
    row.querySelector('.split-figures').textContent =
      s === null ? '–' : `${fmt(blue)} / ${fmt(green)}`;
  }

  // Where the configured weights come from: the load balancer itself (chat/lbweights.py),
  // or, before its first read, the last canary event.
  const LB_NAMES = { haproxy: 'HAProxy', elbv2: 'ALB' };
  function drawWeightsSource(w) {
    const el = $('weights-source');
    const lb = w && typeof w === 'object' ? LB_NAMES[w.source] : undefined;
    if (!w || typeof w !== 'object' || !w.source) {
      el.dataset.state = 'none';
      el.textContent = '';
    } else if (!lb) {
      el.dataset.state = 'event';
      el.textContent = T.fromEvent;
    } else if (w.error) {
      el.dataset.state = 'stale';
      el.textContent = T.lbStale(lb, num(w.age_s));
    } else {
      el.dataset.state = 'live';
      el.textContent = T.fromLb(lb);
    }
  }

  // ------------------------------------------------------------------ color cards
  function card(color) {
    let el = cards.get(color);
    if (el) return el;
    el = $('color-template').content.firstElementChild.cloneNode(true);
    translate(el);
    el.dataset.color = color;
    el.querySelector('.color-name').textContent = color;
    cards.set(color, el);
    $('colors').append(el);
    return el;
  }

  function set(el, field, text) {
    el.querySelector(`[data-field="${field}"]`).textContent = text;
  }

  function drawColors(stats) {
    const colors = stats.colors || {};
    const weights = stats.weights || {};
    const names = [...ORDER.filter((c) => c in colors || c in weights),
      ...Object.keys(colors).filter((c) => !ORDER.includes(c))];
    const newTotal = names.reduce((t, c) => t + ((colors[c] || {}).new_connections_60s || 0), 0);
    for (const color of names) {
      const c = colors[color] || {};
      const el = card(color);
      el.querySelector('.color-version').textContent = c.version || '';
      el.querySelector('.weight-value').textContent = num(weights[color]);
      set(el, 'connections', num(c.connections));
      set(el, 'new_share', newTotal > 0
        ? `${pct((c.new_connections_60s || 0) / newTotal)} (${num(c.new_connections_60s)})`
        : '–');
      set(el, 'messages_per_s', num(c.messages_per_s, 1));
      set(el, 'error_rate', pct(c.error_rate, 2));
      set(el, 'p95_ms', ms(c.p95_ms));
      set(el, 'instances', num(c.instances));
      el.dataset.alarm = c.error_rate > 0.05 ? 'true' : 'false';
      el.querySelector('.color-draining').hidden = !c.draining;
    }
    const b = colors.blue || {};
    const g = colors.green || {};
    drawSplit('split-weights', weights.blue, weights.green, (v) => `${num(v)}%`);
    drawWeightsSource(stats.weights);
    drawSplit('split-live', b.connections, g.connections, (v) => num(v));
    drawSplit('split-new', b.new_connections_60s, g.new_connections_60s, (v) => num(v));
  }

  // ------------------------------------------------------------------ events
  function gateText(gates) {
    if (!gates || typeof gates !== 'object') return '';
    return Object.entries(gates)
      .map(([name, g]) => {
        if (g && typeof g === 'object') {
          const value = g.value ?? g.measured ?? '';
          const limit = g.threshold ?? g.limit;
          const mark = g.ok === false ? ' ✗' : g.ok === true ? ' ✓' : '';
          return `${name} ${fmtValue(value)}${limit !== undefined ? ` / ${fmtValue(limit)}` : ''}${mark}`;
        }
        return `${name} ${fmtValue(g)}`;
      })
      .join(' · ');
  }
  function fmtValue(v) {
    if (typeof v === 'number') return String(Number(v.toFixed(3))); // 18.5, 0.001, 250
    if (v === null || v === undefined) return '–';
    return String(v);
  }

  function drawEvents(events) {
    const body = $('events-body');
    const list = (events || []).slice().sort((a, b) => (b.ts || 0) - (a.ts || 0)).slice(0, MAX_EVENTS);
    const rows = list.map((e) => {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'event';
      tr.dataset.ok = e.ok === false ? 'false' : 'true';
      tr.dataset.action = String(e.action || '');
      const w = e.weights || {};
      const cells = [
        clock(e.ts),
        String(e.action || ''),
        `${num(w.blue)} / ${num(w.green)}`,
        e.ok === false ? T.failed : T.ok,
        [gateText(e.gates), e.message || ''].filter(Boolean).join(' — '),
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    $('no-events').hidden = rows.length > 0;
  }

  // ------------------------------------------------------------------ polling
  function freshness(stateName, text) {
    const el = $('freshness');
    el.dataset.state = stateName;
    el.textContent = text;
  }

  async function poll() {
    try {
      const res = await fetch(STATS_URL, {
        cache: 'no-store',
        headers: { Accept: 'application/json' },
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const stats = await res.json();
      drawColors(stats);
      drawEvents(stats.events);
      lastOk = Date.now();
      freshness('live', T.live(clock(stats.ts || lastOk)));
    } catch (err) {
      if (lastOk && Date.now() - lastOk < STALE_MS) return; // one miss is not news
      const why = err.name === 'TimeoutError' ? T.noAnswer : err.message;
      freshness(lastOk ? 'stale' : 'down', lastOk ? T.stale(clock(lastOk)) : T.down(why));
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  document.documentElement.lang = LANG;
  translate(document);
  freshness('waiting', T.waiting);
  poll();
})();
