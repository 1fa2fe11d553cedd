#!/usr/bin/env node
// Runs the Mini Program's chat page (pages/chat/chat.js + utils/ragsocket.js) under the
// wx shim against a live RagSocket server: a question, a follow-up in the same session,
// then a third question whose socket is dropped mid-answer (the page must reconnect and
// resume). Prints one JSON line with the results; exits 0 when every check passed.
//
//   node run-conversation.js --url ws://127.0.0.1:9380 --key ragsocket-… --chat-id ID
//   (or RAGSOCKET_WS_BASE, RAGSOCKET_API_KEY, RAGSOCKET_CHAT_ID in the environment)
//
// Options: --question, --follow-up, --long-question, --drop-after N (content frames
// before the drop, default 3), --heartbeat-ms (default 200, to see pongs quickly).
"use strict";

const path = require("path");
const {createWx, createRuntime} = require("./wx-shim.js");

const ROOT = path.resolve(__dirname, "..");

function parseArgs(argv) {
  const args = {
    url: process.env.RAGSOCKET_WS_BASE || "ws://127.0.0.1:9380",
    key: process.env.RAGSOCKET_API_KEY || "",
    chatId: process.env.RAGSOCKET_CHAT_ID || "",
    question: "Which bulb does the Lumen lamp use?",
    followUp: "And how long does it last?",
    longQuestion: "How is the Lumen lamp assembled, tested, dimmed and powered?",
    dropAfter: 3,
    heartbeatMs: 200,
    timeoutMs: 60000,
  };
  const names = {"--url": "url", "--key": "key", "--chat-id": "chatId", "--question": "question", "--follow-up": "followUp",
                 "--long-question": "longQuestion", "--drop-after": "dropAfter", "--heartbeat-ms": "heartbeatMs", "--timeout-ms": "timeoutMs"};
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

// The renderer on its own: Markdown pieces and an attempt at HTML injection.
function checkRenderer(renderMarkdown) {
  const nodes = renderMarkdown("Hello **bold** and `code` <img src=x onerror=alert(1)> [ID:0]\n\n- one\n- two [ID:1]\n1. first",
    {chunks: [{document_name: "a.md"}, {document_name: "b.md"}]});
  const names = nodes.map((n) => n.name);
  const para = nodes[0].children;
  return names.join(",") === "p,ul,ol"
    && para.some((n) => n.name === "strong" && n.children[0].text === "bold")
    && para.some((n) => n.name === "code" && n.children[0].text === "code")
    && para.some((n) => n.type === "text" && n.text.includes("<img src=x onerror=alert(1)>"))   // stays text
    && !JSON.stringify(nodes).includes('"name":"img"')
    && JSON.stringify(texts(nodes, ["md-cite"])) === JSON.stringify(["[a.md]", "[b.md]"])
    && nodes[1].children.length === 2;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // The test talks to ws://127.0.0.1: a real Mini Program needs wss:// and an allowed domain.
  const wx = createWx({allowInsecureLoopback: true});
  const runtime = createRuntime(wx, ROOT);
  runtime.load("app.js");
  const app = runtime.registry.app;
  Object.assign(app.globalData, {baseUrl: args.url.replace(/\/$/, ""), apiKey: args.key, chatId: args.chatId, heartbeatMs: args.heartbeatMs});
  const {renderMarkdown, closeReason, utf8Length} = runtime.load("utils/ragsocket.js");
  runtime.load("pages/chat/chat.js");
  const page = runtime.instantiate(runtime.registry.pages[0]);
  page.onLoad({});
  page.onShow();
  await waitFor(() => page.data.status === "open", 15000, "the socket to open");

  async function ask(question) {
    page.onInput({detail: {value: question}});
    const started = Date.now();
    const answer = await page.onSend();
    const shown = page.data.messages[page.data.messages.length - 1];
    return {
      question,
      text: shown.text,
      session_id: answer.sessionId,
      message_id: answer.messageId,
      interrupted: answer.interrupted,
      error: answer.error,
      resumes: answer.resumes,
      last_seq: answer.lastSeq,
      sources: shown.sources.map((s) => s.name),
      citations: texts(shown.nodes, ["md-cite"]),
      paragraphs: shown.nodes.length,
      ms: Date.now() - started,
    };
  }

  const answers = [];
  answers.push(await ask(args.question));
  answers.push(await ask(args.followUp));

  // Third question: drop the socket (no close frame, code 1006) after a few frames.
  let contentFrames = 0;
  let droppedAt = null;
  wx.__onFrame = (task, text) => {
    const frame = JSON.parse(text);
    if (frame.code === 0 && frame.data && typeof frame.data === "object" && frame.data.answer) contentFrames += 1;
    if (contentFrames === args.dropAfter && droppedAt === null) { droppedAt = frame.data.seq; task.__drop(); }
  };
  answers.push(await ask(args.longQuestion));
  wx.__onFrame = null;
  const client = app.globalData.client;
  await waitFor(() => client.pongs > 0, 5000, "a pong").catch(() => {});

  const result = {
    answers,
    dropped_at_seq: droppedAt,
    reconnects: client.reconnects,
    pongs: client.pongs,
    sockets_opened: wx.__sockets.length,
    max_open_sockets: wx.__maxOpen,
    stored_session: wx.getStorageSync("ragsocket.session." + args.chatId),
    status: page.data.status,
    renderer_ok: checkRenderer(renderMarkdown),
    close_reason_ok: utf8Length(closeReason("关".repeat(100))) <= 123,
    toasts: wx.__toasts,
  };
  page.onUnload();
  const [first, second, third] = answers;
  result.checks = {
    answered: answers.every((a) => a.text && !a.error && !a.interrupted),
    same_session: second.session_id === first.session_id && third.session_id === first.session_id,
    dropped: droppedAt !== null,
    resumed: third.resumes === 1 && client.reconnects >= 1,
    heartbeat: client.pongs > 0,
    one_socket_at_a_time: wx.__maxOpen === 1,
    renderer: result.renderer_ok && result.close_reason_ok,
    session_stored: result.stored_session === first.session_id,
  };
  result.ok = Object.values(result.checks).every(Boolean);
  return result;
}

const guard = setTimeout(() => {
  process.stdout.write(JSON.stringify({ok: false, error: "timed out"}) + "\n");
  process.exit(1);
}, Number(process.env.RAGSOCKET_TEST_TIMEOUT_MS || 90000));

main().then((result) => {
  clearTimeout(guard);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}, (error) => {
  clearTimeout(guard);
  process.stdout.write(JSON.stringify({ok: false, error: String(error && error.stack || error)}) + "\n");
  process.exit(1);
});
