// Images for the next question: added by drop, paste or the file picker, previewed at once, and each
// uploaded once (POST /api/media) as soon as it is added; the turn then refers to it as vlq://media/<id>.
// A refused file shows the gateway's error message next to its preview and keeps the question from going.

import * as api from "./api.js";
import * as state from "./state.js";

const THUMB_SIDE = 768;

function kib(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

/** A small JPEG data URL of the image, kept so previews and GUI boxes survive a reload; null if undecodable. */
async function makeThumb(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, THUMB_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return canvas.toDataURL("image/jpeg", 0.85);
  } catch {
    return null;
  }
}

export class Attachments {
  constructor({ list, input, dropzone, limits, onChange }) {
    this.list = list;
    this.limits = limits || {};
    this.onChange = onChange || (() => {});
    this.items = [];
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    this.listenForDrops(dropzone);
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData ? event.clipboardData.files : [])];
      if (files.length) {
        event.preventDefault();
        this.add(files);
      }
    });
  }

  listenForDrops(dropzone) {
    // The whole window takes drops, so a file dropped beside the box is not opened as a page instead.
    window.addEventListener("dragover", (event) => {
      if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
        event.preventDefault();
        dropzone.classList.add("dragging");
      }
    });
    window.addEventListener("dragleave", (event) => {
      if (!event.relatedTarget) dropzone.classList.remove("dragging");
    });
    window.addEventListener("drop", (event) => {
      dropzone.classList.remove("dragging");
      if (event.dataTransfer && event.dataTransfer.files.length) {
        event.preventDefault();
        this.add([...event.dataTransfer.files]);
      }
    });
  }

  setLimits(limits) {
    this.limits = limits || {};
  }

  add(files) {
    for (const file of files) {
      const item = { file, url: URL.createObjectURL(file), status: "uploading", media: null, error: null, thumb: null };
      this.items.push(item);
      this.list.append(this.tile(item));
      item.done = this.upload(item);
    }
    this.onChange();
  }

  tooMany(item) {
    const max = this.limits.max_images;
    return max && this.items.indexOf(item) >= max ? `at most ${max} images per question` : null;
  }

  async upload(item) {
    const max = this.limits.max_image_bytes;
    const refused = this.tooMany(item) || (max && item.file.size > max ? `too large: ${kib(item.file.size)} (the limit is ${kib(max)})` : null);
    if (refused) return this.settle(item, null, { message: refused, code: "refused_here" });
    try {
      const [media, thumb] = await Promise.all([api.uploadMedia(item.file), makeThumb(item.file)]);
      item.thumb = thumb;
      if (thumb) state.saveThumb(media.media_id, thumb);
      return this.settle(item, media, null);
    } catch (exc) {
      return this.settle(item, null, { message: exc.message, code: exc.code || "error" });
    }
  }

  settle(item, media, error) {
    item.media = media;
    item.error = error;
    item.status = error ? "error" : "ready";
    this.paint(item);
    this.onChange();
  }

  tile(item) {
    const li = document.createElement("li");
    li.className = "attachment";
    const img = document.createElement("img");
    img.alt = item.file.name || "pasted image";
    img.src = item.url;
    img.addEventListener("error", () => img.classList.add("broken"));
    const name = document.createElement("span");
    name.className = "att-name";
    name.textContent = `${item.file.name || "pasted image"} · ${kib(item.file.size)}`;
    const status = document.createElement("span");
    status.className = "att-status";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${item.file.name || "pasted image"}`);
    remove.addEventListener("click", () => this.remove(item));
    li.append(img, name, status, remove);
    item.el = li;
    item.statusEl = status;
    this.paint(item);
    return li;
  }

  paint(item) {
    const { el, statusEl } = item;
    if (!statusEl) return;
    el.classList.toggle("error", item.status === "error");
    el.dataset.status = item.status;
    statusEl.setAttribute("role", item.status === "error" ? "alert" : "status");
    if (item.status === "uploading") statusEl.textContent = "uploading…";
    else if (item.status === "error") statusEl.textContent = item.error.message;
    else statusEl.textContent = `${item.media.width}×${item.media.height}`;
  }

  remove(item) {
    URL.revokeObjectURL(item.url);
    item.el.remove();
    this.items = this.items.filter((other) => other !== item);
    this.onChange();
  }

  clear() {
    for (const item of [...this.items]) this.remove(item);
  }

  /** After every upload settled: {media} for the question, or {error} when one was refused. */
  async ready() {
    await Promise.all(this.items.map((item) => item.done));
    const failed = this.items.find((item) => item.status === "error");
    if (failed) return { error: `${failed.file.name || "an image"}: ${failed.error.message} — remove it to send` };
    return { media: this.items.map((item) => ({ ...item.media, name: item.file.name || "pasted image" })) };
  }

  get busy() {
    return this.items.some((item) => item.status === "uploading");
  }
}
