#!/usr/bin/env node
// Failure scenarios of the Mini Program's chat page under the wx shim, against a live
// RagSocket server. In each, a question must end (with its answer or a clear error on
// the page) and never wait forever. Prints one JSON line; exits 0 when every check passed.
//
//   node run-scenario.js --scenario NAME --url ws://127.0.0.1:9380 --key KEY --chat-id ID
//
// Scenarios:
//   refused            the key is refused (error frame 109, close 1008): questions fail at
//                      once with the server's message, and the page never reconnects
//   limited            --blockers sockets of the key fill its connection quota (error frame
//                      108 "too many connections", close 1008): questions fail at once, the
//                      page retries with backoff and works once a socket of the key closes
//   lost-before-start  the socket drops after the question left and before its first frame:
//                      the question fails with "lost before the answer started"; the next works
//   frozen             the socket goes silent (no frame, no close event): the heartbeat (and
//                      App.onShow's ping) notice, close it and reconnect; mid-answer the
//                      answer is resumed
//   stop               Stop on an open socket (the server ends the answer, interrupted) and
//                      while the page cannot connect (--offline-url: it ends at once)
"use strict";

const WebSocket = require("ws");
const {parseArgs, waitFor, sleep, within, loadPage, ask, runMain} = require("./harness.js");

const CONTENT = (frame) => frame.code === 0 && frame.data && typeof frame.data === "object" && typeof frame.data.answer === "string";

async function refused(args) {
  const {wx, app, page} = loadPage(args);
  // asked before the refusal arrives: the question waits for the socket, then fails
  const first = await within(ask(page, args.question), 10000, "a question on a refused key");
  const statusText = page.data.statusText;
  const socketsAfterFirst = wx.__sockets.length;
  const second = await within(ask(page, args.question), 2000, "a question after the refusal");
  page.onStop();                  // nothing running: harmless
  app.onShow();                   // a refused key is never retried, not even from onShow
  page.onShow();
  await sleep(1000);
  const result = {first, second, status: page.data.status, status_text: statusText, sockets_opened: wx.__sockets.length, toasts: wx.__toasts};
  result.checks = {
    first_failed_with_server_message: !!first.error && first.error.code === 109 && /Authentication error/.test(first.error.message),
    shown_on_page: first.shown_error === first.error.message && !first.shown_running && !first.page_running,
    prompt: first.ms < 5000,
    status_refused: page.data.status === "refused" && statusText.includes(first.error.message),
    second_failed_at_once: !!second.error && second.error.code === 109 && second.ms < 500 && !second.page_running,
    never_retried: socketsAfterFirst === 1 && wx.__sockets.length === 1,
  };
  return result;
}

function openBlocker(args) {
  // a socket of the same key, admitted (it answers a ping), held open
  return new Promise((resolve, reject) => {
    const url = `${args.url.replace(/\/$/, "")}/api/v1/ws/chats/${args.chatId}/completions`;
    const ws = new WebSocket(url, {headers: {Authorization: `Bearer ${args.key}`}});
    ws.on("open", () => ws.send(JSON.stringify({type: "ping"})));
    ws.on("message", (data) => {
      const frame = JSON.parse(data.toString("utf8"));
      if (frame.type === "pong") resolve(ws); else reject(new Error(`blocker refused: ${data}`));
    });
    ws.on("error", reject);
  });
}

async function limited(args) {
  const blockers = [];
  for (let i = 0; i < args.blockers; i += 1) blockers.push(await openBlocker(args));
  const {wx, page, client} = loadPage(args, {socketOptions: {busyBackoffMs: 300, maxBusyBackoffMs: 600, maxRetries: 100}});
  const first = await within(ask(page, args.question), 10000, "a question past the key's connection quota");
  const status = page.data.status;
  const statusText = page.data.statusText;
  const second = await within(ask(page, args.question), 2000, "a question while refused for now");
  await sleep(1500);
  const socketsWhileLimited = wx.__sockets.length;
  const stateWhileLimited = page.data.status;
  blockers[0].close();          // a socket of the key closes: the quota frees up
  const freedAt = Date.now();
  await waitFor(() => page.data.status === "open" && client.attempt === 0, 10000, "the page to get a socket");
  const recoveredMs = Date.now() - freedAt;
  const third = await within(ask(page, args.question), 30000, "a question once the quota freed up");
  blockers.slice(1).forEach((ws) => ws.close());
  const result = {first, second, third, status, status_text: statusText, sockets_while_limited: socketsWhileLimited,
                  state_while_limited: stateWhileLimited, recovered_ms: recoveredMs, sockets_opened: wx.__sockets.length};
  result.checks = {
    first_failed_with_server_message: !!first.error && first.error.code !== 109 && /too many connections/.test(first.error.message),
    shown_on_page: first.shown_error === first.error.message && !first.shown_running && !first.page_running,
    prompt: first.ms < 5000,
    status_limited: status === "limited" && statusText.includes("too many connections"),
    second_failed_at_once: !!second.error && /too many connections/.test(second.error.message) && second.ms < 500,
    retried_with_backoff: socketsWhileLimited >= 2 && socketsWhileLimited <= 8,
    still_waiting_for_room: ["limited", "reconnecting"].includes(stateWhileLimited),
    recovered: !!third.text && !third.error && !third.interrupted,
  };
  return result;
}

async function lostBeforeStart(args) {
  const {wx, page} = loadPage(args);
  await waitFor(() => page.data.status === "open", 15000, "the socket to open");
  let dropped = null;
  wx.__onFrame = (task, text) => {
    const frame = JSON.parse(text);
    if (dropped === null && frame.req_id && CONTENT(frame)) {
      // the first frame of the answer never arrives: the network breaks just before it
      dropped = {seq: frame.data.seq, message_id: frame.data.id, session_id: frame.data.session_id};
      task.__drop();
    }
  };
  const first = await within(ask(page, args.question), 10000, "a question whose socket dropped before its first frame");
  wx.__onFrame = null;
  const statusAfter = page.data.status;
  const second = await within(ask(page, args.question), 30000, "the question asked again");
  const result = {first, second, dropped, status_after: statusAfter, sockets_opened: wx.__sockets.length, toasts: wx.__toasts};
  result.checks = {
    dropped_before_first_frame: dropped !== null && dropped.seq === 1,
    failed_clearly: !!first.error && first.error.code === 1006 && /before the answer started/.test(first.error.message),
    shown_on_page: first.shown_error === first.error.message && !first.shown_running && !first.page_running && first.text === "",
    prompt: first.ms < 5000,
    asked_again: !!second.text && !second.error && second.resumes === 0,
    new_socket_for_the_next_question: statusAfter === "closed" && wx.__sockets.length === 2,
  };
  return result;
}

async function frozen(args) {
  const {wx, app, page, client} = loadPage(args, {pongTimeoutMs: args.pongTimeoutMs});
  await waitFor(() => page.data.status === "open" && client.pongs > 0, 15000, "the socket to open");

  // 1. An idle socket goes silent: the heartbeat's ping gets no pong, the page closes it.
  const s1 = client.task;
  s1.__freeze();
  let since = Date.now();
  await waitFor(() => page.data.status !== "open", 5000, "the heartbeat to notice the silent socket");
  const idle = {detected_ms: Date.now() - since, status: page.data.status, closed_socket: s1.readyState >= 2};

  // 2. Back from the background on a dead "open" socket, with no heartbeat due for an
  //    hour: App.onShow's ping notices it.
  client.heartbeatMs = 3600000;
  const pongs = client.pongs;
  app.onShow();                                     // from "closed": reconnect now
  await waitFor(() => page.data.status === "open" && client.task !== s1 && client.pongs > pongs, 5000, "onShow to reconnect");
  const onShowReconnected = wx.__sockets.length === 2;
  const s2 = client.task;
  s2.__freeze();
  await sleep(args.pongTimeoutMs * 2);
  const openWithoutProbe = page.data.status === "open";
  since = Date.now();
  app.onShow();
  await waitFor(() => page.data.status !== "open", 5000, "onShow's ping to notice the silent socket");
  const probe = {detected_ms: Date.now() - since, open_until_probed: openWithoutProbe, closed_socket: s2.readyState >= 2};
  client.heartbeatMs = args.heartbeatMs;
  page.onShow();
  await waitFor(() => page.data.status === "open" && client.task !== s2, 5000, "onShow to reconnect again");

  // 3. The socket goes silent in the middle of an answer: reconnect and resume.
  let contentFrames = 0;
  let frozenAtSeq = null;
  wx.__onFrame = (task, text) => {
    const frame = JSON.parse(text);
    if (CONTENT(frame) && frame.data.answer) contentFrames += 1;
    if (contentFrames === args.dropAfter && frozenAtSeq === null) { frozenAtSeq = frame.data.seq; task.__freeze(); }
  };
  const answer = await within(ask(page, args.longQuestion), 60000, "the answer whose socket went silent");
  wx.__onFrame = null;
  const result = {idle, probe, answer, frozen_at_seq: frozenAtSeq, heartbeat_timeouts: client.heartbeatTimeouts,
                  reconnects: client.reconnects, sockets_opened: wx.__sockets.length, max_open_sockets: wx.__maxOpen};
  result.checks = {
    idle_silence_detected: idle.status === "closed" && idle.closed_socket && idle.detected_ms < 5 * args.pongTimeoutMs,
    onshow_reconnected: onShowReconnected,
    onshow_ping_detects: probe.open_until_probed && probe.closed_socket && probe.detected_ms < 3 * args.pongTimeoutMs,
    answer_resumed: frozenAtSeq !== null && answer.resumes === 1 && !answer.error && !answer.interrupted
      && !!answer.text && answer.last_seq > frozenAtSeq,
    three_silences: client.heartbeatTimeouts === 3,
    sockets: wx.__sockets.length === 4,
  };
  return result;
}

async function stop(args) {
  // 1. On an open socket: the server ends the answer with "interrupted": true.
  const live = loadPage(args, {socketOptions: {stopTimeoutMs: 30000}});   // the server's answer, not the local timeout
  await waitFor(() => live.page.data.status === "open", 15000, "the socket to open");
  let frames = 0;
  let stopped = false;
  let interruptedFrame = false;
  live.wx.__onFrame = (task, text) => {
    const frame = JSON.parse(text);
    if (CONTENT(frame) && frame.data.interrupted) interruptedFrame = true;
    if (CONTENT(frame) && frame.data.answer && (frames += 1) === 2 && !stopped) { stopped = true; setImmediate(() => live.page.onStop()); }
  };
  const onOpen = await within(ask(live.page, args.longQuestion), 20000, "a stopped answer");

  // 2. While the page cannot connect: Stop ends the question at once, and App.onShow
  //    cuts the wait before the next attempt short.
  const offline = loadPage(Object.assign({}, args, {url: args.offlineUrl}), {socketOptions: {backoffMs: 5000, maxBackoffMs: 5000}});
  const waiting = ask(offline.page, args.question);
  await waitFor(() => offline.page.data.status === "reconnecting", 5000, "the first connection attempt to fail");
  const runningWhileOffline = offline.page.data.running;
  const attempts = offline.wx.__sockets.length;
  offline.app.onShow();
  const onShowRetried = offline.wx.__sockets.length === attempts + 1;
  const stoppedAt = Date.now();
  offline.page.onStop();
  const whileOffline = await within(waiting, 2000, "a question stopped while offline");
  const result = {on_open: onOpen, interrupted_frame: interruptedFrame, while_offline: whileOffline,
                  stop_ms: Date.now() - stoppedAt, attempts_before_onshow: attempts};
  result.checks = {
    stopped_by_server: stopped && interruptedFrame && onOpen.interrupted && !onOpen.error && !onOpen.page_running && !!onOpen.message_id,
    running_while_offline: runningWhileOffline,
    onshow_retried_at_once: onShowRetried,
    stopped_offline_at_once: whileOffline.interrupted && !whileOffline.page_running && !whileOffline.shown_running && result.stop_ms < 500,
  };
  return result;
}

const SCENARIOS = {"refused": refused, "limited": limited, "lost-before-start": lostBeforeStart, "frozen": frozen, "stop": stop};

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    scenario: "",
    question: "Which bulb does the Lumen lamp use?",
    longQuestion: "How is the Lumen lamp assembled, tested, dimmed and powered?",
    dropAfter: 3,
    pongTimeoutMs: 1000,
    blockers: 1,
    offlineUrl: "ws://127.0.0.1:9",
  }, {"--scenario": "scenario", "--question": "question", "--long-question": "longQuestion", "--drop-after": "dropAfter",
      "--pong-timeout-ms": "pongTimeoutMs", "--blockers": "blockers", "--offline-url": "offlineUrl"});
  const scenario = SCENARIOS[args.scenario];
  if (!scenario) throw new Error(`--scenario must be one of ${Object.keys(SCENARIOS).join(", ")}`);
  const result = await scenario(args);
  result.scenario = args.scenario;
  return result;
}

runMain(main);
