// The gateway's HTTP API as the page uses it. Every call sends the API key as a header (never in a URL);
// every error answer is the gateway's envelope {"error": {"message", "type", "param", "code", "request_id"}}
// turned into an ApiError. A 401 is also announced on `authEvents`, so the page can say a key is needed.

import * as state from "./state.js";

let key = state.apiKey();
export const authEvents = new EventTarget();

export function setKey(value) {
  key = value.trim();
  state.setApiKey(key);
}

export function hasKey() {
  return key !== "";
}

/** An error answer of the API (or a network failure: status 0). */
export class ApiError extends Error {
  constructor(status, error, httpRequestId) {
    super(error.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error.code || (status ? `http_${status}` : "network_error");
    this.param = error.param ?? null;
    this.type = error.type || "";
    this.httpRequestId = error.request_id || httpRequestId || null;
  }
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

async function errorOf(response) {
  let error = {};
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) error = body.error;
    else if (body && typeof body.detail === "string") error = { message: body.detail };
  } catch {
    // not JSON: a proxy's page; the status says enough
  }
  const apiError = new ApiError(response.status, error, response.headers.get("X-Request-ID"));
  if (response.status === 401) authEvents.dispatchEvent(new CustomEvent("unauthorized", { detail: apiError }));
  return apiError;
}

async function call(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { ...init, headers: headers(init.headers), cache: "no-store" });
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, { message: "the gateway cannot be reached", code: "network_error" });
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function json(url, init) {
  const response = await call(url, init);
  let body;
  try {
    body = await response.json();
  } catch (exc) {
    // The connection dropped while the body was read (a reload, a network change): like no answer at
    // all, so callers retry (a POST with its Idempotency-Key) instead of calling the request failed.
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, { message: "the answer was cut off; retrying", code: "network_error" });
  }
  return { status: response.status, body, headers: response.headers };
}

/** GET /api/info: model, whether a key is required, limits, tasks. */
export async function info() {
  return (await json("/api/info")).body;
}

/** POST /api/media: uploads one image once; later turns refer to it as vlq://media/<id>. */
export async function uploadMedia(file) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  return (await json("/api/media", { method: "POST", body: form })).body;
}

/** POST /api/infer with a JSON body; the Idempotency-Key makes a retried (or resumed) POST safe. */
export async function submit(body, idempotencyKey) {
  const response = await json("/api/infer", {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
  });
  return {
    status: response.status,
    body: response.body,
    xCache: response.headers.get("X-Cache") || response.body.x_cache || null,
    httpRequestId: response.headers.get("X-Request-ID"),
  };
}

/** DELETE /api/result: cancels a queued or running request. */
export async function cancel(requestId) {
  return json(`/api/result?request_id=${encodeURIComponent(requestId)}`, { method: "DELETE" });
}

/** GET /api/stream: the response, whose body is the event stream; resumes after `lastEventId`. */
export async function openStream(requestId, lastEventId, signal) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  return call(`/api/stream?request_id=${encodeURIComponent(requestId)}`, { headers: extra, signal });
}
