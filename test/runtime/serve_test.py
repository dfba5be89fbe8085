"""End-to-end tests of `kiln serve` with a real HTTP client on the tiny model.

Usage: python3 serve_test.py KILN_BINARY SOURCE_DIR
Starts the server on a free loopback port and checks the OpenAI-style
endpoints (JSON and server-sent events) against `kiln generate`, concurrent
streams, the error responses, a client that disconnects mid-stream, the
Prometheus metrics, and a clean stop on SIGTERM. Python standard library only.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

kiln, source = sys.argv[1], sys.argv[2]
failures = []
TIMEOUT = 30


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, raw=None):
    """Returns (status, headers, body bytes) on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_json(port, path, body):
    status, _, data = request(port, "POST", path, body)
    try:
        return status, json.loads(data)
    except ValueError:
        failures.append(f"POST {path}: status {status}, body is not JSON: {data[:200]!r}")
        return status, {}


def sse_events(data):
    """The JSON payloads of an SSE body, and whether it ended with [DONE]."""
    events, done = [], False
    for block in data.decode().split("\n\n"):
        # SSE comments (": waiting" while queued) carry no event.
        if not block.strip() or block.startswith(":"):
            continue
        if not check(block.startswith("data: "), f"SSE block {block[:80]!r}"):
            continue
        payload = block[len("data: "):]
        if payload == "[DONE]":
            done = True
            continue
        check(not done, "SSE data after [DONE]")
        events.append(json.loads(payload))
    return events, done


def stream_text(events, chat=False):
    text, finish = "", None
    for event in events:
        if not check("choices" in event, f"SSE chunk without choices: {event}"):
            continue
        for choice in event["choices"]:
            text += choice["delta"].get("content", "") if chat else choice["text"]
            finish = choice["finish_reason"] or finish
    return text, finish


def metrics(port):
    status, _, data = request(port, "GET", "/metrics")
    check(status == 200, f"/metrics: status {status}")
    values = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def metrics_when(port, ready, timeout=5.0):
    """Scrapes /metrics until ready(values) holds or the timeout passes.

    The server counts an HTTP request in its logger, which runs after the
    response has been written, so a client can see its stream end before the
    request is counted."""
    deadline = time.monotonic() + timeout
    values = metrics(port)
    while not ready(values) and time.monotonic() < deadline:
        time.sleep(0.05)
        values = metrics(port)
    return values


def is_error_object(body, status, what):
    error = body.get("error") if isinstance(body, dict) else None
    ok = isinstance(error, dict) and all(k in error for k in ("message", "type", "param", "code"))
    return check(ok and isinstance(error["message"], str),
                 f"{what}: status {status}, not an OpenAI error object: {body}")


def generate(model, *args):
    out = subprocess.run([kiln, "generate", "--model", model, *args],
                         capture_output=True, text=True, timeout=120)
    check(out.returncode == 0, f"kiln generate {args}: {out.stderr}")
    return out.stdout[:-1] if out.stdout.endswith("\n") else out.stdout


with tempfile.TemporaryDirectory() as scratch:
    model = os.path.join(scratch, "tiny")
    subprocess.run([kiln, "make-tiny", "--config", f"{source}/examples/tiny/config.json",
                    "--out", model, "--seed", "1",
                    "--tokenizer", f"{source}/.deps/deepseek-v3-tokenizer"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    log = open(os.path.join(scratch, "serve.log"), "w+")
    server = subprocess.Popen([kiln, "serve", "--model", model, "--port", str(port),
                               "--max-batch", "16", "--threads", "2"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        up = False
        while time.time() < deadline and server.poll() is None:
            try:
                up = request(port, "GET", "/health")[0] == 200
            except OSError:
                pass
            if up:
                break
            time.sleep(0.1)
        if not check(up, "the server did not answer /health"):
            raise SystemExit

        before = metrics(port)
        status, _, data = request(port, "GET", "/v1/models")
        models = json.loads(data)
        check(status == 200 and models["data"][0]["id"] == "tiny", f"/v1/models: {models}")

        # Non-streaming greedy completion = `kiln generate`.
        expected = generate(model, "--prompt", "Hello", "--max-tokens", "8")
        status, body = post_json(port, "/v1/completions",
                                 {"model": "tiny", "prompt": "Hello", "max_tokens": 8,
                                  "temperature": 0})
        check(status == 200, f"completion: status {status} {body}")
        choice = body["choices"][0]
        usage = body["usage"]
        check(body["object"] == "text_completion", f"completion object {body['object']}")
        check(choice["text"] == expected, f"completion text {choice['text']!r} != generate {expected!r}")
        check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], f"usage {usage}")
        check(choice["finish_reason"] in ("stop", "length"), f"finish_reason {choice['finish_reason']}")
        check(usage["completion_tokens"] == 8 or choice["finish_reason"] == "stop", f"usage {usage}")

        # The same prompt as token ids (BOS included, as the server adds it).
        ids = json.loads(subprocess.run([kiln, "tokenize", "--model", model, "--text", "Hello", "--bos"],
                                        capture_output=True, text=True, timeout=60).stdout)["ids"]
        status, body = post_json(port, "/v1/completions",
                                 {"prompt": ids, "max_tokens": 8, "temperature": 0})
        check(status == 200 and body["choices"][0]["text"] == expected,
              f"token-id prompt: {status} {body}")
        check(body.get("usage", {}).get("prompt_tokens") == len(ids), f"token-id usage {body.get('usage')}")

        # Chat completion = `kiln generate --chat`.
        expected_chat = generate(model, "--prompt", "Hi", "--chat", "--max-tokens", "6")
        status, body = post_json(port, "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                                  "temperature": 0})
        check(status == 200 and body["object"] == "chat.completion", f"chat: {status} {body}")
        message = body["choices"][0]["message"]
        check(message["role"] == "assistant" and message["content"] == expected_chat,
              f"chat message {message} != generate {expected_chat!r}")

        # Streaming: SSE chunks whose text adds up to the non-streamed text.
        status, headers, data = request(port, "POST", "/v1/completions",
                                        {"prompt": "Hello", "max_tokens": 8, "temperature": 0,
                                         "stream": True})
        check(status == 200 and headers.get("Content-Type", "").startswith("text/event-stream"),
              f"stream: {status} {headers}")
        events, done = sse_events(data)
        text, finish = stream_text(events)
        check(done, "stream did not end with [DONE]")
        check(text == expected, f"streamed text {text!r} != {expected!r}")
        check(finish in ("stop", "length"), f"stream finish_reason {finish}")
        status, _, data = request(port, "POST", "/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                                   "temperature": 0, "stream": True,
                                   "stream_options": {"include_usage": True}})
        events, done = sse_events(data)
        text, _ = stream_text(events, chat=True)
        check(done and text == expected_chat, f"chat stream: {text!r} != {expected_chat!r}")
        check("usage" in events[-1] and events[-1]["usage"]["completion_tokens"] >= 1,
              f"chat stream usage chunk: {events[-1] if events else None}")

        # 32 concurrent streams share the batch and all come out right.
        results = [None] * 32

        def client(index):
            try:
                status, _, data = request(port, "POST", "/v1/completions",
                                          {"prompt": "Hello", "max_tokens": 8, "temperature": 0,
                                           "stream": True})
                events, done = sse_events(data)
                results[index] = (status, done, stream_text(events)[0])
            except Exception as error:  # reported below
                results[index] = (None, False, repr(error))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        bad = [r for r in results if r != (200, True, expected)]
        check(not bad, f"concurrent streams: {len(bad)} of 32 wrong, e.g. {bad[:2]}")
        key = 'kiln_http_requests_total{route="/v1/completions",code="200"}'
        after = metrics_when(port, lambda v: v.get(key, 0) - before.get(key, 0) >= 35)
        check(after.get(key, 0) - before.get(key, 0) >= 35, f"metrics {key}: {after.get(key)}")
        check(after.get("kiln_peak_active_sequences", 0) > 1,
              f"no batching: peak active {after.get('kiln_peak_active_sequences')}")
        check(after["kiln_generated_tokens_total"] > before["kiln_generated_tokens_total"] + 32 * 7,
              "kiln_generated_tokens_total did not move")
        check(after["kiln_time_to_first_token_seconds_count"] >= 36, "time to first token not recorded")
        check(after["kiln_request_duration_seconds_count"] >= 36, "request latency not recorded")

        # Errors: OpenAI error objects with the right statuses.
        status, _, data = request(port, "POST", "/v1/completions", raw=b'{"prompt": "x",')
        check(status == 400, f"malformed JSON: status {status}")
        is_error_object(json.loads(data), status, "malformed JSON")
        for bad_body, param in [({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
                                ({"prompt": "x", "temperature": -1}, "temperature"),
                                ({"max_tokens": 4}, "prompt"),
                                ({"messages": []}, "messages")]:
            path = "/v1/chat/completions" if param == "messages" else "/v1/completions"
            status, body = post_json(port, path, bad_body)
            if check(status == 400, f"{bad_body}: status {status}"):
                is_error_object(body, status, str(bad_body))
                check(body["error"]["param"] == param, f"{bad_body}: param {body['error']['param']}")
        status, body = post_json(port, "/v1/completions", {"prompt": [1, 10**8], "max_tokens": 2})
        check(status == 400, f"token outside the vocabulary: status {status}")
        status, _, data = request(port, "POST", "/v1/completions",
                                  raw=json.dumps({"prompt": "a" * (1536 * 1024)}))
        check(status == 413, f"oversize body: status {status}")
        is_error_object(json.loads(data), status, "oversize body")
        status, _, data = request(port, "GET", "/v1/nowhere")
        check(status == 404, f"unknown route: status {status}")
        is_error_object(json.loads(data), status, "unknown route")
        status, _, data = request(port, "GET", "/v1/completions")
        check(status == 405, f"GET /v1/completions: status {status}")
        is_error_object(json.loads(data), status, "wrong method")

        # A client that goes away mid-stream: its request is cancelled and
        # the server goes on serving.
        payload = json.dumps({"prompt": "Hello", "max_tokens": 2000, "temperature": 0,
                              "stream": True}).encode()
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while b"data: " not in received:
            chunk = raw.recv(4096)
            if not chunk:
                break
            received += chunk
        check(b"data: " in received, f"disconnect test: no first chunk: {received[:200]!r}")
        raw.close()
        gone = metrics_when(port, lambda v: (
            v.get('kiln_generation_requests_total{finish_reason="disconnected"}', 0) >= 1
            and v["kiln_requests_in_flight"] == 0 and v["kiln_active_sequences"] == 0), timeout=15)
        check(gone.get('kiln_generation_requests_total{finish_reason="disconnected"}', 0) >= 1,
              "the disconnected stream was not cancelled")
        check(gone.get("kiln_requests_in_flight") == 0 and gone.get("kiln_active_sequences") == 0,
              f"requests left after the disconnect: {gone.get('kiln_requests_in_flight')}")
        check(gone["kiln_generated_tokens_total"] < after["kiln_generated_tokens_total"] + 1500,
              "the disconnected stream ran to its end")
        check(request(port, "GET", "/health")[0] == 200, "/health after the disconnect")
        status, body = post_json(port, "/v1/completions",
                                 {"prompt": "Hello", "max_tokens": 8, "temperature": 0})
        check(status == 200 and body["choices"][0]["text"] == expected,
              f"completion after the disconnect: {status} {body}")
        final = metrics(port)
        check(final.get('kiln_http_requests_total{route="other",code="404"}', 0) >= 1, "404 not counted")
        check(final.get('kiln_http_requests_total{route="/v1/completions",code="413"}', 0) >= 1,
              "413 not counted")

        # SIGTERM stops the server cleanly.
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(15)
            check(code == 0, f"exit code {code} after SIGTERM")
        except subprocess.TimeoutExpired:
            check(False, "the server did not stop within 15 s of SIGTERM")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.seek(0)
        output = log.read()
        log.close()
    if failures:
        print("server log:\n" + output[-4000:])

print(f"kiln-serve: {0 if failures else 1} passed, {len(failures)} failed")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
