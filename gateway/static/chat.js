// The conversation: asking (POST /api/infer), following each request's stream, cancel, regenerate, new
// chat, and picking everything up again after a reload. Every change is saved with the turn, so a reload
// resumes each in-flight request: a POST not yet answered is re-sent with its Idempotency-Key (the
// gateway returns the request it made the first time), a stream re-attaches with Last-Event-ID.

import * as api from "./api.js";
import { requestBody } from "./messages.js";
import * as state from "./state.js";
import { statusText, isEnded } from "./status.js";
import { Follower, TERMINAL } from "./stream.js";
import { TurnView } from "./turns.js";

const POST_RETRIES = 4;

function summary(event, data) {
  if (event === "delta") return JSON.stringify(String(data.text ?? "")).slice(0, 120);
  if (TERMINAL.has(event)) {
    const error = data.error ? ` ${data.error.code}` : "";
    return `${data.status || event}${error} X-Cache: ${data.x_cache ?? "?"}`;
  }
  return JSON.stringify(data).slice(0, 160);
}

function parse(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : {};
  } catch {
    return {};
  }
}

/** Runs `update`, then keeps the conversation scrolled to its end if it was there before. */
function keepingBottom(container, update) {
  const atEnd = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  update();
  if (atEnd) container.scrollTop = container.scrollHeight;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

export class Chat {
  constructor({ container, empty, log, onChange }) {
    this.container = container;
    this.empty = empty;
    this.log = log;
    this.onChange = onChange || (() => {});
    this.conversation = state.loadConversation();
    this.views = new Map();
    this.followers = new Map();
    this.posting = new Set(); // turn ids whose POST is under way in this page (not saved: a reload re-sends)
  }

  get turns() {
    return this.conversation.turns;
  }

  /** Draws the saved conversation and resumes whatever was in flight. */
  start() {
    this.renderAll();
    this.resume();
  }

  renderAll() {
    for (const view of this.views.values()) view.el.remove();
    this.views.clear();
    for (const turn of this.turns) this.mount(turn);
    this.log.reset(this.turns);
    this.refresh();
    this.container.scrollTop = this.container.scrollHeight;
  }

  mount(turn) {
    const view = new TurnView(turn, { onCancel: (t) => this.cancel(t), onRegenerate: (t) => this.regenerate(t) });
    this.views.set(turn.id, view);
    this.container.append(view.el);
    return view;
  }

  refresh() {
    this.empty.hidden = this.turns.length > 0;
    this.turns.forEach((turn, i) => this.views.get(turn.id).update(turn, i === this.turns.length - 1));
    this.onChange();
  }

  /** Re-sends unanswered POSTs and re-attaches to every running stream (after a reload, or a new key). */
  resume() {
    for (const turn of this.turns) {
      if (isEnded(turn) || this.followers.has(turn.id) || this.posting.has(turn.id)) continue;
      if (turn.request_id) this.follow(turn);
      else if (turn.body) this.submit(turn);
    }
  }

  /** Reconnects now every stream waiting to retry. */
  nudge() {
    for (const follower of this.followers.values()) follower.nudge();
  }

  changed(turn, now = false) {
    const view = this.views.get(turn.id);
    if (view) keepingBottom(this.container, () => view.update(turn, turn === this.turns[this.turns.length - 1]));
    this.log.update(turn);
    if (now) state.saveConversation(this.conversation);
    else state.scheduleSave(this.conversation);
    this.onChange();
  }

  /** A new turn: the question, its uploaded images and the parameters, sent at once. */
  ask(prompt, media, params) {
    const turn = {
      id: `t_${crypto.randomUUID()}`, created: Date.now(), prompt, params,
      media: media.map(({ media_id, name, width, height, media_type }) => ({ media_id, name, width, height, media_type })),
      state: "sending", text: "", last_event_id: 0, log: [],
    };
    this.turns.push(turn);
    this.prepare(turn);
    this.mount(turn);
    this.refresh();
    this.views.get(turn.id).el.scrollIntoView({ block: "end", behavior: "smooth" });
    return this.submit(turn);
  }

  /** A fresh request for the turn: its body from the conversation before it, a new Idempotency-Key. */
  prepare(turn) {
    turn.idem = crypto.randomUUID();
    turn.body = requestBody(this.turns, this.turns.indexOf(turn));
  }

  async submit(turn) {
    this.posting.add(turn.id);
    turn.state = "sending";
    turn.sent_at = turn.sent_at || Date.now();
    this.log.add(turn, `POST /api/infer · ${turn.body.messages.length} messages · task ${turn.body.task} · Idempotency-Key ${turn.idem}`);
    this.changed(turn, true);
    let answer = null;
    for (let attempt = 0; answer === null; attempt += 1) {
      try {
        answer = await api.submit(turn.body, turn.idem);
      } catch (exc) {
        if (exc.status === 0 && attempt < POST_RETRIES) {
          this.log.add(turn, "the gateway cannot be reached; retrying with the same Idempotency-Key");
          await sleep(1000 * 2 ** attempt);
          continue;
        }
        return this.refused(turn, exc);
      }
    }
    this.posting.delete(turn.id);
    this.accepted(turn, answer);
  }

  refused(turn, exc) {
    if (!this.turns.includes(turn)) return; // the chat was cleared meanwhile
    this.posting.delete(turn.id);
    turn.state = "error";
    turn.error = { code: exc.code, message: exc.message, status: exc.status };
    turn.ended_at = Date.now();
    this.log.add(turn, `← ${exc.status} ${exc.code}: ${exc.message}`);
    this.changed(turn, true);
  }

  accepted(turn, answer) {
    if (!this.turns.includes(turn)) return;
    const { body } = answer;
    this.log.add(turn, `← ${answer.status} · request ${body.request_id} · X-Cache: ${answer.xCache ?? "?"} · X-Request-ID ${answer.httpRequestId ?? "?"}`);
    turn.request_id = body.request_id;
    turn.x_cache = body.x_cache || answer.xCache;
    if (answer.status === 200) return this.ended(turn, { ...body, x_cache: body.x_cache || answer.xCache });
    turn.state = body.status === "running" ? "running" : "queued";
    Object.assign(turn, { position: body.position ?? null, eta_s: body.eta_s ?? null, warming: Boolean(body.warming) });
    this.changed(turn, true);
    if (turn.cancel_requested) this.cancel(turn, true);
    this.follow(turn);
  }

  follow(turn) {
    const old = this.followers.get(turn.id);
    if (old) old.stop();
    const follower = new Follower(turn.request_id, turn.last_event_id, {
      onEvent: (event) => this.onEvent(turn, event),
      onState: (connection) => this.onConnection(turn, connection, follower),
      onFatal: (exc) => this.onFatal(turn, exc),
    });
    this.followers.set(turn.id, follower);
    follower.start();
  }

  onConnection(turn, connection, follower) {
    if (connection === "connected") {
      this.log.add(turn, `GET /api/stream${follower.lastEventId ? ` · Last-Event-ID: ${follower.lastEventId}` : ""}`);
    } else if (turn.connection !== "reconnecting") {
      this.log.add(turn, "the stream dropped; reconnecting");
    }
    turn.connection = connection;
    this.views.get(turn.id).refreshStatus(turn);
  }

  onFatal(turn, exc) {
    this.followers.delete(turn.id);
    this.log.add(turn, `stream: ← ${exc.status} ${exc.code}: ${exc.message}`);
    if (exc.status === 401) {
      turn.connection = "needs-key"; // picked up again once a key is entered
      this.views.get(turn.id).refreshStatus(turn);
      return;
    }
    turn.state = exc.status === 410 ? "expired" : "lost";
    turn.error = { code: exc.code, message: exc.message };
    turn.ended_at = Date.now();
    this.changed(turn, true);
  }

  onEvent(turn, event) {
    const data = parse(event.data);
    this.log.add(turn, `${event.id === null ? "(live)" : `#${event.id}`} ${event.event} ${summary(event.event, data)}`);
    if (event.id !== null) turn.last_event_id = Number(event.id) || event.id;
    if (TERMINAL.has(event.event)) return this.ended(turn, data);
    if (event.event === "queued" && turn.state !== "running") {
      Object.assign(turn, { state: "queued", position: data.position ?? null, eta_s: data.eta_s ?? null, warming: Boolean(data.warming) });
    } else if (event.event === "progress") {
      // A long video answered as windows: one event per window that ended.
      Object.assign(turn, { state: "running", windows_done: data.done ?? null, windows_total: data.total ?? null });
    } else if (event.event === "running") {
      Object.assign(turn, { state: "running", warming: false, started_at: Date.now() });
    } else if (event.event === "delta") {
      const text = String(data.text ?? "");
      turn.text += text;
      if (turn.state !== "running") turn.state = "running";
      keepingBottom(this.container, () => this.views.get(turn.id).delta(turn, text));
      this.views.get(turn.id).refreshStatus(turn);
      state.scheduleSave(this.conversation);
      return;
    }
    this.changed(turn);
  }

  /** The final body arrived (from the stream, a cache hit, a cancel or a replay). */
  ended(turn, body) {
    const follower = this.followers.get(turn.id);
    if (follower) follower.stop();
    this.followers.delete(turn.id);
    turn.final = body;
    turn.state = ["done", "failed", "canceled", "expired"].includes(body.status) ? body.status : "failed";
    turn.x_cache = body.x_cache || turn.x_cache;
    turn.connection = null;
    turn.ended_at = Date.now();
    const text = body.result && body.result.text;
    if (turn.state === "done" && turn.text && text !== turn.text) {
      this.log.add(turn, "note: the streamed text differs from the result's text (the result is shown)");
    }
    this.log.add(turn, `${statusText(turn)}`);
    this.changed(turn, true);
  }

  async cancel(turn, quiet = false) {
    turn.cancel_requested = true;
    this.changed(turn, true);
    if (!turn.request_id) return; // sent as soon as the POST is answered
    if (!quiet) this.log.add(turn, `DELETE /api/result?request_id=${turn.request_id}`);
    try {
      const answer = await api.cancel(turn.request_id);
      this.log.add(turn, `← ${answer.status} ${answer.body.status}`);
      if (answer.status === 200 && !isEnded(turn)) this.ended(turn, answer.body);
    } catch (exc) {
      this.log.add(turn, `← ${exc.status} ${exc.code}: ${exc.message}`);
      turn.cancel_requested = false;
      this.changed(turn, true);
    }
  }

  /** The last turn again, as a new request that skips the cache (the same request would hit it). */
  regenerate(turn) {
    if (turn !== this.turns[this.turns.length - 1] || !isEnded(turn)) return;
    this.log.add(turn, turn.state === "done" ? "— regenerate (cache off) —" : "— retry —");
    Object.assign(turn, {
      regenerate: turn.state === "done", request_id: null, x_cache: null, final: null, error: null, text: "",
      last_event_id: 0, position: null, eta_s: null, warming: false, cancel_requested: false, sent_at: Date.now(),
      ended_at: null, connection: null,
    });
    this.prepare(turn);
    return this.submit(turn);
  }

  /** Forgets the conversation (requests still running on the gateway finish there, unseen). */
  newChat(keepMedia = []) {
    for (const follower of this.followers.values()) follower.stop();
    this.followers.clear();
    this.posting.clear();
    this.conversation = state.newConversation();
    state.saveConversation(this.conversation);
    state.pruneThumbs(keepMedia);
    this.renderAll();
  }

  mediaInUse() {
    return this.turns.flatMap((turn) => turn.media.map((media) => media.media_id));
  }
}
