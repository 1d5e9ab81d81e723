"""Token-by-token decoding through the candidate's KV cache against one full pass, inside parity check."""

import json

import pytest

from conftest import ROOT
from test_cli import TOKEN_ARG, parity

PORTS = '''import llama_port
import transformers

def correct(path):
    return llama_port.build(path)

def cache_one_position_off(path):
    return llama_port.build(path, llama_port.Bugs(kv_cache_offset=True))

def cached_keys_not_rotated(path):
    return llama_port.build(path, llama_port.Bugs(skip_rope_cached=True))

def cache_of_24_slots(path):
    return llama_port.build(path, llama_port.Bugs(kv_cache_slots=24))

def transformers_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()

def wrong_epsilon(path):                    # every norm off, its cache right: keys and values apart from layer 0
    return llama_port.build(path, llama_port.Bugs(norm_eps=0.1))

def wrong_epsilon_and_cached_keys_not_rotated(path):
    return llama_port.build(path, llama_port.Bugs(norm_eps=0.1, skip_rope_cached=True))
'''


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    path = tmp_path_factory.mktemp("ports") / "ports.py"
    path.write_text(PORTS)
    return path


def check(model_dir, ports, factory, *options):
    result = parity("check", model_dir, f"{ports}:{factory}", "--tokens", TOKEN_ARG, "--json", "-", *options,
                    cwd=ROOT / "examples")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("factory", ["correct", "transformers_model"])
def test_a_consistent_decode_path_passes(model_dirs, ports, factory):
    code, report = check(model_dirs["qwen3"], ports, factory)
    assert code == 0, report["decode"]
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["generation"]["first_divergence"] is None


@pytest.mark.parametrize("factory, cause", [
    ("cache_one_position_off", "kv_cache_offset"),
    ("cached_keys_not_rotated", "decode_rope"),
])
def test_a_broken_decode_path_is_caught_at_its_first_step_with_its_cause(model_dirs, ports, factory, cause):
    code, report = check(model_dirs["llama"], ports, factory)
    assert code == 1 and report["verdict"] == "fail"
    assert all(c["status"] == "pass" for c in report["checkpoints"])   # one full pass is right ...
    decode = report["decode"]
    assert decode["first_step"] == 1 and decode["position"] == len(TOKEN_ARG.split(","))  # ... the first decoded token is not
    assert decode["first_checkpoint"] == "layers.0.attn_probs"
    assert cause in [d["cause"] for d in report["diagnoses"]]


def test_a_cache_that_forgets_past_its_slots_fails_at_the_first_step_past_them(model_dirs, ports):
    """A bug that only long decoding reaches: the prompt's 10 positions and the next 15 decoded tokens fit in the
    cache's 24 slots; the step at position 25 finds position 0 forgotten, and attends over 24 keys where 25
    belong."""
    prompt = len(TOKEN_ARG.split(","))
    code, report = check(model_dirs["llama"], ports, "cache_of_24_slots", "--decode-steps", "64")
    assert code == 1 and all(c["status"] == "pass" for c in report["checkpoints"])
    decode = report["decode"]
    within = [error <= bound for error, bound in zip(decode["rel_l2"], decode["bounds"])]
    first = 25 - (prompt - 1)                                    # step 0 is the prompt's last position
    assert len(within) == 65 and all(within[:first]) and not within[first]
    assert (decode["first_step"], decode["position"]) == (first, 25)
    assert decode["first_checkpoint"] == "layers.0.attn_probs"
    _, correct = check(model_dirs["llama"], ports, "correct", "--decode-steps", "64")
    assert correct["decode"]["passed"] and len(correct["decode"]["rel_l2"]) == 65


def test_the_kv_cache_and_prefill_variants(model_dirs, ports):
    _, correct = check(model_dirs["llama"], ports, "correct")
    assert correct["decode"]["cache"]["passed"] and correct["decode"]["chunked_prefill_rel_l2"] < 1e-5
    _, hf = check(model_dirs["llama"], ports, "transformers_model")
    assert set(hf["decode"]["batch_rel_l2"]) == {"left", "right"} and max(hf["decode"]["batch_rel_l2"].values()) < 1e-4
    _, unrotated = check(model_dirs["llama"], ports, "cached_keys_not_rotated")
    cache = unrotated["decode"]["cache"]
    assert not cache["passed"] and cache["first"][:2] == ["keys", 0]
    assert unrotated["decode"]["chunked_prefill_rel_l2"] > max(unrotated["decode"]["bounds"])


def test_a_cache_apart_from_the_reference_only_as_its_forward_pass_is_not_a_cache_bug(model_dirs, ports):
    """A port whose norms use another epsilon computes every key and value apart from the reference's, and its cache
    holds what it computes: the forward pass fails, the cache is held to the port's own pass and passes (it was
    "the keys of layer 0, head 0 differ from the reference's", and the note "decoding parts from the full pass
    and no known cause fits" where every step matched). A cache that also keeps its keys unrotated still fails."""
    code, report = check(model_dirs["llama"], ports, "wrong_epsilon")
    decode = report["decode"]
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.attn_norm"
    assert decode["passed"] and decode["cache"]["passed"], decode
    assert ["keys", 0] in decode["cache"]["inherited"] and ["values", 0] in decode["cache"]["inherited"]
    assert max(decode["cache"]["keys_rel_l2"][0]) > decode["bounds"][0]      # apart from the reference's
    assert not [note for note in report["notes"] if "no known cause fits" in note]
    _, report = check(model_dirs["llama"], ports, "wrong_epsilon_and_cached_keys_not_rotated")
    cache = report["decode"]["cache"]
    assert not cache["passed"] and cache["first"][:2] == ["keys", 0] and ["keys", 0] not in cache["inherited"]


# Decode bugs in candidates built on transformers' own Llama, whose forward takes **kwargs (as patched and
# wrapped models do): decoding is found by trying, and each step's checkpoints come from transformers' hooks,
# where k_rope holds every key the step reads from the cache.
LLAMA_PORTS = '''import inspect

import transformers
from transformers.cache_utils import DynamicCache, DynamicLayer

SLOTS = 64


def cache_keyword(forward):
    """The keyword this transformers forward takes its cache by. transformers 5.24 renamed past_key_values to
    cache: a port that plants its bug through a name the forward no longer takes plants nothing, so a name
    neither here is an error, not a bug left out."""
    parameters = inspect.signature(forward).parameters
    for keyword in ("cache", "past_key_values"):
        if keyword in parameters:
            return keyword
    raise TypeError(f"{forward.__qualname__} takes its cache by none of cache, past_key_values "
                    f"({', '.join(parameters)}): transformers renamed it again; plant the bug through the new name")


MODEL_CACHE = cache_keyword(transformers.LlamaForCausalLM.forward)
ATTENTION_CACHE = cache_keyword(transformers.models.llama.modeling_llama.LlamaAttention.forward)


class LateWriteLayer(DynamicLayer):
    """A preallocated cache whose decode writes land one slot past the position they belong to, while
    reads cover the positions seen: slot p still holds zeros when position p reads it."""

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, width = key_states.shape
        self.key_slots = key_states.new_zeros(batch, heads, SLOTS, width)
        self.value_slots = value_states.new_zeros(batch, heads, SLOTS, width)
        self.seen = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        count = key_states.shape[-2]
        at = self.seen + (1 if self.seen else 0)                  # the bug: one slot late after the prefill
        self.key_slots[..., at:at + count, :] = key_states
        self.value_slots[..., at:at + count, :] = value_states
        self.seen += count
        self.keys, self.values = self.key_slots[..., :self.seen, :], self.value_slots[..., :self.seen, :]
        return self.keys, self.values


class LateCacheWrite(transformers.LlamaForCausalLM):
    def forward(self, input_ids, **kwargs):
        if kwargs.get("use_cache") and kwargs.get(MODEL_CACHE) is None:
            cache = DynamicCache(config=self.config)
            cache.layers = [LateWriteLayer() for _ in cache.layers]
            kwargs[MODEL_CACHE] = cache
        return super().forward(input_ids=input_ids, **kwargs)


class LayerIgnoresCache(transformers.LlamaForCausalLM):
    """Layer 1's attention neither reads nor writes the cache once decoding starts: it attends over the
    step's own key, with the mask's last column."""

    def __init__(self, config):
        super().__init__(config)
        attention = self.model.layers[1].self_attn
        original = attention.forward

        def forward(*args, attention_mask=None, **kwargs):
            cache = kwargs.get(ATTENTION_CACHE)
            if cache is not None and cache.get_seq_length(1) > 0:
                kwargs[ATTENTION_CACHE] = None
                attention_mask = None if attention_mask is None else attention_mask[..., -1:]
            return original(*args, attention_mask=attention_mask, **kwargs)

        attention.forward = forward

    def forward(self, input_ids, **kwargs):
        return super().forward(input_ids=input_ids, **kwargs)


class MaskDroppedWhenCaching(transformers.LlamaForCausalLM):
    """Called with use_cache=True (the path that decodes), layer 0's attention is given no mask: its prefill lets
    each position see the ones after it. The full pass, without a cache, is right; so is each decoded token's
    own row, which sees every key either way, but it reads the later layers' keys the prefill made wrong."""

    def __init__(self, config):
        super().__init__(config)
        self.caching = False
        attention = self.model.layers[0].self_attn
        original = attention.forward

        def forward(*args, attention_mask=None, **kwargs):
            return original(*args, attention_mask=None if self.caching else attention_mask, **kwargs)

        attention.forward = forward

    def forward(self, input_ids, **kwargs):
        self.caching = bool(kwargs.get("use_cache"))
        try:
            return super().forward(input_ids=input_ids, **kwargs)
        finally:
            self.caching = False


def mask_dropped_when_caching(path):
    return MaskDroppedWhenCaching.from_pretrained(path, attn_implementation="eager").eval()


def late_cache_write(path):
    return LateCacheWrite.from_pretrained(path, attn_implementation="eager").eval()


def layer_1_ignores_cache(path):
    return LayerIgnoresCache.from_pretrained(path, attn_implementation="eager").eval()
'''


@pytest.fixture(scope="module")
def llama_ports(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_ports") / "llama_ports.py"
    path.write_text(LLAMA_PORTS)
    return path


@pytest.mark.parametrize("factory, checkpoint, cause", [
    ("late_cache_write", "layers.0.k_rope", "kv_cache_offset"),
    ("layer_1_ignores_cache", "layers.1.attn_probs", "kv_cache_unread"),
])
def test_decode_bugs_in_transformers_llama_are_caught_at_their_layer_with_their_cause(
        model_dirs, llama_ports, factory, checkpoint, cause, capsys):
    from parity.cli import main   # in this process: no fresh interpreter importing torch for each case

    capsys.readouterr()
    code = main(["check", str(model_dirs["llama"]), f"{llama_ports}:{factory}", "--tokens", TOKEN_ARG, "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["verdict"] == "fail"
    assert all(c["status"] == "pass" for c in report["checkpoints"])     # the full pass is right
    decode = report["decode"]
    assert not decode["passed"] and decode["first_step"] == 1 and decode["position"] == len(TOKEN_ARG.split(","))
    assert decode["first_checkpoint"] == checkpoint
    causes = [d["cause"] for d in report["diagnoses"]]
    assert cause in causes and "precision_noise" not in causes
    assert next(d for d in report["diagnoses"] if d["cause"] == cause)["checkpoint"] == checkpoint


@pytest.mark.parametrize("ports_file, factory", [
    ("ports", "cache_one_position_off"), ("ports", "cached_keys_not_rotated"),
    ("llama_ports", "late_cache_write"), ("llama_ports", "layer_1_ignores_cache"),
])
def test_after_a_long_prompt_a_decode_bug_is_located_and_diagnosed_as_the_whole_trace_does(
        model_dirs, request, ports_file, factory, capsys, monkeypatch):
    """Past a long prompt the full pass that locates a failing step is judged as it is made, keeping that
    position's rows (core/decode_location.py): the same step, checkpoint and causes as from its whole trace."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    (whole_code, whole), (rows_code, rows) = short_and_long_reports(
        model_dirs["llama"], f"{request.getfixturevalue(ports_file)}:{factory}", capsys, monkeypatch)
    assert whole_code == rows_code == 1
    assert whole["decode"]["first_checkpoint"] is not None
    for key in ("first_step", "position", "first_checkpoint"):
        assert rows["decode"][key] == whole["decode"][key], key
    assert rows["diagnoses"] == whole["diagnoses"] and any(d["cause"] in beyond_forward_causes()
                                                           for d in rows["diagnoses"])
    assert not any("was not located" in note for note in rows["notes"])


def test_a_prefill_that_parts_from_the_full_pass_is_located_at_any_prompt_length(model_dirs, llama_ports, capsys,
                                                                                 monkeypatch):
    """A bug in the prefill through the cache: from the prefill's own tensors at a short prompt, and at a long one
    (its checkpoints not held) from sketches of both passes (core/pass_sketch.py), the same step and checkpoint."""
    (whole_code, whole), (long_code, long_report) = short_and_long_reports(
        model_dirs["llama"], f"{llama_ports}:mask_dropped_when_caching", capsys, monkeypatch)
    assert whole_code == long_code == 1
    for report in (whole, long_report):
        assert all(c["status"] == "pass" for c in report["checkpoints"])     # the full pass is right
        assert report["decode"]["first_step"] == 0                           # the prefill is not
        assert report["decode"]["first_checkpoint"] == "layers.0.attn_probs"
    assert not any("sketches" in note for note in whole["notes"])
    assert any("located from sketches" in note for note in long_report["notes"])


def short_and_long_reports(model_dir, candidate: str, capsys, monkeypatch) -> list[tuple[int, dict]]:
    """(exit code, JSON report) of `parity check` as it runs, then with every prompt treated as long: only the
    logits rows from the last prompt position made, the prefill's checkpoints sketched, not recorded."""
    from parity.capture.torch import incremental
    from parity.cli import main
    from parity.commands.check import beyond_forward

    reports = []
    for long in (False, True):
        if long:
            monkeypatch.setattr(beyond_forward, "FULL_LOGITS_BYTES", 0)
            monkeypatch.setattr(incremental, "RECORDED_PREFILL_TOKENS", 2)
        capsys.readouterr()
        code = main(["check", str(model_dir), candidate, "--tokens", TOKEN_ARG, "--json", "-"])
        reports.append((code, json.loads(capsys.readouterr().out)))
    return reports


def beyond_forward_causes():
    from parity.diagnose.decode_causes import CAUSES

    return CAUSES
