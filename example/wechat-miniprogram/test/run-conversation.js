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

const {parseArgs, waitFor, texts, loadPage, ask, runMain} = require("./harness.js");

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
  const args = parseArgs(process.argv.slice(2), {
    question: "Which bulb does the Lumen lamp use?",
    followUp: "And how long does it last?",
    longQuestion: "How is the Lumen lamp assembled, tested, dimmed and powered?",
    dropAfter: 3,
  }, {"--question": "question", "--follow-up": "followUp", "--long-question": "longQuestion", "--drop-after": "dropAfter"});
  const {wx, app, lib, page} = loadPage(args);
  const {renderMarkdown, closeReason, utf8Length} = lib;
  await waitFor(() => page.data.status === "open", 15000, "the socket to open");

  const answers = [];
  answers.push(await ask(page, args.question));
  answers.push(await ask(page, args.followUp));

  // Third question: drop the socket (no close frame, code 1006) after a few frames.
  let contentFrames = 0;
  let droppedAt = null;
  wx.__onFrame = (task, text) => {
    const frame = JSON.parse(text);
    if (frame.code === 0 && frame.data && typeof frame.data === "object" && frame.data.answer) contentFrames += 1;
    if (contentFrames === args.dropAfter && droppedAt === null) { droppedAt = frame.data.seq; task.__drop(); }
  };
  answers.push(await ask(page, args.longQuestion));
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
  return result;
}

runMain(main);
