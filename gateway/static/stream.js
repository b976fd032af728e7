// The event stream of one request, read with fetch() (EventSource cannot send an API key header) and parsed
// as Server-Sent Events. A dropped connection, a stalled one (no byte, not even a keepalive, for 40 s) or
// a woken laptop reconnects with Last-Event-ID, so no event is lost or seen twice.

import * as api from "./api.js";

export const TERMINAL = new Set(["done", "failed", "canceled", "expired"]);
const STALL_MS = 40_000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 8_000;
const RETRYABLE = new Set([0, 408, 429, 502, 503, 504]); // 0: the network; anything else ends the follow

/** Parses an SSE byte stream into {id, event, data} objects (id null when the event has none). */
export async function* parseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) yield { id: event.id, event: event.event, data: event.data.join("\n") };
          event = { id: null, event: "message", data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") event.data.push(text);
          else if (field === "event") event.event = text;
          else if (field === "id" && !text.includes("\0")) event.id = text;
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Follows one request's stream until its terminal event, reconnecting as needed.
 * handlers: onEvent({id, event, data}), onState("connected"|"reconnecting"), onFatal(ApiError).
 */
export class Follower {
  constructor(requestId, lastEventId, handlers) {
    this.requestId = requestId;
    this.lastEventId = lastEventId || 0;
    this.handlers = handlers;
    this.stopped = false;
    this.controller = null;
    this.wake = null;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  /** Reconnects at once (the browser came back online, or the tab became visible). */
  nudge() {
    if (this.wake) this.wake();
  }

  async run() {
    let delay = FIRST_RETRY_MS;
    while (!this.stopped) {
      const outcome = await this.connectOnce();
      if (outcome === "ended" || this.stopped) return;
      if (outcome === "progress") delay = FIRST_RETRY_MS;
      this.handlers.onState("reconnecting");
      await this.sleep(delay);
      delay = Math.min(delay * 2, MAX_RETRY_MS);
    }
  }

  /** One connection: "ended" after the terminal event (or a fatal error), else "progress" or "nothing". */
  async connectOnce() {
    this.controller = new AbortController();
    let watchdog = 0;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), STALL_MS);
    };
    let progress = false;
    try {
      arm();
      const response = await api.openStream(this.requestId, this.lastEventId, this.controller.signal);
      this.handlers.onState("connected");
      for await (const event of parseEvents(tap(response.body, arm))) {
        progress = true;
        if (event.id !== null) this.lastEventId = Number(event.id) || event.id;
        this.handlers.onEvent(event);
        if (TERMINAL.has(event.event)) return "ended";
      }
    } catch (exc) {
      if (exc instanceof api.ApiError && !RETRYABLE.has(exc.status)) {
        this.handlers.onFatal(exc);
        return "ended";
      }
    } finally {
      clearTimeout(watchdog);
    }
    return progress ? "progress" : "nothing";
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }
}

/** The same byte stream, calling `onChunk` for every chunk (keepalives included) to feed the watchdog. */
function tap(body, onChunk) {
  return body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      onChunk();
      controller.enqueue(chunk);
    },
  }));
}
