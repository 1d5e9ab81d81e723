// Tokenize the texts parity wrote, with transformers.js (the JavaScript port of transformers'
// tokenizers), and write each text's ids beside it: a tokenizer candidate in another language.
//
//   parity tokens MODEL --write-texts texts.json
//   node examples/js/tokenize_texts.cjs TOKENIZER_DIR texts.json ids.json
//   parity tokens MODEL --candidate-ids @ids.json
//
// TOKENIZER_DIR holds tokenizer.json and tokenizer_config.json (a model directory, or a GGUF's
// tokenizer saved by transformers' save_pretrained). transformers.js is `npm install
// @huggingface/transformers` (`--ignore-scripts`: the tokenizer needs no ONNX runtime); run node
// where it is installed or with NODE_PATH set to its node_modules.
const { AutoTokenizer, env } = require("@huggingface/transformers");
const { readFileSync, writeFileSync } = require("node:fs");

async function main() {
  const [tokenizerDir, textsPath, idsPath] = process.argv.slice(2);
  if (!idsPath) {
    console.error("usage: node tokenize_texts.cjs TOKENIZER_DIR texts.json ids.json");
    process.exit(2);
  }
  env.allowRemoteModels = false;   // a local directory only, never the hub
  env.localModelPath = "";
  const tokenizer = await AutoTokenizer.from_pretrained(tokenizerDir);
  const texts = JSON.parse(readFileSync(textsPath, "utf8"));
  // encode() adds the special tokens the tokenizer's post-processor adds (a BOS), as transformers does.
  const tokenized = texts.map((entry) => ({ ...entry, ids: Array.from(tokenizer.encode(entry.text)) }));
  writeFileSync(idsPath, JSON.stringify(tokenized, null, 1));
}

main();
