// A small stand-in for the WeChat Mini Program runtime, enough to run the chat page
// under Node: wx.connectSocket → SocketTask (built on the `ws` package), storage in
// memory, showToast, and App()/Page()/getApp() with CommonJS modules run in a vm
// context, as the Mini Program runtime runs each file.
//
// It keeps the rules of the real runtime that matter to the page: at most 5 sockets
// open at once, a close reason of at most 123 bytes of UTF-8, no Referer header, and
// wss:// only — except that `allowInsecureLoopback` lets the test talk to
// ws://127.0.0.1 (a real Mini Program needs wss:// and a domain on its allow list).
"use strict";

const fs = require("fs");
const path = require("path");
const vm = require("vm");
const WebSocket = require("ws");

const MAX_SOCKETS = 5;

function utf8Bytes(text) { return Buffer.byteLength(String(text || ""), "utf8"); }

function isLoopback(url) {
  const host = new URL(url).hostname;
  return host === "127.0.0.1" || host === "localhost" || host === "[::1]";
}

/**
 * The `wx` object. Hooks for tests: wx.__sockets, wx.__onFrame(task, text) (called before
 * the page sees a frame), wx.__onSend(task, text) (called before a message leaves),
 * task.__drop() (the connection breaks: close 1006) and task.__freeze() (the network
 * silently stops carrying anything, and no close event ever comes).
 */
function createWx(options) {
  options = options || {};
  const storage = new Map();
  const wx = {
    __sockets: [],
    __toasts: [],
    __onFrame: null,
    __onSend: null,
    __maxOpen: 0,

    connectSocket(params) {
      const url = params.url;
      const secure = url.startsWith("wss://");
      const allowed = secure || (options.allowInsecureLoopback && url.startsWith("ws://") && isLoopback(url));
      const task = new SocketTask(wx);
      const open = wx.__sockets.filter((t) => t.readyState <= 1).length;
      if (!allowed || open >= MAX_SOCKETS) {
        const errMsg = !allowed ? "connectSocket:fail url not in domain list (wss:// only)" : "connectSocket:fail exceed max task count";
        setImmediate(() => { if (params.fail) params.fail({errMsg}); task._emit("error", {errMsg}); });
        return task;
      }
      const headers = Object.assign({}, params.header || {});
      delete headers.Referer; delete headers.referer;   // not settable in a Mini Program
      task._attach(new WebSocket(url, params.protocols || [], {headers, handshakeTimeout: params.timeout || 60000}));
      wx.__sockets.push(task);
      wx.__maxOpen = Math.max(wx.__maxOpen, wx.__sockets.filter((t) => t.readyState <= 1).length);
      if (params.success) setImmediate(() => params.success({errMsg: "connectSocket:ok"}));
      return task;
    },

    setStorageSync(key, value) { storage.set(key, JSON.stringify(value)); },
    getStorageSync(key) { return storage.has(key) ? JSON.parse(storage.get(key)) : ""; },
    removeStorageSync(key) { storage.delete(key); },
    showToast(params) { wx.__toasts.push(params && params.title); if (params && params.success) params.success({}); },
  };
  return wx;
}

class SocketTask {
  constructor(wx) {
    this.wx = wx;
    this.ws = null;
    this.readyState = 0;   // CONNECTING, like SocketTask.readyState
    this.listeners = {open: [], message: [], close: [], error: []};
    this.dropped = false;
    this.frozen = false;
    this.sent = [];        // the messages the page sent on this socket (text)
  }

  onOpen(fn) { this.listeners.open.push(fn); }
  onMessage(fn) { this.listeners.message.push(fn); }
  onClose(fn) { this.listeners.close.push(fn); }
  onError(fn) { this.listeners.error.push(fn); }

  _emit(name, arg) { this.listeners[name].forEach((fn) => fn(arg)); }

  _attach(ws) {
    this.ws = ws;
    ws.on("open", () => { this.readyState = 1; this._emit("open", {header: {}}); });
    ws.on("message", (data, isBinary) => {
      if (this.dropped || this.frozen) return;   // a broken or silent network delivers nothing
      const payload = isBinary ? new Uint8Array(data).buffer : data.toString("utf8");
      if (this.wx.__onFrame) this.wx.__onFrame(this, payload);
      if (this.dropped || this.frozen) return;   // the hook cut the network before this frame arrived
      this._emit("message", {data: payload});
    });
    ws.on("error", (error) => { if (!this.frozen) this._emit("error", {errMsg: String(error && error.message)}); });
    ws.on("close", (code, reason) => {
      this.readyState = 3;
      if (this.frozen) return;                   // a dead network never tells
      this._emit("close", {code: this.dropped ? 1006 : code, reason: this.dropped ? "" : reason.toString("utf8")});
    });
  }

  send(params) {
    if (this.readyState !== 1) {
      if (params.fail) params.fail({errMsg: "sendSocketMessage:fail WebSocket is not connected"});
      return;
    }
    if (typeof params.data === "string") this.sent.push(params.data);
    if (this.wx.__onSend) this.wx.__onSend(this, params.data);
    if (this.frozen) {                           // "sent", as far as the page can tell
      if (params.success) setImmediate(() => params.success({}));
      return;
    }
    this.ws.send(params.data, (error) => {
      if (error) { if (params.fail) params.fail({errMsg: String(error.message)}); } else if (params.success) params.success({});
    });
  }

  close(params) {
    params = params || {};
    if (utf8Bytes(params.reason) > 123) {
      if (params.fail) params.fail({errMsg: "closeSocket:fail reason is longer than 123 bytes"});
      return;
    }
    if (!this.ws || this.readyState >= 2) {
      if (params.fail) params.fail({errMsg: "closeSocket:fail WebSocket is not connected"});
      return;
    }
    this.readyState = 2;
    this.closeCode = params.code || 1000;
    if (this.frozen) this.ws.terminate();        // the close frame cannot get through; no close event follows
    else this.ws.close(params.code || 1000, params.reason || "");
    if (params.success) params.success({});
  }

  /** Test hook: the network drops (no close frame); the page sees close code 1006. */
  __drop() {
    this.dropped = true;
    this.ws.terminate();
  }

  /**
   * Test hook: the socket goes silent, as on a dead network or a frozen app: no frame
   * arrives, sends vanish (the server's protocol pings are still answered by `ws`, so the
   * server does not notice) and no close event ever comes, even after close().
   */
  __freeze() {
    this.frozen = true;
  }
}

/** App()/Page()/getApp() and a CommonJS loader running Mini Program files in a vm context. */
function createRuntime(wx, root) {
  const registry = {app: null, pages: []};
  const sandbox = {
    wx, console, setTimeout, clearTimeout, setInterval, clearInterval,
    App(definition) { registry.app = definition; },
    Page(definition) { registry.pages.push(definition); },
    getApp() { return registry.app; },
    getCurrentPages() { return registry.pages; },
  };
  const context = vm.createContext(sandbox);
  const cache = new Map();

  function load(file) {
    const full = path.resolve(root, file);
    if (cache.has(full)) return cache.get(full).exports;
    const module = {exports: {}};
    cache.set(full, module);
    const source = fs.readFileSync(full, "utf8");
    const wrapper = vm.runInContext(`(function (module, exports, require) {\n${source}\n})`, context, {filename: full});
    const localRequire = (name) => load(path.relative(root, path.resolve(path.dirname(full), name)));
    wrapper(module, module.exports, localRequire);
    return module.exports;
  }

  /** A page instance of a Page() definition: data, setData with "a[1].b" paths, methods. */
  function instantiate(definition) {
    const page = {};
    for (const [key, value] of Object.entries(definition)) if (key !== "data") page[key] = value;
    page.data = JSON.parse(JSON.stringify(definition.data || {}));
    page.setData = function (update, callback) {
      for (const [key, value] of Object.entries(update)) setPath(page.data, key, JSON.parse(JSON.stringify(value === undefined ? null : value)));
      if (callback) callback();
    };
    return page;
  }

  return {load, instantiate, registry};
}

function setPath(target, key, value) {
  const parts = [];
  key.replace(/[^.[\]]+|\[(\d+)\]/g, (match, index) => { parts.push(index !== undefined ? Number(index) : match); return match; });
  let node = target;
  for (let i = 0; i < parts.length - 1; i += 1) {
    if (node[parts[i]] === undefined || node[parts[i]] === null) node[parts[i]] = typeof parts[i + 1] === "number" ? [] : {};
    node = node[parts[i]];
  }
  node[parts[parts.length - 1]] = value;
}

module.exports = {createWx, createRuntime, SocketTask, MAX_SOCKETS};
