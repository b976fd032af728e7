// The GUI task's answer drawn over the screenshot: each element's bbox (pixels of the original image) as a
// labelled box. The SVG's viewBox is the original size, so the boxes scale with the displayed picture.

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/** [x1, y1, x2, y2] clamped to the image, or null when it is not a box. */
export function box(bbox, width, height) {
  if (!Array.isArray(bbox) || bbox.length !== 4 || !bbox.every((v) => typeof v === "number" && Number.isFinite(v))) return null;
  const [x1, y1, x2, y2] = bbox;
  const clamp = (v, max) => Math.min(Math.max(v, 0), max);
  const b = [clamp(Math.min(x1, x2), width), clamp(Math.min(y1, y2), height), clamp(Math.max(x1, x2), width), clamp(Math.max(y1, y2), height)];
  return b[2] > b[0] && b[3] > b[1] ? b : null;
}

function labelOf(element, n) {
  const label = typeof element.label === "string" && element.label ? element.label : "";
  return `${n}${element.type ? ` ${element.type}` : ""}${label ? `: ${label}` : ""}`;
}

function drawBox(layer, element, n, b, font) {
  const [x1, y1, x2, y2] = b;
  const group = svg("g", { class: `box box-${String(element.type || "other").replace(/[^a-z]/g, "")}` });
  const title = svg("title", {});
  title.textContent = labelOf(element, n);
  const text = labelOf(element, n).slice(0, 40);
  const above = y1 >= font * 1.3;
  const ty = above ? y1 - font * 0.3 : y1 + font;
  group.append(
    title,
    svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: "frame", "vector-effect": "non-scaling-stroke" }),
    svg("rect", { x: x1, y: ty - font, width: text.length * font * 0.6 + font * 0.4, height: font * 1.25, class: "tag" }),
  );
  const label = svg("text", { x: x1 + font * 0.2, y: ty, "font-size": font });
  label.textContent = text;
  group.append(label);
  layer.append(group);
}

/** A figure with the screenshot and its boxes (or only the list when no picture is kept), and a list. */
export function guiFigure(elements, image) {
  const figure = document.createElement("figure");
  figure.className = "gui";
  const list = document.createElement("ol");
  list.className = "elements";
  let drawn = 0;
  const frame = document.createElement("div");
  frame.className = "gui-frame";
  const layer = image ? svg("svg", { viewBox: `0 0 ${image.width} ${image.height}`, preserveAspectRatio: "none", class: "gui-boxes", role: "img" }) : null;
  const font = image ? Math.max(10, Math.round(Math.max(image.width, image.height) / 55)) : 12;
  elements.forEach((element, index) => {
    const n = index + 1;
    const item = document.createElement("li");
    item.textContent = [labelOf(element, n), element.purpose].filter(Boolean).join(" — ");
    const b = image ? box(element.bbox, image.width, image.height) : null;
    if (b && layer) {
      drawBox(layer, element, n, b, font);
      drawn += 1;
      item.dataset.bbox = b.join(",");
    }
    list.append(item);
  });
  if (image && image.src) {
    const img = document.createElement("img");
    img.src = image.src;
    img.alt = "the screenshot with the elements found";
    frame.append(img, layer);
    layer.setAttribute("aria-label", `${drawn} boxes`);
    figure.append(frame);
  }
  const caption = document.createElement("figcaption");
  const count = `${elements.length} element${elements.length === 1 ? "" : "s"}`;
  caption.textContent = image && image.src ? `${count}, ${drawn} drawn` : `${count} (the screenshot is not kept in this browser)`;
  figure.append(caption, list);
  return figure;
}
