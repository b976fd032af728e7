// The request body of a turn: the conversation so far as `messages` (each finished answer goes back in as
// an assistant turn), the turn's question with its images as vlq://media/<id>, and the parameters.

function userMessage(turn) {
  if (!turn.media.length) return { role: "user", content: turn.prompt };
  const content = turn.media.map((media) => ({ type: "image_url", image_url: { url: `vlq://media/${media.media_id}` } }));
  if (turn.prompt) content.push({ type: "text", text: turn.prompt });
  return { role: "user", content };
}

function answerText(turn) {
  const result = turn.final && turn.final.result;
  return result && typeof result.text === "string" ? result.text : null;
}

/** The messages for turns[0..index]: earlier turns only when they were answered (a failed one is left out). */
export function buildMessages(turns, index) {
  const messages = [];
  for (const turn of turns.slice(0, index)) {
    const answer = turn.state === "done" ? answerText(turn) : null;
    if (answer !== null) messages.push(userMessage(turn), { role: "assistant", content: answer });
  }
  messages.push(userMessage(turns[index]));
  return messages;
}

/** The JSON body of POST /api/infer for turns[index]. */
export function requestBody(turns, index) {
  const turn = turns[index];
  const body = { messages: buildMessages(turns, index), ...turn.params };
  if (turn.regenerate) body.cache = "off"; // regenerate asks for a new answer, not the cached one
  return body;
}
