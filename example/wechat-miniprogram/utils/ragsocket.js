// RagSocket over a WeChat Mini Program SocketTask: connection, heartbeat, reconnection
// with resume, and a small streamed-Markdown renderer for <rich-text>.
//
// Protocol: docs/websocket_api.md of the RagSocket repository. In short: send
// {"question", "session_id"?, "resumable": true}; frames {"code": 0, "data": {"answer":
// <new text>, "final", "seq", "id", "session_id", "reference"}} follow, and
// {"code": 0, "data": true} ends the request. After a dropped socket, send
// {"type": "resume", "session_id", "message_id", "last_seq"} on the new socket.
//
// Plain ES2015 in CommonJS form, as the Mini Program compiler expects; no dependency.

const POLICY_VIOLATION = 1008;   // refused key or chat: never retry
const MAX_CLOSE_REASON_BYTES = 123;

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
 * options: {url, apiKey, heartbeatMs = 25000, backoffMs = 500, maxBackoffMs = 8000,
 *           maxRetries = 8, onState(state, detail), wx (defaults to the global wx)}
 * states: "connecting", "open", "reconnecting", "closed", "refused"
 */
function RagSocket(options) {
  this.url = options.url;
  this.apiKey = options.apiKey;
  this.heartbeatMs = options.heartbeatMs || 25000;
  this.backoffMs = options.backoffMs || 500;
  this.maxBackoffMs = options.maxBackoffMs || 8000;
  this.maxRetries = options.maxRetries === undefined ? 8 : options.maxRetries;
  this.onState = options.onState || function () {};
  this.wx = options.wx || wx; // eslint-disable-line no-undef
  this.task = null;
  this.state = "closed";
  this.closedByUser = false;
  this.attempt = 0;
  this.heartbeat = null;
  this.retryTimer = null;
  this.pending = [];        // messages to send once the socket is open
  this.current = null;      // the running request (one at a time, as without req_id)
  this.reconnects = 0;
  this.pongs = 0;
}

RagSocket.prototype._setState = function (state, detail) {
  this.state = state;
  this.onState(state, detail || {});
};

RagSocket.prototype.connect = function () {
  const self = this;
  self.closedByUser = false;
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
    self.attempt = 0;
    self._setState("open");
    self._startHeartbeat();
    const current = self.current;
    if (current && current.messageId && !current.done) {
      // the socket dropped in the middle of an answer: ask for the frames after lastSeq
      current.resumes += 1;
      self._send({type: "resume", session_id: current.sessionId, message_id: current.messageId, last_seq: current.lastSeq});
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

// Reconnect now if the socket is gone (after the app comes back from the background).
RagSocket.prototype.ensureConnected = function () {
  if (this.state === "closed" && !this.closedByUser) {
    clearTimeout(this.retryTimer);
    this.connect();
  }
};

RagSocket.prototype._closed = function (task, event) {
  if (this.task !== task) return;
  this.task = null;
  this._stopHeartbeat();
  const code = event.code;
  if (code === POLICY_VIOLATION) {
    this._setState("refused", {code: code, reason: event.reason});
    this._fail(this.current, POLICY_VIOLATION, "refused: " + (event.reason || "close 1008"));
    return;
  }
  this._setState("closed", {code: code, reason: event.reason});
  if (this.closedByUser) return;
  const running = this.current && !this.current.done;
  if (this.attempt >= this.maxRetries) {
    this._fail(this.current, 1006, "connection lost");
    return;
  }
  if (!running && !this.pending.length) return;   // idle: reconnect on the next question
  const delay = Math.min(this.maxBackoffMs, this.backoffMs * Math.pow(2, this.attempt));
  this.attempt += 1;
  this.reconnects += 1;
  const self = this;
  this.retryTimer = setTimeout(function () { self.retryTimer = null; self.connect(); }, delay);
};

RagSocket.prototype._startHeartbeat = function () {
  const self = this;
  this._stopHeartbeat();
  // SocketTask has no ping API: an application ping keeps proxies and load balancers
  // (which drop quiet connections at 60-100 s) from closing the socket.
  this.heartbeat = setInterval(function () { self._send({type: "ping"}); }, this.heartbeatMs);
};

RagSocket.prototype._stopHeartbeat = function () {
  if (this.heartbeat) clearInterval(this.heartbeat);
  this.heartbeat = null;
};

RagSocket.prototype._send = function (message) {
  if (!this.task || this.state !== "open") {
    if (message.type !== "ping" && message.type !== "resume") this.pending.push(message);
    if (this.state === "closed" && !this.closedByUser && !this.retryTimer) this.ensureConnected();
    return;
  }
  this.task.send({data: JSON.stringify(message)});
};

RagSocket.prototype._onMessage = function (text) {
  let frame;
  try { frame = JSON.parse(text); } catch (e) { return; }
  if (frame.type === "pong") { this.pongs += 1; return; }
  const current = this.current;
  if (!current) return;
  if (frame.data === true) {                 // completion marker
    current.done = true;
    this.current = null;
    current.resolve(current.answer());
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

RagSocket.prototype._fail = function (current, code, message) {
  if (!current || current.done) return;
  current.done = true;
  current.error = {code: code, message: message};
  this.current = null;
  current.resolve(current.answer());
};

/**
 * Ask a question; resolves with {text, sessionId, messageId, reference, interrupted,
 * error, resumes} once the completion marker came (after any number of resumes).
 * handlers: {sessionId, onFrame(frame, answerSoFar), onError({code, message})}
 */
RagSocket.prototype.ask = function (question, handlers) {
  const self = this;
  handlers = handlers || {};
  if (this.current && !this.current.done) return Promise.reject(new Error("an answer is still running"));
  return new Promise(function (resolve) {
    const current = {
      text: "", sessionId: handlers.sessionId || null, messageId: null, lastSeq: 0, reference: {},
      interrupted: false, error: null, resumes: 0, done: false,
      onFrame: handlers.onFrame, onError: handlers.onError, resolve: resolve,
      answer: function () {
        return {text: this.text, sessionId: this.sessionId, messageId: this.messageId, lastSeq: this.lastSeq,
                reference: this.reference, interrupted: this.interrupted, error: this.error, resumes: this.resumes};
      },
    };
    self.current = current;
    const request = {question: question, stream: true, resumable: true};   // goes on while we are away
    if (current.sessionId) request.session_id = current.sessionId;
    self._send(request);
  });
};

// Stop the running answer: it ends with "interrupted": true, its partial text saved.
RagSocket.prototype.stop = function () {
  if (this.current && !this.current.done) this._send({type: "stop"});
};

RagSocket.prototype.close = function (reason) {
  this.closedByUser = true;
  clearTimeout(this.retryTimer);
  this._stopHeartbeat();
  if (this.task) this.task.close({code: 1000, reason: closeReason(reason || "bye")});
  this.task = null;
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
