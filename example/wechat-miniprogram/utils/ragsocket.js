// RagSocket over a WeChat Mini Program SocketTask: connection, heartbeat, reconnection
// with resume, and a small streamed-Markdown renderer for <rich-text>.
//
// Protocol: docs/websocket_api.md of the RagSocket repository. In short: send
// {"question", "session_id"?, "resumable": true}; frames {"code": 0, "data": {"answer":
// <new text>, "final", "seq", "id", "session_id", "reference"}} follow, and
// {"code": 0, "data": true} ends the request. After a dropped socket, send
// {"type": "resume", "session_id", "message_id", "last_seq"} on the new socket.
// A question never waits forever: a refusal (close 1008), a drop before the answer's
// first frame, a socket that stops answering pings and Stop all end it (see ask()).
//
// Plain ES2015 in CommonJS form, as the Mini Program compiler expects; no dependency.

const POLICY_VIOLATION = 1008;   // refused: see REFUSED_FOR_GOOD below
const HEARTBEAT_TIMEOUT = 4001;  // our own close code (4000-4999: private use) for a silent socket
const MAX_CLOSE_REASON_BYTES = 123;
// Error frames that come before a 1008 close, by code (docs/websocket_api.md):
// 109 authentication error (bad, revoked or expired key) and 102 (the chat is unknown
// or another tenant's) will not get better by retrying. Any other code, today 108
// "too many connections for this API key", is a quota of the key that frees up when
// other sockets of the key close: it is retried later, with backoff.
const REFUSED_FOR_GOOD = [109, 102];
const LOST_BEFORE_START = "The connection was lost before the answer started. Please ask again.";

function utf8Length(text) {
  let bytes = 0;
  for (const ch of String(text)) {
    const code = ch.codePointAt(0);
    bytes += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
  }
  return bytes;
}

// A close reason must fit in 123 bytes of UTF-8 (SocketTask.close fails otherwise).
function closeReason(text) {
  let out = "";
  for (const ch of String(text || "")) {
    if (utf8Length(out + ch) > MAX_CLOSE_REASON_BYTES) break;
    out += ch;
  }
  return out;
}

/**
 * One WebSocket to a RagSocket chat (or agent), reconnecting by itself.
 *
 * options: {url, apiKey, heartbeatMs = 25000, pongTimeoutMs = 10000, backoffMs = 500,
 *           maxBackoffMs = 8000, busyBackoffMs = 2000, maxBusyBackoffMs = 30000,
 *           maxRetries = 8, stopTimeoutMs = 5000, onState(state, detail),
 *           wx (defaults to the global wx)}
 * states: "connecting", "open", "reconnecting", "closed" (reconnects on the next
 *         question), "limited" (refused for now: too many connections for the key;
 *         retried with backoff), "refused" (bad key or chat: never retried)
 */
function RagSocket(options) {
  this.url = options.url;
  this.apiKey = options.apiKey;
  this.heartbeatMs = options.heartbeatMs || 25000;
  this.pongTimeoutMs = options.pongTimeoutMs || 10000;
  this.backoffMs = options.backoffMs || 500;
  this.maxBackoffMs = options.maxBackoffMs || 8000;
  this.busyBackoffMs = options.busyBackoffMs || 2000;
  this.maxBusyBackoffMs = options.maxBusyBackoffMs || 30000;
  this.maxRetries = options.maxRetries === undefined ? 8 : options.maxRetries;
  this.stopTimeoutMs = options.stopTimeoutMs || 5000;
  this.onState = options.onState || function () {};
  this.wx = options.wx || wx; // eslint-disable-line no-undef
  this.task = null;
  this.state = "closed";
  this.closedByUser = false;
  this.attempt = 0;         // reconnections since the last socket that worked
  this.heartbeat = null;
  this.awaiting = null;     // the oldest ping no frame has answered yet: {timer}
  this.retryTimer = null;
  this.pending = [];        // questions to send once the socket is open (never stop/ping/resume)
  this.current = null;      // the running request (one at a time)
  this.refusal = null;      // {code, message, temporary} of the last 1008 close
  this.errorFrame = null;   // an error frame of the socket that belongs to no request
  this.requests = 0;
  this.reconnects = 0;
  this.pongs = 0;
  this.heartbeatTimeouts = 0;
}

RagSocket.prototype._setState = function (state, detail) {
  this.state = state;
  this.onState(state, detail || {});
};

RagSocket.prototype.connect = function () {
  const self = this;
  self.closedByUser = false;
  self.refusal = null;
  self.errorFrame = null;
  clearTimeout(self.retryTimer);
  self.retryTimer = null;
  self._setState(self.attempt ? "reconnecting" : "connecting");
  const task = self.wx.connectSocket({
    url: self.url,
    header: {Authorization: "Bearer " + self.apiKey},   // header works; Referer may not be set
    timeout: 15000,
    fail: function (error) { self._closed(task, {code: 1006, reason: (error && error.errMsg) || "connect failed"}); },
  });
  self.task = task;
  task.onOpen(function () {
    if (self.task !== task) return;
    self._setState("open");
    self._startHeartbeat();
    self._ping();   // at once: the pong tells that the server admitted the socket, and that it is alive
    const current = self.current;
    if (current && !current.done && current.sent && current.messageId) {
      // the socket dropped in the middle of an answer: ask for the frames after lastSeq
      current.resumes += 1;
      self._send({type: "resume", session_id: current.sessionId, message_id: current.messageId,
                  last_seq: current.lastSeq, req_id: current.reqId});
    }
    const queued = self.pending;
    self.pending = [];
    queued.forEach(function (message) { self._send(message); });
  });
  task.onMessage(function (message) {
    if (self.task !== task) return;
    self._onMessage(message.data);
  });
  task.onError(function () { /* onClose follows with the code */ });
  task.onClose(function (event) { self._closed(task, event || {}); });
  return self;
};

/**
 * Make sure the socket works (App.onShow / Page.onShow: after the background the socket
 * is often dead, with or without a close event). From any state but "open" it
 * reconnects now (a "reconnecting" or "limited" wait is cut short; a connection attempt
 * in flight is left to finish); when "open" it sends a ping, and a socket that does
 * not answer within pongTimeoutMs is closed and reconnected. Never after a refusal of
 * the key or chat ("refused") or close().
 */
RagSocket.prototype.ensureConnected = function () {
  if (this.closedByUser || this.state === "refused") return;
  if (this.state === "open") { this._ping(); return; }
  if (this.task) return;    // connecting: the attempt has its own timeout
  this.connect();
};

RagSocket.prototype._closed = function (task, event) {
  if (this.task !== task) return;
  this.task = null;
  this._stopHeartbeat();
  const code = event.code;
  const current = this.current && !this.current.done ? this.current : null;
  if (code === POLICY_VIOLATION) {
    // Refused: nothing will be answered on this socket. Fail the question at once (never
    // queue it), with the server's own words: the error frame's message, else the reason.
    const frame = this.errorFrame;
    const reason = event.reason || "";
    const refusal = {
      code: frame ? frame.code : POLICY_VIOLATION,
      message: (frame && frame.message) || reason || "refused by the server (close 1008)",
      temporary: frame ? REFUSED_FOR_GOOD.indexOf(frame.code) < 0 : /too many connections/i.test(reason),
    };
    this.pending = [];
    if (!refusal.temporary || this.closedByUser || this.attempt >= this.maxRetries) {
      this.refusal = refusal.temporary ? null : refusal;
      this.attempt = 0;
      this._setState(refusal.temporary ? "closed" : "refused", {code: code, reason: reason, error: refusal});
      this._fail(current, refusal.code, refusal.message);
      return;
    }
    this.refusal = refusal;
    const delay = Math.min(this.maxBusyBackoffMs, this.busyBackoffMs * Math.pow(2, this.attempt));
    this._setState("limited", {code: code, reason: reason, error: refusal, retryInMs: delay});
    this._fail(current, refusal.code, refusal.message);
    this._retry(delay);
    return;
  }
  const detail = {code: code, reason: event.reason};
  if (current && current.sent && !current.messageId && !this.closedByUser) {
    // Lost after the question left and before its first frame: there is no message id
    // to resume from, and sending it again could answer it twice. Say so, at once.
    this._setState("closed", detail);
    this._fail(current, 1006, LOST_BEFORE_START);
    return;
  }
  const running = this.current && !this.current.done;
  if (this.closedByUser || (!running && !this.pending.length)) {
    this._setState("closed", detail);   // idle: reconnect on the next question (or onShow)
    return;
  }
  if (this.attempt >= this.maxRetries) {
    this.attempt = 0;
    this.pending = [];
    this._setState("closed", detail);
    this._fail(this.current, code || 1006, "Connection lost and could not reconnect (close " + code + "). Please ask again.");
    return;
  }
  const delay = Math.min(this.maxBackoffMs, this.backoffMs * Math.pow(2, this.attempt));
  detail.retryInMs = delay;
  this._setState("reconnecting", detail);   // to resume the running answer, or send the queued question
  this._retry(delay);
};

RagSocket.prototype._retry = function (delay) {
  const self = this;
  this.attempt += 1;
  this.reconnects += 1;
  clearTimeout(this.retryTimer);
  this.retryTimer = setTimeout(function () { self.retryTimer = null; self.connect(); }, delay);
};

RagSocket.prototype._startHeartbeat = function () {
  const self = this;
  this._stopHeartbeat();
  // SocketTask has no ping API: an application ping keeps proxies and load balancers
  // (which drop quiet connections at 60-100 s) from closing the socket, and its pong
  // proves that the socket still works (see _ping).
  this.heartbeat = setInterval(function () { self._ping(); }, this.heartbeatMs);
};

RagSocket.prototype._stopHeartbeat = function () {
  if (this.heartbeat) clearInterval(this.heartbeat);
  this.heartbeat = null;
  if (this.awaiting) clearTimeout(this.awaiting.timer);
  this.awaiting = null;
};

// Send {"type": "ping"}. When no frame at all (a pong or anything else) arrives within
// pongTimeoutMs of the oldest unanswered ping, the socket is dead even though no close
// event came (a lost network often looks like this): close it, and carry on as after a
// drop (reconnect and resume the running answer).
RagSocket.prototype._ping = function () {
  const self = this;
  const task = this.task;
  if (!task || this.state !== "open") return;
  if (!this.awaiting) {
    const probe = {timer: null};
    probe.timer = setTimeout(function () {
      if (self.awaiting !== probe || self.task !== task) return;
      self.heartbeatTimeouts += 1;
      try { task.close({code: HEARTBEAT_TIMEOUT, reason: "heartbeat timeout"}); } catch (e) { /* already gone */ }
      self._closed(task, {code: HEARTBEAT_TIMEOUT, reason: "no pong within " + self.pongTimeoutMs + " ms"});
    }, this.pongTimeoutMs);
    this.awaiting = probe;
  }
  this._send({type: "ping"});
};

// Send on the open socket. Only questions wait for a socket (and make one); a stop,
// ping or resume is about the socket it was meant for and is dropped when there is none.
RagSocket.prototype._send = function (message) {
  if (!this.task || this.state !== "open") {
    if (message.type === undefined) {
      this.pending.push(message);
      if (!this.task && !this.retryTimer) this.connect();   // (a wait for a retry ends by itself)
    }
    return false;
  }
  this.task.send({data: JSON.stringify(message)});
  const current = this.current;
  if (current && message === current.request) current.sent = true;
  return true;
};

RagSocket.prototype._onMessage = function (text) {
  let frame;
  try { frame = JSON.parse(text); } catch (e) { return; }
  if (!frame || typeof frame !== "object") return;
  if (this.awaiting) { clearTimeout(this.awaiting.timer); this.awaiting = null; }   // the socket is alive
  if (frame.type === "pong") { this.pongs += 1; this.attempt = 0; return; }
  const current = this.current;
  if (frame.req_id === undefined || frame.req_id === null) {
    // no request's: the error frame that precedes a 1008 close (see _closed)
    if (frame.code !== 0) this.errorFrame = {code: frame.code, message: frame.message};
    return;
  }
  if (!current || frame.req_id !== current.reqId) return;   // an earlier request's (e.g. after a stop timed out)
  this.attempt = 0;
  if (frame.data === true) {                 // completion marker
    this._finish(current);
    return;
  }
  if (frame.code !== 0 || typeof frame.data !== "object" || frame.data === null) {
    current.error = {code: frame.code, message: frame.message};
    if (current.onError) current.onError(current.error);
    return;
  }
  const data = frame.data;
  if (typeof data.seq === "number") {
    if (data.seq <= current.lastSeq && data.id === current.messageId) return;   // seen before the drop
    current.lastSeq = data.seq;
  }
  current.messageId = data.id || current.messageId;
  current.sessionId = data.session_id || current.sessionId;
  if (frame.event) {                         // an agent: thinking / tool_call_* / message / message_end
    if (frame.event === "message") current.text += data.content || "";
    if (frame.event === "message_end") { current.reference = data.reference || {}; current.interrupted = !!data.interrupted; }
  } else {
    current.text += data.answer || "";
    if (data.final) { current.reference = data.reference || {}; current.interrupted = !!data.interrupted; }
  }
  if (current.onFrame) current.onFrame(frame, current.answer());
};

// End a request: it resolves with what it has (text so far, error, interrupted).
RagSocket.prototype._finish = function (current) {
  if (!current || current.done) return;
  current.done = true;
  clearTimeout(current.stopTimer);
  const request = current.request;
  this.pending = this.pending.filter(function (message) { return message !== request; });
  if (this.current === current) this.current = null;
  current.resolve(current.answer());
};

RagSocket.prototype._fail = function (current, code, message) {
  if (!current || current.done) return;
  current.error = {code: code, message: message};
  if (current.onError) current.onError(current.error);
  this._finish(current);
};

/**
 * Ask a question; resolves with {text, sessionId, messageId, reference, interrupted,
 * error, resumes} once the completion marker came (after any number of resumes), or at
 * once with `error` set when it cannot be answered: the key or chat was refused (the
 * server's message), the connection was lost before the answer started, or could not
 * be restored. It never waits forever, and never rejects except when a question is
 * already running.
 * handlers: {sessionId, onFrame(frame, answerSoFar), onError({code, message})}
 */
RagSocket.prototype.ask = function (question, handlers) {
  const self = this;
  handlers = handlers || {};
  if (this.current && !this.current.done) return Promise.reject(new Error("an answer is still running"));
  return new Promise(function (resolve) {
    self.requests += 1;
    const current = {
      text: "", sessionId: handlers.sessionId || null, messageId: null, lastSeq: 0, reference: {},
      interrupted: false, error: null, resumes: 0, done: false, sent: false, stopTimer: null,
      reqId: "wx-" + self.requests,   // every frame of the answer echoes it
      onFrame: handlers.onFrame, onError: handlers.onError, resolve: resolve,
      answer: function () {
        return {text: this.text, sessionId: this.sessionId, messageId: this.messageId, lastSeq: this.lastSeq,
                reference: this.reference, interrupted: this.interrupted, error: this.error, resumes: this.resumes};
      },
    };
    self.current = current;
    if (self.refusal) {   // refused (for good, or "limited" until the retry): do not queue
      const extra = self.refusal.temporary ? " (the app retries by itself; ask again in a moment)" : "";
      self._fail(current, self.refusal.code, self.refusal.message + extra);
      return;
    }
    // resumable: the answer goes on while we are away; req_id: frames of an earlier
    // request (one whose stop timed out) are told apart from this one's
    current.request = {question: question, stream: true, resumable: true, req_id: current.reqId};
    if (current.sessionId) current.request.session_id = current.sessionId;
    self._send(current.request);
  });
};

/**
 * Stop the running answer. On an open socket the server ends it with "interrupted": true
 * (its partial text saved); the answer ends here after stopTimeoutMs if the server does
 * not. Without a working socket (connecting, reconnecting, refused …) it ends at once.
 * Either way the question's promise resolves: the page leaves its running state.
 * Returns false when nothing was running.
 */
RagSocket.prototype.stop = function () {
  const self = this;
  const current = this.current;
  if (!current || current.done) return false;
  if (current.sent && this._send({type: "stop", req_id: current.reqId})) {
    clearTimeout(current.stopTimer);
    current.stopTimer = setTimeout(function () { current.interrupted = true; self._finish(current); }, this.stopTimeoutMs);
    return true;
  }
  current.interrupted = true;
  this._finish(current);
  return true;
};

RagSocket.prototype.close = function (reason) {
  this.closedByUser = true;
  clearTimeout(this.retryTimer);
  this.retryTimer = null;
  this._stopHeartbeat();
  const task = this.task;
  this.task = null;
  if (task) { try { task.close({code: 1000, reason: closeReason(reason || "bye")}); } catch (e) { /* already gone */ } }
  this.pending = [];
  if (this.current && !this.current.done) { this.current.interrupted = true; this._finish(this.current); }
  this._setState("closed", {code: 1000});
};

// ---------------------------------------------------------------------------------
// Streamed Markdown → <rich-text> nodes. Only node objects are produced (never an HTML
// string), and text goes into {type: "text"} nodes, which rich-text shows as text: a
// "<script>" in an answer stays visible characters. Supports paragraphs, **bold**,
// `inline code`, "- " / "* " / "1. " lists, and citations [ID:n] → the document name.

function textNode(text) { return {type: "text", text: text}; }

// The source document of each chunk, for the [ID:n] markers (n indexes reference.chunks).
function citationNames(reference) {
  const chunks = (reference && reference.chunks) || [];
  return chunks.map(function (chunk) { return chunk.document_name || chunk.document_id || "source"; });
}

function inline(text, names) {
  const nodes = [];
  const pattern = /\*\*([^*]+)\*\*|`([^`]+)`|\[ID:(\d+)\]/g;
  let last = 0;
  let match;
  while ((match = pattern.exec(text)) !== null) {
    if (match.index > last) nodes.push(textNode(text.slice(last, match.index)));
    if (match[1] !== undefined) {
      nodes.push({name: "strong", children: [textNode(match[1])]});
    } else if (match[2] !== undefined) {
      nodes.push({name: "code", attrs: {class: "md-code"}, children: [textNode(match[2])]});
    } else {
      const index = Number(match[3]);
      const name = names[index];
      // while streaming, the references arrive with the final frame: show the number
      nodes.push({name: "span", attrs: {class: "md-cite"}, children: [textNode(name ? "[" + name + "]" : "[" + (index + 1) + "]")]});
    }
    last = pattern.lastIndex;
  }
  if (last < text.length) nodes.push(textNode(text.slice(last)));
  return nodes;
}

/**
 * The rich-text nodes of a (possibly still incomplete) Markdown answer.
 * An unfinished "**bold" or "`code" at the end stays plain text until it is closed.
 */
function renderMarkdown(text, reference) {
  const names = citationNames(reference);
  const nodes = [];
  let list = null;
  let paragraph = [];
  function flushParagraph() {
    if (paragraph.length) nodes.push({name: "p", attrs: {class: "md-p"}, children: inline(paragraph.join(" "), names)});
    paragraph = [];
  }
  String(text || "").split(/\r?\n/).forEach(function (line) {
    const item = /^\s*(?:[-*]|\d+[.)])\s+(.*)$/.exec(line);
    if (item) {
      flushParagraph();
      const ordered = /^\s*\d/.test(line);
      const tag = ordered ? "ol" : "ul";
      if (!list || list.name !== tag) { list = {name: tag, attrs: {class: "md-list"}, children: []}; nodes.push(list); }
      list.children.push({name: "li", children: inline(item[1], names)});
      return;
    }
    list = null;
    if (!line.trim()) { flushParagraph(); return; }
    paragraph.push(line.replace(/^#{1,6}\s+/, ""));
  });
  flushParagraph();
  return nodes;
}

/** The cited documents, once the final frame brought the references: [{name, count}]. */
function sources(reference) {
  const aggs = (reference && reference.doc_aggs) || [];
  return aggs.map(function (agg) { return {name: agg.doc_name || agg.doc_id, count: agg.count}; });
}

module.exports = {
  RagSocket: RagSocket,
  renderMarkdown: renderMarkdown,
  citationNames: citationNames,
  sources: sources,
  closeReason: closeReason,
  utf8Length: utf8Length,
};
