// One line per turn saying where its request stands, in the words a user reads:
// "queued · #3 · about 4 s", "warming · #1 · no worker is up yet", "running", "done · 1.2 s · MISS",
// "failed · the prompt is too long for the model (prompt_too_long)".

const WORDS = {
  prompt_too_long: "the prompt is too long for the model",
  engine_oom: "the engine ran out of memory",
  engine_error: "the engine failed",
  timeout: "the job took too long",
  worker_lost: "the worker running it was lost",
  image_expired: "an image expired on the server before the job ran; add it again",
  image_unreadable: "an image could not be read",
  model_mismatch: "the worker serves a different model",
  deadline_exceeded: "the deadline passed before an answer",
  canceled: "canceled",
  media_not_found: "an image is no longer on the server; add it again",
  request_not_found: "the gateway no longer knows this request",
  result_expired: "the result is no longer kept",
  missing_api_key: "an API key is needed",
  invalid_api_key: "the API key was refused",
  network_error: "the gateway cannot be reached",
  rate_limited: "too many requests; wait a moment",
};

/** A failure code in words, with the code itself for searching the docs. */
export function inWords(code, message) {
  const words = WORDS[code] || message || "it failed";
  return code ? `${words} (${code})` : words;
}

export function seconds(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "";
  if (value < 10) return `${value.toFixed(1)} s`;
  return `${Math.round(value)} s`;
}

function queued(turn) {
  const parts = [turn.warming ? "warming" : "queued"];
  if (typeof turn.position === "number") parts.push(`#${turn.position + 1}`);
  if (turn.warming) parts.push("no worker is up yet");
  else if (typeof turn.eta_s === "number") parts.push(`about ${Math.max(1, Math.round(turn.eta_s))} s`);
  return parts.join(" · ");
}

function elapsed(turn) {
  // A cache hit carries the timings of the job that first computed the answer: show how long this one took.
  const cached = turn.final && turn.final.cached;
  const total = !cached && turn.final && turn.final.timings ? turn.final.timings.total_s : null;
  if (typeof total === "number" && total > 0) return total;
  if (turn.sent_at && turn.ended_at) return (turn.ended_at - turn.sent_at) / 1000;
  return null;
}

function ended(turn) {
  const final = turn.final || {};
  if (turn.state === "done") {
    return ["done", seconds(elapsed(turn)), final.x_cache || turn.x_cache || ""].filter(Boolean).join(" · ");
  }
  if (turn.state === "canceled") return "canceled";
  const error = final.error || turn.error || {};
  return `${turn.state} · ${inWords(error.code, error.message)}`;
}

/** The status line of a turn. */
export function statusText(turn) {
  let text;
  switch (turn.state) {
    case "uploading": text = "uploading images…"; break;
    case "sending": text = "sending…"; break;
    case "queued": text = queued(turn); break;
    case "running": text = typeof turn.windows_total === "number"
      ? `running · window ${turn.windows_done}/${turn.windows_total} done` : "running"; break;
    case "error": text = `not sent · ${inWords(turn.error && turn.error.code, turn.error && turn.error.message)}`; break;
    default: text = ended(turn);
  }
  if (turn.connection === "reconnecting" && !isEnded(turn)) text += " · reconnecting…";
  return text;
}

export function isEnded(turn) {
  return ["done", "failed", "canceled", "expired", "error"].includes(turn.state);
}
