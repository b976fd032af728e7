// The log panel: per request its id, the HTTP calls and stream events as they came, X-Cache, timings and
// "copy as curl". The curl line names the key as $VLQ_API_KEY: the key itself is never written out.

const MAX_LINES = 300;

function quote(text) {
  return `'${String(text).replace(/'/g, "'\\''")}'`;
}

/** The request as curl commands: the submit, then following its stream. */
export function curlFor(turn, origin, withKey) {
  const auth = withKey ? ' -H "Authorization: Bearer $VLQ_API_KEY"' : "";
  const submit = `curl -sS ${quote(`${origin}/api/infer`)} -H 'Content-Type: application/json'${auth} \\\n  --data-binary ${quote(JSON.stringify(turn.body || {}))}`;
  const id = turn.request_id || "<request_id from the answer>";
  const follow = `curl -sSN ${quote(`${origin}/api/stream?request_id=${id}`)}${auth}`;
  return `${submit}\n${follow}`;
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function timingsText(timings) {
  if (!timings) return "";
  const names = [["queue_wait_s", "queue"], ["first_delta_s", "first delta"], ["engine_s", "engine"], ["total_s", "total"]];
  return names.filter(([key]) => typeof timings[key] === "number")
    .map(([key, name]) => `${name} ${timings[key].toFixed(3)} s`).join(" · ");
}

export class Log {
  constructor(root, withKey) {
    this.root = root;
    this.withKey = withKey;
    this.sections = new Map();
  }

  reset(turns) {
    this.root.replaceChildren();
    this.sections.clear();
    for (const turn of turns) {
      const section = this.section(turn);
      for (const line of turn.log || []) section.events.append(this.line(line));
      this.update(turn);
    }
  }

  section(turn) {
    let section = this.sections.get(turn.id);
    if (section) return section;
    const root = document.createElement("section");
    root.className = "log-request";
    root.dataset.turnId = turn.id;
    const head = document.createElement("div");
    head.className = "log-head";
    const id = document.createElement("code");
    id.className = "log-id";
    const cache = document.createElement("span");
    cache.className = "log-cache";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "secondary small copy-curl";
    copy.textContent = "Copy as curl";
    head.append(id, cache, copy);
    const events = document.createElement("ol");
    events.className = "log-events";
    const timings = document.createElement("p");
    timings.className = "log-timings";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "curl";
    const curl = document.createElement("pre");
    curl.className = "curl";
    details.append(summary, curl);
    root.append(head, events, timings, details);
    this.root.append(root);
    section = { root, id, cache, events, timings, curl, copy };
    copy.addEventListener("click", () => this.copy(section, copy));
    this.sections.set(turn.id, section);
    return section;
  }

  async copy(section, button) {
    const text = section.curl.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      section.curl.parentElement.open = true; // no clipboard here: show it, selected, for a manual copy
      getSelection().selectAllChildren(section.curl);
      button.textContent = "Selected";
    }
    setTimeout(() => { button.textContent = "Copy as curl"; }, 1500);
  }

  line({ t, text }) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = clock(t);
    li.append(time, ` ${text}`);
    return li;
  }

  /** Records one line for the turn (kept with it, so the log survives a reload too). */
  add(turn, text) {
    turn.log = turn.log || [];
    const entry = { t: Date.now(), text };
    if (turn.log.length >= MAX_LINES) turn.log.splice(1, 1); // keep the first line, drop the oldest after it
    turn.log.push(entry);
    const section = this.section(turn);
    if (section.events.children.length >= MAX_LINES) section.events.children[1].remove();
    section.events.append(this.line(entry));
  }

  update(turn) {
    const section = this.section(turn);
    section.id.textContent = turn.request_id || "(not accepted yet)";
    const cache = (turn.final && turn.final.x_cache) || turn.x_cache;
    section.cache.textContent = cache ? `X-Cache: ${cache}` : "";
    section.timings.textContent = timingsText(turn.final && turn.final.timings);
    section.curl.textContent = curlFor(turn, location.origin, this.withKey());
  }

  remove(turn) {
    const section = this.sections.get(turn.id);
    if (section) section.root.remove();
    this.sections.delete(turn.id);
  }
}
