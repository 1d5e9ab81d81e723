// Run a causal LM in transformers.js (ONNX Runtime under Node.js) over token ids and write what it
// shows as a parity trace: the logits, and each layer's keys (after RoPE) and values as its KV cache
// holds them, so that a failure is placed in the first layer whose cache parts from the reference's.
//
//   node examples/js/transformers_js_trace.cjs MODEL_DIR IDS OUT.safetensors [DTYPE]
//   parity compare reference.safetensors OUT.safetensors     (or: parity check MODEL OUT.safetensors)
//
// MODEL_DIR is laid out as transformers.js reads a model: config.json, the tokenizer's files and
// onnx/model.onnx (DTYPE fp32) or onnx/model_<dtype>.onnx; IDS is "1,2,3". A model whose KV cache holds no
// RoPE (GPT-2) has its keys written as `k`, not `k_rope`.
const { AutoModelForCausalLM, Tensor, env } = require("@huggingface/transformers");
const { writeTrace } = require("./parity_trace.cjs");

const NO_ROPE = new Set(["gpt2", "gpt_neo", "gptj", "opt", "bloom", "falcon"]);

// A tensor's values as the trace writer takes them: float32 as they are, float16 as their bits (JS has no
// float16 array on Node 20: transformers.js holds them in a Uint16Array); null for any other type.
function values(tensor) {
  if (tensor.type === "float32") return { data: tensor.data };
  if (tensor.type === "float16") {
    const data = tensor.data;
    return { data: new Uint16Array(data.buffer, data.byteOffset, data.length), dtype: "F16" };
  }
  return null;
}

// [1, Hkv, T, hd] (a KV cache entry) -> [T, Hkv * hd], each position's heads side by side.
function positionMajor(tensor) {
  const [, heads, positions, size] = tensor.dims;
  const { data, dtype } = values(tensor);
  const out = new data.constructor(heads * positions * size);
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < positions; t++)
      out.set(data.subarray((h * positions + t) * size, (h * positions + t + 1) * size), (t * heads + h) * size);
  return { data: out, shape: [positions, heads * size], dtype };
}

async function main() {
  const [modelDir, idsText, outPath, dtype = "fp32"] = process.argv.slice(2);
  if (!outPath) {
    console.error("usage: node transformers_js_trace.cjs MODEL_DIR IDS OUT.safetensors [DTYPE]");
    process.exit(2);
  }
  env.allowRemoteModels = false;   // a local directory only, never the hub
  env.localModelPath = "";
  const model = await AutoModelForCausalLM.from_pretrained(modelDir, { dtype });
  const ids = idsText.split(",").map(Number);
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", BigInt64Array.from(ids.map(() => 1n)), [1, ids.length]);
  const output = await model({ input_ids, attention_mask });

  const [, positions, vocabulary] = output.logits.dims;   // [1, T, V] -> [T, V]
  const logits = values(output.logits);
  if (!logits) throw new Error(`logits of type ${output.logits.type}: not float32 or float16`);
  const tensors = { logits: { ...logits, shape: [positions, vocabulary] } };
  const keyName = NO_ROPE.has(model.config.model_type) ? "k" : "k_rope";
  // the session's outputs: logits and each layer's cache, present.{i}.key and present.{i}.value [1, Hkv, T, hd]
  for (const [name, tensor] of Object.entries(output)) {
    const match = /^present\.(\d+)\.(key|value)$/.exec(name);
    if (match && values(tensor)) {
      tensors[`layers.${match[1]}.${match[2] === "key" ? keyName : "v"}`] = positionMajor(tensor);
    }
  }
  writeTrace(outPath, tensors, {
    producer: `transformers.js ${env.version} (onnxruntime-node, ${dtype})`,
    dtype: dtype === "fp32" ? "float32" : dtype === "fp16" ? "float16" : dtype,
    arch: model.config.model_type,
    tokens: ids,
  });
}

main();
