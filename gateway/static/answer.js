// The answer of a turn: plain text while it streams, then Markdown (sanitised), pretty-printed JSON for
// JSON answers, and for the GUI task the elements' boxes over the screenshot.

import { renderMarkdown } from "./markdown.js";
import { guiFigure } from "./overlay.js";
import * as state from "./state.js";

function pre(text, className) {
  const node = document.createElement("pre");
  node.className = className;
  node.textContent = text;
  return node;
}

function jsonOf(turn, result) {
  if (result.json !== undefined && result.json !== null) return { value: result.json };
  const wantsJson = turn.params.response_format || turn.params.task === "ocr" || turn.params.task === "gui";
  if (!wantsJson) return null;
  try {
    return { value: JSON.parse(result.text) };
  } catch {
    return null;
  }
}

function firstImage(turn) {
  const media = turn.media[0];
  if (!media) return null;
  return { width: media.width, height: media.height, src: state.thumb(media.media_id) };
}

function finished(turn, result) {
  const parts = [];
  const json = jsonOf(turn, result);
  const gui = json && turn.params.task === "gui" && json.value && Array.isArray(json.value.elements);
  if (gui) {
    // The boxes and the list say it all; the JSON stays one click away.
    const raw = document.createElement("details");
    raw.className = "raw";
    const summary = document.createElement("summary");
    summary.textContent = "JSON";
    raw.append(summary, pre(JSON.stringify(json.value, null, 2), "json"));
    parts.push(guiFigure(json.value.elements, firstImage(turn)), raw);
  } else if (json) {
    parts.push(pre(JSON.stringify(json.value, null, 2), "json"));
  } else {
    const markdown = document.createElement("div");
    markdown.className = "markdown";
    markdown.append(renderMarkdown(result.text || ""));
    parts.push(markdown);
  }
  return parts;
}

/** Fills `node` with the turn's answer as it stands. */
export function renderAnswer(node, turn) {
  const result = turn.final && turn.final.result;
  if (turn.state === "done" && result) {
    node.replaceChildren(...finished(turn, result));
    node.dataset.kind = "final";
  } else if (turn.text) {
    node.replaceChildren(pre(turn.text, "streaming"));
    node.dataset.kind = "streaming";
  } else {
    node.replaceChildren();
    node.dataset.kind = "empty";
  }
}

/** Only the text grew: append to the streaming block instead of rebuilding it. */
export function appendDelta(node, turn, text) {
  const block = node.dataset.kind === "streaming" ? node.querySelector("pre.streaming") : null;
  if (block) block.append(text);
  else renderAnswer(node, turn);
}
