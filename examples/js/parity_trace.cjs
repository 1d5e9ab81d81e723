// Write a parity trace from JavaScript: a safetensors file of tensors, each filed under its checkpoint
// name (docs/trace-format.md), with the trace's metadata. No library: safetensors is an 8-byte
// little-endian header length, a JSON header, then the tensors' bytes.
//
//   const { writeTrace } = require("./parity_trace.cjs");
//   writeTrace("candidate.safetensors",
//              { logits: { data: logitsFloat32Array, shape: [T, V] } },
//              { producer: "my-port 0.1", dtype: "float32", tokens: [1, 415, 5565] });
//
// A Float32Array, Float64Array, Int32Array or BigInt64Array says its own type; float16 or bfloat16 values
// held as their bits in a Uint16Array (as JS holds them) are written with `dtype: "F16"` or `"BF16"`.
const { writeFileSync } = require("node:fs");

const DTYPES = { Float32Array: "F32", Float64Array: "F64", Int32Array: "I32", BigInt64Array: "I64" };

function writeTrace(path, tensors, metadata = {}) {
  const header = { __metadata__: { format: "parity-trace/2" } };
  for (const [key, value] of Object.entries(metadata)) {
    header.__metadata__[key] = typeof value === "string" ? value : JSON.stringify(value);
  }
  const chunks = [];
  let offset = 0;
  for (const [name, { data, shape, dtype: bits }] of Object.entries(tensors)) {
    const dtype = data instanceof Uint16Array ? bits : DTYPES[data.constructor.name];
    if (!["F16", "BF16", ...Object.values(DTYPES)].includes(dtype)) {
      throw new Error(`${name}: ${data.constructor.name} is not a type a trace holds (a Uint16Array needs dtype F16 or BF16)`);
    }
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`${name}: ${data.length} values for shape [${shape}]`);
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);   // the tensors start 8-byte aligned
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(path, Buffer.concat([length, Buffer.from(json), ...chunks]));
}

module.exports = { writeTrace };
