// The parameters panel: sampling (temperature, top_p, max_tokens, seed), the cache mode, the task preset
// and an optional JSON schema, checked here before anything is sent. Kept in localStorage between visits.

import * as state from "./state.js";

const $ = (id) => document.getElementById(id);
const SCHEMA_KEYS = ["type", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"];
const TYPES = new Set(["object", "array", "string", "number", "integer", "boolean", "null"]);

/** The parsed schema, or the reason it cannot be used ({schema} or {error}). */
export function checkSchema(text) {
  if (!text.trim()) return { schema: null };
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (exc) {
    return { error: `not JSON: ${exc.message}` };
  }
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
    return { error: "a JSON schema is an object, like {\"type\": \"object\", \"properties\": {…}}" };
  }
  return { schema, error: schemaProblem(schema, "the schema") };
}

function schemaProblem(node, where) {
  if (!SCHEMA_KEYS.some((key) => key in node)) return `${where} says nothing: give it a "type" (or properties, enum, anyOf…)`;
  const types = Array.isArray(node.type) ? node.type : node.type === undefined ? [] : [node.type];
  const bad = types.find((t) => !TYPES.has(t));
  if (bad !== undefined) return `${where}: unknown type ${JSON.stringify(bad)}`;
  if (node.required !== undefined && !(Array.isArray(node.required) && node.required.every((r) => typeof r === "string"))) {
    return `${where}: "required" is a list of property names`;
  }
  if (node.properties !== undefined) {
    if (typeof node.properties !== "object" || node.properties === null || Array.isArray(node.properties)) {
      return `${where}: "properties" is an object of schemas`;
    }
    for (const [name, child] of Object.entries(node.properties)) {
      if (typeof child !== "object" || child === null || Array.isArray(child)) return `property ${name} is not a schema`;
      const problem = schemaProblem(child, `property ${name}`);
      if (problem) return problem;
    }
  }
  return null;
}

function number(id, { min, max, integer, above }) {
  const raw = $(id).value.trim();
  if (raw === "") return { value: undefined };
  const value = Number(raw);
  const label = document.querySelector(`label[for="${id}"]`).textContent;
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) return { error: `${label}: not ${integer ? "a whole number" : "a number"}` };
  if ((min !== undefined && value < min) || (above !== undefined && value <= above) || (max !== undefined && value > max)) {
    const low = above !== undefined ? `above ${above}` : `at least ${min}`;
    return { error: `${label}: ${low}${max !== undefined ? ` and at most ${max}` : ""}` };
  }
  return { value };
}

export class Params {
  constructor(limits) {
    this.limits = limits;
    this.ids = ["p-task", "p-temperature", "p-top-p", "p-max-tokens", "p-seed", "p-cache", "p-schema"];
    this.restore();
    for (const id of this.ids) $(id).addEventListener("change", () => this.persist());
    $("p-schema").addEventListener("input", () => this.showSchemaCheck());
  }

  setLimits(limits) {
    this.limits = limits;
    if (limits && limits.max_tokens_limit) $("p-max-tokens").max = String(limits.max_tokens_limit);
  }

  restore() {
    const saved = state.loadParams();
    for (const id of this.ids) if (typeof saved[id] === "string") $(id).value = saved[id];
  }

  persist() {
    const saved = {};
    for (const id of this.ids) saved[id] = $(id).value;
    state.saveParams(saved);
  }

  showSchemaCheck() {
    const { error } = checkSchema($("p-schema").value);
    $("p-schema-error").textContent = error || "";
    $("p-schema").setAttribute("aria-invalid", error ? "true" : "false");
    return error;
  }

  /** {values} ready for the request body, or {error} naming the field to fix. */
  read() {
    const maxTokens = this.limits && this.limits.max_tokens_limit;
    const fields = {
      temperature: number("p-temperature", { min: 0, max: 2 }),
      top_p: number("p-top-p", { above: 0, max: 1 }),
      max_tokens: number("p-max-tokens", { min: 1, max: maxTokens || undefined, integer: true }),
      seed: number("p-seed", { min: 0, integer: true }),
    };
    const values = { task: $("p-task").value, cache: $("p-cache").value };
    for (const [name, field] of Object.entries(fields)) {
      if (field.error) return this.fail(field.error);
      if (field.value !== undefined) values[name] = field.value;
    }
    const schemaError = this.showSchemaCheck();
    if (schemaError) return this.fail(`JSON schema: ${schemaError}`, "p-schema");
    const { schema } = checkSchema($("p-schema").value);
    if (schema) values.response_format = { type: "json_schema", json_schema: { name: "answer", schema } };
    $("params-error").textContent = "";
    return { values };
  }

  fail(error, focusId) {
    $("params-error").textContent = error;
    $("params-panel").open = true;
    if (focusId) $(focusId).focus();
    return { error };
  }
}
