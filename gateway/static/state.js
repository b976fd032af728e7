// What the page keeps in the browser: the conversation and its in-flight request ids (localStorage, so a
// reload or a new tab loses nothing), the parameters (localStorage), image thumbnails (localStorage, for
// previews and GUI boxes after a reload) and the API key (sessionStorage: this tab only, never a URL).

const CONVERSATION = "vlq.conversation.v1";
const PARAMS = "vlq.params.v1";
const THUMB = "vlq.thumb.";
const API_KEY = "vlq.api-key";
const SAVE_EVERY_MS = 200;

function read(storage, key, fallback) {
  try {
    const raw = storage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function write(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // quota or private mode: the page still works, it just forgets on reload
  }
}

export function newConversation() {
  return { id: crypto.randomUUID(), created: Date.now(), turns: [] };
}

export function loadConversation() {
  const found = read(localStorage, CONVERSATION, null);
  if (!found || !Array.isArray(found.turns)) return newConversation();
  return found;
}

let pending = null;
let pendingTimer = 0;

/** Saves now. Each turn's text and last event id travel together, so a resumed stream continues exactly. */
export function saveConversation(conversation) {
  clearTimeout(pendingTimer);
  pending = null;
  write(localStorage, CONVERSATION, conversation);
}

/** Saves soon (at most every 200 ms while deltas stream in). */
export function scheduleSave(conversation) {
  pending = conversation;
  if (pendingTimer) return;
  pendingTimer = setTimeout(() => {
    pendingTimer = 0;
    if (pending) saveConversation(pending);
  }, SAVE_EVERY_MS);
}

export function flushSave() {
  if (pending) saveConversation(pending);
}

export function loadParams() {
  return read(localStorage, PARAMS, {});
}

export function saveParams(params) {
  write(localStorage, PARAMS, params);
}

export function saveThumb(mediaId, dataUrl) {
  return write(localStorage, THUMB + mediaId, dataUrl);
}

export function thumb(mediaId) {
  return read(localStorage, THUMB + mediaId, null);
}

/** Drops thumbnails no turn refers to any more. */
export function pruneThumbs(keep) {
  const wanted = new Set(keep.map((id) => THUMB + id));
  for (let i = localStorage.length - 1; i >= 0; i -= 1) {
    const key = localStorage.key(i);
    if (key && key.startsWith(THUMB) && !wanted.has(key)) localStorage.removeItem(key);
  }
}

export function apiKey() {
  try {
    return sessionStorage.getItem(API_KEY) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(API_KEY, key);
    else sessionStorage.removeItem(API_KEY);
  } catch {
    // sessionStorage refused: the key lives only in the field
  }
}
