set -e
export PYTHONPATH=$PWD/src:$PWD/examples:$PWD/tests
python -c "
import tiny_models
tiny_models.save('llama','/tmp/llama'); tiny_models.save_tokenizer('/tmp/llama')
" > /dev/null 2>&1
cat > /tmp/ports.py <<'PY'
import llama_port
def correct(path):
    return llama_port.build(path).cuda()
def tiled(path):
    return llama_port.build(path, llama_port.Bugs(gqa_order='tile')).cuda()
PY
T=0,17,5,40,8,9,31,22,64,3
for f in correct tiled; do
  for mode in "" "--on-device"; do
    python -m parity check /tmp/llama /tmp/ports.py:$f --tokens $T --device-map cuda:0 $mode --json $OUT/$f${mode:+-ondevice}.json > $OUT/$f${mode:+-ondevice}.txt 2>&1 || echo "$f $mode exit $?"
  done
done
python - <<'PY'
import json, os
out = os.environ["OUT"]
for f in ("correct", "tiled"):
    host, dev = (json.load(open(f"{out}/{f}{s}.json")) for s in ("", "-ondevice"))
    print(f, host["verdict"], dev["verdict"], host.get("first_divergence", {}) and host["first_divergence"]["checkpoint"],
          dev.get("first_divergence", {}) and dev["first_divergence"]["checkpoint"],
          [d["cause"] for d in host["diagnoses"]], [d["cause"] for d in dev["diagnoses"]], dev["notes"][-2:])
PY
