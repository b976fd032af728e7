// The page's entry point: reads /api/info, then wires the API key field, the composer (Enter sends,
// Shift+Enter is a newline), the images, the parameters, the conversation and the log together.

import * as api from "./api.js";
import { Chat } from "./chat.js";
import { Log } from "./log.js";
import { Attachments } from "./media.js";
import { Params } from "./params.js";
import * as state from "./state.js";

const $ = (id) => document.getElementById(id);
let info = null;
let refusal = null; // the last 401's message, until the key changes

function showBanner() {
  const banner = $("banner");
  let text = "";
  if (refusal) text = `The gateway refused the API key: ${refusal.message} (${refusal.code}). Enter a valid key above.`;
  else if (info && info.auth_required && !api.hasKey()) text = "This gateway requires an API key: enter it in the API key field above.";
  banner.textContent = text;
  banner.hidden = !text;
  $("api-key").setAttribute("aria-invalid", refusal ? "true" : "false");
}

async function loadInfo(params, attachments) {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      info = await api.info();
      break;
    } catch {
      $("model").textContent = "the gateway cannot be reached; retrying…";
      await new Promise((resolve) => { setTimeout(resolve, delay); });
    }
  }
  $("model").textContent = info.model;
  params.setLimits(info.limits);
  attachments.setLimits(info.limits);
  document.body.dataset.ready = "true";
  showBanner();
}

function setUpKey(chat) {
  const field = $("api-key");
  field.value = state.apiKey();
  field.addEventListener("input", () => {
    api.setKey(field.value);
    refusal = null;
    showBanner();
  });
  field.addEventListener("change", () => chat.resume());
  api.authEvents.addEventListener("unauthorized", (event) => {
    refusal = event.detail;
    showBanner();
  });
}

function composerError(text) {
  $("composer-error").textContent = text || "";
}

async function send(chat, params, attachments) {
  const prompt = $("prompt").value.trim();
  if (!prompt && !attachments.items.length) return composerError("Type a question (and add an image if it is about one).");
  if (info && prompt.length > info.limits.max_prompt_chars) {
    return composerError(`The question is ${prompt.length} characters; the limit is ${info.limits.max_prompt_chars}.`);
  }
  if (info && info.auth_required && !api.hasKey()) {
    $("api-key").focus();
    return composerError("This gateway requires an API key: enter it first.");
  }
  const { values, error } = params.read();
  if (error) return composerError(`Fix the parameters first: ${error}`);
  $("send").disabled = true;
  composerError(attachments.busy ? "Waiting for the images to upload…" : "");
  try {
    const ready = await attachments.ready();
    if (ready.error) return composerError(ready.error);
    composerError("");
    $("prompt").value = "";
    attachments.clear();
    chat.ask(prompt, ready.media, values);
  } finally {
    $("send").disabled = false;
    $("prompt").focus();
  }
}

const PLACEHOLDERS = {
  vqa: "Ask about the image… (Enter sends, Shift+Enter for a new line)",
  ocr: "What should be read? e.g. “the invoice's total and date” (Enter sends)",
  gui: "Which elements? e.g. “every button and input field” (Enter sends)",
};

function setUpComposer(chat, params, attachments) {
  const prompt = $("prompt");
  const task = $("p-task");
  const placeholder = () => { prompt.placeholder = PLACEHOLDERS[task.value] || PLACEHOLDERS.vqa; };
  task.addEventListener("change", placeholder);
  placeholder();
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  prompt.addEventListener("input", () => composerError(""));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(chat, params, attachments);
  });
  $("new-chat").addEventListener("click", () => {
    chat.newChat(attachments.items.filter((item) => item.media).map((item) => item.media.media_id));
    prompt.focus();
  });
}

function main() {
  const wide = window.matchMedia("(min-width: 900px)").matches;
  $("params-panel").open = wide;
  $("log-panel").open = wide;
  const params = new Params(null);
  const attachments = new Attachments({ list: $("attachments"), input: $("file"), dropzone: $("dropzone"),
    onChange: () => composerError("") });
  const log = new Log($("log"), () => Boolean(info && info.auth_required) || api.hasKey());
  const chat = new Chat({ container: $("turns"), empty: $("empty"), log });
  window.vlqChat = chat; // for a look from the console (and the browser tests)
  setUpKey(chat);
  setUpComposer(chat, params, attachments);
  window.addEventListener("online", () => chat.nudge());
  document.addEventListener("visibilitychange", () => { if (!document.hidden) chat.nudge(); });
  window.addEventListener("pagehide", () => state.flushSave());
  chat.start();
  loadInfo(params, attachments);
}

main();
