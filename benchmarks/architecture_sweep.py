"""Every decoder-only model type of the installed transformers, checked against itself.

    python benchmarks/architecture_sweep.py --directory DIR [--types llama,falcon,...] [--dtype bfloat16]

For each model type in transformers' causal LM list that is not an encoder, an
encoder-decoder or a multimodal model, builds a tiny random model from a small
config made generically (hidden size 64, 2 layers, 4 heads, 2 KV heads, vocabulary
256; 4 layers where 2 would leave a hybrid without an attention layer; as many KV
heads as heads for multi-head latent attention, which has no groups), saves it to
DIR/TYPE, and runs `parity check DIR/TYPE FACTORY:load` in a fresh process, where
the factory loads it as a user does (`AutoModelForCausalLM.from_pretrained(path,
dtype=torch.float32)`: its default attention and experts implementations; with
`--dtype bfloat16`, in bfloat16, the check calibrated to it). A correct model must
pass; a check that cannot run must end in one line, exit 2.

Prints a line per type: the exit code, the verdict or the error's first line, the
layers mapped by their output alone, whether the reference was run again routed
as the candidate at near-tie flips of an MoE router, and the check's wall seconds;
then the counts. A type whose small config does not build is listed as not built, with
transformers' error. Time: about 7 s a type on 2 CPU cores (load, four passes,
decoding); memory: a few hundred MB a process.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import time
from pathlib import Path

NOT_DECODERS = set("""bart bert bert-generation big_bird bigbird_pegasus blenderbot blenderbot-small camembert
data2vec-text electra ernie marian mbart megatron-bert mvp pegasus plbart prophetnet rembert roberta
roberta-prelayernorm roc_bert roformer trocr whisper xlm xlm-roberta xlm-roberta-xl xlnet xmod musicgen
musicgen_melody moshi moss_transcribe_diarize git got_ocr2 fuyu mllama emu3 phi4_multimodal reformer""".split())
SIZES = dict(hidden_size=64, n_embd=64, d_model=64, num_hidden_layers=2, n_layer=2, n_layers=2, num_layers=2,
             num_attention_heads=4, n_head=4, n_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, ffn_dim=128, n_inner=128, moe_intermediate_size=32,
             shared_expert_intermediate_size=32, vocab_size=256, max_position_embeddings=512, n_positions=512,
             num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
             kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
             rotary_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
TOKENS = [5, 17, 42, 99, 3, 7, 128, 200, 64, 33, 11, 250]
BUILD_BYTES = 8 << 30   # the address space a model's build may take (build_apart)
FACTORY = """import torch
from transformers import AutoModelForCausalLM


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.{dtype}).eval()
"""


def decoder_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - NOT_DECODERS)


def build(model_type: str, directory: Path) -> str | None:
    """Save a tiny model of `model_type` in `directory`; None, or why it did not build."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()   # a config's own warnings and the save's progress bar
    transformers.logging.disable_progress_bar()
    config_class = transformers.CONFIG_MAPPING[model_type]
    accepted = inspect.signature(config_class.__init__).parameters
    sizes = {key: value for key, value in SIZES.items() if key in accepted}
    if "kv_lora_rank" in accepted:   # multi-head latent attention: keys and values for every head
        sizes["num_key_value_heads"] = sizes.get("num_attention_heads", 4)
    error = "no layer count tried"
    for layers in (2, 4):   # a hybrid of 2 layers may hold no attention layer at all
        counts = {key: layers for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers") if key in sizes}
        try:
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config_class(**{**sizes, **counts})).eval()
            if sum(parameter.numel() for parameter in model.parameters()) > 60e6:
                return "over 60M parameters at the small config"
            with torch.no_grad():
                model(torch.tensor([TOKENS]))
            model.save_pretrained(directory)
            return None
        except Exception as exception:   # transformers raises many kinds for a config it does not accept
            error = f"{type(exception).__name__}: {str(exception).splitlines()[0][:120]}"
    return error


def build_apart(model_type: str, directory: Path) -> str | None:
    """`build` in a child process whose address space is capped at BUILD_BYTES: a config that ignores the small
    sizes (BLT's sub-models) would otherwise allocate tens of GB."""
    import resource

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (BUILD_BYTES, BUILD_BYTES))

    result = subprocess.run([sys.executable, __file__, "--build", model_type, "--directory", str(directory)],
                            capture_output=True, text=True, preexec_fn=capped, timeout=300)
    if result.returncode == 0 and (directory / "config.json").is_file():
        return None
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1][:150] if lines else f"exit {result.returncode}"



def check(directory: Path, factory: Path) -> tuple[int, str, int, bool, float]:
    """(exit code, verdict or error line, layers mapped by their output alone, rerouted, wall seconds)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "parity", "check", str(directory), f"{factory}:load",
                             "--tokens", ",".join(map(str, TOKENS))], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = (result.stdout + result.stderr).splitlines()
    summary = next((line for line in lines if line.startswith(("PASS", "FAIL", "parity: error"))),
                   lines[-1] if lines else "")
    outputs_only = sum(_layers_in(line) for line in lines if line.startswith("note: layer"))
    rerouted = any("running the reference again routed as the candidate" in line for line in lines)
    return result.returncode, summary.strip()[:150], outputs_only, rerouted, seconds


def _layers_in(note: str) -> int:
    """How many layers a note "layers 0, 1 and 3 more: only the output is ..." names (0 for another note)."""
    import re

    found = re.match(r"note: layers? ([\d, ]+)(?: and (\d+) more)?: only the output", note)
    if found is None:
        return 0
    return len(re.findall(r"\d+", found.group(1))) + int(found.group(2) or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directory", type=Path, required=True, help="where the tiny models are saved")
    parser.add_argument("--types", help="comma-separated model types (default: every decoder-only one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the precision the factory loads each model in (default float32)")
    parser.add_argument("--build", help=argparse.SUPPRESS)   # a child's one type (build_apart)
    arguments = parser.parse_args()
    if arguments.build:
        why = build(arguments.build, arguments.directory)
        print(why or "built")
        return 1 if why else 0
    arguments.directory.mkdir(parents=True, exist_ok=True)
    factory = arguments.directory / f"load_transformers_{arguments.dtype}.py"
    factory.write_text(FACTORY.format(dtype=arguments.dtype))
    types = arguments.types.split(",") if arguments.types else decoder_types()
    counts: dict[str, int] = {}
    for model_type in types:
        directory = arguments.directory / model_type
        why = None if (directory / "config.json").is_file() else build_apart(model_type, directory)
        if why is not None:
            print(f"{model_type:28} not built: {why}", flush=True)
            counts["not built"] = counts.get("not built", 0) + 1
            continue
        code, summary, outputs_only, rerouted, seconds = check(directory, factory)
        mapped = f" [{outputs_only} layer(s) by output]" if outputs_only else ""
        mapped += " [rerouted at near ties]" if rerouted else ""
        print(f"{model_type:28} exit {code}  {summary}{mapped}  ({seconds:.1f} s)", flush=True)
        counts[f"exit {code}"] = counts.get(f"exit {code}", 0) + 1
    print("; ".join(f"{key}: {value}" for key, value in sorted(counts.items())), f"of {len(types)} types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
