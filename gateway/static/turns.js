// One turn on the page: the question (its images and text, always as text, never as HTML), then the
// answer's live status line, the answer itself, and the turn's buttons (cancel while it runs, regenerate).

import { appendDelta, renderAnswer } from "./answer.js";
import * as state from "./state.js";
import { isEnded, statusText } from "./status.js";

function button(label, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = label;
  node.addEventListener("click", onClick);
  return node;
}

function question(turn) {
  const box = document.createElement("div");
  box.className = "msg user";
  if (turn.media.length) {
    const row = document.createElement("div");
    row.className = "turn-media";
    for (const media of turn.media) {
      const src = state.thumb(media.media_id);
      if (src) {
        const img = document.createElement("img");
        img.src = src;
        img.alt = media.name || "image";
        row.append(img);
      } else {
        const missing = document.createElement("span");
        missing.className = "media-missing";
        missing.textContent = `${media.name || "image"} (${media.width}×${media.height})`;
        row.append(missing);
      }
    }
    box.append(row);
  }
  const text = document.createElement("p");
  text.className = "prompt";
  text.textContent = turn.prompt;
  box.append(text);
  return box;
}

export class TurnView {
  constructor(turn, { onCancel, onRegenerate }) {
    this.el = document.createElement("article");
    this.el.className = "turn";
    this.el.dataset.turnId = turn.id;
    const reply = document.createElement("div");
    reply.className = "msg assistant";
    this.status = document.createElement("p");
    this.status.className = "status";
    this.status.setAttribute("role", "status");
    this.answer = document.createElement("div");
    this.answer.className = "answer";
    const actions = document.createElement("div");
    actions.className = "turn-actions";
    this.cancel = button("Cancel", "secondary small cancel", () => onCancel(turn));
    this.regenerate = button("Regenerate", "secondary small regenerate", () => onRegenerate(turn));
    actions.append(this.cancel, this.regenerate);
    reply.append(this.status, this.answer, actions);
    this.el.append(question(turn), reply);
  }

  update(turn, isLast) {
    this.el.dataset.state = turn.state;
    if (turn.request_id) this.el.dataset.requestId = turn.request_id;
    const text = statusText(turn);
    if (this.status.textContent !== text) this.status.textContent = text;
    this.status.dataset.state = turn.state;
    const ended = isEnded(turn);
    this.cancel.hidden = ended || turn.state === "uploading";
    this.cancel.disabled = Boolean(turn.cancel_requested);
    this.regenerate.hidden = !(ended && isLast);
    this.regenerate.textContent = turn.state === "done" ? "Regenerate" : "Retry";
    renderAnswer(this.answer, turn);
  }

  /** Only the status line (queue position, connection) changed. */
  refreshStatus(turn) {
    const text = statusText(turn);
    if (this.status.textContent !== text) this.status.textContent = text;
  }

  delta(turn, text) {
    appendDelta(this.answer, turn, text);
  }
}
