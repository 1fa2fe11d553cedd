// The chat page: ask, watch the answer stream (Markdown rendered to rich-text nodes),
// see the cited sources, continue the session, stop a running answer. The socket, the
// heartbeat and reconnect + resume live in utils/ragsocket.js.
const {RagSocket, renderMarkdown, sources} = require("../../utils/ragsocket.js");

const STATUS_TEXT = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Offline — will reconnect when you ask",
  limited: "Too many connections for this key — retrying…",
  refused: "The server refused the key or the chat",
};

function sessionKey(chatId) { return "ragsocket.session." + chatId; }

Page({
  data: {
    messages: [],      // {key, role: "user" | "assistant", text, nodes, sources, running, interrupted, error}
    input: "",
    running: false,
    status: "connecting",
    statusText: STATUS_TEXT.connecting,
    scrollTo: "",
    sessionId: "",
  },

  onLoad() {
    const app = getApp();
    const config = app.globalData;
    this.chatId = config.chatId;
    const saved = wx.getStorageSync(sessionKey(this.chatId));
    if (saved) this.setData({sessionId: saved});
    if (!config.client) {
      // One socket for the whole app: a Mini Program may have at most 5 open at once.
      const options = {
        url: config.baseUrl + "/api/v1/ws/chats/" + config.chatId + "/completions",
        apiKey: config.apiKey,
        heartbeatMs: config.heartbeatMs,
        pongTimeoutMs: config.pongTimeoutMs,
      };
      config.client = new RagSocket(Object.assign(options, config.socketOptions || {}));
      config.client.connect();
    }
    this.client = config.client;
    const page = this;
    this.client.onState = function (state, detail) {
      let statusText = STATUS_TEXT[state] || state;
      // a refusal: show the server's words (e.g. "Authentication error: API key is invalid!")
      const error = detail && detail.error;
      if (state === "refused" && error) statusText = "Refused: " + error.message;
      if (state === "limited" && error) statusText = "Refused for now: " + error.message + " — retrying…";
      page.setData({status: state, statusText: statusText});
    };
    this.client.onState(this.client.state);
  },

  onShow() {
    if (this.client) this.client.ensureConnected();
  },

  onUnload() {
    const app = getApp();
    if (this.client) this.client.close("page closed");
    app.globalData.client = null;
  },

  onInput(event) {
    this.setData({input: event.detail.value});
  },

  // Returns the promise of the answer (the runtime ignores it; tests wait on it).
  onSend() {
    const question = (this.data.input || "").trim();
    if (!question || this.data.running) return Promise.resolve(null);
    const index = this.data.messages.length;
    const assistant = {key: "a" + index, role: "assistant", text: "", nodes: [], sources: [], running: true, interrupted: false, error: ""};
    this.setData({
      input: "",
      running: true,
      messages: this.data.messages.concat([{key: "u" + index, role: "user", text: question}, assistant]),
      scrollTo: "m" + (index + 1),
    });
    const path = "messages[" + (index + 1) + "]";
    const page = this;
    // ask() always settles: with the answer, or with answer.error when it cannot be
    // answered (refused key or chat, connection lost before the answer started …).
    return this.client.ask(question, {
      sessionId: this.data.sessionId || null,
      onFrame(frame, answer) {
        // Re-render the whole answer: Markdown that was incomplete a frame ago
        // (an unclosed **) renders correctly once its end has arrived.
        const update = {};
        update[path + ".text"] = answer.text;
        update[path + ".nodes"] = renderMarkdown(answer.text, answer.reference);
        page.setData(update);
      },
    }).then(function (answer) {
      const update = {running: false};
      update[path] = {
        key: "a" + index, role: "assistant", text: answer.text, running: false,
        nodes: renderMarkdown(answer.text, answer.reference),
        sources: sources(answer.reference),
        interrupted: answer.interrupted,
        error: answer.error ? answer.error.message : "",
        messageId: answer.messageId,
        resumes: answer.resumes,
      };
      if (answer.sessionId) {
        update.sessionId = answer.sessionId;
        wx.setStorageSync(sessionKey(page.chatId), answer.sessionId);
      }
      page.setData(update);
      if (answer.error) wx.showToast({title: String(answer.error.message).slice(0, 40), icon: "none"});
      return answer;
    }, function (error) {
      // only when the client still had a question running: never leave the page "running"
      const update = {running: false};
      update[path + ".running"] = false;
      update[path + ".error"] = String(error && error.message || error);
      page.setData(update);
      return null;
    });
  },

  // Stop always ends the running state: the client ends the answer (at once when the
  // socket is not working, else when the server confirms or after a few seconds).
  onStop() {
    if (this.client.stop()) return;
    const update = {running: false};
    const last = this.data.messages.length - 1;
    if (last >= 0 && this.data.messages[last].running) update["messages[" + last + "].running"] = false;
    this.setData(update);
  },

  // Start a new conversation (the next question opens a new session).
  onNewSession() {
    wx.removeStorageSync(sessionKey(this.chatId));
    this.setData({sessionId: "", messages: []});
  },
});
