// RagSocket chat example: one WebSocket for the whole app (a Mini Program may open at
// most 5 at once), shared by the pages through getApp().globalData.
//
// Fill in your server before you run it. In production the URL must be wss:// and its
// domain must be on the Mini Program's "socket legal domain" list (no IP, no localhost).
// Do not ship a tenant's API key inside a Mini Program you publish: have your backend
// hand the page a key of a tenant made for it (see README.md).
App({
  globalData: {
    baseUrl: "wss://chat.example.com",   // no trailing slash
    apiKey: "ragsocket-REPLACE-ME",
    chatId: "REPLACE-WITH-CHAT-ID",
    heartbeatMs: 25000,                  // application ping: SocketTask has no ping API
    pongTimeoutMs: 10000,                // no frame this long after a ping: the socket is dead, reconnect
    socketOptions: null,                 // more RagSocket options (utils/ragsocket.js), e.g. {maxRetries: 8}
    client: null,                        // the RagSocket of utils/ragsocket.js, made by the chat page
  },

  onHide() {
    // Requests still running ~5 s after the app goes to the background fail; the socket
    // usually dies too. Nothing to do here: the answer was asked with "resumable": true,
    // and the client resumes it when the socket comes back (see onShow).
  },

  onShow() {
    // Back from the background: reconnect from any state but "open" (and never after the
    // key or chat was refused); when "open", a ping checks that the socket still works.
    const client = this.globalData.client;
    if (client) client.ensureConnected();
  },
});
