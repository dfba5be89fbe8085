"""Feeds every prefix of an MLIR file (cut every STEP bytes) to a tool and
checks each run ends with exit 0, or exit 1 and a located `error:`; anything
else (a signal, an assertion, another exit code, no location) fails."""
import re
import subprocess
import sys

tool, path, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path, "rb").read()
located = re.compile(rb"^<stdin>:\d+:\d+: error:", re.M)
rejected = crashed = 0
for cut in range(0, len(text), step):
    run = subprocess.run([tool], input=text[:cut], capture_output=True, timeout=60)
    if run.returncode == 0:
        continue
    if run.returncode == 1 and located.search(run.stderr):
        rejected += 1
        continue
    crashed += 1
    sys.stdout.write(f"prefix of {cut} bytes: exit {run.returncode}\n")
    sys.stdout.write(run.stderr.decode(errors="replace")[-2000:] + "\n")
print(f"truncations: {rejected} rejected with a located error, {crashed} crashed")
sys.exit(1 if crashed else 0)
