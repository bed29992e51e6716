// Canary Chat web client. Plain JS, no framework, no inline code (the page runs under a
// strict Content-Security-Policy). Protocol: docs/protocol.md.
//
// Rules this file keeps:
// - user text is only ever inserted with textContent;
// - every message is keyed by its room sequence number (seq): duplicates are dropped,
//   gaps are asked for over HTTP, a reconnect resumes with ?since=<last seq>;
// - `migrate` is make-before-break: the new socket is opened first and the old one is
//   closed only when the new one has sent its history, so the user sees no interruption
//   (until then the old one stays in use: sends go there and its messages are shown).
'use strict';

(() => {
  // ------------------------------------------------------------------ i18n
  const TEXTS = {
    en: {
      tagline: 'Real-time chat during a live blue/green deploy.',
      nickname: 'Nickname',
      nicknamePlaceholder: 'Your name',
      room: 'Room',
      join: 'Join',
      send: 'Send',
      messagePlaceholder: 'Write a message…',
      badNickname: 'Nickname: 1-32 letters, digits, spaces or _ - .',
      badRoom: 'Room: 1-32 letters, digits, spaces or _ - .',
      sending: 'sending…',
      sent: 'sent',
      servedBy: (color, version) => `served by ${color} ${version}`,
      online: (n) => `${n} online`,
      connecting: 'Connecting…',
      reconnecting: 'Connection lost, reconnecting…',
      slowDown: 'Slow down a little…',
      retrying: 'Server busy, retrying…',
      newMessages: 'New messages ↓',
    },
    ko: {
      tagline: '블루/그린 배포 중에도 끊기지 않는 실시간 채팅',
      nickname: '닉네임',
      nicknamePlaceholder: '이름',
      room: '방',
      join: '입장',
      send: '보내기',
      messagePlaceholder: '메시지를 입력하세요…',
      badNickname: '닉네임: 1-32자의 글자, 숫자, 공백, _ - .',
      badRoom: '방 이름: 1-32자의 글자, 숫자, 공백, _ - .',
      sending: '보내는 중…',
      sent: '전송됨',
      servedBy: (color, version) => `${color} ${version} 서버 연결`,
      online: (n) => `${n}명 접속`,
      connecting: '연결하는 중…',
      reconnecting: '연결이 끊겨 다시 연결하는 중…',
      slowDown: '조금 천천히 보내 주세요…',
      retrying: '서버가 바빠서 다시 보내는 중…',
      newMessages: '새 메시지 ↓',
    },
  };
  const LANG = (navigator.language || 'en').toLowerCase().startsWith('ko') ? 'ko' : 'en';
  const T = TEXTS[LANG];

  // Same rule as the server: 1-32 letters (any script), digits, space, _ - . ; not only spaces.
  const NAME_RE = /^[\p{L}\p{N}\p{M} _.\-]{1,32}$/u;
  const validName = (s) => NAME_RE.test(s) && s.trim() !== '';
  // As the server stores a nickname: NFKC, runs of spaces made one, trimmed of spaces.
  const normaliseName = (s) => s.normalize('NFKC').replace(/ {2,}/g, ' ').replace(/^ | $/g, '');
  // The short per-user mark shown after every name: two people who picked the same (or a
  // look-alike) nickname are still told apart. user_id is assigned by the server.
  const userMark = (userId) => (typeof userId === 'number' ? `#${userId.toString(36)}` : '');

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const ACK_TIMEOUT_MS = 10000;
  // The server takes 10 frames at once and 5 a second after (docs/protocol.md, Errors):
  // a resend round sends at most 8 (room left to type) and the rest 2 s later.
  const RESEND_BURST = 8;
  const RESEND_PACE_MS = 2000;
  const GAP_WAIT_MS = 800;
  const HISTORY_TIMEOUT_MS = 30000; // a new connection with no history by then is retried
  const PAGE_SIZE = 1000;
  const MAX_SHOWN = 400; // a phone in a 100-person room at 20 msg/s must stay smooth
  // Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
  const backoff = (attempt) =>
    Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));

  const $ = (id) => document.getElementById(id);
  const ui = {
    join: $('join'), joinForm: $('join-form'), nameInput: $('name-input'),
    roomInput: $('room-input'), joinError: $('join-error'),
    chat: $('chat'), roomName: $('room-name'), online: $('online'), badge: $('badge'),
    status: $('status'), scroller: $('scroller'), messages: $('messages'), outbox: $('outbox'),
    composer: $('composer'), messageInput: $('message-input'), jump: $('jump'),
    template: $('message-template'),
  };

  function applyTexts() {
    document.documentElement.lang = LANG;
    for (const el of document.querySelectorAll('[data-i18n]')) {
      el.textContent = T[el.dataset.i18n];
    }
    for (const el of document.querySelectorAll('[data-i18n-placeholder]')) {
      el.placeholder = T[el.dataset.i18nPlaceholder];
    }
  }

  // ------------------------------------------------------------------ state
  const state = {
    room: '',
    name: '',
    userId: null,       // ours, from the last welcome: the mark on our pending messages
    current: null,      // the connection in use: {ws, welcome, intentional, ...}
    candidate: null,    // a connection being opened (join, reconnect or migrate) until
                        // its history arrives
    everJoined: false,
    lastSeq: 0,         // highest seq received: the `since` of the next connection
    bySeq: new Map(),   // seq -> <li>
    prunedSeq: 0,       // messages up to here left the page (MAX_SHOWN)
    myUserIds: new Set(),
    pending: new Map(), // client_id -> {el, text, seq, sentAt}
    attempt: 0,         // consecutive failed connection attempts
    sendAttempt: 0,     // consecutive refused send rounds (unavailable / rate_limited)
    roundRefused: false, // a refusal of the current send round was already counted
    retryTimer: null,
    resendTimer: null,
    resendAt: 0,        // when resendTimer fires (Date.now() time)
    gapTimer: null,
    statusTimer: null,
  };

  // ------------------------------------------------------------------ status line
  function showStatus(text, delayMs = 0) {
    clearTimeout(state.statusTimer);
    state.statusTimer = setTimeout(() => {
      ui.status.textContent = text;
      ui.status.hidden = false;
    }, delayMs);
  }
  function hideStatus() {
    clearTimeout(state.statusTimer);
    ui.status.hidden = true;
  }

  // ------------------------------------------------------------------ connections
  function wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const params = new URLSearchParams({ room: state.room, name: state.name });
    if (state.everJoined) params.set('since', String(state.lastSeq));
    return `${proto}//${location.host}/ws?${params}`;
  }

  function isOpen(conn) {
    return conn !== null && conn.ws.readyState <= WebSocket.OPEN && !conn.intentional;
  }

  // Open a new connection. It replaces the current one only once its history has arrived
  // (a slow join must not leave the page on a connection that has delivered nothing).
  function connect() {
    if (state.candidate) return;
    clearTimeout(state.retryTimer);
    const conn = {
      ws: new WebSocket(wsUrl()), welcome: null, intentional: false, historyTimer: null,
    };
    state.candidate = conn;
    conn.ws.addEventListener('message', (ev) => onFrame(conn, ev.data));
    conn.ws.addEventListener('close', () => onClose(conn));
    // closing it counts as a failed attempt (onClose): retried with backoff
    conn.historyTimer = setTimeout(() => {
      if (state.candidate === conn) conn.ws.close();
    }, HISTORY_TIMEOUT_MS);
  }

  function promote(conn) {
    const previous = state.current;
    state.current = conn;
    if (state.candidate === conn) state.candidate = null;
    clearTimeout(conn.historyTimer);
    const w = conn.welcome || {};
    ui.badge.textContent = T.servedBy(w.color, w.version);
    ui.badge.dataset.color = w.color;
    ui.badge.title = w.server || '';
    state.everJoined = true;
    state.attempt = 0; // a connection that got this far counts as healthy
    hideStatus();
    if (previous && previous !== conn) {
      previous.intentional = true;
      previous.ws.close(1000, 'migrated');
    }
    resendPending();
  }

  function onClose(conn) {
    clearTimeout(conn.historyTimer);
    if (conn.intentional) return;
    if (state.candidate === conn) {
      // a join, reconnect or migration attempt failed before its history
      state.candidate = null;
      state.attempt += 1;
      if (!isOpen(state.current)) showStatus(T.reconnecting, 1000);
      state.retryTimer = setTimeout(connect, backoff(state.attempt));
      return;
    }
    if (state.current === conn) {
      state.current = null;
      if (state.candidate) {
        // a migration is under way: it takes over once its history is here
        showStatus(T.reconnecting, 1000); // only if that takes noticeably long
        return;
      }
      showStatus(T.reconnecting, 1000); // only if it takes noticeably long
      state.attempt += 1; // reset by the next history: a flapping server backs us off
      state.retryTimer = setTimeout(connect, backoff(state.attempt - 1));
    }
  }

  function send(frame) {
    const conn = state.current;
    if (!conn || conn.ws.readyState !== WebSocket.OPEN) return false;
    conn.ws.send(JSON.stringify(frame));
    return true;
  }

  // ------------------------------------------------------------------ frames
  function onFrame(conn, data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    switch (f.type) {
      case 'welcome':
        conn.welcome = f;
        state.myUserIds.add(f.user_id);
        state.userId = f.user_id;
        state.name = f.name; // as the server normalised it
        break;
      case 'history':
        for (const m of f.messages || []) addMessage(m);
        if (f.more && f.messages.length) {
          // history stops after 1,000 messages; live frames resume later: fetch between
          fillFrom(f.messages[f.messages.length - 1].seq).catch(() => {});
        }
        if (conn === state.candidate) promote(conn); // now it replaces the current one
        break;
      case 'message':
        addMessage(f);
        break;
      case 'ack':
        onAck(f.client_id, f.seq);
        break;
      case 'presence':
        showPresence(f);
        break;
      case 'migrate':
        if (conn === state.current) connect();
        // its instance is draining before it took over: drop it, try again (onClose)
        else if (conn === state.candidate) conn.ws.close();
        break;
      case 'error':
        onError(f);
        break;
      default:
        break;
    }
  }

  function showPresence(p) {
    const parts = [T.online(p.online)];
    for (const [color, n] of Object.entries(p.by_color || {})) parts.push(`${color} ${n}`);
    ui.online.textContent = parts.join(' · ');
  }

  // A resend round refused frame by frame is one failed attempt, not one per frame:
  // otherwise eight waiting messages would go straight to the longest backoff.
  function countRefusal() {
    if (state.roundRefused) return;
    state.roundRefused = true;
    state.sendAttempt += 1;
  }

  function onError(f) {
    // the error names no client_id: resend everything unconfirmed (idempotent), later
    if (f.code === 'unavailable') {
      countRefusal();
      showStatus(T.retrying, 1500);
      scheduleResend(backoff(state.sendAttempt));
    } else if (f.code === 'rate_limited') {
      countRefusal();
      showStatus(T.slowDown);
      scheduleResend(1000 + backoff(state.sendAttempt));
    }
  }

  // ------------------------------------------------------------------ messages
  function formatTime(ts) {
    const d = new Date(ts);
    return Number.isNaN(d.getTime())
      ? ''
      : d.toLocaleTimeString(LANG, { hour: '2-digit', minute: '2-digit' });
  }

  function renderMessage(el, m) {
    el.querySelector('.name').textContent = m.name;
    const mark = el.querySelector('.mark');
    mark.textContent = userMark(m.user_id);
    mark.title = typeof m.user_id === 'number' ? `user ${m.user_id}` : '';
    const dot = el.querySelector('.dot');
    dot.dataset.color = m.color || '';
    dot.title = m.color || '';
    const time = el.querySelector('.time');
    time.textContent = formatTime(m.ts);
    if (m.ts) time.dateTime = new Date(m.ts).toISOString();
    el.querySelector('.text').textContent = m.text;
    el.dataset.seq = String(m.seq);
  }

  function newMessageElement() {
    return ui.template.content.firstElementChild.cloneNode(true);
  }

  // Insert <li> into the confirmed list in seq order (nearly always at the end).
  function placeBySeq(el, seq) {
    let after = ui.messages.lastElementChild;
    while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
    if (after) after.after(el);
    else ui.messages.prepend(el);
  }

  function addMessage(m) {
    if (typeof m.seq !== 'number' || m.seq <= state.prunedSeq) return;
    const gapFrom = state.lastSeq;
    if (m.seq > state.lastSeq) state.lastSeq = m.seq;
    if (state.bySeq.has(m.seq)) {
      // already shown (second connection during a migration, or our own acked message)
      const el = state.bySeq.get(m.seq);
      if (!el.dataset.ts && m.ts) {
        renderMessage(el, m);
        el.dataset.ts = String(m.ts);
      }
      return;
    }
    const stick = nearBottom();
    let el = null;
    const mine = state.myUserIds.has(m.user_id);
    if (mine) {
      // our own message before its ack: adopt the pending bubble instead of a second one
      for (const [cid, p] of state.pending) {
        if (p.seq === null && p.text === m.text) {
          el = p.el;
          confirmed(cid);
          setStatus(el, 'sent');
          break;
        }
      }
    }
    if (!el) el = newMessageElement();
    if (mine) el.classList.add('mine');
    renderMessage(el, m);
    el.dataset.ts = String(m.ts || '');
    state.bySeq.set(m.seq, el);
    placeBySeq(el, m.seq);
    prune();
    if (gapFrom > 0 && m.seq > gapFrom + 1) scheduleGapFill(gapFrom);
    if (stick) scrollToBottom();
    else ui.jump.hidden = false; // the reader scrolled up: tell, do not yank
  }

  // Keep the newest MAX_SHOWN messages in the page; older ones are dropped for good.
  function prune() {
    while (ui.messages.childElementCount > MAX_SHOWN) {
      const first = ui.messages.firstElementChild;
      const seq = Number(first.dataset.seq);
      state.bySeq.delete(seq);
      if (seq > state.prunedSeq) state.prunedSeq = seq;
      first.remove();
    }
  }

  function setStatus(el, which) {
    const s = el.querySelector('.msg-status');
    s.textContent = which === 'sent' ? T.sent : T.sending;
    el.dataset.status = which;
  }

  // A message got through: retry backoff starts over; no more "retrying" once all did.
  function confirmed(clientId) {
    state.pending.delete(clientId);
    state.sendAttempt = 0;
    if (state.pending.size === 0 && isOpen(state.current)) hideStatus();
  }

  function onAck(clientId, seq) {
    const p = state.pending.get(clientId);
    if (!p) return;
    confirmed(clientId);
    p.seq = seq;
    setStatus(p.el, 'sent');
    const shown = state.bySeq.get(seq);
    if (shown && shown !== p.el) {
      // the message frame came first and was drawn separately: keep that one
      shown.classList.add('mine');
      setStatus(shown, 'sent');
      p.el.remove();
      return;
    }
    p.el.dataset.seq = String(seq);
    state.bySeq.set(seq, p.el);
    placeBySeq(p.el, seq);
    prune();
  }

  // Every stored message after `since`, page by page (a full page means there is more).
  async function fillFrom(since) {
    let from = since;
    for (let page = 0; page < 20; page += 1) {
      const url = `/api/rooms/${encodeURIComponent(state.room)}/messages` +
        `?since=${from}&limit=${PAGE_SIZE}`;
      const res = await fetch(url, { headers: { Accept: 'application/json' } });
      if (!res.ok) return;
      const body = await res.json();
      const list = Array.isArray(body) ? body : body.messages || [];
      for (const m of list) addMessage(m);
      if (list.length < PAGE_SIZE) return;
      from = list[list.length - 1].seq;
    }
  }

  // A gap is usually a message still on its way from another instance, or a number the
  // server skipped after a failed write: wait a moment, then ask the server once.
  function scheduleGapFill(fromSeq) {
    if (state.gapTimer) return;
    state.gapTimer = setTimeout(() => {
      state.gapTimer = null;
      for (let s = Math.max(fromSeq, state.prunedSeq) + 1; s < state.lastSeq; s += 1) {
        if (!state.bySeq.has(s)) {
          fillFrom(s - 1).catch(() => {}); // the next reconnect resumes with since anyway
          return;
        }
      }
    }, GAP_WAIT_MS);
  }

  // ------------------------------------------------------------------ sending
  function randomId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // phones on plain http
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  function sendMessage(text) {
    const clientId = randomId();
    const el = newMessageElement();
    el.classList.add('mine');
    renderMessage(el, { name: state.name, user_id: state.userId, text, seq: '',
      ts: Date.now(), color: '' });
    el.dataset.seq = '';
    setStatus(el, 'sending');
    ui.outbox.append(el);
    const p = { el, text, seq: null, sentAt: Date.now() };
    state.pending.set(clientId, p);
    send({ type: 'send', text, client_id: clientId });
    scheduleResendBy(ACK_TIMEOUT_MS);
    scrollToBottom();
  }

  function scheduleResend(delayMs) {
    clearTimeout(state.resendTimer);
    state.resendAt = Date.now() + delayMs;
    state.resendTimer = setTimeout(resendPending, delayMs);
  }

  // A resend planned sooner stays: typing a new message must not push back the retry of a
  // refused one (the round resends every unconfirmed message, the new one included).
  function scheduleResendBy(delayMs) {
    if (state.resendTimer !== null && state.resendAt <= Date.now() + delayMs) return;
    scheduleResend(delayMs);
  }

  // Same client_id again: the server answers with the original seq and never delivers twice.
  function resendPending() {
    clearTimeout(state.resendTimer);
    state.resendTimer = null;
    if (state.pending.size === 0) return;
    state.roundRefused = false;
    let sent = 0;
    for (const [clientId, p] of state.pending) {
      if (sent === RESEND_BURST) {
        scheduleResend(RESEND_PACE_MS);
        return;
      }
      if (!send({ type: 'send', text: p.text, client_id: clientId })) break;
      p.sentAt = Date.now();
      sent += 1;
    }
    scheduleResend(ACK_TIMEOUT_MS);
  }

  // ------------------------------------------------------------------ scrolling
  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
  function scrollToBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    ui.jump.hidden = true;
  }

  // ------------------------------------------------------------------ wiring
  function join(ev) {
    ev.preventDefault();
    const name = normaliseName(ui.nameInput.value);
    const room = ui.roomInput.value.trim();
    let problem = '';
    if (!validName(name)) problem = T.badNickname;
    else if (!validName(room)) problem = T.badRoom;
    ui.joinError.textContent = problem;
    ui.joinError.hidden = !problem;
    if (problem) return;
    state.name = name;
    state.room = room;
    try {
      localStorage.setItem('canary-chat-name', name);
    } catch {
      // private mode: fine
    }
    ui.roomName.textContent = room;
    ui.join.hidden = true;
    ui.chat.hidden = false;
    document.title = `#${room} · Canary Chat`;
    showStatus(T.connecting, 500);
    connect();
    ui.messageInput.focus();
  }

  function submitMessage(ev) {
    ev.preventDefault();
    const text = ui.messageInput.value;
    if (!text.trim()) return;
    ui.messageInput.value = '';
    sendMessage(text);
  }

  function init() {
    applyTexts();
    const params = new URLSearchParams(location.search);
    if (params.get('room')) ui.roomInput.value = params.get('room');
    try {
      ui.nameInput.value = params.get('name') || localStorage.getItem('canary-chat-name') || '';
    } catch {
      ui.nameInput.value = params.get('name') || '';
    }
    ui.joinForm.addEventListener('submit', join);
    ui.composer.addEventListener('submit', submitMessage);
    ui.jump.addEventListener('click', scrollToBottom);
    ui.scroller.addEventListener('scroll', () => {
      if (nearBottom()) ui.jump.hidden = true;
    }, { passive: true });
    window.addEventListener('online', () => {
      if (!isOpen(state.current) && state.room) connect();
    });
  }

  init();
})();
