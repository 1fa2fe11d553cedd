// What run-conversation.js and run-scenario.js share: loading the app and its chat page
// under the wx shim, asking through the page as a user would, waiting, and reporting.
"use strict";

const path = require("path");
const {createWx, createRuntime} = require("./wx-shim.js");

const ROOT = path.resolve(__dirname, "..");

/** Options from argv over `defaults` (numbers stay numbers); --key and --chat-id are required. */
function parseArgs(argv, defaults, names) {
  const args = Object.assign({
    url: process.env.RAGSOCKET_WS_BASE || "ws://127.0.0.1:9380",
    key: process.env.RAGSOCKET_API_KEY || "",
    chatId: process.env.RAGSOCKET_CHAT_ID || "",
    heartbeatMs: 200,
  }, defaults);
  names = Object.assign({"--url": "url", "--key": "key", "--chat-id": "chatId", "--heartbeat-ms": "heartbeatMs"}, names);
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name) throw new Error(`unknown option ${argv[i]}`);
    args[name] = typeof args[name] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.key || !args.chatId) throw new Error("--key and --chat-id are required");
  return args;
}

function waitFor(predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (predicate()) { clearInterval(timer); resolve(); } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer); reject(new Error(`timed out waiting for ${what}`));
      }
    }, 10);
  });
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

/** A promise that rejects after `ms`: a question that hangs fails the check instead of the run. */
function within(promise, ms, what) {
  let timer;
  const limit = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function texts(nodes, names) {
  // every text under nodes with one of the names (e.g. the citations)
  const out = [];
  (function walk(list, inside) {
    for (const node of list || []) {
      if (node.type === "text" && inside) out.push(node.text);
      walk(node.children, inside || names.includes(node.name) || (node.attrs && names.includes(node.attrs.class)));
    }
  })(nodes, false);
  return out;
}

/**
 * The app and its chat page, loaded (onLoad + onShow) against args.url with args.key.
 * The test talks to ws://127.0.0.1: a real Mini Program needs wss:// and an allowed domain.
 */
function loadPage(args, globalData) {
  const wx = createWx({allowInsecureLoopback: true});
  const runtime = createRuntime(wx, ROOT);
  runtime.load("app.js");
  const app = runtime.registry.app;
  Object.assign(app.globalData, {baseUrl: args.url.replace(/\/$/, ""), apiKey: args.key, chatId: args.chatId,
                                 heartbeatMs: args.heartbeatMs}, globalData || {});
  const lib = runtime.load("utils/ragsocket.js");
  runtime.load("pages/chat/chat.js");
  const page = runtime.instantiate(runtime.registry.pages[0]);
  page.onLoad({});
  page.onShow();
  return {wx, runtime, app, lib, page, client: app.globalData.client};
}

/** Type `question` and press Send; resolves with what the page shows once the answer ended. */
async function ask(page, question) {
  page.onInput({detail: {value: question}});
  const started = Date.now();
  const answer = await page.onSend();
  const shown = page.data.messages[page.data.messages.length - 1];
  return summary(question, answer, shown, started, page);
}

function summary(question, answer, shown, started, page) {
  return {
    question,
    text: shown.text,
    session_id: answer && answer.sessionId,
    message_id: answer && answer.messageId,
    interrupted: answer ? answer.interrupted : null,
    error: answer ? answer.error : null,
    shown_error: shown.error || "",
    shown_running: !!shown.running,
    page_running: page.data.running,
    resumes: answer && answer.resumes,
    last_seq: answer && answer.lastSeq,
    sources: (shown.sources || []).map((s) => s.name),
    citations: texts(shown.nodes, ["md-cite"]),
    paragraphs: (shown.nodes || []).length,
    ms: Date.now() - started,
  };
}

/** Run main() under a guard; print its one JSON line and exit 0 when result.ok. */
function runMain(main) {
  const guard = setTimeout(() => {
    process.stdout.write(JSON.stringify({ok: false, error: "timed out"}) + "\n");
    process.exit(1);
  }, Number(process.env.RAGSOCKET_TEST_TIMEOUT_MS || 90000));
  main().then((result) => {
    clearTimeout(guard);
    result.ok = Object.values(result.checks).every(Boolean);
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(result.ok ? 0 : 1);
  }, (error) => {
    clearTimeout(guard);
    process.stdout.write(JSON.stringify({ok: false, error: String(error && error.stack || error)}) + "\n");
    process.exit(1);
  });
}

module.exports = {ROOT, parseArgs, waitFor, sleep, within, texts, loadPage, ask, summary, runMain};
